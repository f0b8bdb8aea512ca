"""Stream assembly for the cache: a replayed completion assembles back to itself, and only a
stream that really finished assembles at all."""

from __future__ import annotations

import orjson
import pytest

from proxy.cache import sse_replay
from proxy.sse_assemble import assemble

COMPLETION = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
    "system_fingerprint": "fp",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello there."},
         "logprobs": None, "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "lookup", "arguments": "{\"q\": \"x\"}"}}]},
         "logprobs": None, "finish_reason": "tool_calls"},
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
}


def event(obj) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chunk(index=0, finish=None, **delta):
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


def test_replay_assembles_back_to_the_completion():
    body = orjson.dumps(COMPLETION)
    assert orjson.loads(assemble(sse_replay(body, include_usage=True))) == COMPLETION
    without_usage = {k: v for k, v in COMPLETION.items() if k != "usage"}
    assert orjson.loads(assemble(sse_replay(body, include_usage=False))) == without_usage


def test_fragments_are_joined_across_events_and_crlf():
    stream = (event(chunk(role="assistant", content="")) + event(chunk(content="Hel"))
              + event(chunk(content="lo")).replace(b"\n", b"\r\n")
              + event(chunk(tool_calls=[{"index": 0, "id": "t", "type": "function",
                                         "function": {"name": "f", "arguments": "{\"a\""}}]))
              + event(chunk(tool_calls=[{"index": 0, "function": {"arguments": ": 1}"}}]))
              + event(chunk(finish="stop")) + b"data: [DONE]\n\n")
    message = orjson.loads(assemble(stream))["choices"][0]["message"]
    assert message["content"] == "Hello"
    assert message["tool_calls"][0]["function"] == {"name": "f", "arguments": "{\"a\": 1}"}


@pytest.mark.parametrize("stream", [
    event(chunk(content="cut")) + event(chunk(finish="stop")),              # no [DONE]
    event(chunk(content="no finish")) + b"data: [DONE]\n\n",                # no finish_reason
    event(chunk(content="x")) + event({"error": {"message": "boom"}})       # an error event
    + event(chunk(finish="stop")) + b"data: [DONE]\n\n",
    b"data: {not json\n\n" + event(chunk(finish="stop")) + b"data: [DONE]\n\n",
    b"data: [DONE]\n\n",                                                    # no choices
    event(chunk(finish="stop")) + b"data: [DONE]\n\n" + event(chunk(content="late")),
])
def test_incomplete_or_failed_streams_do_not_assemble(stream):
    assert assemble(stream) is None
