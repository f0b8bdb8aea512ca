"""The Responses front end as a responder: a ``/v1/responses`` request seen by the request
path as the Chat Completions request it translates to, answered as a ``response`` object
or the Responses event stream. Errors are OpenAI-shaped in both APIs, so they pass as
they are."""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import ProxyError, error_body
from ..responder import (EVENT_STREAM, JSON, Delegating, Headers, Responder, data_events,
                         is_event_stream)
from . import translate


class ResponsesResponder(Delegating):
    def __init__(self, inner: Responder, chat_body: bytes, request: dict) -> None:
        super().__init__(inner, chat_body)
        self.request = request
        self.stream: translate.StreamTranslator | None = None
        self._opening = b""

    def _shell(self, headers: list) -> translate.Shell:
        request_id = next((v for k, v in headers if k == b"x-request-id"), b"")
        return translate.Shell("resp_" + (request_id.decode("latin-1") or "llmedge"),
                               str(self.request.get("model")), self.request)

    def respond(self, status: int, body: bytes, content_type: bytes = JSON,
                headers: Headers = ()) -> None:
        pairs = list(headers)
        if status >= 300:
            self.inner.respond(status, body, content_type, pairs)
            return
        if self._native_whole(status, pairs):
            return
        try:
            completion = orjson.loads(body)
        except orjson.JSONDecodeError:
            completion = None
        if not isinstance(completion, dict) or "choices" not in completion:
            self.inner.respond(502, error_body(
                "the upstream's answer is not a chat completion", "upstream_error",
                "bad_response"), JSON, pairs)
            return
        self.inner.respond(status, orjson.dumps(translate.response(
            completion, self._shell(pairs))), JSON, pairs)

    def fail(self, exc: ProxyError, headers: Headers = ()) -> None:
        self.inner.fail(exc, headers)

    def start_stream(self, status: int, content_type: bytes, headers: Headers = ()) -> None:
        pairs = list(headers)
        if self._native_start(status, pairs):
            return
        self.stream = translate.StreamTranslator(self._shell(pairs))
        self.inner.start_stream(status, EVENT_STREAM if is_event_stream(content_type)
                                else content_type, pairs)
        # Sent with the first content: the request path starts a stream only once its first
        # content is there, so nothing waits, and it is one write less.
        self._opening = self.stream.start()

    def write(self, events: bytes) -> None:
        if self._native_write():
            return
        assert self.stream is not None
        out, self._opening = self._opening, b""
        for data in data_events(events):
            try:
                doc: Any = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
                error = doc["error"]
                out += self.stream.error(str(error.get("code") or "upstream_error"),
                                         str(error.get("message") or "upstream error"))
                continue
            out += self.stream.chunk(doc)
        if out:
            self.inner.write(out)

    def end_stream(self) -> None:
        if self._native_end():
            return
        assert self.stream is not None
        out, self._opening = self._opening, b""
        self.inner.write(out + self.stream.end())
        self.inner.end_stream()

    def fail_stream(self, exc: ProxyError) -> None:
        if self._native_end(translate.sse({"type": "error", "code": exc.code or exc.type,
                                           "message": exc.message, "param": None})):
            return
        assert self.stream is not None
        out, self._opening = self._opening, b""
        self.inner.write(out + self.stream.error(exc.code or exc.type, exc.message))
        self.inner.end_stream()
