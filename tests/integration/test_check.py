"""``llmedge check`` refuses every file ``llmedge serve`` would refuse at start-up, with the
same message, and builds what serve builds without opening a connection or writing a file."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from procs import PYTHON, REPO

DEPLOYMENT = """\
deployments:
  - name: alpha
    base_url: http://127.0.0.1:9/v1
"""
EXAMPLES = {"code": ["fix this python function", "my rust code does not compile"],
            "chat": ["how are you today", "tell me a joke"]}


def classify_route(extra: str, classes: str = "") -> str:
    classes = classes or """\
    classes:
      code: {deployments: [alpha]}
      chat: {deployments: [alpha]}
"""
    return DEPLOYMENT + """\
routes:
  - name: smart
    policy: classify
%s%s""" % (extra, classes)


def write_examples(tmp_path, rows) -> str:
    path = tmp_path / "examples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run(command: str, path, *args: str, env=None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    return subprocess.run([PYTHON, "-m", "proxy", command, "-c", str(path), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=full)


def refused_by_both(tmp_path, text: str, expected: str, env=None, args=()) -> None:
    path = tmp_path / "llmedge.yaml"
    path.write_text(text)
    before = set(os.listdir(tmp_path))
    check = run("check", path, env=env)
    assert check.returncode == 2, (check.stdout, check.stderr)
    assert expected in check.stderr, check.stderr
    assert "Traceback" not in check.stderr
    assert set(os.listdir(tmp_path)) == before   # check wrote nothing
    serve = run("serve", path, *args, env=env)
    assert serve.returncode == 2, (serve.stdout, serve.stderr)
    assert expected in serve.stderr, serve.stderr


def bad_cases(tmp_path):
    rows = [{"text": t, "label": label} for label, texts in EXAMPLES.items() for t in texts]
    only_code = write_examples(tmp_path, [r for r in rows if r["label"] == "code"])
    garbage = tmp_path / "model.json"
    garbage.write_text('{"format": "llmedge-classifier/2", "labels": ["a"]}')
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("this is not a certificate\n")
    not_jsonl = tmp_path / "broken.jsonl"
    not_jsonl.write_text("{not json\n")
    return [
        ("a class without examples", classify_route("    examples_file: %s\n" % only_code),
         "routes[0].classes: no training examples for chat", {}),
        ("a broken model file", classify_route("    model_file: %s\n" % garbage),
         "routes[0]: cannot build the classifier", {}),
        ("an examples file that is not JSONL",
         classify_route("    examples_file: %s\n" % not_jsonl),
         "routes[0]: cannot build the classifier", {}),
        ("an unset admin token", DEPLOYMENT + "server:\n  admin_token_env: LLMEDGE_NO_SUCH_VAR\n",
         "server.admin_token_env: LLMEDGE_NO_SUCH_VAR is not set",
         {"LLMEDGE_NO_SUCH_VAR": None}),
        ("a CA file that is not PEM",
         "upstream:\n  ca_file: %s\ndeployments:\n  - name: alpha\n"
         "    base_url: https://127.0.0.1:9/v1\n" % not_pem,
         "upstream.ca_file: cannot be loaded", {}),
        ("workers on an ephemeral port",
         "server:\n  http: 127.0.0.1:0\n  workers: 2\n" + DEPLOYMENT,
         "server.http: 2 workers need a fixed port, not 127.0.0.1:0", {}),
        ("an access log nobody can write",
         "server:\n  access_log: %s\n" % (tmp_path / "missing" / "access.jsonl") + DEPLOYMENT,
         "server.access_log: no such directory", {}),
    ]


CASE_NAMES = ["no-examples-for-a-class", "broken-model-file", "examples-not-jsonl",
              "unset-admin-token", "ca-file-not-pem", "workers-on-port-0", "access-log-dir"]


@pytest.mark.parametrize("index", range(len(CASE_NAMES)), ids=CASE_NAMES)
def test_check_refuses_what_serve_refuses(tmp_path, index):
    _, text, expected, env = bad_cases(tmp_path)[index]
    refused_by_both(tmp_path, text, expected, env)


def test_check_trains_the_classifier_and_opens_no_connection(tmp_path):
    # The upstream is a listening socket that counts connections: check must make none.
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.0)
    port = listener.getsockname()[1]
    rows = [{"text": t, "label": label} for label, texts in EXAMPLES.items() for t in texts]
    examples = write_examples(tmp_path, rows)
    audit = tmp_path / "audit.jsonl"
    path = tmp_path / "llmedge.yaml"
    path.write_text(classify_route(
        "    examples_file: %s\n    audit: {file: %s, below: 1.0}\n"
        "    llm: {deployment: alpha, mode: always}\n" % (examples, audit)
    ).replace("127.0.0.1:9", "127.0.0.1:%d" % port))
    try:
        proc = run("check", path)
        assert proc.returncode == 0, proc.stderr
        assert "smart" in proc.stdout
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
    assert not audit.exists()


def test_the_shipped_example_configuration_passes_check():
    path = REPO / "examples" / "llmedge.yaml"
    proc = run("check", path, env={"OPENAI_API_KEY": "sk-example"})
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout


def test_the_providers_example_passes_check_and_names_what_is_unusable(tmp_path):
    path = REPO / "examples" / "providers.yaml"
    no_aws = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_PROFILE": None,
              "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
              "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true",
              "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": None,
              "AWS_CONTAINER_CREDENTIALS_FULL_URI": None}
    proc = run("check", path, env={**no_aws, "ANTHROPIC_API_KEY": "k", "GEMINI_API_KEY": None,
                                   "AZURE_OPENAI_API_KEY": "k"})
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()[3:7]}
    assert "unusable" not in lines["claude"] and "unusable" not in lines["gpt-azure"]
    assert "[no AWS credentials (" in lines["claude-bedrock"]
    assert lines["claude-bedrock"].endswith(": unusable]")
    assert "[GEMINI_API_KEY is not set: unusable]" in lines["gemini"]
    proc = run("check", path, env={**no_aws, "AWS_ACCESS_KEY_ID": "AKID",
                                   "AWS_SECRET_ACCESS_KEY": "secret"})
    assert "no AWS credentials" not in proc.stdout and "Found credentials" not in proc.stderr
    assert "[AWS credentials: env]" in proc.stdout
    proc = run("check", path, env={**no_aws, "AWS_PROFILE": "nowhere"})
    assert proc.returncode == 0, proc.stderr
    assert "[AWS credentials could not be loaded: The config profile (nowhere) could not " \
        "be found: unusable]" in proc.stdout


@pytest.mark.parametrize("text, expected", [
    ("deployments:\n  - {name: a, provider: bedrock, base_url: 'http://127.0.0.1:9',"
     " api_key_env: K}\n", "bedrock signs with AWS credentials"),
    ("deployments:\n  - {name: a, provider: bedrock}\n", "bedrock needs a region"),
    ("deployments:\n  - {name: a, base_url: 'http://127.0.0.1:9/v1', region: eu-west-1}\n",
     "only provider bedrock takes a region"),
    ("deployments:\n  - {name: a, provider: gemini, base_url: 'http://127.0.0.1:9/v1',"
     " responses: true}\n", "only provider openai takes Responses requests"),
    ("deployments:\n  - {name: a, provider: vertex, base_url: 'http://127.0.0.1:9/v1'}\n",
     "unknown provider 'vertex' (known: openai, anthropic, azure, gemini, bedrock)"),
])
def test_check_refuses_bad_provider_settings(tmp_path, text, expected):
    path = tmp_path / "llmedge.yaml"
    path.write_text(text)
    done = run("check", path)
    assert done.returncode == 2 and expected in done.stderr, done.stderr


@pytest.mark.parametrize("args, expected", [
    (["--http", "nonsense"], "argument --http: expected host:port"),
    (["--http", "127.0.0.1:99999"], "argument --http: expected host:port"),
    (["--grpc", "x"], "argument --grpc: expected host:port"),
    (["--workers", "0"], "argument --workers: expected a whole number >= 1"),
    (["--workers", "-3"], "argument --workers: expected a whole number >= 1"),
])
def test_serve_refuses_bad_command_line_values(tmp_path, args, expected):
    path = tmp_path / "llmedge.yaml"
    path.write_text(DEPLOYMENT)
    done = run("serve", path, *args)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr


def test_a_start_up_that_cannot_listen_fails_cleanly(tmp_path):
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        path = tmp_path / "llmedge.yaml"
        path.write_text("server: {http: 127.0.0.1:%d, grpc: 127.0.0.1:0}\n"
                        % taken.getsockname()[1] + DEPLOYMENT)
        done = run("serve", path)
    finally:
        taken.close()
    assert done.returncode == 3
    assert "cannot start" in done.stderr and "Address already in use" in done.stderr
    # Whatever had started (the gRPC server) was closed while the loop still ran.
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr


@pytest.mark.parametrize("text, expected", [
    pytest.param(DEPLOYMENT + "routes:\n  - {name: r, deployments: [alpha]}\n"
                 "routes:\n  - {name: r2, deployments: [alpha]}\n",
                 "key 'routes' is given twice (first on line 4)", id="duplicate-key"),
    pytest.param("deployments:\n  - name: a\n    base_url: http://user:secret@127.0.0.1:9/v1\n",
                 "must not carry credentials", id="credentials-in-url"),
    pytest.param("deployments:\n  - name: a\n    base_url: http://127.0.0.1:0/v1\n",
                 "has port 0", id="port-0"),
])
def test_check_refuses_what_yaml_or_urls_would_hide(tmp_path, text, expected):
    path = tmp_path / "llmedge.yaml"
    path.write_text(text)
    done = run("check", path)
    assert done.returncode == 2 and expected in done.stderr, done.stderr
    assert "secret" not in done.stderr


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    path = tmp_path / "llmedge.yaml"
    path.write_text("deployments:\n  - &base {name: a, base_url: 'http://127.0.0.1:9/v1'}\n"
                    "  - <<: *base\n    name: b\n")
    done = run("check", path)
    assert done.returncode == 0, done.stderr
    assert "deployments (2)" in done.stdout
