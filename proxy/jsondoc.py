"""Request bodies as JSON, including the valid JSON that fast decoders refuse.

msgspec refuses one kind of valid JSON: lone surrogate escapes (``"\\ud800"``), which a
client may send in text it cut badly and an upstream may well accept. For the fields llmedge
reads such an escape is replaced, in a copy, by U+FFFD and the copy decoded again: the body
still goes upstream as sent, and no slower decoder ever runs on the event loop (a body may
be megabytes). Numbers beyond a double and very long integers msgspec reads already where
llmedge does not look. What nests deeper than the decoder follows is refused with a message
that says so; ``NaN``, ``Infinity`` and bodies that are not UTF-8 are not JSON and are
refused.
"""

from __future__ import annotations

import re

import msgspec

from .errors import BadRequest

TOO_DEEP = "the request body nests arrays and objects too deeply to read"

# An escaped backslash (kept, so that what follows it is not read as an escape) or the
# escape of a UTF-16 surrogate (paired or not; only the copy a decoder reads loses it).
_ESCAPE = re.compile(rb"\\\\|\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_REPLACEMENT = b"\\ufffd"


def _replace(match: re.Match) -> bytes:
    escape = match.group()
    return escape if escape == b"\\\\" else _REPLACEMENT


def without_surrogate_escapes(body: bytes) -> bytes:
    """``body`` with every surrogate escape replaced by one of U+FFFD; the same object when
    it has none."""
    if b"\\u" not in body:
        return body
    readable = _ESCAPE.sub(_replace, body)
    return body if readable == body else readable


def _validation_problem(exc: msgspec.ValidationError) -> BadRequest:
    text = str(exc)
    param = None
    if " - at `$." in text:
        text, _, path = text.partition(" - at `$.")
        param = path.rstrip("`")
        text = "%s: %s" % (param, text)
    elif text.startswith("Object missing required field"):
        param = text.rpartition("`")[0].rpartition("`")[2] or None
    return BadRequest("invalid request: %s" % text, param=param)


def decode_view(decoder: msgspec.json.Decoder, body: bytes):
    """The typed view ``decoder`` reads from ``body``; BadRequest naming the field when the
    body is not such a request."""
    if not body:
        raise BadRequest("the request body is empty; expected a JSON object")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _validation_problem(exc) from None
    except msgspec.DecodeError as exc:
        readable = without_surrogate_escapes(body)
        if readable is body:
            raise BadRequest("the request body is not valid JSON: %s" % exc) from None
        problem = exc
    except RecursionError:
        raise BadRequest(TOO_DEEP) from None
    try:
        return decoder.decode(readable)
    except msgspec.ValidationError as exc:
        raise _validation_problem(exc) from None
    except msgspec.DecodeError:
        raise BadRequest("the request body is not valid JSON: %s" % problem) from None
    except RecursionError:
        raise BadRequest(TOO_DEEP) from None
