"""Canonical cache key of a chat request: the reference implementation.

This is the spec for ``cachekey.pyx``; both must return the same bytes for the same input
and reject bad input with the same exception and message.

The canonical form
------------------
``canonical(route, request)`` is ``FORMAT_VERSION`` (one byte) followed by the route as a
string and the request as an object, in a type-tagged, length-prefixed encoding::

    null            b"N"
    true / false    b"T" / b"F"
    int             b"i" + 8 bytes, two's complement, little-endian   (-2**63 <= n < 2**63)
                    b"I" + uvarint(k) + k bytes, two's complement, little-endian,
                    k = (n.bit_length() + 8) // 8                       (any other int)
    float           b"f" + 8 bytes, IEEE-754 binary64, little-endian
    str             b"s" + uvarint(k) + k bytes of UTF-8 ("surrogatepass": a lone
                    surrogate is encoded like any other code point, as 3 bytes)
    list            b"[" + uvarint(count) + each item
    object (dict)   b"{" + uvarint(count) + for each entry, keys sorted by their UTF-8
                    bytes: uvarint(k) + k bytes of the key + the value

``uvarint`` is unsigned LEB128 (7 bits a byte, low group first, high bit = more follows).
Every value is a tag followed by either a fixed-size payload or a length/count, so the
encoding can be decoded back without ambiguity: two values that differ in anything (type
included) never share a canonical form. In particular the string ``"1"``, the int ``1``,
the float ``1.0`` and ``true`` all differ, as do ``["a", "b"]`` and ``["ab"]``,
``{"a": "b"}`` and ``["a", "b"]``, and a ``null`` field and a missing one.

Numbers keep their JSON type: ``1`` and ``1.0`` are different keys (an upstream may accept
one and reject the other, e.g. ``"n": 1.0``), and so are ``0.0`` and ``-0.0`` (different
bits). A float is its exact binary64 value, so any two spellings of the same double in the
JSON text (``1e2``, ``100.0``) give the same key. NaN and infinity are not JSON and raise.

At the top level only, the fields in ``IGNORED_FIELDS`` are left out: they change how the
answer is delivered or accounted, never what it says. Everything else, at any depth, is
part of the key, including fields this module does not know about.

``cache_key(route, request, namespace)`` is the 16-byte XXH3-128 digest of
``b"s" + uvarint(k) + namespace (UTF-8)`` followed by ``canonical(route, request)``.

Input is the decoded JSON body as ``orjson.loads`` produces it: exact ``dict`` (with
``str`` keys), ``list``, ``str``, ``int``, ``float``, ``bool`` and ``None``. Subclasses of
these (``OrderedDict``, ``IntEnum``, a ``str`` subclass) and any other type (tuple, set,
bytes, ...) raise ``TypeError``: a subclass could change what iteration or encoding sees,
and the compiled twin reads the built-in layout directly.
"""

import math
import struct

import xxhash

__all__ = ("FORMAT_VERSION", "IGNORED_FIELDS", "MAX_DEPTH", "cache_key", "canonical")

# Bump when the canonical form changes: keys are shared between instances (Redis), and
# instances running different formats must not read each other's entries by accident.
FORMAT_VERSION = 1

# Top-level request fields that cannot change the answer: delivery (stream,
# stream_options), accounting and bookkeeping (user, metadata, store). Identical in both
# twins (a test checks it).
IGNORED_FIELDS = frozenset({"stream", "stream_options", "user", "metadata", "store"})

# Containers nested deeper than this raise ValueError. The request object is level 1.
MAX_DEPTH = 64

_HEADER = bytes((FORMAT_VERSION,))
_INT64 = struct.Struct("<q").pack
_FLOAT64 = struct.Struct("<d").pack
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def _uvarint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _utf8(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def _put_str(out: bytearray, s: str) -> None:
    data = _utf8(s)
    out += b"s"
    out += _uvarint(len(data))
    out += data


def _put_value(out: bytearray, value: object, depth: int) -> None:
    # depth: the number of containers enclosing ``value``.
    t = type(value)
    if t is str:
        _put_str(out, value)  # type: ignore[arg-type]
    elif t is dict:
        _put_object(out, value, depth + 1, ())  # type: ignore[arg-type]
    elif t is list:
        if depth + 1 > MAX_DEPTH:
            raise ValueError("request is nested deeper than %d levels" % MAX_DEPTH)
        out += b"["
        out += _uvarint(len(value))  # type: ignore[arg-type]
        for item in value:  # type: ignore[attr-defined]
            _put_value(out, item, depth + 1)
    elif t is int:
        n: int = value  # type: ignore[assignment]
        if _INT64_MIN <= n <= _INT64_MAX:
            out += b"i"
            out += _INT64(n)
        else:
            data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
            out += b"I"
            out += _uvarint(len(data))
            out += data
    elif t is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise ValueError("request contains a non-finite float (NaN or infinity)")
        out += b"f"
        out += _FLOAT64(value)
    elif value is None:
        out += b"N"
    elif value is True:
        out += b"T"
    elif value is False:
        out += b"F"
    else:
        raise TypeError("request contains a value of unsupported type %r" % t.__name__)


def _put_object(out: bytearray, obj: dict, depth: int, ignored) -> None:
    # depth: the level of ``obj`` itself (the request is 1). Every key is checked, in the
    # dict's own order, before any value is looked at: the compiled twin does the same, so
    # both report the same error first.
    if depth > MAX_DEPTH:
        raise ValueError("request is nested deeper than %d levels" % MAX_DEPTH)
    for key in obj:
        if type(key) is not str:
            raise TypeError("request contains an object key of unsupported type %r"
                            % type(key).__name__)
    entries = sorted((_utf8(k), v) for k, v in obj.items() if k not in ignored)
    out += b"{"
    out += _uvarint(len(entries))
    for key, value in entries:
        out += _uvarint(len(key))
        out += key
        _put_value(out, value, depth)


def _check_args(route: object, request: object, namespace: object) -> None:
    if type(route) is not str:
        raise TypeError("route must be a str, not %r" % type(route).__name__)
    if type(namespace) is not str:
        raise TypeError("namespace must be a str, not %r" % type(namespace).__name__)
    if type(request) is not dict:
        raise TypeError("request must be a dict, not %r" % type(request).__name__)


def _canonical(route: str, request: dict, out: bytearray) -> bytearray:
    out += _HEADER
    _put_str(out, route)
    _put_object(out, request, 1, IGNORED_FIELDS)
    return out


def canonical(route: str, request: dict) -> bytes:
    """The canonical byte form of ``request`` on ``route``: what the cache key hashes.

    For tests and debugging; see the module docstring for the format.
    """
    _check_args(route, request, "")
    return bytes(_canonical(route, request, bytearray()))


def cache_key(route: str, request: dict, namespace: str = "") -> bytes:
    """The 16-byte cache key of ``request`` on ``route`` for tenant ``namespace``.

    The XXH3-128 digest of the namespace (length-prefixed) and ``canonical(route,
    request)``. Requests that differ in anything that could change the answer get different
    keys; key order, JSON whitespace and the ``IGNORED_FIELDS`` at the top level do not
    matter.
    """
    _check_args(route, request, namespace)
    out = bytearray()
    _put_str(out, namespace)
    return xxhash.xxh3_128_digest(_canonical(route, request, out))
