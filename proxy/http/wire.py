"""Bytes the HTTP front writes: status lines, header blocks and error bodies, built once."""

from __future__ import annotations

from http import HTTPStatus

import orjson

from ..errors import ProxyError

STATUS_LINES: dict[int, bytes] = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus
}

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
KEEP_ALIVE = b"connection: keep-alive\r\n"
CLOSE = b"connection: close\r\n"
JSON = b"application/json"
EVENT_STREAM = b"text/event-stream"
TEXT = b"text/plain; charset=utf-8"


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d Unknown\r\n" % status
    return line


def header_block(headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(b"%s: %s\r\n" % pair for pair in headers)


def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> bytes:
    """An OpenAI-shaped error object."""
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param,
                                   "code": code}})


def proxy_error_body(exc: ProxyError) -> bytes:
    return error_body(exc.message, exc.type, exc.code, exc.param)


def sse_error_event(message: str, type_: str = "upstream_error", code: str | None = None) -> bytes:
    """The event that ends a stream the upstream broke: the OpenAI SDKs raise on it."""
    return b"data: " + error_body(message, type_, code) + b"\n\n"


def retry_after_value(seconds: float) -> bytes:
    return b"%d" % max(1, int(seconds + 0.999))
