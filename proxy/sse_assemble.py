"""A streamed chat completion assembled into the ``chat.completion`` it stands for.

The cache stores one form for both kinds of request: a stream is stored as the completion
its chunks add up to, so a later non-streaming request can be answered from it, and a later
streaming one gets it replayed (``cache.sse_replay``). Only a stream that really finished is
worth storing: it must end with ``data: [DONE]``, every choice must carry a
``finish_reason``, and no event may be an error. Anything else gives ``None``.
"""

from __future__ import annotations

import orjson

_TOP_FIELDS = ("id", "created", "model", "system_fingerprint", "service_tier")


class _Choice:
    __slots__ = ("index", "role", "content", "refusal", "tool_calls", "finish_reason",
                 "logprobs")

    def __init__(self, index: int) -> None:
        self.index = index
        self.role = "assistant"
        self.content: list[str] | None = None
        self.refusal: list[str] | None = None
        self.tool_calls: dict[int, dict] = {}
        self.finish_reason: str | None = None
        self.logprobs: list | None = None

    def add(self, choice: dict) -> None:
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise ValueError("delta is not an object")
        if isinstance(delta.get("role"), str):
            self.role = delta["role"]
        for field in ("content", "refusal"):
            piece = delta.get(field)
            if isinstance(piece, str):
                parts = getattr(self, field)
                if parts is None:
                    parts = []
                    setattr(self, field, parts)
                parts.append(piece)
        for call in delta.get("tool_calls") or ():
            self._add_call(call)
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
            if self.logprobs is None:
                self.logprobs = []
            self.logprobs.extend(logprobs["content"])
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]

    def _add_call(self, call: dict) -> None:
        # Tool calls arrive as fragments keyed by their index: the first carries id, type
        # and name, later ones more of the arguments string.
        index = call.get("index", len(self.tool_calls))
        have = self.tool_calls.get(index)
        if have is None:
            have = self.tool_calls[index] = {"id": call.get("id"), "type": call.get("type",
                                             "function"), "function": {"name": "",
                                                                       "arguments": ""}}
        if call.get("id"):
            have["id"] = call["id"]
        function = call.get("function") or {}
        for field in ("name", "arguments"):
            piece = function.get(field)
            if isinstance(piece, str):
                have["function"][field] += piece

    def message(self) -> dict:
        out: dict = {"index": self.index, "message": {
            "role": self.role,
            "content": "".join(self.content) if self.content is not None else None}}
        message = out["message"]
        if self.refusal is not None:
            message["refusal"] = "".join(self.refusal)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        out["logprobs"] = {"content": self.logprobs} if self.logprobs is not None else None
        out["finish_reason"] = self.finish_reason
        return out


def sse_data(raw: bytes) -> list[bytes]:
    """The ``data:`` payloads of an SSE byte stream, in order (multi-line data joined)."""
    events = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = [line[5:].removeprefix(b" ") for line in block.split(b"\n")
                 if line.startswith(b"data:")]
        if lines:
            events.append(b"\n".join(lines))
    return events


def assemble(raw: bytes) -> bytes | None:
    """The ``chat.completion`` body a complete SSE chat stream adds up to, else None."""
    top: dict = {}
    choices: dict[int, _Choice] = {}
    usage = None
    done = False
    try:
        for data in sse_data(raw):
            if done:
                return None          # events after [DONE]: not a stream we understand
            if data.strip() == b"[DONE]":
                done = True
                continue
            chunk = orjson.loads(data)
            if not isinstance(chunk, dict) or "error" in chunk:
                return None
            for field in _TOP_FIELDS:
                if field not in top and chunk.get(field) is not None:
                    top[field] = chunk[field]
            if chunk.get("usage") is not None:
                usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                index = choice.get("index", 0)
                if not isinstance(index, int):
                    return None
                target = choices.get(index)
                if target is None:
                    target = choices[index] = _Choice(index)
                target.add(choice)
    except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError):
        return None
    if not done or not choices or any(c.finish_reason is None for c in choices.values()):
        return None
    body: dict = {"id": top.get("id", "chatcmpl-cached"), "object": "chat.completion",
                  "created": top.get("created", 0), "model": top.get("model", "")}
    for field in ("system_fingerprint", "service_tier"):
        if field in top:
            body[field] = top[field]
    body["choices"] = [choices[i].message() for i in sorted(choices)]
    if usage is not None:
        body["usage"] = usage
    return orjson.dumps(body)
