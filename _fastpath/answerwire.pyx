# cython: language_level=3, boundscheck=False, wraparound=False
"""The common answers as protobuf wire bytes, compiled; ``answerwire_py`` is the spec.

Same answers, same bytes, same None for what only the general translation writes.
"""

from cpython.bytearray cimport PyByteArray_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8String
from libc.stdint cimport uint64_t

__all__ = ("FINISH_REASONS", "chunk_bytes", "response_bytes")

FINISH_REASONS = {"stop": 1, "length": 2, "tool_calls": 3, "content_filter": 4,
                  "function_call": 5}

cdef object _FINISH = FINISH_REASONS
cdef uint64_t _INT64 = (<uint64_t>1) << 63
cdef uint64_t _INT32 = (<uint64_t>1) << 31

# Tags of the string fields of a message (whole answers) and of a delta (chunks), and
# whether each is proto3 optional (written even when empty).
cdef dict _MESSAGE = {"role": (0x0a, False), "content": (0x12, True), "name": (0x22, False),
                      "tool_call_id": (0x32, False), "refusal": (0x3a, True)}
cdef dict _DELTA = {"role": (0x0a, False), "content": (0x12, True), "refusal": (0x22, True)}
cdef dict _USAGE_TAGS = {"prompt_tokens": 0x08, "completion_tokens": 0x10,
                         "total_tokens": 0x18}


class _NotPlain(Exception):
    pass


cdef inline void _put_varint(bytearray out, uint64_t n):
    cdef unsigned char buf[10]
    cdef int size = 0
    while n >= 0x80:
        buf[size] = <unsigned char>((n & 0x7F) | 0x80)
        n >>= 7
        size += 1
    buf[size] = <unsigned char>n
    size += 1
    out.extend((<char*>buf)[:size])


cdef inline void _put_tag(bytearray out, int tag):
    cdef unsigned char byte = <unsigned char>tag
    out.extend((<char*>&byte)[:1])


cdef inline void _put_nested(bytearray out, int tag, bytearray payload):
    _put_tag(out, tag)
    _put_varint(out, <uint64_t>PyByteArray_GET_SIZE(payload))
    out.extend(payload)


cdef void _put_string(bytearray out, int tag, object value) except *:
    if type(value) is not str:
        raise _NotPlain
    try:
        data = PyUnicode_AsUTF8String(value)
    except UnicodeEncodeError:
        raise _NotPlain from None
    _put_tag(out, tag)
    _put_varint(out, <uint64_t>len(<bytes>data))
    out.extend(<bytes>data)


cdef void _put_unsigned(bytearray out, int tag, object value, uint64_t limit) except *:
    if type(value) is not int or value < 0 or value >= limit:
        raise _NotPlain
    cdef uint64_t n = <uint64_t>value
    if n:
        _put_tag(out, tag)
        _put_varint(out, n)


cdef bytearray _text_fields(object doc, dict fields):
    if type(doc) is not dict:
        raise _NotPlain
    cdef bytearray out = bytearray()
    cdef object key, value
    for key, value in (<dict>doc).items():   # compiled to PyDict_Next
        if value is None:
            continue
        spec = fields.get(key)
        if spec is None:
            raise _NotPlain
        if value or (<tuple>spec)[1]:
            _put_string(out, (<tuple>spec)[0], value)
        elif type(value) is not str:
            raise _NotPlain
    return out


cdef void _put_choice(bytearray out, object doc, str body_key, dict body_fields) except *:
    if type(doc) is not dict:
        raise _NotPlain
    cdef bytearray choice = bytearray()
    cdef bytearray index = bytearray()
    cdef bytearray body = None
    cdef object finish = None
    cdef object key, value
    for key, value in (<dict>doc).items():   # compiled to PyDict_Next
        if value is None:
            continue
        if key == "index":
            index = bytearray()
            _put_unsigned(index, 0x08, value, _INT32)
        elif key == body_key:
            body = _text_fields(value, body_fields)
        elif key == "finish_reason" and type(value) is str and value in _FINISH:
            finish = _FINISH[value]
        else:
            raise _NotPlain
    choice.extend(index)
    if body is not None:
        _put_nested(choice, 0x12, body)
    if finish is not None:
        _put_tag(choice, 0x18)
        _put_varint(choice, <uint64_t>finish)
    _put_nested(out, 0x22, choice)


cdef bytearray _usage(object doc):
    if type(doc) is not dict:
        raise _NotPlain
    cdef bytearray out = bytearray()
    cdef bint present = False
    cdef object key, value
    for key, value in (<dict>doc).items():   # compiled to PyDict_Next
        if value is None:
            continue
        tag = _USAGE_TAGS.get(key)
        if tag is None:
            raise _NotPlain
        _put_unsigned(out, tag, value, _INT64)
        present = True
    return out if present else None


cdef bytes _answer(object doc, str body_key, dict body_fields):
    if type(doc) is not dict:
        raise _NotPlain
    # Written in field order, as protobuf writes them, whatever the JSON's key order.
    cdef bytearray id_ = bytearray(), created = bytearray(), model = bytearray()
    cdef bytearray choices = bytearray(), fingerprint = bytearray()
    cdef bytearray usage = None
    cdef object key, value
    for key, value in (<dict>doc).items():   # compiled to PyDict_Next
        if value is None or key == "object":
            continue
        if key == "id":
            id_ = bytearray()
            _put_maybe_string(id_, 0x0a, value)
        elif key == "created":
            created = bytearray()
            _put_unsigned(created, 0x10, value, _INT64)
        elif key == "model":
            model = bytearray()
            _put_maybe_string(model, 0x1a, value)
        elif key == "choices":
            if type(value) is not list:
                raise _NotPlain
            choices = bytearray()
            for choice in <list>value:
                _put_choice(choices, choice, body_key, body_fields)
        elif key == "usage":
            usage = _usage(value)
        elif key == "system_fingerprint":
            fingerprint = bytearray()
            _put_maybe_string(fingerprint, 0x32, value)
        else:
            raise _NotPlain
    cdef bytearray out = id_
    out.extend(created)
    out.extend(model)
    out.extend(choices)
    if usage is not None:
        _put_nested(out, 0x2a, usage)
    out.extend(fingerprint)
    return bytes(out)


cdef void _put_maybe_string(bytearray out, int tag, object value) except *:
    # An empty string is proto3's default: not written, but still a string.
    if value:
        _put_string(out, tag, value)
    elif type(value) is not str:
        raise _NotPlain


def response_bytes(doc):
    """A whole ``chat.completion`` as ChatResponse bytes, or None."""
    try:
        return _answer(doc, "message", _MESSAGE)
    except _NotPlain:
        return None


def chunk_bytes(doc):
    """One ``chat.completion.chunk`` as ChatChunk bytes, or None."""
    try:
        return _answer(doc, "delta", _DELTA)
    except _NotPlain:
        return None
