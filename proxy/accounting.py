"""Tokens and cost from the upstream's ``usage``.

Whole answers carry ``usage`` in their JSON. Streams carry it only when asked
(``stream_options.include_usage``), so llmedge asks on every streamed request and, when the
client did not ask, takes the usage event out of the stream again: the client sees what it
asked for, and the metrics still count every token.
"""

from __future__ import annotations

import json

import msgspec

USAGE_MARK = b'"usage":{'
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


def usage_of_body(payload: bytes) -> Usage | None:
    """The usage of a whole chat or embeddings answer (None when absent or unreadable)."""
    if USAGE_MARK not in payload:
        return None
    try:
        return _body_decoder.decode(payload).usage
    except msgspec.MsgspecError:
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


def take_usage(data: bytes, strip: bool) -> tuple[bytes, Usage | None]:
    """Find the usage event among whole SSE events in ``data``; with ``strip`` remove it
    when it carries nothing else (no choices). Returns the events to forward."""
    usage = None
    kept = []
    changed = False
    for event in data.split(b"\n\n"):
        if USAGE_MARK in event:
            payload = b"".join(line[5:] for line in event.splitlines()
                               if line.startswith(b"data:"))
            try:
                parsed = _event_decoder.decode(payload)
            except msgspec.MsgspecError:
                parsed = None
            if parsed is not None and parsed.usage is not None:
                usage = parsed.usage
                if strip and not parsed.choices:
                    changed = True
                    continue
        kept.append(event)
    return (b"\n\n".join(kept) if changed else data), usage


def cost_usd(usage: Usage, price_in: float, price_out: float) -> float:
    """Prices are USD per 1M tokens."""
    return (usage.prompt_tokens * price_in + usage.completion_tokens * price_out) / 1e6
