"""A deployment that declares ``responses: true`` takes the OpenAI Responses API itself: a
``/v1/responses`` request goes to ``{base_url}/responses`` as the client sent it (only
``model`` rewritten; proxy/passthrough.py) and its answer back as it came.

``ResponsesView`` is how the request path reads such an answer meanwhile: the ``response``
object, or its event stream, as Chat Completions — text, function calls, reasoning
summaries, the finish (``completed``; ``incomplete`` for the output limit as ``length``) and
usage — so commit, accounting, the cache and fallbacks work as for any other answer. It is
never used to translate a request: Chat Completions requests to the same deployment go to
``/chat/completions`` as they are.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from .base import Adapter, StreamTranslator, Untranslatable
from .sse import NOT_JSON_EVENT, EventSplitter, error_event


def usage(doc: Any) -> dict:
    doc = doc if isinstance(doc, dict) else {}
    prompt = int(doc.get("input_tokens") or 0)
    completion = int(doc.get("output_tokens") or 0)
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    cached = (doc.get("input_tokens_details") or {}).get("cached_tokens")
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": int(cached)}
    return out


def _finish(response: dict, called: bool) -> str:
    if response.get("status") == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        return "content_filter" if reason == "content_filter" else "length"
    return "tool_calls" if called else "stop"


def completion(response: Any) -> dict:
    """A ``response`` object as a Chat Completions answer."""
    if not isinstance(response, dict) or not isinstance(response.get("output"), list):
        raise ValueError("not a Responses answer")
    text, reasoning, calls = [], [], []
    for item in response["output"]:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "message":
            text += [str(part.get("text", "")) for part in item.get("content") or ()
                     if isinstance(part, dict) and part.get("type") == "output_text"]
        elif kind == "function_call":
            calls.append({"id": str(item.get("call_id", "")), "type": "function",
                          "function": {"name": str(item.get("name", "")),
                                       "arguments": str(item.get("arguments", ""))}})
        elif kind == "reasoning":
            reasoning += [str(part.get("text", "")) for part in item.get("summary") or ()
                          if isinstance(part, dict)]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    return {"id": str(response.get("id", "")), "object": "chat.completion",
            "created": int(response.get("created_at") or time.time()),
            "model": str(response.get("model", "")),
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": _finish(response, bool(calls))}],
            "usage": usage(response.get("usage"))}


class ResponsesStream(StreamTranslator):
    """Responses events in, Chat Completions chunks out."""

    __slots__ = ("events", "prefix", "calls")

    def __init__(self, model: str) -> None:
        self.events = EventSplitter()
        self.prefix = b'data: {"id":"","object":"chat.completion.chunk","created":%d,' \
                      b'"model":%s,"choices":' % (int(time.time()), orjson.dumps(model))
        self.calls: dict[str, int] = {}   # function call item id -> tool call index

    def passed(self) -> bytes:
        return self.events.complete

    def _chunk(self, delta: bytes, finish: bytes = b"null") -> bytes:
        return b'%s[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]}\n\n' % (
            self.prefix, delta, finish)

    def feed(self, data: bytes) -> bytes:
        out = []
        for _, payload in self.events.feed(data):
            if not payload:
                continue
            try:
                doc = orjson.loads(payload)
            except orjson.JSONDecodeError:
                out.append(NOT_JSON_EVENT)
                continue
            if isinstance(doc, dict):
                out.append(self._event(doc))
        return b"".join(out)

    def _event(self, doc: dict) -> bytes:
        kind = doc.get("type")
        if kind == "response.output_text.delta":
            return self._chunk(b'{"content":%s}' % orjson.dumps(str(doc.get("delta", ""))))
        if kind == "response.function_call_arguments.delta":
            call = self.calls.get(doc.get("item_id"))
            if call is None:
                return b""
            return self._chunk(b'{"tool_calls":[{"index":%d,"function":{"arguments":%s}}]}'
                               % (call, orjson.dumps(str(doc.get("delta", "")))))
        if kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            return self._chunk(b'{"reasoning_content":%s}'
                               % orjson.dumps(str(doc.get("delta", ""))))
        if kind == "response.output_item.added":
            item = doc.get("item") or {}
            if item.get("type") == "function_call":
                call = self.calls[item.get("id")] = len(self.calls)
                return self._chunk(orjson.dumps({"tool_calls": [{
                    "index": call, "id": str(item.get("call_id", "")), "type": "function",
                    "function": {"name": str(item.get("name", "")), "arguments": ""}}]}))
            return b""
        if kind == "response.created":
            response = doc.get("response") or {}
            self.prefix = b'data: {"id":%s,"object":"chat.completion.chunk","created":%d,' \
                          b'"model":%s,"choices":' % (
                              orjson.dumps(str(response.get("id", ""))),
                              int(response.get("created_at") or time.time()),
                              orjson.dumps(str(response.get("model", ""))))
            return self._chunk(b'{"role":"assistant","content":""}')
        if kind in ("response.completed", "response.incomplete"):
            response = doc.get("response") or {}
            finish = _finish(response, bool(self.calls))
            return (self._chunk(b"{}", orjson.dumps(finish))
                    + self.prefix + b'[],"usage":%s}\n\n' % orjson.dumps(
                        usage(response.get("usage"))) + b"data: [DONE]\n\n")
        if kind in ("error", "response.failed"):
            error = doc if kind == "error" else ((doc.get("response") or {}).get("error") or {})
            return error_event(str(error.get("code") or "upstream_error"),
                               str(error.get("message") or "the response failed"))
        return b""   # the rest restates what the deltas said


class ResponsesView(Adapter):
    name = "responses"

    def request_path(self, path: bytes, stream: bool) -> bytes:
        return b"/responses"

    def request_body(self, body: bytes, stream: bool) -> bytes:
        raise Untranslatable("responses: only a Responses request goes to /responses")

    def answer(self, payload: bytes) -> bytes:
        return orjson.dumps(completion(orjson.loads(payload)))

    def stream(self, model: str) -> StreamTranslator:
        return ResponsesStream(model)
