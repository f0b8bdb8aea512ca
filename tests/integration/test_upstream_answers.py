"""What upstreams really send, through real sockets: JSON in every valid layout (usage
counted, the usage llmedge asked for taken out again), error pages that are not JSON, 200s
that are not what was asked for, answers framed by closing the connection, and streams large
enough to pause reading, on connections that go back to the pool."""

from __future__ import annotations

import http.client
import json

import pytest

from procs import metric_value, parse_sse, wait_for
from scripted_upstream import HOLD, RESET, ScriptedUpstream, chunk

LAYOUTS = ("compact", "spaced", "pretty", "reordered")
QUESTION = "Count the tokens of this question, please."
MESSAGES = [{"role": "user", "content": QUESTION}]
# The simulator's stand-ins for tokenisation: ~4 characters a token, one token a chunk.
PROMPT_TOKENS = len(QUESTION) // 4
COMPLETION_TOKENS = 8
HTML_502 = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


def tokens(edge, deployment: str, direction: str) -> float:
    return metric_value(edge.metrics(), "llmedge_tokens_total", deployment=deployment,
                        direction=direction)


def post_chat(edge, body: dict):
    return edge.call("POST", "/v1/chat/completions", body)


def attempts(edge, deployment: str, outcome: str) -> float:
    return metric_value(edge.metrics(), "llmedge_upstream_attempts_total",
                        deployment=deployment, outcome=outcome)


# === usage in every layout ===

@pytest.mark.parametrize("layout", LAYOUTS)
def test_usage_of_a_whole_answer_is_counted_in_every_layout(edge, sims, layout):
    sims.alpha.configure(layout=layout)
    resp = post_chat(edge, {"model": "alpha", "messages": MESSAGES})
    assert resp.status == 200, resp
    assert resp.json()["usage"]["completion_tokens"] == COMPLETION_TOKENS
    assert tokens(edge, "alpha", "in") == PROMPT_TOKENS
    assert tokens(edge, "alpha", "out") == COMPLETION_TOKENS


@pytest.mark.parametrize("layout", LAYOUTS)
def test_usage_llmedge_asked_for_is_counted_and_taken_out_in_every_layout(edge, sims, layout):
    sims.alpha.configure(layout=layout)
    with edge.client() as client:
        chunks = list(client.chat.completions.create(model="alpha", messages=MESSAGES,
                                                     stream=True))
    # The client did not ask for usage: no chunk carries it, and no empty usage chunk is left.
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).startswith("Alpha")
    assert sims.alpha.stats()["last_body"]["stream_options"] == {"include_usage": True}
    assert tokens(edge, "alpha", "in") == PROMPT_TOKENS
    assert tokens(edge, "alpha", "out") == COMPLETION_TOKENS


@pytest.mark.parametrize("layout", LAYOUTS)
def test_usage_the_client_asked_for_reaches_it_in_every_layout(edge, sims, layout):
    sims.alpha.configure(layout=layout)
    with edge.client() as client:
        chunks = list(client.chat.completions.create(
            model="alpha", messages=MESSAGES, stream=True,
            stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == COMPLETION_TOKENS
    assert tokens(edge, "alpha", "out") == COMPLETION_TOKENS


def test_pretty_printed_events_reach_the_client_whole(edge, sims):
    sims.alpha.configure(layout="pretty")
    resp = post_chat(edge, {"model": "alpha", "messages": MESSAGES, "stream": True})
    assert resp.status == 200
    events = parse_sse(resp.body)
    assert events[-1] == "[DONE]"
    docs = [json.loads(e) for e in events[:-1]]
    assert all(d["choices"] for d in docs)   # the usage event is gone, the rest intact
    assert len(docs) == COMPLETION_TOKENS + 2


# === errors that are not OpenAI-shaped ===

def test_an_html_error_page_is_wrapped_when_no_fallback_is_left(edge, sims):
    sims.alpha.configure(status=502, answer_body=HTML_502)
    resp = post_chat(edge, {"model": "alpha", "messages": MESSAGES})
    assert resp.status == 502
    assert resp.headers["content-type"] == "application/json"
    error = resp.json()["error"]
    assert error["type"] == "upstream_error"
    assert "alpha" in error["message"] and "502 Bad Gateway" in error["message"]
    assert "text/html" in error["message"]


def test_a_non_json_client_error_is_wrapped_with_its_status(edge, sims):
    sims.alpha.configure(status=404, answer_body="404 page not found", answer_type="text/plain")
    resp = post_chat(edge, {"model": "alpha", "messages": MESSAGES})
    assert resp.status == 404
    error = resp.json()["error"]
    assert "404 page not found" in error["message"]
    assert error["type"] == "invalid_request_error"


def test_an_openai_shaped_upstream_error_goes_back_as_it_is(edge, sims):
    sims.alpha.configure(status=400)
    direct = sims.alpha.call("POST", "/v1/chat/completions",
                             {"model": "x", "messages": MESSAGES})
    resp = post_chat(edge, {"model": "alpha", "messages": MESSAGES})
    assert resp.status == 400 and resp.json() == direct.json()


def test_a_string_error_is_given_the_openai_shape(edge, sims):
    sims.alpha.configure(status=400, answer_body='{"error": "model \'x\' not found"}',
                         answer_type="application/json")
    resp = post_chat(edge, {"model": "alpha", "messages": MESSAGES})
    assert resp.status == 400
    assert "model 'x' not found" in resp.json()["error"]["message"]


# === a 200 that is not what was asked for ===

@pytest.mark.parametrize("body,kind", [("{\"id\": \"chatcmpl-1\", \"choices\": [", "text/html"),
                                       (HTML_502, "text/html"),
                                       ("[1, 2, 3]", "application/json")])
def test_a_200_that_is_not_a_json_object_falls_back(edge, sims, body, kind):
    sims.alpha.configure(answer_body=body, answer_type=kind)
    resp = post_chat(edge, {"model": "auto", "messages": MESSAGES})
    assert resp.status == 200, resp
    assert resp.headers["x-llmedge-upstream"] == "beta"
    # Tried once more on its deployment (it may have been a passing fault), then the fallback.
    assert resp.headers["x-llmedge-attempts"] == "3"
    assert attempts(edge, "alpha", "bad_response") == 2


def test_a_200_that_is_not_json_fails_clearly_when_nothing_is_left(edge, sims):
    sims.alpha.configure(answer_body=HTML_502)
    resp = post_chat(edge, {"model": "alpha", "messages": MESSAGES})
    assert resp.status == 502
    error = resp.json()["error"]
    assert error["code"] == "upstream_bad_response"
    assert "not valid JSON" in error["message"]


@pytest.mark.parametrize("body,kind", [("{\"id\": \"chatcmpl-1\", \"choices\": []}",
                                        "application/json"),
                                       (HTML_502, "text/html")])
def test_a_whole_answer_to_a_stream_request_falls_back(edge, sims, body, kind):
    sims.alpha.configure(answer_body=body, answer_type=kind)
    with edge.client() as client:
        chunks = list(client.chat.completions.create(model="auto", messages=MESSAGES,
                                                     stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Beta answers")
    assert attempts(edge, "alpha", "bad_response") == 2


def test_a_whole_answer_to_a_stream_request_is_an_error_when_nothing_is_left(edge, sims):
    sims.alpha.configure(answer_body='{"choices": []}', answer_type="application/json")
    resp = post_chat(edge, {"model": "alpha", "messages": MESSAGES, "stream": True})
    assert resp.status == 502
    assert resp.headers["content-type"] == "application/json"
    assert "instead of an event stream" in resp.json()["error"]["message"]


# === answers framed by closing the connection ===

@pytest.mark.parametrize("framing", ["close", "http10"])
def test_a_whole_answer_up_to_eof_is_a_success(edge, sims, framing):
    sims.alpha.configure(framing=framing)
    for _ in range(3):   # and the closed connection is not reused
        resp = post_chat(edge, {"model": "alpha", "messages": MESSAGES})
        assert resp.status == 200, resp
        assert resp.json()["choices"][0]["message"]["content"].startswith("Alpha")
    assert attempts(edge, "alpha", "ok") == 3
    assert attempts(edge, "alpha", "reset") == 0
    assert tokens(edge, "alpha", "out") == 3 * COMPLETION_TOKENS


@pytest.mark.parametrize("framing", ["close", "http10"])
def test_a_stream_up_to_eof_ends_cleanly(edge, sims, framing):
    sims.alpha.configure(framing=framing)
    for _ in range(2):
        resp = post_chat(edge, {"model": "alpha", "messages": MESSAGES, "stream": True})
        assert resp.status == 200
        events = parse_sse(resp.body)
        assert events[-1] == "[DONE]", events   # and no error event after it
        assert not any("error" in e for e in events)
    assert attempts(edge, "alpha", "ok") == 2
    assert metric_value(edge.metrics(), "llmedge_stream_failures_total") == 0


# === connections that go back to the pool ===

def test_a_large_fast_stream_leaves_its_connection_usable(edge, sims):
    # One event of 10 MiB: the client's socket buffer fills at once, so reading from the
    # upstream pauses; the answer ends while paused.
    sims.alpha.configure(reply="x" * (10 << 20), chunks=1)
    conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=30)
    try:
        for i in range(3):
            body = json.dumps({"model": "alpha", "messages": MESSAGES, "stream": True})
            conn.request("POST", "/v1/chat/completions", body,
                         {"content-type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == 200
            assert parse_sse(data)[-1] == "[DONE]"
            small = post_chat(edge, {"model": "alpha", "messages": MESSAGES})
            assert small.status == 200, (i, small)
    finally:
        conn.close()
    assert attempts(edge, "alpha", "timeout") == 0
    # Every request after the first found a pooled connection that still worked.
    stats = sims.alpha.stats()
    assert stats["chat"] == 6
    assert stats["connections_opened"] <= 2


def test_bytes_after_a_complete_answer_retire_the_connection(start_edge, tmp_path):
    # An upstream that sends a second, unasked-for response after the first: the connection
    # has lost its framing and must not serve the next request.
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    body = json.dumps({"id": "c", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"},
         "finish_reason": "stop"}]}).encode()
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body), body)
    connections = []

    def serve():
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            connections.append(sock)
            threading.Thread(target=answer_all, args=(sock,), daemon=True).start()

    def answer_all(sock):
        buf = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                head, _, rest = buf.partition(b"\r\n\r\n")
                length = int([line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")][0])
                if len(rest) < length:
                    break
                buf = rest[length:]
                sock.sendall(answer + answer)   # the second one nobody asked for

    threading.Thread(target=serve, daemon=True).start()
    try:
        edge = start_edge(f"""\
server: {{http: 127.0.0.1:0}}
upstream: {{health: {{enabled: false}}}}
deployments:
  - name: chatty
    base_url: http://127.0.0.1:{port}/v1
    timeouts: {{first_byte_s: 5}}
""")
        for _ in range(3):
            resp = post_chat(edge, {"model": "chatty", "messages": MESSAGES})
            assert resp.status == 200 and resp.json()["choices"][0]["message"]["content"] == "hi"
        wait_for(lambda: len(connections) == 3, message="a new connection per request")
    finally:
        listener.close()
        for sock in connections:
            sock.close()


# === wire-level faults a scripted upstream plays ===

SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ntransfer-encoding: chunked\r\n\r\n")


def sse(doc: dict) -> bytes:
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


CONTENT = sse({"id": "c", "object": "chat.completion.chunk", "choices": [
    {"index": 0, "delta": {"role": "assistant", "content": "scripted"}, "finish_reason": None}]})
FINISH = sse({"id": "c", "object": "chat.completion.chunk", "choices": [
    {"index": 0, "delta": {}, "finish_reason": "stop"}]})
USAGE = sse({"id": "c", "object": "chat.completion.chunk", "choices": [],
             "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}})
DONE = b"data: [DONE]\n\n"


def scripted_edge(start_edge, sims, upstream, idle_s: float = 30.0):
    return start_edge(f"""\
server: {{http: 127.0.0.1:0}}
upstream: {{health: {{enabled: false}}}}
deployments:
  - name: scripted
    base_url: {upstream.url}
    timeouts: {{first_byte_s: 10, idle_s: {idle_s}}}
  - name: beta
    base_url: {sims.beta.url}
routes:
  - name: auto
    deployments: [scripted]
    fallbacks: [beta]
""")


def test_an_event_cut_across_two_writes_reaches_the_client_whole(start_edge, sims):
    half = len(USAGE) // 2
    script = [SSE_HEAD % b"text/event-stream", chunk(CONTENT), chunk(FINISH),
              chunk(USAGE[:half]), 0.05, chunk(USAGE[half:]), chunk(DONE), b"0\r\n\r\n"]
    with ScriptedUpstream(script) as upstream:
        edge = scripted_edge(start_edge, sims, upstream)
        resp = post_chat(edge, {"model": "auto", "messages": MESSAGES, "stream": True})
    assert resp.status == 200 and resp.headers["x-llmedge-upstream"] == "scripted"
    assert resp.body == CONTENT + FINISH + DONE   # the usage event llmedge asked for: gone
    assert tokens(edge, "scripted", "in") == 11


def test_a_stream_that_breaks_inside_its_first_event_falls_back(start_edge, sims):
    script = [SSE_HEAD % b"text/event-stream", chunk(CONTENT[:10]), 0.05, RESET]
    with ScriptedUpstream(script) as upstream:
        edge = scripted_edge(start_edge, sims, upstream)
        resp = post_chat(edge, {"model": "auto", "messages": MESSAGES, "stream": True})
    # Nothing of the broken event went out, so the fallback answers the whole stream.
    assert resp.status == 200 and resp.headers["x-llmedge-upstream"] == "beta"
    events = parse_sse(resp.body)
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                   for e in events[:-1])
    assert text.startswith("Beta answers")


def test_a_stream_that_idles_after_its_done_ends_cleanly(start_edge, sims):
    # [DONE] but no last chunk, and then silence: the answer is whole.
    script = [SSE_HEAD % b"text/event-stream", chunk(CONTENT), chunk(FINISH), chunk(DONE), HOLD]
    with ScriptedUpstream(script) as upstream:
        edge = scripted_edge(start_edge, sims, upstream, idle_s=0.3)
        resp = post_chat(edge, {"model": "auto", "messages": MESSAGES, "stream": True})
        assert resp.status == 200
        assert resp.body == CONTENT + FINISH + DONE
        assert attempts(edge, "scripted", "ok") == 1
        assert metric_value(edge.metrics(), "llmedge_stream_failures_total") == 0


def test_an_event_stream_content_type_in_capitals_is_an_event_stream(start_edge, sims):
    script = [SSE_HEAD % b"Text/Event-Stream; charset=utf-8", chunk(CONTENT), chunk(FINISH),
              chunk(DONE), b"0\r\n\r\n"]
    with ScriptedUpstream(script) as upstream:
        edge = scripted_edge(start_edge, sims, upstream)
        resp = post_chat(edge, {"model": "auto", "messages": MESSAGES, "stream": True})
    assert resp.status == 200 and resp.headers["x-llmedge-upstream"] == "scripted"
    assert resp.body == CONTENT + FINISH + DONE


def test_a_close_framed_stream_cut_before_its_done_is_an_error(edge, sims):
    # Framed by the close, the cut cannot be told from an end but by the missing [DONE].
    sims.alpha.configure(framing="close", drop_after=2)
    resp = post_chat(edge, {"model": "alpha", "messages": MESSAGES, "stream": True})
    events = parse_sse(resp.body)
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["code"] == "upstream_reset"
    assert attempts(edge, "alpha", "reset") == 1


def test_a_redirect_is_a_bad_response_and_falls_back(edge, sims):
    sims.alpha.configure(status=301)
    resp = post_chat(edge, {"model": "auto", "messages": MESSAGES})
    assert resp.status == 200 and resp.headers["x-llmedge-upstream"] == "beta"
    assert attempts(edge, "alpha", "bad_response") == 2


def test_a_stream_that_ends_without_its_done_is_not_passed_off_as_complete(start_edge, sims):
    # A clean chunked end, but no [DONE] (and no finish_reason): a cut, not an answer.
    script = [SSE_HEAD % b"text/event-stream", chunk(CONTENT), b"0\r\n\r\n"]
    with ScriptedUpstream(script) as upstream:
        edge = scripted_edge(start_edge, sims, upstream)
        resp = post_chat(edge, {"model": "auto", "messages": MESSAGES, "stream": True})
        events = parse_sse(resp.body)
        assert "scripted" in events[0]
        assert json.loads(events[-1])["error"]["code"] == "upstream_bad_response"
        assert attempts(edge, "scripted", "bad_response") == 1


def test_a_done_without_its_blank_line_at_the_very_end_closes_the_stream(start_edge, sims):
    script = [SSE_HEAD % b"text/event-stream", chunk(CONTENT + FINISH + b"data: [DONE]\n"),
              b"0\r\n\r\n"]
    with ScriptedUpstream(script) as upstream:
        edge = scripted_edge(start_edge, sims, upstream)
        resp = post_chat(edge, {"model": "auto", "messages": MESSAGES, "stream": True})
    assert resp.body == CONTENT + FINISH + DONE


def test_a_client_that_leaves_after_the_done_got_a_complete_answer(start_edge, sims):
    # The last chunk comes later than [DONE]; the client does not wait for it.
    script = [SSE_HEAD % b"text/event-stream", chunk(CONTENT + FINISH + DONE), 0.3,
              b"0\r\n\r\n"]
    with ScriptedUpstream(script) as upstream:
        edge = scripted_edge(start_edge, sims, upstream)
        with edge.client() as client:
            chunks = list(client.chat.completions.create(model="auto", messages=MESSAGES,
                                                         stream=True))
        assert chunks[-1].choices[0].finish_reason == "stop"
        wait_for(lambda: metric_value(edge.metrics(), "llmedge_requests_total") == 1,
                 message="the request to be counted")
        text = edge.metrics()
        assert metric_value(text, "llmedge_requests_total", status="200") == 1
        assert metric_value(text, "llmedge_requests_total", status="499") == 0
