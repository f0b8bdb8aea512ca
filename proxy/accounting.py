"""Tokens and cost from the upstream's ``usage``.

Whole answers carry ``usage`` in their JSON. Streams carry it only when asked
(``stream_options.include_usage``), so llmedge asks on every streamed request and, when the
client did not ask, takes the usage event out of the stream again: the client sees what it
asked for, and the metrics still count every token.
"""

from __future__ import annotations

import json
import re
from typing import Annotated

import msgspec

from .jsondoc import without_surrogate_escapes

# The key of a usage object, in any layout: OpenAI itself pretty-prints (`"usage": {`), and a
# stream asked for usage carries `"usage":null` in every chunk but the last. Inside a JSON
# string the quotes would be escaped, so only a real key matches.
USAGE_KEY = b'"usage"'
_USAGE_OBJECT = re.compile(rb'"usage"[ \t\r\n]*:[ \t\r\n]*\{')
# SSE events end with a blank line; any of the three line ends may be used (CRLF from some
# servers), so the separator is kept as it came.
_EVENT_END = re.compile(rb"(\r\n\r\n|\n\n|\r\r)")
_ASK = b'"stream_options":{"include_usage":true},'


# More tokens than any request has: a count past it is a broken upstream, not usage (and
# would overflow every counter and log line it reached).
MAX_TOKENS = 10**12
TokenCount = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS)]


class Usage(msgspec.Struct):
    prompt_tokens: TokenCount = 0
    completion_tokens: TokenCount = 0


class _WithUsage(msgspec.Struct):
    usage: Usage | None = None


class _Event(msgspec.Struct):
    usage: Usage | None = None
    choices: list[msgspec.Raw] | None = None


class _AnyEvent(msgspec.Struct):
    usage: msgspec.Raw = msgspec.Raw(b"null")
    choices: list[msgspec.Raw] | None = None


class _AnyUsage(msgspec.Struct):
    usage: msgspec.Raw = msgspec.Raw(b"null")   # Raw takes no union: null stands for none


class _StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class _WithOptions(msgspec.Struct):
    stream_options: _StreamOptions | None = None


_options_decoder = msgspec.json.Decoder(_WithOptions)
_body_decoder = msgspec.json.Decoder(_WithUsage)
_lenient_decoder = msgspec.json.Decoder(_AnyUsage)
_event_decoder = msgspec.json.Decoder(_Event)
_any_event_decoder = msgspec.json.Decoder(_AnyEvent)
_usage_decoder = msgspec.json.Decoder(Usage | None)


def has_usage(data: bytes) -> bool:
    """Whether ``data`` holds a usage object. Substring tests in C first (the compact
    layout, no usage at all, or only the ``"usage":null`` a stream asked for usage carries in
    every chunk); the regex only for the other layouts."""
    if b'"usage":{' in data:
        return True
    if USAGE_KEY not in data or data.count(USAGE_KEY) == data.count(b'"usage":null'):
        return False
    return _USAGE_OBJECT.search(data) is not None


class NotJson(ValueError):
    """A body that is not the JSON object it claims to be."""


def read_answer(payload: bytes) -> Usage | None:
    """Check a whole chat or embeddings answer is a JSON object and return its usage (None
    when it reports none); raises NotJson otherwise. One decoding pass does both, and no
    fallback reads the body with a slower decoder (answers may be tens of MB)."""
    try:
        return _body_decoder.decode(payload).usage
    except msgspec.ValidationError:
        pass   # an object whose usage has another shape, or not an object
    except msgspec.DecodeError:
        readable = without_surrogate_escapes(payload)
        if readable is payload:
            raise NotJson("the answer is not valid JSON") from None
        return read_answer(readable)
    except RecursionError:
        raise NotJson("the answer nests too deeply to read") from None
    try:
        usage = _lenient_decoder.decode(payload).usage
    except msgspec.ValidationError:
        raise NotJson("the answer is JSON but not an object") from None
    return _lenient_usage(usage)


def _count(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return int(value) if 0 <= value <= MAX_TOKENS else 0


def _lenient_usage(raw: msgspec.Raw) -> Usage | None:
    """Token counts from a usage object of another shape (nulls, floats, counts no request
    has): what can be read, 0 for the rest."""
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    return Usage(_count(doc.get("prompt_tokens")), _count(doc.get("completion_tokens")))


def _usage_of(raw: msgspec.Raw) -> Usage | None:
    try:
        return _usage_decoder.decode(raw)
    except msgspec.ValidationError:
        return _lenient_usage(raw)


def ask_for_usage(body: bytes) -> bytes | None:
    """The request body with ``stream_options.include_usage`` set, or None when the
    client asked for usage already (or the body is not an object we can extend)."""
    if b'"stream_options"' not in body:
        # The common case, without decoding the body: the field goes in first.
        start = body.find(b"{")
        if start >= 0 and not body[:start].strip() and body[start + 1:].lstrip()[:1] != b"}":
            return body[:start + 1] + _ASK + body[start + 1:]
    try:
        if _options_decoder.decode(without_surrogate_escapes(body)).stream_options.include_usage:
            return None   # asked already (what the SDKs send): no need to read it all
    except (msgspec.MsgspecError, AttributeError, RecursionError):
        pass
    try:
        # The standard decoder: it keeps integers beyond 64 bits exact (orjson would not).
        doc = json.loads(body)
    except (ValueError, RecursionError):
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


def _event_usage(event: bytes) -> tuple[Usage | None, bool]:
    """(the usage an SSE event carries, whether it carries choices too)."""
    payload = event_data(event)
    try:
        parsed = _event_decoder.decode(payload)
        return parsed.usage, bool(parsed.choices)
    except msgspec.ValidationError:
        pass   # a usage of another shape: read leniently below
    except msgspec.DecodeError:
        payload = without_surrogate_escapes(payload)
    except RecursionError:
        return None, False
    try:
        lenient = _any_event_decoder.decode(payload)
    except (msgspec.MsgspecError, RecursionError):
        return None, False
    return _usage_of(lenient.usage), bool(lenient.choices)


def take_usage(data: bytes, strip: bool) -> tuple[bytes, Usage | None]:
    """Find the usage event among whole SSE events in ``data``; with ``strip`` remove it
    when it carries nothing else (no choices). Returns the events to forward."""
    if b"\r" in data:
        # [event, end, event, end, ..., rest]: any line ends, each kept as it came.
        parts = _EVENT_END.split(data)
        events, ends, rest = parts[:-1:2], parts[1::2], parts[-1]
    else:
        # The usual \n line ends: split in C, several times faster than the regex.
        events = data.split(b"\n\n")
        rest = events.pop()
        ends = None
    usage = None
    dropped = []
    for i, event in enumerate(events):
        if USAGE_KEY in event and has_usage(event):
            found, with_choices = _event_usage(event)
            if found is not None:
                usage = found
                if strip and not with_choices:
                    dropped.append(i)
    if not dropped:
        return data, usage
    kept = [event + (ends[i] if ends is not None else b"\n\n")
            for i, event in enumerate(events) if i not in dropped]
    return b"".join(kept) + rest, usage


def cost_usd(usage: Usage, price_in: float, price_out: float) -> float:
    """Prices are USD per 1M tokens."""
    return (usage.prompt_tokens * price_in + usage.completion_tokens * price_out) / 1e6
