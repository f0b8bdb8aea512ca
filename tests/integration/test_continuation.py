"""A stream cut mid-answer is finished by another deployment, in the same client stream:
the official SDK reads one uninterrupted answer whose text is the two upstreams' parts."""

from __future__ import annotations

import json

import pytest

from procs import metric_value, parse_sse, wait_for
from scripted_upstream import HOLD, RESET, ScriptedUpstream, chunk

MESSAGES = [{"role": "user", "content": "Tell me about foxes."}]
SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n")


def sse(chunk_id: str, model: str, delta: dict, finish=None, usage=None, choices=True) -> bytes:
    doc = {"id": chunk_id, "object": "chat.completion.chunk", "created": 1700000000,
           "model": model, "system_fingerprint": "fp_" + model,
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []}
    if usage is not None:
        doc["usage"] = usage
    return chunk(b"data: " + json.dumps(doc).encode() + b"\n\n")


FIRST = [SSE_HEAD, sse("chatcmpl-first", "model-a", {"role": "assistant", "content": ""}),
         sse("chatcmpl-first", "model-a", {"content": "The quick "}),
         sse("chatcmpl-first", "model-a", {"content": "brown "})]
SECOND = [SSE_HEAD, sse("chatcmpl-second", "model-b", {"role": "assistant", "content": ""}),
          sse("chatcmpl-second", "model-b", {"content": "fox jumps"}),
          sse("chatcmpl-second", "model-b", {"content": "."}, finish="stop"),
          sse("chatcmpl-second", "model-b", {}, usage={"prompt_tokens": 12,
                                                       "completion_tokens": 3,
                                                       "total_tokens": 15}, choices=False),
          chunk(b"data: [DONE]\n\n"), b"0\r\n\r\n"]


def config(first, second, continuation: str = "prefill", idle_s: float = 60.0,
           access_log: str = "") -> str:
    return f"""\
server: {{http: 127.0.0.1:0{", access_log: " + access_log if access_log else ""}}}
upstream: {{health: {{enabled: false}}}}
deployments:
  - name: first
    base_url: {first.url}
    timeouts: {{idle_s: {idle_s}}}
  - name: second
    base_url: {second.url}
    continuation: {continuation}
routes:
  - name: auto
    deployments: [first]
    fallbacks: [second]
"""


@pytest.mark.parametrize("cut", ["reset", "stall"])
def test_a_cut_stream_is_continued_on_the_fallback_in_one_uninterrupted_stream(start_edge,
                                                                              tmp_path, cut):
    ending = [RESET] if cut == "reset" else [HOLD]
    log = tmp_path / "access.jsonl"
    with ScriptedUpstream(FIRST + ending) as first, ScriptedUpstream(SECOND) as second:
        edge = start_edge(config(first, second, idle_s=60.0 if cut == "reset" else 0.5,
                                 access_log=str(log)))
        with edge.client() as client:
            chunks = list(client.chat.completions.create(
                model="auto", messages=MESSAGES, stream=True,
                stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "The quick brown fox jumps."
        # One answer: the first chunks' id and model throughout, one role, usage at the end.
        assert {c.id for c in chunks} == {"chatcmpl-first"}
        assert {c.model for c in chunks} == {"model-a"}
        assert [c.choices[0].delta.role for c in chunks if c.choices].count("assistant") == 1
        assert chunks[-1].usage.completion_tokens == 3
        marker = chunks[-1].model_extra["x_llmedge"]
        assert marker == {"continued": True, "from": "first", "to": "second",
                          "at_chars": len("The quick brown "),
                          }
        # The second deployment was asked to continue the partial answer, not to start over.
        body = json.loads(second.bodies[0])
        assert body["messages"][-1] == {"role": "assistant", "content": "The quick brown "}
        assert body["messages"][:-1] == MESSAGES
        assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    text = edge.metrics()
    assert metric_value(text, "llmedge_stream_continuations_total", route="auto",
                        deployment="second", result="ok") == 1
    assert metric_value(text, "llmedge_stream_failures_total") == 0
    assert metric_value(text, "llmedge_requests_total", status="200") == 1
    line = wait_for(lambda: log.exists() and log.read_text().strip(),
                    message="the access log line")
    record = json.loads(line.splitlines()[0])
    assert record["continued"] == [{"from": "first", "to": "second",
                                    "at_chars": len("The quick brown "),
                                    "after": "reset" if cut == "reset" else "timeout"}]
    assert record["completion_tokens"] == 3 and record["deployment"] == "second"


def test_without_a_deployment_that_can_continue_the_stream_ends_with_an_error(start_edge):
    with ScriptedUpstream(FIRST + [RESET]) as first, ScriptedUpstream(SECOND) as second:
        edge = start_edge(config(first, second, continuation="none"))
        resp = edge.call("POST", "/v1/chat/completions",
                         {"model": "auto", "messages": MESSAGES, "stream": True})
        events = parse_sse(resp.body)
        assert "[DONE]" not in events
        assert json.loads(events[-1])["error"]["code"] == "upstream_reset"
        assert second.requests == 0


def test_a_continuation_that_fails_before_adding_anything_tries_the_next(start_edge, sims):
    with ScriptedUpstream(FIRST + [RESET]) as first, \
            ScriptedUpstream([b"HTTP/1.1 500 Oops\r\ncontent-length: 2\r\n\r\n{}"]) as broken, \
            ScriptedUpstream(SECOND) as second:
        edge = start_edge(f"""\
server: {{http: 127.0.0.1:0}}
upstream: {{health: {{enabled: false}}}}
deployments:
  - name: first
    base_url: {first.url}
  - name: broken
    base_url: {broken.url}
    continuation: prefill
  - name: second
    base_url: {second.url}
    continuation: prefill
routes:
  - name: auto
    deployments: [first]
    fallbacks: [broken, second]
""")
        with edge.client() as client:
            chunks = list(client.chat.completions.create(model="auto", messages=MESSAGES,
                                                         stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "The quick brown fox jumps."
        assert chunks[-1].model_extra["x_llmedge"]["to"] == "second"
        assert broken.requests == 1 and second.requests == 1
    assert metric_value(edge.metrics(), "llmedge_stream_continuations_total",
                        deployment="broken", result="failed") == 1


@pytest.mark.parametrize("cut", ["drop_after", "stall_after"])
def test_the_simulators_cut_and_continue_one_reply(start_edge, sims, cut):
    reply = "one two three four five six seven eight"
    sims.alpha.configure(reply=reply, chunks=8, **{cut: 3})
    sims.beta.configure(reply=reply, chunks=8)    # continues a prefix of its reply
    edge = start_edge(f"""\
server: {{http: 127.0.0.1:0}}
upstream: {{health: {{enabled: false}}}}
deployments:
  - name: alpha
    base_url: {sims.alpha.url}
    timeouts: {{idle_s: 0.5}}
  - name: beta
    base_url: {sims.beta.url}
    continuation: prefill
routes:
  - name: auto
    deployments: [alpha]
    fallbacks: [beta]
""")
    with edge.client() as client:
        chunks = list(client.chat.completions.create(model="auto", messages=MESSAGES,
                                                     stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # alpha's three pieces and beta's five: the one reply, once.
    assert text == reply
    stats = sims.beta.stats()
    assert stats["continuations"] == 1
    assert reply.startswith(stats["last_continuation_prefix"])
    assert len(stats["last_continuation_prefix"]) > 0
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].model_extra["x_llmedge"]["from"] == "alpha"
    wait_for(lambda: metric_value(edge.metrics(), "llmedge_requests_total", status="200") == 1,
             message="the request to be counted as answered")
