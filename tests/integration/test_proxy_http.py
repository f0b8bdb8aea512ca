"""llmedge's HTTP/1.1 front on raw sockets (keep-alive, pipelining, chunked bodies,
100-continue, header limits, slow clients), the ``llmedge`` command line, graceful stop and
``--workers``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest
from conftest import EDGE_ENV, MAX_HEADER_BYTES, MAX_HEADERS, REPLIES, edge_config
from procs import (PYTHON, REPO, RawConn, children_of, free_port, http_call, process_exists,
                   request_bytes, wait_for)

MESSAGES = [{"role": "user", "content": "Raw sockets say hello."}]
CHAT = "/v1/chat/completions"
CHAT_BODY = {"model": "auto", "messages": MESSAGES}

pytestmark = pytest.mark.usefixtures("sims")


def chat_content(resp) -> str:
    assert resp.status == 200, resp
    return resp.json()["choices"][0]["message"]["content"]


# === connection handling ===

def test_keep_alive_serves_many_requests_on_one_socket(edge, sims):
    with RawConn(edge.port) as conn:
        for i in range(3):
            conn.send(request_bytes("GET", "/healthz"))
            health = conn.read_response()
            assert health.status == 200 and health.headers["connection"] == "keep-alive"
            conn.send(request_bytes("POST", CHAT, CHAT_BODY))
            chat = conn.read_response()
            assert chat_content(chat) == REPLIES["alpha"]
            assert chat.headers["connection"] == "keep-alive"
            conn.send(request_bytes("POST", CHAT, {**CHAT_BODY, "stream": True}))
            stream = conn.read_response()
            assert stream.status == 200 and stream.body.endswith(b"data: [DONE]\n\n")
    stats = sims.alpha.stats()
    assert stats["chat"] == 6 and stats["streams_completed"] == 3


def test_pipelined_requests_are_answered_in_order(edge, sims):
    # The first chat is slow and the second fast: answering as they finish would reorder.
    sims.alpha.configure(ttft_ms=200)
    with RawConn(edge.port) as conn:
        conn.send(request_bytes("GET", "/healthz")
                  + request_bytes("POST", CHAT, CHAT_BODY)
                  + request_bytes("POST", CHAT, {"model": "beta", "messages": MESSAGES})
                  + request_bytes("POST", CHAT, {"model": "gamma", "messages": MESSAGES,
                                                 "stream": True})
                  + request_bytes("GET", "/v1/models"))
        health, slow, fast, stream, models = (conn.read_response() for _ in range(5))
    assert health.status == 200 and health.json()["status"] == "ok"
    assert chat_content(slow) == REPLIES["alpha"]
    assert slow.headers["x-llmedge-upstream"] == "alpha"
    assert chat_content(fast) == REPLIES["beta"]
    assert stream.status == 200 and stream.headers["x-llmedge-upstream"] == "gamma"
    assert stream.body.endswith(b"data: [DONE]\n\n")
    assert models.status == 200 and models.json()["object"] == "list"


def test_chunked_request_body(edge, sims):
    body = json.dumps({"model": "auto", "messages": MESSAGES, "temperature": 0}).encode()
    parts = [body[:7], body[7:30], body[30:]]
    with RawConn(edge.port) as conn:
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                  b"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
        for part in parts:
            conn.send(b"%x\r\n%s\r\n" % (len(part), part))
        conn.send(b"0\r\n\r\n")
        resp = conn.read_response()
    assert chat_content(resp) == REPLIES["alpha"]
    assert sims.alpha.stats()["last_body"] == {"model": "alpha-model", "messages": MESSAGES,
                                               "temperature": 0}


def test_expect_100_continue(edge, sims):
    body = json.dumps(CHAT_BODY).encode()
    with RawConn(edge.port) as conn:
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                  b"content-type: application/json\r\ncontent-length: %d\r\n"
                  b"expect: 100-continue\r\n\r\n" % len(body))
        interim = conn.read_until(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 ")
        conn.send(body)
        resp = conn.read_response()
    assert chat_content(resp) == REPLIES["alpha"]
    assert sims.alpha.stats()["chat"] == 1


def test_expect_100_continue_while_a_stream_is_answered(edge, sims):
    # A pipelined request asking to continue must not get its interim 100 written into the
    # middle of the response still being streamed: that breaks the chunked framing.
    sims.gamma.configure(tokens_per_s=10, chunks=5)
    body = json.dumps({"model": "beta", "messages": MESSAGES}).encode()
    with RawConn(edge.port) as conn:
        conn.send(request_bytes("POST", CHAT, {"model": "gamma", "messages": MESSAGES,
                                               "stream": True}))
        status, headers = conn.read_head()
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        pieces = [conn.read_chunk()]
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                  b"content-type: application/json\r\ncontent-length: %d\r\n"
                  b"expect: 100-continue\r\n\r\n" % len(body))
        conn.send(body)  # clients may send the body without waiting for the 100
        while pieces[-1]:
            line = conn.read_until(b"\r\n")
            assert not line.startswith(b"HTTP/"), \
                "an interim response was written inside the chunked body: %r" % line
            conn.buf = line + conn.buf
            pieces.append(conn.read_chunk())
        assert b"".join(pieces).endswith(b"data: [DONE]\n\n")
        status, _ = conn.read_head()
        if status == 100:  # an interim answer after the stream ended is fine
            status, _ = conn.read_head()
        assert status == 200
        conn.buf = b""  # the body of the second answer is not needed


@pytest.mark.parametrize("headers", [
    pytest.param(["x-filler-%d: %d" % (i, i) for i in range(MAX_HEADERS + 10)],
                 id="too-many-headers"),
    pytest.param(["x-huge: " + "h" * (MAX_HEADER_BYTES + 100)], id="header-too-large"),
])
def test_header_limits_answer_431(edge, sims, headers):
    with RawConn(edge.port) as conn:
        conn.send(request_bytes("POST", CHAT, CHAT_BODY, headers=headers))
        resp = conn.read_response()
        assert resp.status == 431, resp
        error = resp.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert resp.headers["connection"] == "close"
        assert conn.at_eof()  # nothing more: no second answer, connection closed
    assert sims.alpha.stats()["requests"] == 0
    assert chat_content(edge.call("POST", CHAT, CHAT_BODY)) == REPLIES["alpha"]


def test_connection_close_is_honoured(edge):
    with RawConn(edge.port) as conn:
        conn.send(request_bytes("POST", CHAT, CHAT_BODY, headers=["connection: close"]))
        resp = conn.read_response()
        assert chat_content(resp) == REPLIES["alpha"]
        assert resp.headers["connection"] == "close"
        assert conn.at_eof()
    with RawConn(edge.port) as conn:
        conn.send(request_bytes("POST", CHAT, {**CHAT_BODY, "stream": True},
                                headers=["connection: close"]))
        resp = conn.read_response()
        assert resp.status == 200 and resp.body.endswith(b"data: [DONE]\n\n")
        assert resp.headers["connection"] == "close"
        assert conn.at_eof()


def test_http10_request_is_answered_and_closed(edge):
    with RawConn(edge.port) as conn:
        conn.send(b"GET /healthz HTTP/1.0\r\n\r\n")
        data = conn.read_to_eof()
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.endswith(b'{"status":"ok"}')


def test_pipelined_requests_before_a_malformed_one_are_answered(edge, sims):
    # Both requests before the garbage were received whole: they must be answered
    # (and may be followed by a 400 for the garbage) before the connection closes.
    sims.alpha.configure(ttft_ms=200)
    with RawConn(edge.port) as conn:
        conn.send(request_bytes("POST", CHAT, CHAT_BODY) + request_bytes("GET", "/healthz")
                  + b"THIS IS NOT HTTP\r\n\r\n")
        first = conn.read_response()
        assert chat_content(first) == REPLIES["alpha"]
        try:
            second = conn.read_response()
        except EOFError as exc:
            raise AssertionError("the pipelined GET /healthz before the malformed request "
                                 "was dropped without an answer: %r" % exc.args) from None
        assert second.status == 200 and second.json()["status"] == "ok"
        rest = conn.read_to_eof()
    assert rest == b"" or rest.startswith(b"HTTP/1.1 400 "), rest


def test_malformed_http_is_400_and_closed(edge):
    with RawConn(edge.port) as conn:
        conn.send(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\nTHIS IS NOT HTTP\r\n\r\n")
        assert conn.read_response().status == 200
        resp = conn.read_response()
        assert resp.status == 400
        assert "error" in resp.json()
        assert conn.at_eof()


REQUEST_TIMEOUT_S = 1.0


def test_slow_client_times_out_while_others_are_served(start_edge, sims, dead_port):
    edge = start_edge(edge_config(sims, dead_port,
                                  server="  request_timeout_s: %s" % REQUEST_TIMEOUT_S))
    started = time.monotonic()
    with RawConn(edge.port) as slow, RawConn(edge.port) as silent, \
            RawConn(edge.port) as body_slow:
        slow.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-ty")
        body_slow.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                       b"content-length: 500\r\n\r\n{\"model\": ")
        # Meanwhile, everyone else is served as usual.
        for _ in range(3):
            assert chat_content(edge.call("POST", CHAT, CHAT_BODY)) == REPLIES["alpha"]
        answers = {}
        for name, conn in (("slow", slow), ("silent", silent), ("body_slow", body_slow)):
            data = conn.read_to_eof()  # bounded by the socket timeout
            answers[name] = (data, time.monotonic() - started)
    for name, (data, elapsed) in answers.items():
        assert data == b"" or data.startswith(b"HTTP/1.1 408 "), (name, data)
        assert elapsed >= REQUEST_TIMEOUT_S * 0.9, (name, elapsed)
        assert elapsed < REQUEST_TIMEOUT_S + 15, (name, elapsed)
    # A client caught mid-request is told why.
    assert answers["slow"][0].startswith(b"HTTP/1.1 408 "), answers["slow"]
    assert answers["body_slow"][0].startswith(b"HTTP/1.1 408 "), answers["body_slow"]
    assert chat_content(edge.call("POST", CHAT, CHAT_BODY)) == REPLIES["alpha"]
    assert sims.alpha.stats()["chat"] == 4


# === stopping ===

def test_sigterm_finishes_in_flight_request_then_exits_0(start_edge, sims, dead_port):
    edge = start_edge(edge_config(sims, dead_port))
    sims.gamma.configure(ttft_ms=800)
    result = {}

    def call():
        result["resp"] = http_call(edge.port, "POST", CHAT,
                                   {"model": "gamma", "messages": MESSAGES})

    worker = threading.Thread(target=call)
    worker.start()
    try:
        sims.gamma.wait_stat("chat", 1)  # the request is at the upstream now
        edge.send_signal(signal.SIGTERM)
        code = edge.wait()
    finally:
        worker.join(timeout=30)
    assert code == 0, edge.stderr()
    assert chat_content(result["resp"]) == REPLIES["gamma"]
    with pytest.raises(OSError):  # no longer accepting
        socket.create_connection(("127.0.0.1", edge.port), timeout=5).close()


def test_workers_share_the_port_and_stop_on_sigterm(start_edge, sims, dead_port):
    port = free_port()
    config = edge_config(sims, dead_port).replace("http: 127.0.0.1:0",
                                                  "http: 127.0.0.1:%d" % port)
    edge = start_edge(config, args=["--workers", "2"], ready_lines=2)
    assert {match.group(2) for match in edge.ready} == {str(port)}
    workers = wait_for(lambda: (lambda kids: kids if len(kids) == 2 else None)(
        children_of(edge.pid)), message="two worker processes")
    # Each worker numbers request ids with its own random prefix: collect them over fresh
    # connections until both workers have answered (the kernel spreads connections).
    prefixes: set[str] = set()
    for _ in range(200):
        resp = http_call(port, "POST", CHAT, {"model": "gamma", "messages": MESSAGES})
        assert resp.status == 200, resp
        prefixes.add(resp.headers["x-request-id"].rsplit("-", 1)[0])
        if len(prefixes) == 2:
            break
    assert len(prefixes) == 2, prefixes
    assert edge.running
    edge.send_signal(signal.SIGTERM)
    assert edge.wait() == 0, edge.stderr()
    wait_for(lambda: not any(process_exists(pid) for pid in workers),
             message="the workers to exit")


def test_workers_announce_whole_listening_lines(start_edge, sims, dead_port):
    # "LISTENING host:port" is the line scripts read to learn the port: with several
    # workers each prints one, and every one must stay a whole line. PYTHONUNBUFFERED=1
    # (common in containers) makes print() write the text and its newline separately,
    # so concurrent workers can interleave them (about every other start here); a few
    # starts make that near certain to show.
    for _ in range(5):
        port = free_port()
        config = edge_config(sims, dead_port).replace("http: 127.0.0.1:0",
                                                      "http: 127.0.0.1:%d" % port)
        edge = start_edge(config, args=["--workers", "2"], ready_lines=2,
                          env={"PYTHONUNBUFFERED": "1"})
        wait_for(lambda: edge.stdout.count("\n") >= 2, message="two complete lines")
        assert edge.stdout.splitlines() == ["LISTENING 127.0.0.1:%d" % port] * 2, edge.stdout
        edge.send_signal(signal.SIGTERM)
        assert edge.wait() == 0, edge.stderr()


def test_workers_need_a_fixed_port(sims, dead_port, tmp_path):
    path = tmp_path / "workers.yaml"
    path.write_text(edge_config(sims, dead_port))
    env = {**os.environ, **{k: v for k, v in EDGE_ENV.items() if v is not None}}
    proc = subprocess.run([PYTHON, "-m", "proxy", "serve", "-c", str(path), "--workers", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2
    assert "fixed port" in proc.stderr


# === llmedge check ===

def run_check(path) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "proxy", "check", "-c", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_check_valid_config_prints_summary(tmp_path, sims, dead_port):
    path = tmp_path / "good.yaml"
    path.write_text(edge_config(sims, dead_port))
    proc = run_check(path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "%s: OK" % path in out
    assert "deployments (5)" in out and "routes (4)" in out
    for name in ("alpha", "beta", "gamma", "dead", "locked", "auto", "via-dead", "via-locked",
                 "split"):
        assert name in out
    assert "alpha-model" in out
    assert "fallbacks gamma" in out
    assert "weighted over beta, alpha, gamma" in out


def test_check_bad_config_lists_every_problem(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("""\
server:
  http: 127.0.0.1:8080
  workers: 0
deployments:
  - name: small
    base_url: http://127.0.0.1:9001/v1
  - name: large
    base_url: ftp://example.com/v1
    quality: 1.5
routes:
  - name: auto
    deployments: [small, large]
    policy: fastest
    fallbacks: [larg]
  - name: small
    deployments: [nothing]
""")
    proc = run_check(path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    problems = proc.stderr
    for expected in (
        "routes[0].fallbacks[0]: unknown deployment 'larg'",
        "routes[0].policy: unknown policy 'fastest'",
        "routes[1].deployments[0]: unknown deployment 'nothing'",
        "routes[1].name: 'small' is already used by deployments[0]",
        "deployments[1].quality: must be between 0 and 1",
        "deployments[1].base_url: expected an http:// or https:// URL",
        "server.workers: must be >= 1",
    ):
        assert expected in problems, (expected, problems)
    assert "Traceback" not in problems


@pytest.mark.parametrize("text, expected", [
    pytest.param("deployments:\n  - name: a\n    base_url: http://h/v1\n    colour: red\n",
                 "deployments[0]", id="unknown-key"),
    pytest.param("deployments:\n  - name: a\n    base_url: http://h/v1\n    quality: high\n",
                 "deployments[0].quality", id="wrong-type"),
    pytest.param("deployments: [\n", "(yaml)", id="not-yaml"),
])
def test_check_structural_errors_name_the_path(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    proc = run_check(path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_refuses_a_bad_config(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("deployments: []\n")
    proc = subprocess.run([PYTHON, "-m", "proxy", "serve", "-c", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "deployments: at least one deployment is needed" in proc.stderr


def test_idle_keep_alive_connection_closes_without_a_408(start_edge, sims, dead_port):
    edge = start_edge(edge_config(sims, dead_port, server="  keepalive_timeout_s: 0.5"))
    with RawConn(edge.port) as conn:
        conn.send(request_bytes("GET", "/healthz"))
        assert conn.read_response().status == 200
        # Past the keep-alive timeout the connection just closes: an unsolicited 408 could
        # be read as the answer to a request the client sends at that moment.
        assert conn.read_to_eof() == b""


def test_stream_broken_mid_way_keeps_the_connection_usable(edge, sims):
    sims.gamma.configure(drop_after=2)
    body = {"model": "gamma", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    with RawConn(edge.port) as conn:
        conn.send(request_bytes("POST", "/v1/chat/completions", body))
        resp = conn.read_response()
        assert resp.status == 200 and b'"error"' in resp.body
        assert resp.headers.get("connection") == "keep-alive"
        sims.gamma.configure(drop_after=None)
        # The chunked body ended cleanly, so the same connection serves the next request.
        conn.send(request_bytes("POST", "/v1/chat/completions", {**body, "stream": False}))
        assert conn.read_response().status == 200
