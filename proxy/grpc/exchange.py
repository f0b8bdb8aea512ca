"""GrpcExchange: what the request path answers into when the client speaks gRPC.

It offers what the gateway and dispatcher use of ``http.front.Exchange`` (``respond``,
``start_stream``, ``write``, ``end_stream``, ``abort`` and the flow-control hooks), so a gRPC
call runs through exactly the code an HTTP request does. Instead of writing bytes to a
socket it keeps the answer for the RPC handler: a whole body, or the SSE events of a stream
as they arrive. grpc.aio writes are coroutines while the upstream's bytes arrive in protocol
callbacks, so stream events wait in a short deque between the two; past a high-water mark
the upstream connection stops being read until the handler catches up.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from ..http import wire

CHAT_URL = b"/v1/chat/completions"
ROUTE_URL = b"/v1/route"
# Stream events waiting for the handler: above HIGH the upstream is paused, below LOW resumed.
HIGH_WATER = 256
LOW_WATER = 32


class StreamError(Exception):
    """The stream ended with an error event (the upstream failed mid-stream)."""

    def __init__(self, message: str, kind: str, code: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.code = code


class GrpcExchange:
    __slots__ = ("method", "url", "headers", "body", "task", "started", "finished", "chunked",
                 "keep_alive", "on_pause", "on_resume", "status", "payload", "content_type",
                 "header_block", "streaming", "events", "error", "aborted", "dropped", "deadline",
                 "_paused",
                 "_partial", "_waiter")

    def __init__(self, headers: dict[bytes, bytes], body: bytes, url: bytes = CHAT_URL) -> None:
        self.method = b"POST"
        self.url = url
        self.headers = headers
        self.body = body
        self.task: asyncio.Task | None = None
        self.started = False
        self.finished = False
        self.chunked = True           # a stream's end is explicit, as with chunked framing
        self.keep_alive = True
        self.on_pause: Callable[[], None] | None = None
        self.on_resume: Callable[[], None] | None = None
        self.status = 0
        self.payload = b""
        self.content_type = wire.JSON
        self.header_block = b""
        self.streaming = False
        self.events: deque[Any] = deque()   # decoded JSON of each data event, in order
        self.error: StreamError | None = None
        self.aborted = False
        self.dropped = False          # the request's task ended without finishing the answer
        self.deadline = 0.0           # time.monotonic() of the client's deadline; 0: none
        self._paused = False
        self._partial = b""
        self._waiter: asyncio.Future[None] | None = None

    # === what the request path calls ===

    @property
    def client_gone(self) -> bool:
        return False  # a gone gRPC client cancels the handler, which cancels the task

    @property
    def client_paused(self) -> bool:
        return self._paused

    def respond(self, status: int, body: bytes, content_type: bytes = wire.JSON,
                extra: bytes = b"") -> None:
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.status = status
        self.payload = body
        self.content_type = content_type
        self.header_block = extra
        self._finish()

    def respond_error(self, status: int, body: bytes, extra: bytes = b"") -> None:
        self.respond(status, body, wire.JSON, extra)

    def start_stream(self, status: int, content_type: bytes, extra: bytes = b"") -> None:
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.streaming = True
        self.status = status
        self.content_type = content_type
        self.header_block = extra
        self._wake()

    def write(self, data: bytes) -> None:
        if not data or self.finished or self.error is not None:
            return
        if self._partial:
            data = self._partial + data
            self._partial = b""
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        blocks = data.split(b"\n\n")
        self._partial = blocks.pop()  # "" when data ended on an event boundary
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

    def abort(self) -> None:
        """The answer cannot be completed honestly (an internal error mid-stream)."""
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
            self.error = StreamError("the upstream sent a stream event that is not JSON",
                                     "upstream_error", "upstream_bad_event")
            return
        error = doc.get("error") if isinstance(doc, dict) and "choices" not in doc else None
        if isinstance(error, dict):
            self.error = StreamError(str(error.get("message", "the stream failed")),
                                     str(error.get("type", "upstream_error")),
                                     error.get("code"))
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
