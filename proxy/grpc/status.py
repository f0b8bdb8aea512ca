"""Answers of the request path as gRPC statuses and metadata.

The request path answers with header pairs and ``ProxyError``s; what an error's status is on
gRPC is said in ``proxy/errors.py``, and this turns it into grpc's own types.
"""

from __future__ import annotations

import grpc

from ..errors import ProxyError, grpc_code_name, retry_after_header
from ..responder import Headers


def metadata(headers: Headers) -> list[tuple[str, str]]:
    """Response header pairs as gRPC metadata."""
    # Metadata values must be printable ASCII; route names from the config may not be.
    return [(name.decode("ascii"), value.decode("ascii", "backslashreplace"))
            for name, value in headers]


class Failure:
    """A failed answer: status code, message, and the trailing metadata that goes with it."""

    __slots__ = ("code", "message", "trailers")

    def __init__(self, code: grpc.StatusCode, message: str,
                 trailers: list[tuple[str, str]]) -> None:
        self.code = code
        self.message = message
        self.trailers = trailers


def from_error(exc: ProxyError, headers: Headers = (),
               code: grpc.StatusCode | None = None) -> Failure:
    trailers = metadata(headers)
    for key, value in (("type", exc.type), ("code", exc.code), ("param", exc.param)):
        if value:   # an upstream's error event may say "code": "" — nothing to pass on
            trailers.append(("x-llmedge-error-" + key,
                             value.encode("ascii", "backslashreplace").decode("ascii")))
    if exc.retry_after is not None:
        trailers.append(("retry-after", retry_after_header(exc.retry_after).decode()))
    trailers.append(("x-llmedge-http-status", str(exc.status)))
    return Failure(code or grpc.StatusCode[grpc_code_name(exc)], exc.message, trailers)
