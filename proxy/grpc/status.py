"""HTTP answers of the request path as gRPC statuses and metadata.

The request path answers in HTTP terms (a status, an OpenAI error body, a header block);
this is the one place that says what each means in gRPC terms.
"""

from __future__ import annotations

import grpc
import orjson

from ..errors import ProxyError

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ABORTED,
    # A prompt too large for the upstream will not fit on a retry either.
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# What the HTTP front end sends as response headers and gRPC carries as metadata.
META_HEADERS = frozenset((b"x-llmedge-route", b"x-llmedge-upstream", b"x-llmedge-cache",
                          b"x-llmedge-attempts", b"x-llmedge-decision", b"x-request-id",
                          b"retry-after", b"age"))


def code_for(status: int) -> grpc.StatusCode:
    code = _CODES.get(status)
    if code is not None:
        return code
    if 400 <= status < 500:
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL if status >= 500 else grpc.StatusCode.UNKNOWN


def metadata(header_block: bytes) -> list[tuple[str, str]]:
    """A ready HTTP header block (``name: value\\r\\n`` lines) as gRPC metadata."""
    pairs = []
    for line in header_block.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        name = name.strip().lower()
        if sep and name in META_HEADERS:
            # Metadata values must be printable ASCII; names from the config may not be.
            pairs.append((name.decode("ascii"),
                          value.strip().decode("ascii", "backslashreplace")))
    return pairs


class Failure:
    """A failed answer: status code, message, and the trailing metadata that goes with it."""

    __slots__ = ("code", "message", "trailers")

    def __init__(self, code: grpc.StatusCode, message: str,
                 trailers: list[tuple[str, str]]) -> None:
        self.code = code
        self.message = message
        self.trailers = trailers


def from_http(status: int, body: bytes, header_block: bytes = b"") -> Failure:
    """An error answer (status, OpenAI error body, headers) as a gRPC failure."""
    trailers = metadata(header_block)
    message = "upstream answered %d" % status
    try:
        error = orjson.loads(body).get("error") if body else None
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    if isinstance(error, dict):
        if isinstance(error.get("message"), str):
            message = error["message"]
        for key in ("type", "code", "param"):
            value = error.get(key)
            if value is not None:
                trailers.append(("x-llmedge-error-" + key, str(value).encode(
                    "ascii", "backslashreplace").decode("ascii")))
    elif body:
        message = "%s: %s" % (message, body[:200].decode("utf-8", "replace"))
    trailers.append(("x-llmedge-http-status", str(status)))
    code = code_for(status)
    if code == grpc.StatusCode.INTERNAL and any(
            name == "x-llmedge-upstream" and value != "-" for name, value in trailers):
        # An upstream's own 5xx, passed on: a failing upstream (worth a retry), not a fault
        # in llmedge.
        code = grpc.StatusCode.UNAVAILABLE
    return Failure(code, message, trailers)


def from_error(exc: ProxyError) -> Failure:
    trailers = []
    for key, value in (("type", exc.type), ("code", exc.code), ("param", exc.param)):
        if value is not None:
            trailers.append(("x-llmedge-error-" + key, value))
    if exc.retry_after is not None:
        trailers.append(("retry-after", "%g" % exc.retry_after))
    trailers.append(("x-llmedge-http-status", str(exc.status)))
    return Failure(code_for(exc.status), exc.message, trailers)
