"""The common answers as protobuf wire bytes, written straight from the upstream's JSON:
the reference implementation, and the spec for ``answerwire.pyx``.

Building a ChatResponse or ChatChunk message field by field (``translate``) took a fifth of
the instructions of a streamed gRPC chunk (bench/grpc_instructions.py); written in Python
the bytes cost as much, so the compiled twin is the one that saves it.
Most answers are plain: text choices (or deltas), finish reasons and token counts. For
those, ``response_bytes`` and ``chunk_bytes`` write the bytes the message would serialize
to, with no message in between; for anything else (tool calls, content parts, logprobs,
fields the proto does not name, a value of an unexpected type) they return None and the
message is built by ``translate`` as before. Wherever both apply, the bytes parse to the
message ``translate`` builds, and both twins write the same bytes
(tests/fastpath/test_answerwire.py checks both over generated answers).

``proxy/grpc/translate.py`` is ``translate``; the message layout is llmedge.v1's
ChatResponse and ChatChunk (protos/llmedge/v1/gateway.proto): field numbers below.
"""

from __future__ import annotations

from typing import Any

__all__ = ("FINISH_REASONS", "chunk_bytes", "response_bytes")

# llmedge.v1.FinishReason's numbers.
FINISH_REASONS = {"stop": 1, "length": 2, "tool_calls": 3, "content_filter": 4,
                  "function_call": 5}

_INT64 = 1 << 63
_INT32 = 1 << 31
_SMALL = [bytes((n,)) for n in range(0x80)]


class _NotPlain(Exception):
    """The answer has something only ``translate`` writes."""


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _string(tag: bytes, value: Any) -> bytes:
    if type(value) is not str:
        raise _NotPlain
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        raise _NotPlain from None   # a lone surrogate: translate keeps it in extra_json
    return tag + _varint(len(data)) + data


def _nested(tag: bytes, data: bytes) -> bytes:
    return tag + _varint(len(data)) + data


def _unsigned(tag: bytes, value: Any, limit: int) -> bytes:
    if type(value) is not int or not 0 <= value < limit:
        raise _NotPlain   # negatives and bools go the general way
    return tag + _varint(value) if value else b""


# Field tags (field number << 3 | wire type): 0 varint, 2 length-delimited.
_ID, _CREATED, _MODEL, _CHOICES, _USAGE, _FINGERPRINT = b"\x0a", b"\x10", b"\x1a", b"\x22", \
    b"\x2a", b"\x32"
_INDEX, _BODY, _FINISH = b"\x08", b"\x12", b"\x18"       # Choice / ChunkChoice
_ROLE, _CONTENT, _NAME, _CALL_ID, _REFUSAL = b"\x0a", b"\x12", b"\x22", b"\x32", b"\x3a"
_DELTA_REFUSAL = b"\x22"
_USAGE_TAGS = {"prompt_tokens": b"\x08", "completion_tokens": b"\x10",
               "total_tokens": b"\x18"}
# Which keys of a message (delta) are strings, and their tags; proto3 ``optional`` ones are
# written even when empty, as the message keeps them set.
_MESSAGE = {"role": (_ROLE, False), "content": (_CONTENT, True), "name": (_NAME, False),
            "tool_call_id": (_CALL_ID, False), "refusal": (b"\x3a", True)}
_DELTA = {"role": (_ROLE, False), "content": (_CONTENT, True),
          "refusal": (_DELTA_REFUSAL, True)}


def _text_fields(doc: Any, fields: dict[str, tuple[bytes, bool]]) -> bytes:
    if type(doc) is not dict:
        raise _NotPlain
    out = []
    for key, value in doc.items():
        if value is None:
            continue
        spec = fields.get(key)
        if spec is None:
            raise _NotPlain
        tag, optional = spec
        if value or optional:
            out.append(_string(tag, value))
        elif type(value) is not str:
            raise _NotPlain
    return b"".join(out)


def _choice(doc: Any, body_key: str, body_fields: dict[str, tuple[bytes, bool]]) -> bytes:
    if type(doc) is not dict:
        raise _NotPlain
    index = body = finish = b""
    for key, value in doc.items():
        if value is None:
            continue
        if key == "index":
            index = _unsigned(_INDEX, value, _INT32)
        elif key == body_key:
            body = _nested(_BODY, _text_fields(value, body_fields))
        elif key == "finish_reason" and type(value) is str and value in FINISH_REASONS:
            finish = _FINISH + _varint(FINISH_REASONS[value])
        else:
            raise _NotPlain
    return _nested(_CHOICES, index + body + finish)


def _usage(doc: Any) -> bytes:
    if type(doc) is not dict:
        raise _NotPlain
    out = []
    present = False
    for key, value in doc.items():
        if value is None:
            continue
        tag = _USAGE_TAGS.get(key)
        if tag is None:
            raise _NotPlain
        out.append(_unsigned(tag, value, _INT64))
        present = True
    # A usage of nothing but nulls is left unset, as translate leaves it.
    return _nested(_USAGE, b"".join(out)) if present else b""


def _answer(doc: Any, body_key: str, body_fields: dict[str, tuple[bytes, bool]]) -> bytes:
    if type(doc) is not dict:
        raise _NotPlain
    parts = {}
    for key, value in doc.items():
        if value is None or key == "object":
            continue
        if key == "id":
            parts[1] = _string(_ID, value) if value else _check_str(value)
        elif key == "created":
            parts[2] = _unsigned(_CREATED, value, _INT64)
        elif key == "model":
            parts[3] = _string(_MODEL, value) if value else _check_str(value)
        elif key == "choices":
            if type(value) is not list:
                raise _NotPlain
            parts[4] = b"".join([_choice(c, body_key, body_fields) for c in value])
        elif key == "usage":
            parts[5] = _usage(value)
        elif key == "system_fingerprint":
            parts[6] = _string(_FINGERPRINT, value) if value else _check_str(value)
        else:
            raise _NotPlain
    # In field order, as protobuf writes them.
    return b"".join([parts[n] for n in sorted(parts)])


def _check_str(value: Any) -> bytes:
    if type(value) is not str:
        raise _NotPlain
    return b""


def response_bytes(doc: Any) -> bytes | None:
    """A whole ``chat.completion`` as ChatResponse bytes, or None (see the module)."""
    try:
        return _answer(doc, "message", _MESSAGE)
    except _NotPlain:
        return None


def chunk_bytes(doc: Any) -> bytes | None:
    """One ``chat.completion.chunk`` as ChatChunk bytes, or None (see the module)."""
    try:
        return _answer(doc, "delta", _DELTA)
    except _NotPlain:
        return None
