"""GrpcExchange: what the request path answers into when the client speaks gRPC.

It is a ``responder.Responder``, as the HTTP exchange is, so a gRPC call runs through exactly
the code an HTTP request does. Instead of writing bytes to a socket it keeps the answer for
the RPC handler: a whole body, the ``ProxyError`` it failed with, or the SSE events of a
stream as they arrive. grpc.aio writes are coroutines while the upstream's bytes arrive in protocol
callbacks, so stream events wait in a short deque between the two; past a high-water mark
the upstream connection stops being read until the handler catches up.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import orjson

from ..errors import ProxyError, refusal
from ..responder import JSON, Headers

CHAT_URL = b"/v1/chat/completions"
ROUTE_URL = b"/v1/route"
# Stream events waiting for the handler: above HIGH the upstream is paused, below LOW resumed.
HIGH_WATER = 256
LOW_WATER = 32
# The error code of a stream event that is not JSON: llmedge cannot translate it.
BAD_EVENT = "upstream_bad_event"


class GrpcExchange:
    """A ``responder.Responder`` whose answer the RPC handler reads."""

    __slots__ = ("method", "url", "headers", "body", "task", "started", "finished",
                 "on_pause", "on_resume", "status", "payload", "content_type",
                 "response_headers", "failure", "streaming", "events", "error", "aborted",
                 "dropped", "deadline", "inline", "pending", "_paused", "_partial",
                 "_waiter")

    def __init__(self, headers: dict[bytes, bytes], body: bytes, url: bytes = CHAT_URL) -> None:
        self.method = b"POST"
        self.url = url
        self.headers = headers
        self.body = body
        self.task: asyncio.Task | None = None
        self.started = False
        self.finished = False
        self.on_pause: Callable[[], None] | None = None
        self.on_resume: Callable[[], None] | None = None
        self.status = 0
        self.payload = b""
        self.content_type = JSON
        self.response_headers: Headers = ()   # sent as the call's metadata
        self.failure: ProxyError | None = None  # the answer is this error
        self.streaming = False
        self.events: deque[Any] = deque()   # decoded JSON of each data event, in order
        self.error: ProxyError | None = None  # the stream broke after it started
        self.aborted = False
        self.dropped = False          # the request's task ended without finishing the answer
        self.deadline = 0.0           # time.monotonic() of the client's deadline; 0: none
        self.inline = False           # see responder.Responder
        self.pending: Coroutine[Any, Any, None] | None = None
        self._paused = False
        self._partial = b""
        self._waiter: asyncio.Future[None] | None = None

    # === responder.Responder ===

    @property
    def client_gone(self) -> bool:
        return False  # a gone gRPC client cancels the handler, which cancels the task

    @property
    def client_paused(self) -> bool:
        return self._paused

    @property
    def from_loopback(self) -> bool:
        return False  # asked only by admin endpoints, which gRPC does not reach

    def respond(self, status: int, body: bytes, content_type: bytes = JSON,
                headers: Headers = ()) -> None:
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.status = status
        self.payload = body
        self.content_type = content_type
        self.response_headers = headers
        self._finish()

    def fail(self, exc: ProxyError, headers: Headers = ()) -> None:
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.status = exc.status
        self.failure = exc
        self.response_headers = headers
        self._finish()

    def start_stream(self, status: int, content_type: bytes, headers: Headers = ()) -> None:
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.streaming = True
        self.status = status
        self.content_type = content_type
        self.response_headers = headers
        self._wake()

    def write(self, events: bytes) -> None:
        if not events or self.finished or self.error is not None:
            return
        if self._partial:
            # Only bytes from an upstream that does not frame SSE events come cut.
            events = self._partial + events
            self._partial = b""
        if b"\r" in events:
            events = events.replace(b"\r\n", b"\n")
        blocks = events.split(b"\n\n")
        self._partial = blocks.pop()  # "" when it ended on an event boundary, as it should
        for block in blocks:
            self._event(block)
        if len(self.events) > HIGH_WATER and not self._paused:
            self._paused = True
            if self.on_pause is not None:
                self.on_pause()
        self._wake()

    def end_stream(self) -> None:
        if self._partial:
            self._event(self._partial)
            self._partial = b""
        self._finish()

    def fail_stream(self, exc: ProxyError) -> None:
        if self.error is None:
            self.error = exc
        self._finish()

    def abort(self) -> None:
        self.aborted = True
        self._finish()

    def task_done(self, task: asyncio.Task) -> None:
        """The request's task ended. Normally the answer finished first; a task cancelled
        before that (a drain that ran out of time) must not leave the handler waiting."""
        if self.finished:
            return
        current = self.task
        if current is not None and current is not task and not current.done():
            # The request moved on to its next task (an asynchronous routing decision
            # hands over to the dispatching one): follow it.
            current.add_done_callback(self.task_done)
            return
        self.drop()

    def drop(self) -> None:
        """The request ended without finishing the answer (cancelled by a drain)."""
        self.dropped = True
        self._finish()

    # === what the RPC handler calls ===

    async def wait(self) -> None:
        """Until something new: the answer started, an event arrived, or it finished."""
        if self.events or self.finished:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def take(self) -> Any:
        event = self.events.popleft()
        if self._paused and len(self.events) < LOW_WATER:
            self._paused = False
            if self.on_resume is not None:
                self.on_resume()
        return event

    # === internals ===

    def _event(self, block: bytes) -> None:
        data = [line[5:].strip() for line in block.split(b"\n") if line.startswith(b"data:")]
        if not data:
            return  # comments and keep-alives
        payload = b"\n".join(data)
        if payload == b"[DONE]":
            return
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.error = refusal(502, "upstream_error",
                                 "the upstream sent a stream event that is not JSON",
                                 BAD_EVENT)
            return
        # An error event the upstream sent after the stream began, passed on as it came.
        error = doc.get("error") if isinstance(doc, dict) and "choices" not in doc else None
        if isinstance(error, dict):
            code = error.get("code")
            self.error = refusal(502, str(error.get("type", "upstream_error")),
                                 str(error.get("message", "the stream failed")),
                                 None if code is None else str(code))
            return
        self.events.append(doc)

    def _finish(self) -> None:
        self.finished = True
        self.on_pause = self.on_resume = None
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
