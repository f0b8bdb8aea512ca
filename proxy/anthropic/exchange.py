"""The Messages front end as a responder: a ``/v1/messages`` request seen by the request
path as the Chat Completions request it translates to, answered in the Messages API's
shapes on the client's own connection."""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import ProxyError, retry_after_header
from ..responder import (EVENT_STREAM, JSON, Delegating, Headers, Responder, data_events,
                         is_event_stream)
from . import translate


class MessagesResponder(Delegating):
    """Implements ``Responder`` over the client's own exchange (``inner``)."""

    def __init__(self, inner: Responder, chat_body: bytes, model: str) -> None:
        super().__init__(inner, chat_body)
        if b"authorization" not in self.headers and b"x-api-key" in self.headers:
            # The client's credential, however it sends it: the cache's tenant is by it.
            self.headers = {**self.headers,
                            b"authorization": b"Bearer " + self.headers[b"x-api-key"]}
        self.model = model
        self.stream: translate.StreamTranslator | None = None
        self._opening = b""

    def _message_id(self, headers: list) -> str:
        request_id = next((v for k, v in headers if k == b"x-request-id"), b"")
        return "msg_" + (request_id.decode("latin-1") or "llmedge")

    # === answering ===

    def respond(self, status: int, body: bytes, content_type: bytes = JSON,
                headers: Headers = ()) -> None:
        pairs = _with_request_id(headers)
        if status >= 300:
            self.inner.respond(status, translate.error_body(
                status, translate.upstream_error_message(body)), JSON, pairs)
            return
        if self._native_whole(status, pairs):
            return
        try:
            completion = orjson.loads(body)
        except orjson.JSONDecodeError:
            self.inner.respond(502, translate.error_body(
                502, "the upstream's answer is not JSON"), JSON, pairs)
            return
        if isinstance(completion, dict) and completion.get("object") == "chat.completion.chunk":
            # A cached streamed answer replayed whole: translate it as the stream it was.
            self.inner.respond(502, translate.error_body(
                502, "the upstream answered a stream where a whole answer was expected"),
                JSON, pairs)
            return
        doc = translate.message(completion, self.model, self._message_id(pairs))
        self.inner.respond(status, orjson.dumps(doc), JSON, pairs)

    def fail(self, exc: ProxyError, headers: Headers = ()) -> None:
        pairs = _with_request_id(headers)
        if exc.retry_after is not None:
            pairs.append((b"retry-after", retry_after_header(exc.retry_after)))
        self.inner.respond(exc.status, translate.error_body(exc.status, exc.message), JSON,
                           pairs)

    def start_stream(self, status: int, content_type: bytes, headers: Headers = ()) -> None:
        pairs = _with_request_id(headers)
        if self._native_start(status, pairs):
            return
        self.stream = translate.StreamTranslator(self.model, self._message_id(pairs))
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
                continue   # the relay has checked events already; a comment, a keep-alive
            if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
                error = doc["error"]
                out += self.stream.error(502, str(error.get("message") or "upstream error"))
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
        if self._native_end(translate.sse("error", {
                "type": "error", "error": {"type": translate.error_type(exc.status),
                                           "message": exc.message}})):
            return
        assert self.stream is not None
        out, self._opening = self._opening, b""
        self.inner.write(out + self.stream.error(exc.status, exc.message))
        self.inner.end_stream()



def _with_request_id(headers: Headers) -> list:
    """The answer's headers, with Anthropic's ``request-id`` beside llmedge's own (the SDK
    reads it into ``_request_id``)."""
    pairs = list(headers)
    request_id = next((v for k, v in pairs if k == b"x-request-id"), None)
    if request_id is not None:
        pairs.append((b"request-id", request_id))
    return pairs
