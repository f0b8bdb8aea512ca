"""The upstream simulator as a real subprocess, driven by the openai SDK and raw sockets."""

from __future__ import annotations

import http.client
import json
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import procs
import pytest

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 30.0
POLL_LIMIT = 20.0


def start_simulator(*args: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "proxy.simulator", "--port", "0", *args],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    line = ""
    while not line.endswith("\n") and time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line += proc.stdout.readline()
    if not line.startswith("LISTENING "):
        stop_simulator(proc)
        pytest.fail("simulator did not report LISTENING, got %r" % line)
    return proc, int(line.rsplit(":", 1)[1])


def stop_simulator(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        code = proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    proc.stdout.close()
    return code


class Sim:
    def __init__(self, port: int) -> None:
        self.port = port

    def call(self, method: str, path: str, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
            conn.request(method, path, body=data, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body=None):
        status, _, raw = self.call(method, path, body)
        assert status == 200, raw
        return json.loads(raw)

    def configure(self, **options):
        return self.json("POST", "/_sim/config", options)

    def stats(self) -> dict:
        return self.json("GET", "/_sim/stats")

    def wait_stat(self, key: str, value: int) -> dict:
        deadline = time.monotonic() + POLL_LIMIT
        while True:
            stats = self.stats()
            if stats[key] >= value or time.monotonic() > deadline:
                return stats
            time.sleep(0.02)


class RawConn(procs.RawConn):
    """tests/procs.py's raw connection, answering read_response as (status, headers, body)."""

    def read_response(self) -> tuple[int, dict, bytes]:
        resp = super().read_response()
        return resp.status, resp.headers, resp.body


def chat_request(body: dict, extra: bytes = b"") -> bytes:
    data = json.dumps(body).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: sim\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n%s\r\n%s" % (len(data), extra, data))


MESSAGES = [{"role": "user", "content": "Say something, simulator."}]


@pytest.fixture(scope="module")
def sim():
    proc, port = start_simulator("--name", "fixture", "--model", "fixture-model", "--seed", "7")
    try:
        yield Sim(port)
    finally:
        assert stop_simulator(proc) == 0


@pytest.fixture(autouse=True)
def clean(sim):
    # The startup config back, whatever options a test changed, and zeroed counters.
    sim.json("POST", "/_sim/reset", {"config": True})
    yield


@pytest.fixture(scope="module")
def client(sim):
    with openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % sim.port, api_key="x",
                       max_retries=0, timeout=30) as c:
        yield c


@pytest.fixture
def raw(sim):
    conns = []

    def connect() -> RawConn:
        conns.append(RawConn(sim.port))
        return conns[-1]

    yield connect
    for c in conns:
        c.close()


def test_chat_non_streaming(sim, client):
    raw = client.chat.completions.with_raw_response.create(model="gpt-x", messages=MESSAGES)
    assert raw.headers["x-sim-name"] == "fixture"
    assert raw.headers["content-type"] == "application/json"
    resp = raw.parse()
    assert resp.object == "chat.completion"
    assert resp.model == "gpt-x"
    assert resp.id
    assert "fixture" in resp.system_fingerprint
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.startswith("The quick brown fox")
    assert choice.finish_reason == "stop"
    usage = resp.usage
    assert usage.completion_tokens == 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    stats = sim.stats()
    assert stats["chat"] == 1 and stats["requests"] == 1
    assert stats["last_body"]["model"] == "gpt-x"
    assert stats["last_headers"]["authorization"] == "Bearer x"


def test_chat_streaming(sim, client):
    sim.configure(reply="abcdefghij", chunks=5)
    stream = client.chat.completions.create(model="gpt-x", messages=MESSAGES, stream=True)
    with stream:
        chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert contents == ["ab", "cd", "ef", "gh", "ij"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.object == "chat.completion.chunk" and c.model == "gpt-x" for c in chunks)
    assert all(c.usage is None for c in chunks)
    stats = sim.stats()
    assert stats["streams_started"] == stats["streams_completed"] == 1


def test_streaming_include_usage(client):
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True})
    with stream:
        chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 8
    assert chunks[-2].choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    non_stream = client.chat.completions.create(model="m", messages=MESSAGES)
    assert text == non_stream.choices[0].message.content


def test_stream_wire_format(raw):
    conn = raw()
    conn.send(chat_request({"messages": MESSAGES, "stream": True}))
    status, headers, body = conn.read_response()
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    assert headers["transfer-encoding"] == "chunked"
    events = body.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: {") for e in events[:-2])
    assert json.loads(events[0][6:])["model"] == "fixture-model"  # no model named: --model


def test_ttft_delays_first_token(sim, client):
    sim.configure(ttft_ms=150, tokens_per_s=1000)
    started = time.monotonic()
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    with stream:
        first = next(iter(stream))
        elapsed = time.monotonic() - started
        rest = list(stream)
    assert first.choices[0].delta.role == "assistant"
    assert elapsed >= 0.14
    assert len(rest) == 9


def test_embeddings(sim, client):
    one = client.embeddings.create(model="emb", input="hello")
    assert one.object == "list" and one.model == "emb"
    assert len(one.data) == 1 and len(one.data[0].embedding) == 8
    many = client.embeddings.create(model="emb", input=["hello", "world"])
    assert [d.index for d in many.data] == [0, 1]
    assert many.data[0].embedding == one.data[0].embedding
    assert many.data[1].embedding != one.data[0].embedding
    assert many.usage.total_tokens >= 2
    assert sim.stats()["embeddings"] == 2


def test_models(sim, client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["fixture-model"]
    assert models.data[0].owned_by == "sim"
    assert sim.stats()["models"] == 1


def test_malformed_json_is_400(sim):
    status, _, body = sim.call("POST", "/v1/chat/completions", b"{not json",
                               {"content-type": "application/json"})
    assert status == 400
    assert json.loads(body) == {"error": {"message": "request body is not valid JSON",
                                          "type": "invalid_request_error", "param": None,
                                          "code": None}}
    assert sim.stats()["last_body"] is None


def test_missing_messages_is_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=None)  # type: ignore[arg-type]
    assert info.value.body["param"] == "messages"


def test_unknown_path_is_404(sim):
    status, _, body = sim.call("GET", "/v2/nothing")
    assert status == 404
    assert "error" in json.loads(body)


def test_status_injection(sim, client):
    sim.configure(status=500)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=MESSAGES)
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="m", input="x")
    sim.configure(status=429, retry_after=2)
    status, headers, body = sim.call("POST", "/v1/chat/completions",
                                     json.dumps({"messages": MESSAGES}).encode())
    assert status == 429
    assert headers["retry-after"] == "2"
    assert json.loads(body)["error"]["type"] == "rate_limit_error"
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="m", messages=MESSAGES)
    sim.configure(status=None)
    assert client.models.list().data  # /v1/models is never injected
    assert client.chat.completions.create(model="m", messages=MESSAGES).choices
    assert sim.stats()["errors_injected"] == 4


def test_error_rate(sim, client):
    sim.configure(error_rate=1.0, error_status=503, retry_after=0.5)
    status, headers, _ = sim.call("POST", "/v1/embeddings", json.dumps({"input": "x"}).encode())
    assert status == 503 and headers["retry-after"] == "0.5"
    sim.configure(error_rate=0.5)
    outcomes = [sim.call("POST", "/v1/embeddings", json.dumps({"input": "x"}).encode())[0]
                for _ in range(40)]
    assert set(outcomes) == {200, 503}


def test_drop_after_breaks_sdk_stream(sim, client):
    sim.configure(drop_after=2)
    received = []
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    # Recent SDKs wrap the truncated body in APIConnectionError; older ones let the HTTP
    # transport's own exception (httpx.RemoteProtocolError) escape the iterator.
    with stream, pytest.raises(Exception) as info:
        for chunk in stream:
            received.append(chunk)
    err = info.value
    assert isinstance(err, openai.APIError) or type(err).__module__.startswith("httpx"), err
    assert [c.choices[0].delta.content for c in received[1:]] == ["The quick", " brown fox"]
    stats = sim.wait_stat("connections_closed", 1)
    assert stats["streams_dropped"] == 1 and stats["streams_completed"] == 0


def test_stalled_stream_counts_abort_when_client_leaves(sim, raw):
    sim.configure(stall_after=1)
    conn = raw()
    conn.send(chat_request({"messages": MESSAGES, "stream": True}))
    conn.read_until(b"The quick")  # role and first content arrived, then silence
    other = sim.stats()  # a stalled stream must not block other connections
    assert other["streams_started"] == 1 and other["streams_stalled"] == 1
    assert other["streams_aborted"] == 0
    conn.close()
    assert sim.wait_stat("streams_aborted", 1)["streams_aborted"] == 1


def test_stall_zero_never_answers_non_streaming(sim, raw):
    sim.configure(stall_after=0)
    conn = raw()
    conn.send(chat_request({"messages": MESSAGES}))
    assert sim.wait_stat("chat", 1)["chat"] == 1
    conn.sock.settimeout(0.2)
    with pytest.raises(socket.timeout):
        conn.sock.recv(1)
    assert sim.call("GET", "/v1/models")[0] == 200


def test_pipelined_requests_answered_in_order(sim, raw):
    # The first answer is delayed so a server answering out of order would be caught.
    sim.configure(ttft_ms=100)
    opened = sim.stats()["connections_opened"]
    conn = raw()
    conn.send(chat_request({"model": "first", "messages": MESSAGES})
              + b"GET /v1/models HTTP/1.1\r\nhost: sim\r\n\r\n"
              + chat_request({"model": "third", "messages": MESSAGES, "stream": True})
              + chat_request({"model": "fourth", "messages": MESSAGES}))
    first, second, third, fourth = (conn.read_response() for _ in range(4))
    assert json.loads(first[2])["model"] == "first"
    assert json.loads(second[2])["object"] == "list"
    assert b'"model":"third"' in third[2] and third[2].endswith(b"data: [DONE]\n\n")
    assert json.loads(fourth[2])["model"] == "fourth"
    # One for the raw socket, one for this stats call.
    assert sim.stats()["connections_opened"] - opened == 2


def test_keep_alive_reuses_connection(sim):
    opened = sim.stats()["connections_opened"]
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=30)
    try:
        for _ in range(5):
            conn.request("POST", "/v1/chat/completions", body=json.dumps({"messages": []}))
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
    finally:
        conn.close()
    assert sim.stats()["connections_opened"] - opened == 2


def test_chunked_request_body(sim, raw):
    body = json.dumps({"model": "chunky", "messages": MESSAGES}).encode()
    parts = [body[:10], body[10:25], body[25:]]
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    conn = raw()
    conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: sim\r\n"
              b"transfer-encoding: chunked\r\ncontent-type: application/json\r\n\r\n")
    conn.send(encoded[:17])
    conn.send(encoded[17:])
    status, _, resp = conn.read_response()
    assert status == 200 and json.loads(resp)["model"] == "chunky"
    assert sim.stats()["last_body"] == {"model": "chunky", "messages": MESSAGES}


def test_parser_error_answers_400_and_closes(raw):
    conn = raw()
    conn.send(b"GET /v1/models HTTP/1.1\r\nhost: sim\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
    assert conn.read_response()[0] == 200
    status, headers, _ = conn.read_response()
    assert status == 400 and headers["connection"] == "close"
    assert conn.at_eof()


def test_runtime_config_roundtrip(sim):
    cfg = sim.configure(chunks=3, tokens_per_s=50.5)
    assert cfg["chunks"] == 3 and cfg["tokens_per_s"] == 50.5 and cfg["model"] == "fixture-model"
    assert sim.configure(chunks=None)["chunks"] == 8
    status, _, body = sim.call("POST", "/_sim/config", json.dumps({"bogus": 1}).encode())
    assert status == 400 and "bogus" in json.loads(body)["error"]["message"]
    status, _, _ = sim.call("POST", "/_sim/config", json.dumps({"chunks": -1}).encode())
    assert status == 400
    assert sim.json("GET", "/_sim/config")["tokens_per_s"] == 50.5  # rejected writes change nothing


def test_stats_keys(sim):
    stats = sim.stats()
    for key in ("requests", "chat", "embeddings", "models", "streams_started",
                "streams_completed", "streams_aborted", "connections_opened",
                "connections_closed", "active_connections", "last_headers", "last_body"):
        assert key in stats
    assert stats["active_connections"] == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_exits_cleanly_on_signal(sig):
    proc, port = start_simulator("--stall-after", "0")
    # A pending request must not hold shutdown up.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(chat_request({"messages": MESSAGES}))
        assert stop_simulator(proc, sig) == 0
