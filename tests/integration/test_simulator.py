"""The upstream simulator as a real subprocess, driven by the openai SDK and raw sockets."""

from __future__ import annotations

import http.client
import json
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


def start_simulator(workdir: Path, *args: str) -> procs.Simulator:
    return procs.Simulator(workdir, "sim", *args)


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
def sim(tmp_path_factory):
    proc = procs.Simulator(tmp_path_factory.mktemp("sim"), "fixture", "--model",
                           "fixture-model", "--seed", "7")
    try:
        yield Sim(proc.port)
    finally:
        assert proc.stop() == 0


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
                "connections_closed", "active_connections", "last_headers", "last_body",
                "continuations", "context_exceeded", "last_continuation_prefix"):
        assert key in stats
    assert stats["active_connections"] == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_exits_cleanly_on_signal(sig, tmp_path):
    proc = start_simulator(tmp_path, "--stall-after", "0")
    # A pending request must not hold shutdown up.
    with socket.create_connection(("127.0.0.1", proc.port), timeout=30) as s:
        s.sendall(chat_request({"messages": MESSAGES}))
        assert proc.stop(sig) == 0


# -- issue 14: early role, continuation, context window, malformed events ---------------------

PROMPT_TOKENS = len(MESSAGES[0]["content"]) // 4  # the simulator's ~4 characters a token
MALFORMED = "data: {not json"


def read_stream(conn: RawConn) -> tuple[list[str], bool]:
    """The SSE events of one streamed answer, and whether its chunked body ended properly."""
    status, headers = conn.read_head()
    assert status == 200 and headers["content-type"] == "text/event-stream"
    body = b""
    while True:
        try:
            piece = conn.read_chunk()
        except (EOFError, ConnectionResetError):
            return body.decode().split("\n\n")[:-1], False
        if not piece:
            return body.decode().split("\n\n")[:-1], True
        body += piece


def deltas(events: list[str]) -> list:
    """The content of each chunk's delta (None for a delta without content), in order."""
    out = []
    for event in events:
        if event.startswith("data: {") and event != MALFORMED:
            doc = json.loads(event[6:])
            if doc["choices"]:
                out.append(doc["choices"][0]["delta"].get("content"))
    return out


def is_role_event(event: str) -> bool:
    return (event.startswith("data: {")
            and json.loads(event[6:])["choices"][0]["delta"] == {"role": "assistant",
                                                                 "content": ""})


def test_early_role_arrives_before_the_first_token(sim, raw):
    # A TTFT far past the test's life: whatever arrives was sent before the first token.
    sim.configure(early_role=True, ttft_ms=600_000)
    conn = raw()
    conn.send(chat_request({"messages": MESSAGES, "stream": True}))
    status, headers = conn.read_head()
    assert status == 200 and headers["content-type"] == "text/event-stream"
    events = conn.read_chunk().decode().split("\n\n")
    assert len(events) == 3 and events[2] == ""
    assert is_role_event(events[0])
    assert events[1] == ": keep-alive"
    stats = sim.stats()
    assert stats["streams_started"] == 1 and stats["streams_completed"] == 0


def test_early_role_stream_reads_as_usual(sim, client, raw):
    sim.configure(reply="abcdefghij", chunks=5, early_role=True)
    with client.chat.completions.create(model="m", messages=MESSAGES, stream=True) as stream:
        chunks = list(stream)  # the SDK skips the comment line
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chunks[1:-1]] == ["ab", "cd", "ef", "gh", "ij"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    conn = raw()
    conn.send(chat_request({"messages": MESSAGES, "stream": True}))
    conn.read_head()
    first = conn.read_chunk().decode().split("\n\n")
    assert is_role_event(first[0]) and first[1:] == [": keep-alive", ""]
    rest = b""
    while piece := conn.read_chunk():
        rest += piece
    events = rest.decode().split("\n\n")[:-1]
    assert deltas(events) == ["ab", "cd", "ef", "gh", "ij", None]
    assert events[-1] == "data: [DONE]"
    # Non-streamed answers are not affected.
    assert client.chat.completions.create(model="m", messages=MESSAGES).choices[0] \
        .message.content == "abcdefghij"
    assert sim.stats()["streams_completed"] == 2


@pytest.mark.parametrize("layout, framing", [("pretty", "length"), ("spaced", "close"),
                                            ("reordered", "http10")])
def test_early_role_in_other_layouts_and_framings(sim, client, layout, framing):
    sim.configure(reply="abcdefghij", chunks=5, early_role=True, layout=layout,
                  framing=framing)
    with client.chat.completions.create(model="m", messages=MESSAGES, stream=True) as stream:
        chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chunks[1:-1]] == ["ab", "cd", "ef", "gh", "ij"]
    assert sim.stats()["streams_completed"] == 1


def test_early_role_then_stall_before_the_first_token(sim, raw):
    sim.configure(early_role=True, stall_after=0)
    conn = raw()
    conn.send(chat_request({"messages": MESSAGES, "stream": True}))
    conn.read_head()
    events = conn.read_chunk().decode().split("\n\n")
    assert is_role_event(events[0]) and events[1:] == [": keep-alive", ""]
    stats = sim.wait_stat("streams_stalled", 1)
    assert stats["streams_stalled"] == 1 and stats["streams_completed"] == 0


def test_early_role_then_drop_before_the_first_token(sim, raw):
    sim.configure(early_role=True, drop_after=0)
    conn = raw()
    conn.send(chat_request({"messages": MESSAGES, "stream": True}))
    events, ended = read_stream(conn)
    assert not ended
    assert len(events) == 2 and is_role_event(events[0]) and events[1] == ": keep-alive"
    assert sim.wait_stat("streams_dropped", 1)["streams_dropped"] == 1


def sent_stream(conn: RawConn, messages: list) -> RawConn:
    """conn after sending a streamed request, continuing ``messages``' last if the assistant's."""
    conn.send(chat_request({"messages": messages, "stream": True,
                            "continue_final_message": messages[-1]["role"] == "assistant"}))
    return conn


def partial_messages(content) -> list:
    return MESSAGES + [{"role": "assistant", "content": content}]


@pytest.mark.parametrize("marker", [{"continue_final_message": True},
                                    {"add_generation_prompt": False}])
@pytest.mark.parametrize("partial, rest, pieces", [
    ("abcd", "efghij", 3),            # on a chunk boundary: exactly the remaining chunks
    ("abcde", "fghij", 3),            # mid-chunk: that chunk's tail, then the rest
    ("abcdefghij", "", 1),            # nothing left: still one (empty) chunk
    ("xyz", "abcdefghij", 5),         # not the reply's beginning: the whole reply
    ("", "abcdefghij", 5),
    ([{"type": "text", "text": "ab"}, {"type": "text", "text": "cd"}], "efghij", 3),
])
def test_continuation_answers_the_rest_of_the_reply(sim, client, marker, partial, rest, pieces):
    sim.configure(reply="abcdefghij", chunks=5)
    text = partial if isinstance(partial, str) else "".join(p["text"] for p in partial)
    prompt = max(1, (len(MESSAGES[0]["content"]) + len(text)) // 4)
    resp = client.chat.completions.create(model="m", messages=partial_messages(partial),
                                          extra_body=marker)
    assert resp.choices[0].message.content == rest
    assert resp.usage.completion_tokens == pieces and resp.usage.prompt_tokens == prompt
    with client.chat.completions.create(model="m", messages=partial_messages(partial),
                                        stream=True, stream_options={"include_usage": True},
                                        extra_body=marker) as stream:
        chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert len(contents) == pieces and "".join(contents) == rest
    assert chunks[-1].usage.completion_tokens == pieces
    assert chunks[-1].usage.prompt_tokens == prompt
    stats = sim.stats()
    assert stats["continuations"] == 2 and stats["last_continuation_prefix"] == text


def test_continuation_of_a_cut_stream_joins_to_the_whole_reply(sim, raw):
    sim.configure(reply="abcdefghij", chunks=5, drop_after=2)
    first, ended = read_stream(sent_stream(raw(), MESSAGES))
    assert not ended and deltas(first) == ["", "ab", "cd"]
    # The limit counts the continuation's own chunks.
    second, ended = read_stream(sent_stream(raw(), partial_messages("abcd")))
    assert not ended and deltas(second) == ["", "ef", "gh"]
    sim.configure(drop_after=None)
    third, ended = read_stream(sent_stream(raw(), partial_messages("abcdefgh")))
    assert ended and deltas(third) == ["", "ij", None]
    assert "".join(d for d in deltas(first + second + third) if d) == "abcdefghij"
    stats = sim.wait_stat("streams_dropped", 2)
    assert stats["streams_dropped"] == 2 and stats["continuations"] == 2
    assert stats["last_continuation_prefix"] == "abcdefgh"


def test_continuation_with_early_role_and_malformed_event(sim, raw):
    sim.configure(reply="abcdefghij", chunks=5, early_role=True, malformed_after=1)
    events, ended = read_stream(sent_stream(raw(), partial_messages("abcd")))
    assert ended
    assert is_role_event(events[0])
    assert events[1:2] + events[3:4] == [": keep-alive", MALFORMED]
    assert deltas(events) == ["", "ef", "gh", "ij", None]
    assert events[-1] == "data: [DONE]"


@pytest.mark.parametrize("options, extra", [
    ({}, {}),
    ({}, {"continue_final_message": False}),
    ({}, {"add_generation_prompt": True}),
    ({"continuation": "none"}, {"continue_final_message": True}),
    ({"continuation": "none"}, {"add_generation_prompt": False}),
])
def test_trailing_assistant_message_without_continuation(sim, client, options, extra):
    sim.configure(reply="abcdefghij", chunks=5, **options)
    resp = client.chat.completions.create(model="m", messages=partial_messages("abcd"),
                                          extra_body=extra)
    assert resp.choices[0].message.content == "abcdefghij"
    assert resp.usage.completion_tokens == 5
    stats = sim.stats()
    assert stats["continuations"] == 0 and stats["last_continuation_prefix"] is None


def test_continuation_marker_without_assistant_message(sim, client):
    sim.configure(reply="abcdefghij", chunks=5)
    resp = client.chat.completions.create(model="m", messages=MESSAGES,
                                          extra_body={"continue_final_message": True})
    assert resp.choices[0].message.content == "abcdefghij"
    assert sim.stats()["continuations"] == 0


OPENAI_CONTEXT_ERROR = (
    "This model's maximum context length is %d tokens. However, your messages resulted in %d "
    "tokens. Please reduce the length of the messages.")


def test_context_window_openai_error(sim, client):
    sim.configure(context_window=PROMPT_TOKENS)
    assert client.chat.completions.create(model="m", messages=MESSAGES).choices  # at the limit
    sim.configure(context_window=PROMPT_TOKENS - 1)
    status, headers, body = sim.call("POST", "/v1/chat/completions",
                                     json.dumps({"messages": MESSAGES}).encode())
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": {
        "message": OPENAI_CONTEXT_ERROR % (PROMPT_TOKENS - 1, PROMPT_TOKENS),
        "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="m", messages=MESSAGES, stream=stream)
        assert info.value.code == "context_length_exceeded"
    # A continuation too long for the window is refused before it is continued.
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=partial_messages("The quick"),
                                       extra_body={"continue_final_message": True})
    stats = sim.stats()
    assert stats["context_exceeded"] == 4 and stats["continuations"] == 0
    assert stats["streams_started"] == 0


def test_context_window_vllm_error(sim, client):
    sim.configure(context_window=2, context_error="vllm")
    status, _, body = sim.call("POST", "/v1/chat/completions",
                               json.dumps({"messages": MESSAGES}).encode())
    assert status == 400
    assert json.loads(body) == {"error": {
        "message": "This model's maximum context length is 2 tokens. However, you requested "
                   "%d tokens in the messages, Please reduce the length of the messages."
                   % PROMPT_TOKENS,
        "type": "BadRequestError", "param": None, "code": 400}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=10)
    assert info.value.body["message"] == (
        "This model's maximum context length is 2 tokens. However, you requested %d tokens "
        "(%d in the messages, 10 in the completion). Please reduce the length of the messages "
        "or completion." % (PROMPT_TOKENS + 10, PROMPT_TOKENS))
    assert sim.stats()["context_exceeded"] == 2


def test_context_window_anthropic_error(sim):
    sim.configure(context_window=3, context_error="anthropic")
    status, _, body = sim.call("POST", "/v1/chat/completions",
                               json.dumps({"messages": MESSAGES, "stream": True}).encode())
    assert status == 400
    assert json.loads(body) == {"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "prompt is too long: %d tokens > 3 maximum" % PROMPT_TOKENS}}
    assert sim.stats()["context_exceeded"] == 1


@pytest.mark.parametrize("after, at", [(0, 1), (2, 3), (5, 6), (6, None)])
def test_malformed_event_then_the_stream_carries_on(sim, client, raw, after, at):
    sim.configure(reply="abcdefghij", chunks=5, malformed_after=after)
    conn = raw()
    conn.send(chat_request({"messages": MESSAGES, "stream": True}))
    events, ended = read_stream(conn)
    assert ended and events[-1] == "data: [DONE]"
    assert deltas(events) == ["", "ab", "cd", "ef", "gh", "ij", None]
    # A limit past the last content chunk sends nothing malformed, as stall/drop ignore theirs.
    assert [i for i, e in enumerate(events) if e == MALFORMED] == ([at] if at else [])
    assert client.chat.completions.create(model="m", messages=MESSAGES).choices[0] \
        .message.content == "abcdefghij"
    assert sim.stats()["streams_completed"] == 1


def test_malformed_event_before_a_drop_at_the_same_count(sim, raw):
    sim.configure(reply="abcdefghij", chunks=5, malformed_after=2, drop_after=2)
    conn = raw()
    conn.send(chat_request({"messages": MESSAGES, "stream": True}))
    events, ended = read_stream(conn)
    assert not ended
    assert events[3:] == [MALFORMED] and deltas(events) == ["", "ab", "cd"]
    assert sim.wait_stat("streams_dropped", 1)["streams_dropped"] == 1


NEW_DEFAULTS = {"early_role": False, "continuation": "prefill", "context_window": None,
                "context_error": "openai", "malformed_after": None}


def test_new_options_roundtrip_and_null_restores(sim):
    cfg = sim.json("GET", "/_sim/config")
    assert {k: cfg[k] for k in NEW_DEFAULTS} == NEW_DEFAULTS
    changed = {"early_role": True, "continuation": "none", "context_window": 4096,
               "context_error": "anthropic", "malformed_after": 3}
    cfg = sim.configure(**changed)
    assert {k: cfg[k] for k in changed} == changed
    cfg = sim.configure(**dict.fromkeys(changed))
    assert {k: cfg[k] for k in NEW_DEFAULTS} == NEW_DEFAULTS


@pytest.mark.parametrize("key, value", [
    ("early_role", "yes"), ("early_role", 1), ("continuation", "maybe"),
    ("context_window", -1), ("context_window", 2.5), ("context_window", "8"),
    ("context_window", True), ("context_error", "azure"), ("malformed_after", -1),
    ("malformed_after", False), ("malformed_after", 1.5),
])
def test_new_options_are_validated(sim, key, value):
    before = sim.json("GET", "/_sim/config")
    assert key in before  # refused for its value, not as an unknown option
    status, _, body = sim.call("POST", "/_sim/config", json.dumps({key: value}).encode())
    message = json.loads(body)["error"]["message"]
    assert status == 400 and message.startswith(key) and "unknown" not in message
    assert sim.json("GET", "/_sim/config") == before


def test_new_options_from_the_command_line(tmp_path):
    proc = start_simulator(tmp_path, "--early-role", "--continuation", "none",
                           "--context-window", "3", "--context-error", "vllm",
                           "--malformed-after", "1")
    try:
        s = Sim(proc.port)
        cfg = s.json("GET", "/_sim/config")
        assert {k: cfg[k] for k in NEW_DEFAULTS} == {
            "early_role": True, "continuation": "none", "context_window": 3,
            "context_error": "vllm", "malformed_after": 1}
        s.configure(context_window=50, early_role=False)
        assert s.configure(context_window=None, early_role=None)["context_window"] == 3
        assert s.json("GET", "/_sim/config")["early_role"] is True
        status, _, body = s.call("POST", "/v1/chat/completions",
                                 json.dumps({"messages": MESSAGES}).encode())
        assert status == 400 and json.loads(body)["error"]["type"] == "BadRequestError"
    finally:
        assert proc.stop() == 0


@pytest.mark.parametrize("args", [("--context-window", "-1"), ("--context-error", "azure"),
                                  ("--continuation", "maybe"), ("--malformed-after", "-2")])
def test_bad_new_flags_refuse_to_start(args):
    done = subprocess.run([sys.executable, "-m", "proxy.sim", "--port", "0", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=STARTUP_TIMEOUT)
    assert done.returncode == 2 and not done.stdout
    # Refused for its value, not as a flag the simulator does not know.
    assert "unrecognized" not in done.stderr
    assert "invalid choice" in done.stderr or "must be" in done.stderr
