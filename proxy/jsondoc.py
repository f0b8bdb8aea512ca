"""Request bodies as JSON, including the valid JSON that fast decoders refuse.

msgspec and orjson refuse a little valid JSON: lone surrogate escapes (``"\\ud800"``, both)
and numbers beyond a double (``1e400`` and 5,000-digit integers, orjson). A client may send
them in fields llmedge does not read, and the upstream may well accept them, so they are not
a reason to refuse a request: the standard decoder reads them, more slowly, only when a fast
one has refused. What nests deeper than a decoder can follow is refused with a message that
says so.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import msgspec
import orjson

from .errors import BadRequest

TOO_DEEP = "the request body nests arrays and objects too deeply to read"


def _standard(body: bytes, why: str) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        raise BadRequest(TOO_DEEP) from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):
            # Valid JSON, but Python reads integers of at most sys.get_int_max_str_digits()
            # digits (converting longer ones costs quadratic time).
            raise BadRequest("the request body holds an integer of more than %d digits, "
                             "which llmedge does not read here" % sys.get_int_max_str_digits()
                             ) from None
        raise BadRequest("the request body is not valid JSON: %s" % why) from None


def load(body: bytes) -> Any:
    """The whole document; BadRequest when it is not JSON or too deep."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _standard(body, str(exc))


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
        doc = _standard(body, str(exc))
    except RecursionError:
        raise BadRequest(TOO_DEEP) from None
    try:
        return msgspec.convert(doc, decoder.type)
    except msgspec.ValidationError as exc:
        raise _validation_problem(exc) from None
