"""Tokens and cost from the upstream's ``usage``.

Whole answers carry ``usage`` in their JSON. Streams carry it only when asked
(``stream_options.include_usage``), so llmedge asks on every streamed request and, when the
client did not ask, takes the usage event out of the stream again: the client sees what it
asked for, and the metrics still count every token.
"""

from __future__ import annotations

import json
import re

import msgspec

# The key of a usage object, in any layout: OpenAI itself pretty-prints (`"usage": {`), and a
# stream asked for usage carries `"usage":null` in every chunk but the last. Inside a JSON
# string the quotes would be escaped, so only a real key matches.
USAGE_KEY = b'"usage"'
_USAGE_OBJECT = re.compile(rb'"usage"[ \t\r\n]*:[ \t\r\n]*\{')
# SSE events end with a blank line; any of the three line ends may be used (CRLF from some
# servers), so the separator is kept as it came.
_EVENT_END = re.compile(rb"(\r\n\r\n|\n\n|\r\r)")
_ASK = b'"stream_options":{"include_usage":true},'


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _WithUsage(msgspec.Struct):
    usage: Usage | None = None


class _Event(msgspec.Struct):
    usage: Usage | None = None
    choices: list[msgspec.Raw] = []


_body_decoder = msgspec.json.Decoder(_WithUsage)
_event_decoder = msgspec.json.Decoder(_Event)


def has_usage(data: bytes) -> bool:
    """Whether ``data`` holds a usage object: cheap when it does not."""
    return USAGE_KEY in data and _USAGE_OBJECT.search(data) is not None


class NotJson(ValueError):
    """A body that is not the JSON object it claims to be."""


def read_answer(payload: bytes) -> Usage | None:
    """Check a whole chat or embeddings answer is a JSON object and return its usage (None
    when it reports none); raises NotJson otherwise. One decoding pass does both."""
    try:
        return _body_decoder.decode(payload).usage
    except (msgspec.DecodeError, RecursionError):
        pass
    # A usage of another shape, or JSON that msgspec refuses and the standard decoder takes
    # (lone surrogate escapes): only a document that is not an object is a broken answer.
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        raise NotJson("the answer is not valid JSON") from None
    if not isinstance(doc, dict):
        raise NotJson("the answer is JSON but not an object")
    return None


def ask_for_usage(body: bytes) -> bytes | None:
    """The request body with ``stream_options.include_usage`` set, or None when the
    client asked for usage already (or the body is not an object we can extend)."""
    if b'"stream_options"' not in body:
        # The common case, without decoding the body: the field goes in first.
        start = body.find(b"{")
        if start >= 0 and not body[:start].strip() and body[start + 1:].lstrip()[:1] != b"}":
            return body[:start + 1] + _ASK + body[start + 1:]
    try:
        # The standard decoder: it keeps integers beyond 64 bits exact (orjson would not).
        doc = json.loads(body)
    except ValueError:
        return None
    options = doc.get("stream_options") if isinstance(doc, dict) else None
    if options is None:
        doc["stream_options"] = {"include_usage": True}
    elif isinstance(options, dict) and options.get("include_usage") is not True:
        doc["stream_options"] = {**options, "include_usage": True}
    else:
        return None
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def event_data(event: bytes) -> bytes:
    """The data of one SSE event: its ``data:`` lines, joined by newlines as the SSE
    standard says (a pretty-printed JSON payload spans several)."""
    lines = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            line = line[5:]
            lines.append(line[1:] if line[:1] == b" " else line)
    return b"\n".join(lines)


def take_usage(data: bytes, strip: bool) -> tuple[bytes, Usage | None]:
    """Find the usage event among whole SSE events in ``data``; with ``strip`` remove it
    when it carries nothing else (no choices). Returns the events to forward."""
    usage = None
    # [event, end, event, end, ..., rest]: the rest is empty when data ends an event.
    parts = _EVENT_END.split(data)
    kept = []
    changed = False
    for i in range(0, len(parts), 2):
        event = parts[i]
        end = parts[i + 1] if i + 1 < len(parts) else b""
        if has_usage(event):
            try:
                parsed = _event_decoder.decode(event_data(event))
            except (msgspec.MsgspecError, RecursionError):
                parsed = None
            if parsed is not None and parsed.usage is not None:
                usage = parsed.usage
                if strip and not parsed.choices:
                    changed = True
                    continue
        kept.append(event + end)
    return (b"".join(kept) if changed else data), usage


def cost_usd(usage: Usage, price_in: float, price_out: float) -> float:
    """Prices are USD per 1M tokens."""
    return (usage.prompt_tokens * price_in + usage.completion_tokens * price_out) / 1e6
