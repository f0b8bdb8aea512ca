"""Rewriting a request body's top-level ``"model"`` in place.

Decoding and re-encoding the whole body for one field cost about as much as the rest of
llmedge's request path together on small requests. When the key ``"model"`` occurs exactly
once in the raw bytes it can only be the top-level one (every chat request has it, and a
quote inside a JSON string is escaped), so its value is replaced where it stands and every
other byte goes upstream as the client sent it. Anything unusual falls back to a full
decode and encode.
"""

from __future__ import annotations

import json

import orjson

_KEY = b'"model"'
_SPACE = b" \t\r\n"


def _string_end(body: bytes, start: int) -> int:
    """Index just past the JSON string opening at ``start`` (a quote); -1 if unterminated."""
    i = start + 1
    while True:
        quote = body.find(b'"', i)
        if quote < 0:
            return -1
        backslashes = 0
        j = quote - 1
        while body[j] == 0x5C:   # backslash
            backslashes += 1
            j -= 1
        if backslashes % 2 == 0:
            return quote + 1
        i = quote + 1


def replace_model(body: bytes, model: str, current: str) -> bytes:
    """``body`` (a JSON object whose top-level ``model`` is ``current``) with that
    ``model`` set to ``model``."""
    at = body.find(_KEY)
    if at >= 0 and body.find(_KEY, at + len(_KEY)) < 0:
        i = at + len(_KEY)
        n = len(body)
        while i < n and body[i] in _SPACE:
            i += 1
        if i < n and body[i] == 0x3A:   # colon
            i += 1
            while i < n and body[i] in _SPACE:
                i += 1
            if i < n and body[i] == 0x22:   # the value is a string, as validated
                end = _string_end(body, i)
                # The value found must be the model the body was routed by: a top-level
                # key spelled with escapes ("\u006dodel") would leave only a nested one.
                if end > 0 and orjson.loads(body[i:end]) == current:
                    return body[:i] + orjson.dumps(model) + body[end:]
    # The standard decoder here, not orjson: it keeps integers beyond 64 bits exact, and
    # nothing the client sent may change on the way but the model.
    doc = json.loads(body)
    doc["model"] = model
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
