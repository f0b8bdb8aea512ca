"""Bedrock credentials that expire: botocore's default chain finds them — here through a
profile's ``credential_process``, the one source of expiring credentials that needs no AWS
network — llmedge signs with them, renews them in the background before they expire, and
keeps signing with the current ones while the source fails."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from procs import PYTHON, REPO, Llmedge, Simulator, wait_for

SECRET = "process-secret"
RENEWAL_TIMEOUT = 60.0   # renewal looks every 5 s; generous for a slow machine

# Prints credentials that expire in 14 minutes: inside botocore's 15-minute advisory window,
# so they are due for renewal at every look. Each run counts itself, and fails while a
# ".fail" file sits beside the counter.
CREDENTIAL_PROCESS = r'''
import datetime, json, pathlib, sys
counter = pathlib.Path(sys.argv[1])
n = int(counter.read_text()) + 1 if counter.exists() else 1
written = counter.with_suffix(".new")   # renamed into place: a reader never sees it half
written.write_text(str(n))
written.replace(counter)
if counter.with_suffix(".fail").exists():
    sys.exit("the identity provider is down")
expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=14)
print(json.dumps({"Version": 1, "AccessKeyId": "AKIDPROCESS%d" % n,
                  "SecretAccessKey": sys.argv[2], "SessionToken": "session-%d" % n,
                  "Expiration": expires.isoformat()}))
'''


def process_profile_env(workdir) -> dict:
    """An AWS config file whose default profile runs the credential process, and nothing
    else the default chain could find."""
    script = workdir / "credentials.py"
    script.write_text(CREDENTIAL_PROCESS)
    config = workdir / "aws-config"
    config.write_text("[default]\ncredential_process = %s %s %s %s\n"
                      % (sys.executable, script, workdir / "runs", SECRET))
    return {"AWS_CONFIG_FILE": str(config),
            "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "no-aws-credentials"),
            "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None,
            "AWS_SESSION_TOKEN": None, "AWS_PROFILE": None,
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": None,
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": None,
            "AWS_EC2_METADATA_DISABLED": "true"}


def runs(workdir) -> int:
    counter = workdir / "runs"
    return int(counter.read_text()) if counter.exists() else 0


CONFIG = """\
server: {http: "127.0.0.1:0"}
upstream: {health: {enabled: false}, retry: {same_deployment: 0}}
deployments:
  - {name: nova, provider: bedrock, region: us-west-2, base_url: "http://127.0.0.1:%d",
     model: "anthropic.claude-3-haiku-20240307-v1:0"}
  - {name: nova-lite, provider: bedrock, region: us-west-2, base_url: "http://127.0.0.1:%d",
     model: "amazon.nova-lite-v1:0"}
routes:
  - {name: to-bedrock, deployments: [nova]}
  - {name: to-lite, deployments: [nova-lite]}
"""


@pytest.fixture
def bedrock(tmp_path):
    sim = Simulator(tmp_path, "bedrock", "--api-key", SECRET)
    edge = None
    try:
        edge = Llmedge(tmp_path, CONFIG % (sim.port, sim.port),
                       env={"LLMEDGE_LOG_LEVEL": "info", **process_profile_env(tmp_path)},
                       name="llmedge-aws")
        yield edge, sim
    finally:
        codes = [p.stop() for p in (edge, sim) if p is not None]
        assert codes == [0] * len(codes), codes
        if edge is not None:
            assert "Traceback" not in edge.stderr(), edge.stderr()[-5000:]


def signed_by(edge, sim, route: str = "to-bedrock") -> tuple[str, str]:
    """Ask through llmedge; the access key id and session token the simulator accepted."""
    with edge.client() as c:
        c.chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}])
    stats = sim.stats()
    assert stats["bad_signatures"] == 0
    headers = stats["last_headers"]
    key_id = headers["authorization"].split("Credential=")[1].split("/")[0]
    return key_id, headers["x-amz-security-token"]


def test_expiring_credentials_are_renewed_in_the_background(bedrock, tmp_path):
    edge, sim = bedrock
    first = signed_by(edge, sim)
    # Both deployments share the one resolution: the process ran once at start-up.
    assert signed_by(edge, sim, "to-lite")[0] == first[0]
    assert first[0].startswith("AKIDPROCESS")
    assert first[1] == "session-%s" % first[0].removeprefix("AKIDPROCESS")
    started = int(first[0].removeprefix("AKIDPROCESS"))
    # No request asks for them: the renewal task does.
    wait_for(lambda: runs(tmp_path) >= started + 2, timeout=RENEWAL_TIMEOUT,
             message="two renewals")
    key_id, token = signed_by(edge, sim)
    renewed = int(key_id.removeprefix("AKIDPROCESS"))
    assert renewed > started and token == "session-%d" % renewed
    assert "renewing custom-process credentials before they expire" in edge.stderr()


def test_a_failing_source_leaves_the_current_credentials_signing(bedrock, tmp_path):
    edge, sim = bedrock
    (tmp_path / "runs.fail").write_text("")
    wait_for(lambda: "could not be renewed" in edge.stderr(), timeout=RENEWAL_TIMEOUT,
             message="the renewal's failure logged")
    during = signed_by(edge, sim)     # still answered, with what llmedge had
    failed_runs = runs(tmp_path)
    wait_for(lambda: runs(tmp_path) > failed_runs, timeout=RENEWAL_TIMEOUT,
             message="another try")
    assert signed_by(edge, sim) == during
    assert edge.stderr().count("could not be renewed") == 1   # once per failing streak
    (tmp_path / "runs.fail").unlink()
    wait_for(lambda: "custom-process credentials renewed" in edge.stderr(),
             timeout=RENEWAL_TIMEOUT, message="the recovery logged")
    key_id, _ = signed_by(edge, sim)
    assert int(key_id.removeprefix("AKIDPROCESS")) > int(during[0].removeprefix("AKIDPROCESS"))


def test_check_names_the_credential_source(tmp_path):
    path = tmp_path / "llmedge.yaml"
    path.write_text(CONFIG % (9, 9))   # check sends nothing
    env = {k: v for k, v in {**os.environ, **process_profile_env(tmp_path)}.items()
           if v is not None}
    done = subprocess.run([PYTHON, "-m", "proxy", "check", "-c", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "[AWS credentials: custom-process, renewed before they expire]" in done.stdout


def test_a_reload_resolves_again_and_renewal_follows_the_new_deployments(bedrock, tmp_path):
    edge, sim = bedrock
    before = int(signed_by(edge, sim)[0].removeprefix("AKIDPROCESS"))
    text = edge.config_path.read_text()
    edge.config_path.write_text(text.replace("to-lite, deployments: [nova-lite]",
                                             "to-lite, deployments: [nova]"))
    assert edge.call("POST", "/admin/reload").status == 200
    resolved = int(signed_by(edge, sim, "to-lite")[0].removeprefix("AKIDPROCESS"))
    assert resolved > before   # the reload ran the process again
    wait_for(lambda: runs(tmp_path) >= resolved + 2, timeout=RENEWAL_TIMEOUT,
             message="renewals after the reload")
    assert int(signed_by(edge, sim)[0].removeprefix("AKIDPROCESS")) > resolved
    assert edge.stderr().count("renewing custom-process credentials") == 2


def test_container_credentials_fetched_over_http_are_renewed(tmp_path):
    """The source botocore fetches over the network (as it does the instance role's): the
    simulator plays the container credentials endpoint."""
    sim = Simulator(tmp_path, "bedrock", "--api-key", SECRET)
    edge = None
    try:
        env = {**process_profile_env(tmp_path),
               "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
               "AWS_CONTAINER_CREDENTIALS_FULL_URI": sim.url.rsplit("/v1", 1)[0]
               + "/_sim/aws/credentials"}
        edge = Llmedge(tmp_path, CONFIG % (sim.port, sim.port),
                       env={"LLMEDGE_LOG_LEVEL": "info", **env}, name="llmedge-container")
        key_id, token = signed_by(edge, sim)
        first = int(key_id.removeprefix("AKIDCONTAINER"))
        assert token == "container-%d" % first
        wait_for(lambda: sim.stats()["aws_credentials"] >= first + 2,
                 timeout=RENEWAL_TIMEOUT, message="two renewals")
        key_id, token = signed_by(edge, sim)
        n = int(key_id.removeprefix("AKIDCONTAINER"))
        assert n > first and token == "container-%d" % n
    finally:
        codes = [p.stop() for p in (edge, sim) if p is not None]
        assert codes == [0] * len(codes), codes
