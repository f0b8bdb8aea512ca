"""Continuing a stream cut mid-answer on another deployment.

When a stream breaks after some of the answer reached the client, the next candidate that
can continue a prefilled assistant turn (``deployments[].continuation: prefill``) is sent the
same conversation plus the partial answer as a last assistant message, with vLLM's
``continue_final_message: true`` and ``add_generation_prompt: false``. Its events are spliced
into the client's stream as if nothing happened: the first chunks' ``id``, ``model``,
``created`` and ``system_fingerprint``, no second role, usage added to what was reported
before, and on the last chunk an ``x_llmedge`` field saying the answer was continued, where
and from how much text. An answer with several choices, tool calls or no text so far is
not continued (it would not be the same answer), and neither is one past the transcript
bound.
"""

from __future__ import annotations

import json

import orjson

from .accounting import Usage, event_data

_DONE = b"[DONE]"


class Partial:
    """What the client has of the answer so far, read from the events it was sent."""

    __slots__ = ("text", "head", "role_sent")

    def __init__(self, text: str, head: dict, role_sent: bool) -> None:
        self.text = text
        self.head = head          # id, object, created, model, system_fingerprint
        self.role_sent = role_sent


def read_partial(transcript: list[bytes]) -> Partial | None:
    """The partial answer in the events sent so far; None when it cannot be continued."""
    text: list[str] = []
    head: dict = {}
    role_sent = False
    for block in b"".join(transcript).replace(b"\r\n", b"\n").split(b"\n\n"):
        data = event_data(block)
        if not data or data.strip() == _DONE:
            continue
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(chunk, dict):
            continue
        if not head:
            head = {k: chunk[k] for k in ("id", "object", "created", "model",
                                          "system_fingerprint") if k in chunk}
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                return None     # several choices: not one answer to continue
            if choice.get("finish_reason") is not None:
                return None     # it had ended: nothing to continue
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict) or delta.get("tool_calls") or \
                    delta.get("function_call"):
                return None
            role_sent = role_sent or "role" in delta
            if isinstance(delta.get("content"), str):
                text.append(delta["content"])
    joined = "".join(text)
    if not joined or not head:
        return None
    return Partial(joined, head, role_sent)


def continuation_body(body: bytes, partial: Partial, model: str) -> bytes:
    """The request to send a continuing deployment: the conversation, then the partial
    answer as an assistant turn to be continued. Off the usual path (a cut stream), so
    the standard decoder reads it: it keeps every number the client sent exact."""
    doc = json.loads(body)
    doc["messages"] = [*doc.get("messages", []),
                       {"role": "assistant", "content": partial.text}]
    doc["model"] = model
    doc["stream"] = True
    doc["continue_final_message"] = True
    doc["add_generation_prompt"] = False
    doc["stream_options"] = {**(doc.get("stream_options") or {}), "include_usage": True}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


class Splice:
    """Rewrites a continuing deployment's events into the stream the client is reading."""

    __slots__ = ("partial", "source", "target", "before", "usage", "held", "continued_at")

    def __init__(self, partial: Partial, source: str, target: str,
                 before: Usage | None) -> None:
        self.partial = partial
        self.source = source       # the deployment that was cut off
        self.target = target       # the one continuing
        self.before = before       # usage reported before the cut, if any
        self.usage: Usage | None = None
        self.held: bytes = b""     # the last event, until we know it is the last
        self.continued_at = len(partial.text)

    def rewrite(self, data: bytes) -> bytes:
        """The events of ``data`` (whole events) as the client's stream should carry them."""
        out = []
        for block in data.replace(b"\r\n", b"\n").split(b"\n\n"):
            payload = event_data(block)
            if not payload:
                continue
            if payload.strip() == _DONE:
                if self.held:
                    out.append(self._marked(self.held))
                    self.held = b""
                out.append(b"data: [DONE]\n\n")
                continue
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue    # nothing of it could be the answer's
            if not isinstance(chunk, dict):
                continue
            event = self._chunk(chunk)
            if event is None:
                continue
            if self.held:
                out.append(b"data: " + self.held + b"\n\n")
            self.held = event
        return b"".join(out)

    def _chunk(self, chunk: dict) -> bytes | None:
        chunk.update(self.partial.head)
        choices = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                delta.pop("role", None)   # the answer has its role already
                if not delta and choice.get("finish_reason") is None:
                    continue
            choices.append(choice)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = Usage(_count(usage.get("prompt_tokens")),
                               _count(usage.get("completion_tokens")))
            total = self.total()
            chunk["usage"] = {**usage, "prompt_tokens": total.prompt_tokens,
                              "completion_tokens": total.completion_tokens,
                              "total_tokens": total.prompt_tokens + total.completion_tokens}
        elif not choices:
            return None
        chunk["choices"] = choices
        return orjson.dumps(chunk)

    def _marked(self, event: bytes) -> bytes:
        chunk = orjson.loads(event)
        chunk["x_llmedge"] = {"continued": True, "from": self.source, "to": self.target,
                              "at_chars": self.continued_at}
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def total(self) -> Usage:
        """Usage of the whole answer: what was reported before the cut, and since."""
        before, since = self.before, self.usage
        return Usage((before.prompt_tokens if before else 0)
                     + (since.prompt_tokens if since else 0),
                     (before.completion_tokens if before else 0)
                     + (since.completion_tokens if since else 0))


def _count(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
