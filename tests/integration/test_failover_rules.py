"""What each kind of failure earns with the default settings, through real sockets: a short
429 is waited out on the same deployment, a 500 retried on it once, a timeout never, a
stream that sends no content in time is abandoned for the next candidate without the client
seeing its opening, and odd streams (a malformed event, no final [DONE]) keep working."""

from __future__ import annotations

import json

import pytest

from procs import metric_value, parse_sse
from scripted_upstream import HOLD, ScriptedUpstream, chunk

MESSAGES = [{"role": "user", "content": "failover"}]
ANSWER = json.dumps({"id": "c1", "object": "chat.completion", "model": "m", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "from the primary"},
     "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 3}}).encode()
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(ANSWER), ANSWER)
ERROR = json.dumps({"error": {"message": "busy", "type": "server_error", "param": None,
                              "code": None}}).encode()
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def failing(status: int, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d Oops\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        status, len(ERROR), extra, ERROR)


def sse(delta: dict, finish: str | None = None) -> bytes:
    return b"data: " + json.dumps({"id": "s1", "object": "chat.completion.chunk", "model": "m",
                                   "choices": [{"index": 0, "delta": delta,
                                                "finish_reason": finish}]}).encode() + b"\n\n"


def config(sims, primary_url: str, upstream: str = "{health: {enabled: false}}") -> str:
    # Defaults everywhere but health probes (they would only add requests to count).
    return f"""\
server: {{http: 127.0.0.1:0}}
upstream: {upstream}
deployments:
  - name: primary
    base_url: {primary_url}
  - name: beta
    base_url: {sims.beta.url}
routes:
  - name: auto
    deployments: [primary]
    fallbacks: [beta]
"""


def ask(edge, **extra):
    return edge.call("POST", "/v1/chat/completions", {"model": "auto", "messages": MESSAGES,
                                                      **extra})


def attempts(edge, deployment: str, outcome: str) -> float:
    return metric_value(edge.metrics(), "llmedge_upstream_attempts_total",
                        deployment=deployment, outcome=outcome)


def test_a_short_retry_after_is_waited_out_on_the_same_deployment(start_edge, sims):
    with ScriptedUpstream(scripts=[[failing(429, b"retry-after: 1\r\n")], [OK]]) as primary:
        edge = start_edge(config(sims, primary.url))
        resp = ask(edge)
        assert resp.status == 200, resp
        assert resp.headers["x-llmedge-upstream"] == "primary"   # the model asked for
        assert resp.headers["x-llmedge-attempts"] == "2"
        assert primary.requests == 2
    assert sims.beta.stats()["chat"] == 0
    assert metric_value(edge.metrics(), "llmedge_retries_total", deployment="primary") == 1


def test_a_long_retry_after_moves_on_at_once(start_edge, sims):
    with ScriptedUpstream(scripts=[[failing(429, b"retry-after: 30\r\n")], [OK]]) as primary:
        edge = start_edge(config(sims, primary.url))
        resp = ask(edge)
        assert resp.headers["x-llmedge-upstream"] == "beta"
        assert resp.headers["x-llmedge-attempts"] == "2"
        assert primary.requests == 1


def test_a_500_once_is_retried_on_the_same_deployment(start_edge, sims):
    with ScriptedUpstream(scripts=[[failing(500)], [OK]]) as primary:
        edge = start_edge(config(sims, primary.url))
        resp = ask(edge)
        assert resp.status == 200 and resp.headers["x-llmedge-upstream"] == "primary"
        assert resp.json()["choices"][0]["message"]["content"] == "from the primary"
        assert primary.requests == 2
    assert sims.beta.stats()["chat"] == 0


def test_a_reset_once_is_retried_on_the_same_deployment(start_edge, sims):
    from scripted_upstream import RESET

    with ScriptedUpstream(scripts=[[b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{", RESET],
                                   [OK]]) as primary:
        edge = start_edge(config(sims, primary.url))
        resp = ask(edge)
        assert resp.status == 200 and resp.headers["x-llmedge-upstream"] == "primary"
        assert primary.requests == 2


@pytest.mark.parametrize("upstream", ["{health: {enabled: false}}",
                                      "{health: {enabled: false}, retry: {same_deployment: 2}}"])
def test_a_silent_upstream_is_never_retried_on_the_same_deployment(start_edge, sims, upstream):
    # Not even when retries on the same deployment are asked for: each would wait as long.
    with ScriptedUpstream([HOLD]) as primary:
        edge = start_edge(config(sims, primary.url, upstream).replace(
            "    base_url: %s\n" % primary.url,
            "    base_url: %s\n    timeouts: {first_byte_s: 0.5}\n" % primary.url))
        resp = ask(edge)
        assert resp.status == 200 and resp.headers["x-llmedge-upstream"] == "beta"
        assert resp.headers["x-llmedge-attempts"] == "2"
        assert primary.requests == 1
    assert attempts(edge, "primary", "timeout") == 1


def test_a_stream_without_content_in_time_moves_on_and_its_opening_is_never_seen(start_edge,
                                                                                 sims):
    # Headers, a role-only event and a comment at once, then nothing: the default
    # first_token_s (15 s) abandons it; the client sees only the fallback's stream.
    script = [SSE_HEAD, chunk(sse({"role": "assistant", "content": ""})),
              chunk(b": keep-alive\n\n"), HOLD]
    with ScriptedUpstream(script) as primary:
        edge = start_edge(config(sims, primary.url))
        with edge.client() as client:
            raw = client.chat.completions.with_raw_response.create(
                model="auto", messages=MESSAGES, stream=True)
            assert raw.headers["x-llmedge-upstream"] == "beta"
            assert raw.headers["x-llmedge-attempts"] == "2"
            chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.startswith("Beta answers")
        assert [c.choices[0].delta.role for c in chunks if c.choices].count("assistant") == 1
        assert primary.requests == 1
    assert attempts(edge, "primary", "first_token") == 1


def test_a_stream_that_opens_with_an_error_event_falls_back(start_edge, sims):
    error = b"data: " + json.dumps({"error": {"message": "overloaded",
                                              "type": "server_error"}}).encode() + b"\n\n"
    script = [SSE_HEAD, chunk(sse({"role": "assistant", "content": ""})), chunk(error),
              b"0\r\n\r\n"]
    with ScriptedUpstream(script) as primary:
        edge = start_edge(config(sims, primary.url))
        resp = ask(edge, stream=True)
        assert resp.status == 200 and resp.headers["x-llmedge-upstream"] == "beta"
        assert b"overloaded" not in resp.body
        assert primary.requests == 2   # retried once like a 5xx, then the fallback


def test_a_malformed_event_mid_stream_is_passed_on_and_the_stream_works(start_edge, sims):
    script = [SSE_HEAD, chunk(sse({"role": "assistant", "content": "one"})),
              chunk(b"data: {not json\n\n"), chunk(sse({"content": " two"}, "stop")),
              chunk(b"data: [DONE]\n\n"), b"0\r\n\r\n"]
    with ScriptedUpstream(script) as primary:
        edge = start_edge(config(sims, primary.url))
        resp = ask(edge, stream=True)
    assert resp.status == 200 and resp.headers["x-llmedge-upstream"] == "primary"
    events = parse_sse(resp.body)
    assert events[1] == "{not json" and events[-1] == "[DONE]"
    assert attempts(edge, "primary", "ok") == 1


def test_a_stream_that_finishes_without_done_keeps_working(start_edge, sims):
    script = [SSE_HEAD, chunk(sse({"role": "assistant", "content": "whole"})),
              chunk(sse({}, "stop")), b"0\r\n\r\n"]
    with ScriptedUpstream(script) as primary:
        edge = start_edge(config(sims, primary.url))
        with edge.client() as client:
            chunks = list(client.chat.completions.create(model="auto", messages=MESSAGES,
                                                         stream=True))
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert chunks[0].choices[0].delta.content == "whole"
    assert attempts(edge, "primary", "ok") == 1
    assert metric_value(edge.metrics(), "llmedge_stream_failures_total") == 0


# === a prompt too long for the model ===

CONTEXT_ERRORS = {
    "openai": {"error": {"message": "This model's maximum context length is 4096 tokens. "
                                    "However, your messages resulted in 5000 tokens.",
                         "type": "invalid_request_error", "param": "messages",
                         "code": "context_length_exceeded"}},
    "vllm": {"object": "error", "message": "This model's maximum context length is 4096 "
             "tokens. However, you requested 5000 tokens (4000 in the messages, 1000 in the "
             "completion). Please reduce the length of the messages or completion.",
             "type": "BadRequestError", "param": None, "code": 400},
    "anthropic": {"type": "error", "error": {"type": "invalid_request_error",
                                             "message": "prompt is too long: 5000 tokens > "
                                                        "4096 maximum"}},
}
FILTERED = {"error": {"message": "The response was filtered due to the prompt triggering "
                                 "the content management policy.",
                      "type": "invalid_request_error", "param": "prompt",
                      "code": "content_filter"}}


def window_config(sims, windows: dict[str, int | None], order: list[str]) -> str:
    deployments = "".join(
        f"  - name: {name}\n    base_url: {sims[name].url}\n"
        + (f"    context_window: {windows[name]}\n" if windows[name] else "")
        for name in windows)
    return f"""\
server: {{http: 127.0.0.1:0}}
upstream: {{health: {{enabled: false}}}}
deployments:
{deployments}routes:
  - name: auto
    deployments: {json.dumps(order)}
"""


@pytest.mark.parametrize("style", sorted(CONTEXT_ERRORS))
def test_a_prompt_too_long_goes_to_a_deployment_with_a_larger_window(start_edge, sims, style):
    edge = start_edge(window_config(sims, {"alpha": 4096, "beta": 2048, "gamma": 128000},
                                    ["alpha", "beta", "gamma"]))
    sims.alpha.configure(status=400, answer_body=json.dumps(CONTEXT_ERRORS[style]),
                         answer_type="application/json")
    resp = ask(edge)
    assert resp.status == 200 and resp.headers["x-llmedge-upstream"] == "gamma"
    # beta's window is no larger than alpha's: not tried.
    assert resp.headers["x-llmedge-attempts"] == "2"
    assert sims.beta.stats()["chat"] == 0 and sims.alpha.stats()["chat"] == 1
    # Not the endpoint's fault: its circuit and error rate are untouched.
    [alpha] = [r for r in edge.call("GET", "/admin/upstreams").json()["endpoints"]
               if r["deployment"] == "alpha"]
    assert alpha["circuit"] == "closed" and alpha["error_rate"] == 0


def test_an_unknown_window_may_take_it_and_the_error_comes_back_when_none_does(start_edge,
                                                                                sims):
    edge = start_edge(window_config(sims, {"alpha": 4096, "beta": None, "gamma": 1024},
                                    ["alpha", "beta", "gamma"]))
    error = json.dumps(CONTEXT_ERRORS["openai"])
    for name in ("alpha", "beta"):
        sims[name].configure(status=400, answer_body=error, answer_type="application/json")
    resp = ask(edge)
    # alpha refused, beta (window unknown) was tried and refused too, gamma is smaller:
    # the client gets the upstream's own error, unchanged.
    assert resp.status == 400 and resp.json() == CONTEXT_ERRORS["openai"]
    assert resp.headers["x-llmedge-attempts"] == "2"
    assert sims.gamma.stats()["chat"] == 0


def test_a_filtered_prompt_is_not_shopped_around(start_edge, sims):
    edge = start_edge(window_config(sims, {"alpha": 4096, "beta": None, "gamma": 128000},
                                    ["alpha", "beta", "gamma"]))
    sims.alpha.configure(status=400, answer_body=json.dumps(FILTERED),
                         answer_type="application/json")
    resp = ask(edge)
    assert resp.status == 400 and resp.json() == FILTERED
    assert resp.headers["x-llmedge-attempts"] == "1"
    assert sims.beta.stats()["chat"] == 0 and sims.gamma.stats()["chat"] == 0


@pytest.mark.parametrize("style", ["openai", "vllm", "anthropic"])
def test_the_simulators_context_window_reroutes_to_the_larger_model(start_edge, sims, style):
    sims.alpha.configure(context_window=8, context_error=style)   # ~4 chars a token
    edge = start_edge(window_config(sims, {"alpha": 8, "beta": None, "gamma": None},
                                    ["alpha", "beta"]))
    long_prompt = [{"role": "user", "content": "a question far longer than eight tokens " * 3}]
    resp = edge.call("POST", "/v1/chat/completions", {"model": "auto",
                                                      "messages": long_prompt})
    assert resp.status == 200 and resp.headers["x-llmedge-upstream"] == "beta"
    assert sims.alpha.stats()["context_exceeded"] == 1
    assert attempts(edge, "alpha", "context_length") == 1
