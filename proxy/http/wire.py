"""Bytes the HTTP front writes: status lines, header blocks and error bodies, built once."""

from __future__ import annotations

from http import HTTPStatus

from ..errors import ProxyError, error_body
from ..responder import EVENT_STREAM, JSON, AnswerHeaders, Headers

__all__ = ["CONTINUE", "KEEP_ALIVE", "CLOSE", "JSON", "EVENT_STREAM", "TEXT", "error_body",
           "status_line", "header_block", "ANSWER_HEADERS", "sse_error_event"]

STATUS_LINES: dict[int, bytes] = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus
}

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
KEEP_ALIVE = b"connection: keep-alive\r\n"
CLOSE = b"connection: close\r\n"
TEXT = b"text/plain; charset=utf-8"


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d Unknown\r\n" % status
    return line


def header_block(headers: Headers) -> bytes:
    """Header pairs as ``name: value\r\n`` lines."""
    if type(headers) is AnswerHeaders:
        return ANSWER_HEADERS % headers
    return b"".join([b"%s: %s\r\n" % pair for pair in headers])


# AnswerHeaders' values, formatted in one go.
ANSWER_HEADERS = b"".join([name + b": %s\r\n" for name in AnswerHeaders.NAMES])


def sse_error_event(exc: ProxyError) -> bytes:
    """The event that ends a stream the upstream broke: the OpenAI SDKs raise on it."""
    return b"data: " + error_body(exc.message, exc.type, exc.code) + b"\n\n"
