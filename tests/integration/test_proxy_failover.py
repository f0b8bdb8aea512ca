"""Upstream failures through llmedge: fallbacks before the first byte, pass-through of client
errors, 429 everywhere, streams broken by the upstream, and clients that leave mid-stream."""

from __future__ import annotations

import json
import socket
import struct
import time

import openai
import pytest
from conftest import ALPHA_FIRST_BYTE_S, ALPHA_IDLE_S, REPLIES
from procs import RawConn, metric_value, parse_sse, request_bytes, wait_for

MESSAGES = [{"role": "user", "content": "Please answer, whoever you are."}]
CHAT = "/v1/chat/completions"
# An upstream delay no test waits out: a request that took this long waited for it.
NEVER_MS = 20000

pytestmark = pytest.mark.usefixtures("sims")


def chat_raw(client, model="auto", **kw):
    return client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, **kw)


def stream_text(client, model="auto", **kw):
    raw = chat_raw(client, model, stream=True, **kw)
    with raw.parse() as stream:
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    return raw.headers, text


# === fallback before anything reached the client ===

def test_500_falls_back_to_next_deployment(edge, sims):
    sims.alpha.configure(status=500)
    with edge.client() as client:
        raw = chat_raw(client)
    # By default a 5xx gets one more try on its deployment, then the fallback answers.
    assert raw.headers["x-llmedge-attempts"] == "3"
    assert raw.headers["x-llmedge-upstream"] == "beta"
    assert raw.headers["x-llmedge-route"] == "auto"
    assert raw.parse().choices[0].message.content == REPLIES["beta"]
    assert sims.alpha.stats()["chat"] == 2
    assert sims.beta.stats()["last_body"]["model"] == "beta-model"


def test_500_falls_back_for_streams(edge, sims):
    sims.alpha.configure(status=503)
    with edge.client() as client:
        headers, text = stream_text(client)
    assert headers["x-llmedge-attempts"] == "3"
    assert headers["x-llmedge-upstream"] == "beta"
    assert text == REPLIES["beta"]
    assert sims.beta.wait_stat("streams_completed", 1)["streams_started"] == 1


def test_route_fallbacks_follow_the_deployments(edge, sims):
    sims.alpha.configure(status=500)
    sims.beta.configure(status=502)
    with edge.client() as client:
        raw = chat_raw(client)
    assert raw.headers["x-llmedge-attempts"] == "5"
    assert raw.headers["x-llmedge-upstream"] == "gamma"
    assert raw.parse().choices[0].message.content == REPLIES["gamma"]
    assert [sims[n].stats()["chat"] for n in ("alpha", "beta", "gamma")] == [2, 2, 1]


def test_weighted_route_spreads_by_weight_and_falls_back_to_zero_weight(edge, sims):
    # beta weighs 0: never a first choice, only the last resort.
    with edge.client() as client:
        upstreams = [chat_raw(client, model="split").headers["x-llmedge-upstream"]
                     for _ in range(40)]
    assert set(upstreams) == {"alpha", "gamma"}, upstreams  # P(no gamma in 40) ~ 1e-5
    assert upstreams.count("alpha") > upstreams.count("gamma")  # 3:1, P(fail) < 1e-3
    assert sims.beta.stats()["requests"] == 0
    sims.alpha.configure(status=500)
    sims.gamma.configure(status=500)
    with edge.client() as client:
        raw = chat_raw(client, model="split")
    assert raw.headers["x-llmedge-upstream"] == "beta"
    assert raw.headers["x-llmedge-attempts"] == "5"   # alpha and gamma twice each
    assert raw.parse().choices[0].message.content == REPLIES["beta"]


def test_refused_connection_falls_back(edge, sims):
    before = metric_value(edge.metrics(), "llmedge_upstream_errors_total", deployment="dead")
    with edge.client() as client:
        raw = chat_raw(client, model="via-dead")
        headers, text = stream_text(client, model="via-dead")
    assert raw.headers["x-llmedge-attempts"] == "2"
    assert raw.headers["x-llmedge-upstream"] == "beta"
    assert raw.parse().choices[0].message.content == REPLIES["beta"]
    assert headers["x-llmedge-attempts"] == "2" and headers["x-llmedge-upstream"] == "beta"
    assert text == REPLIES["beta"]
    wait_for(lambda: metric_value(edge.metrics(), "llmedge_upstream_errors_total",
                                  deployment="dead") == before + 2,
             message="two upstream errors counted for 'dead'")


def test_only_a_refusing_deployment_gives_502(edge):
    resp = edge.call("POST", CHAT, {"model": "dead", "messages": MESSAGES})
    assert resp.status == 502, resp
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "upstream_error"
    assert resp.headers["x-llmedge-upstream"] == "dead"
    assert resp.headers["x-llmedge-attempts"] == "1"


def test_first_byte_timeout_falls_back(edge, sims):
    sims.alpha.configure(ttft_ms=NEVER_MS)
    started = time.monotonic()
    with edge.client() as client:
        raw = chat_raw(client)
    elapsed = time.monotonic() - started
    assert raw.headers["x-llmedge-attempts"] == "2"
    assert raw.headers["x-llmedge-upstream"] == "beta"
    assert raw.parse().choices[0].message.content == REPLIES["beta"]
    assert elapsed >= ALPHA_FIRST_BYTE_S * 0.9  # alpha was given its full timeout
    assert elapsed < NEVER_MS / 1000 / 2        # and not waited out
    # The abandoned request's connection was closed, not left to the upstream.
    sims.alpha.wait_stat("connections_closed", 1)


def test_never_answered_request_falls_back(edge, sims):
    sims.alpha.configure(stall_after=0)  # the simulator never answers a non-streamed chat
    with edge.client() as client:
        raw = chat_raw(client)
    assert raw.headers["x-llmedge-attempts"] == "2"
    assert raw.headers["x-llmedge-upstream"] == "beta"
    assert sims.alpha.stats()["chat"] == 1


def test_stream_silent_before_first_event_falls_back(edge, sims):
    # The head comes at once, then nothing: nothing reached the client, so try beta.
    sims.alpha.configure(ttft_ms=NEVER_MS)
    started = time.monotonic()
    with edge.client() as client:
        headers, text = stream_text(client)
    elapsed = time.monotonic() - started
    assert headers["x-llmedge-attempts"] == "2"
    assert headers["x-llmedge-upstream"] == "beta"
    assert text == REPLIES["beta"]
    assert elapsed < NEVER_MS / 1000 / 2
    assert sims.alpha.stats()["streams_completed"] == 0


def test_429_moves_on_to_next_candidate(edge, sims):
    sims.alpha.configure(status=429, retry_after=30)
    with edge.client() as client:
        raw = chat_raw(client)
    assert raw.headers["x-llmedge-attempts"] == "2"
    assert raw.headers["x-llmedge-upstream"] == "beta"
    assert raw.parse().choices[0].message.content == REPLIES["beta"]
    assert sims.alpha.stats()["errors_injected"] == 1


def test_429_everywhere_gives_429_with_retry_after(edge, sims):
    for sim in sims:
        sim.configure(status=429, retry_after=3)
    resp = edge.call("POST", CHAT, {"model": "auto", "messages": MESSAGES})
    assert resp.status == 429, resp
    assert resp.headers["retry-after"] == "3"
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "rate_limit_error"
    assert resp.headers["x-llmedge-attempts"] == "3"
    assert [sim.stats()["chat"] for sim in sims] == [1, 1, 1]
    # Every circuit is now open until its Retry-After: llmedge answers 429 itself, saying how
    # long is left, and sends nothing upstream (no retry storm).
    with edge.client() as client, pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="auto", messages=MESSAGES)
    assert 1 <= int(info.value.response.headers["retry-after"]) <= 3
    assert info.value.response.headers["x-llmedge-attempts"] == "0"
    assert [sim.stats()["chat"] for sim in sims] == [1, 1, 1]


def test_429_everywhere_without_upstream_hint_still_has_retry_after(edge, sims):
    # The contract: a 429 from llmedge comes with Retry-After, whether or not the
    # upstreams gave one.
    for sim in sims:
        sim.configure(status=429)
    resp = edge.call("POST", CHAT, {"model": "auto", "messages": MESSAGES})
    assert resp.status == 429, resp
    assert resp.headers["x-llmedge-attempts"] == "3"
    assert "retry-after" in resp.headers, resp.headers
    assert int(resp.headers["retry-after"]) >= 0


def test_400_passes_through_unchanged_without_retry(edge, sims):
    sims.alpha.configure(status=400)
    direct = sims.alpha.call("POST", CHAT, {"model": "alpha-model", "messages": MESSAGES})
    assert direct.status == 400
    sims.alpha.reset(config=False)  # counters only: keep answering 400
    resp = edge.call("POST", CHAT, {"model": "auto", "messages": MESSAGES})
    assert resp.status == 400, resp
    assert resp.body == direct.body
    assert resp.headers["x-llmedge-upstream"] == "alpha"
    assert resp.headers["x-llmedge-attempts"] == "1"
    assert sims.alpha.stats()["chat"] == 1
    assert sims.beta.stats()["requests"] == sims.gamma.stats()["requests"] == 0
    with edge.client() as client, pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="auto", messages=MESSAGES)
    assert sims.alpha.stats()["chat"] == 2
    assert sims.beta.stats()["requests"] == 0


# === a stream broken after it started ===

def stream_failures(edge, deployment: str) -> float:
    return metric_value(edge.metrics(), "llmedge_stream_failures_total", deployment=deployment)


def test_stream_dropped_by_upstream_ends_with_error_event(edge, sims):
    sims.gamma.configure(drop_after=2)
    before = stream_failures(edge, "gamma")
    with RawConn(edge.port) as conn:
        conn.send(request_bytes("POST", CHAT, {"model": "gamma", "messages": MESSAGES,
                                               "stream": True}))
        resp = conn.read_response()  # a complete chunked body: the end is explicit
    assert resp.status == 200
    assert resp.headers["x-llmedge-upstream"] == "gamma"
    events = parse_sse(resp.body)
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    assert set(last) == {"error"}
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert "gamma" in last["error"]["message"]
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert len([c for c in contents if c]) == 2
    wait_for(lambda: stream_failures(edge, "gamma") == before + 1,
             message="llmedge_stream_failures_total to count the broken stream")


def test_stream_dropped_by_upstream_raises_in_sdk(edge, sims):
    sims.gamma.configure(drop_after=2)
    before = stream_failures(edge, "gamma")
    received = []
    with edge.client() as client:
        stream = client.chat.completions.create(model="gamma", messages=MESSAGES, stream=True)
        with stream, pytest.raises(openai.APIError) as info:
            for chunk in stream:
                received.append(chunk)
    assert "gamma" in str(info.value.message)
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert text and REPLIES["gamma"].startswith(text) and text != REPLIES["gamma"]
    wait_for(lambda: stream_failures(edge, "gamma") == before + 1,
             message="llmedge_stream_failures_total to count the broken stream")
    # llmedge carries on.
    with edge.client() as client:
        assert client.chat.completions.create(model="beta", messages=MESSAGES).choices


def test_stream_stalled_mid_way_ends_after_idle_timeout(edge, sims):
    sims.alpha.configure(stall_after=2)
    before = stream_failures(edge, "alpha")
    started = time.monotonic()
    with RawConn(edge.port) as conn:
        conn.send(request_bytes("POST", CHAT, {"model": "auto", "messages": MESSAGES,
                                               "stream": True}))
        resp = conn.read_response()
    elapsed = time.monotonic() - started
    assert resp.status == 200
    assert resp.headers["x-llmedge-upstream"] == "alpha"  # committed: no fallback possible
    events = parse_sse(resp.body)
    assert "[DONE]" not in events
    assert "error" in json.loads(events[-1])
    assert elapsed >= ALPHA_IDLE_S * 0.9
    assert elapsed < NEVER_MS / 1000 / 2
    assert sims.beta.stats()["requests"] == 0
    wait_for(lambda: stream_failures(edge, "alpha") == before + 1,
             message="llmedge_stream_failures_total to count the stalled stream")
    sims.alpha.wait_stat("streams_aborted", 1)  # llmedge hung up on the stalled upstream


# === the client leaves ===

@pytest.mark.parametrize("behaviour", [
    pytest.param({"tokens_per_s": 20, "chunks": 400}, id="slow-stream"),
    pytest.param({"tokens_per_s": 50, "chunks": 400, "ttft_ms": 200}, id="slow-first-token"),
])
def test_client_disconnect_mid_stream_aborts_upstream(edge, sims, behaviour):
    sims.gamma.configure(**behaviour)
    with RawConn(edge.port) as conn:
        conn.send(request_bytes("POST", CHAT, {"model": "gamma", "messages": MESSAGES,
                                               "stream": True}))
        status, headers = conn.read_head()
        assert status == 200 and headers["x-llmedge-upstream"] == "gamma"
        first = conn.read_chunk()
        assert first.startswith(b"data: {")
    stats = sims.gamma.wait_stat("streams_aborted", 1)
    assert stats["streams_started"] == 1
    assert stats["streams_completed"] == 0
    sims.gamma.reset(config=True)
    with edge.client() as client:  # the deployment is still served normally
        assert client.chat.completions.create(model="gamma", messages=MESSAGES).choices


# A client that closes its socket (FIN) while the upstream is silent: llmedge is writing
# nothing, so only the end of its input tells it the client left.
DISCONNECT_DETECTION_S = 10.0


def test_client_closing_during_stalled_stream_aborts_upstream(edge, sims):
    sims.gamma.configure(stall_after=1)
    with RawConn(edge.port) as conn:
        conn.send(request_bytes("POST", CHAT, {"model": "gamma", "messages": MESSAGES,
                                               "stream": True}))
        status, _ = conn.read_head()
        assert status == 200
        assert conn.read_chunk().startswith(b"data: {")
        sims.gamma.wait_stat("streams_stalled", 1)
    stats = sims.gamma.wait_stat("streams_aborted", 1, timeout=DISCONNECT_DETECTION_S)
    assert stats["streams_completed"] == 0


def test_client_resetting_during_stalled_stream_aborts_upstream(edge, sims):
    sims.gamma.configure(stall_after=1)
    with RawConn(edge.port) as conn:
        conn.send(request_bytes("POST", CHAT, {"model": "gamma", "messages": MESSAGES,
                                               "stream": True}))
        assert conn.read_head()[0] == 200
        conn.read_chunk()
        sims.gamma.wait_stat("streams_stalled", 1)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stats = sims.gamma.wait_stat("streams_aborted", 1, timeout=DISCONNECT_DETECTION_S)
    assert stats["streams_completed"] == 0


def test_client_closing_while_upstream_thinks_cancels_upstream_request(edge, sims):
    sims.gamma.configure(ttft_ms=NEVER_MS)
    with RawConn(edge.port) as conn:
        conn.send(request_bytes("POST", CHAT, {"model": "gamma", "messages": MESSAGES}))
        sims.gamma.wait_stat("chat", 1)
        pending = sims.gamma.stats()["active_connections"]  # includes llmedge's request
    wait_for(lambda: sims.gamma.stats()["active_connections"] < pending,
             timeout=DISCONNECT_DETECTION_S,
             message="llmedge to close the upstream request of a client that left")


def test_sdk_client_closing_stream_early_aborts_upstream(edge, sims):
    sims.gamma.configure(tokens_per_s=20, chunks=400)
    with edge.client() as client:
        stream = client.chat.completions.create(model="gamma", messages=MESSAGES, stream=True)
        with stream:
            first = next(iter(stream))
            assert first.object == "chat.completion.chunk"
    stats = sims.gamma.wait_stat("streams_aborted", 1)
    assert stats["streams_completed"] == 0
