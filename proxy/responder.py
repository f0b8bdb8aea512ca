"""Responder: what the request path may do to answer a client, whatever protocol it speaks.

The gateway and the dispatcher answer in these terms only — a status with header pairs and
a body, a ``ProxyError``, a stream of whole SSE events — and each front end (the HTTP
exchange, the gRPC exchange) turns them into its own wire. What an error means on each
protocol is said once, in ``proxy/errors.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, Protocol

from .errors import ProxyError

Header = tuple[bytes, bytes]
Headers = Iterable[Header]   # iterated once by whoever writes them

JSON = b"application/json"
EVENT_STREAM = b"text/event-stream"


def is_event_stream(content_type: bytes) -> bool:
    return content_type[:17].lower().startswith(EVENT_STREAM)


class AnswerHeaders(tuple):
    """The values of the headers every proxied answer carries — (route, upstream, cache
    state, attempts, decision, request id), in the order of ``NAMES`` — that iterate as
    header pairs. Kept as values, not pairs, so a
    front end that writes them as text (HTTP) formats them in one go: they go out with
    every request, and building pairs only to join them again costs more than that."""

    __slots__ = ()

    NAMES = (b"x-llmedge-route", b"x-llmedge-upstream", b"x-llmedge-cache",
             b"x-llmedge-attempts", b"x-llmedge-decision", b"x-request-id")

    def __iter__(self) -> Iterator[Header]:
        return zip(self.NAMES, tuple.__iter__(self))


class Responder(Protocol):
    """One client request and the means to answer it, once."""

    method: bytes
    url: bytes
    headers: dict[bytes, bytes]       # lower-case names
    body: bytes
    # time.monotonic() by which the client wants its answer (its own deadline); 0: none.
    deadline: float
    # The task answering the request, when it is not answered at once: the front end
    # cancels it when the client leaves.
    task: asyncio.Task | None
    # True: the front end runs the request in the task that called ``Gateway.handle``,
    # awaiting the coroutine the gateway leaves in ``pending`` (a unary gRPC call, which
    # has a task of its own to wait in anyway). False: the gateway starts a task.
    inline: bool
    pending: Coroutine[Any, Any, None] | None
    started: bool                     # something of the answer went out
    finished: bool
    # Flow control, set by whoever produces a stream's events (an upstream connection):
    # a client that cannot keep up stops the upstream being read, instead of growing buffers.
    on_pause: Callable[[], None] | None
    on_resume: Callable[[], None] | None

    @property
    def client_gone(self) -> bool: ...

    @property
    def client_paused(self) -> bool: ...

    @property
    def from_loopback(self) -> bool:
        """The client is on this host (asked only by the admin endpoints' access check)."""
        ...

    def respond(self, status: int, body: bytes, content_type: bytes = JSON,
                headers: Headers = ()) -> None:
        """A whole answer."""

    def fail(self, exc: ProxyError, headers: Headers = ()) -> None:
        """Answer with an error, in the protocol's own shape for it."""

    def start_stream(self, status: int, content_type: bytes, headers: Headers = ()) -> None:
        """The start of a streamed answer; its events follow with ``write``."""

    def write(self, events: bytes) -> None:
        """Whole SSE events of the stream, one or more (a cut event waits for its rest in
        the relay, not here)."""

    def end_stream(self) -> None:
        """The stream ended as it should."""

    def fail_stream(self, exc: ProxyError) -> None:
        """The stream broke after it started: end it so the client knows it is cut."""

    def abort(self) -> None:
        """The answer cannot be completed honestly (an internal error mid-answer)."""


class Collector:
    """A ``Responder`` for a request llmedge itself makes (the LLM router tier's question):
    it keeps the whole answer, or the error, for whoever awaits it. Such requests never
    stream."""

    method = b"POST"
    deadline = 0.0
    client_gone = False
    client_paused = False
    from_loopback = True

    def __init__(self, url: bytes, body: bytes) -> None:
        self.url = url
        self.body = body
        self.headers: dict[bytes, bytes] = {}
        self.task: asyncio.Task | None = None
        self.started = False
        self.finished = False
        self.on_pause: Callable[[], None] | None = None
        self.on_resume: Callable[[], None] | None = None
        self.status = 0
        self.payload = b""
        self.failure: ProxyError | None = None

    def respond(self, status: int, body: bytes, content_type: bytes = JSON,
                headers: Headers = ()) -> None:
        self.started = self.finished = True
        self.status = status
        self.payload = body

    def fail(self, exc: ProxyError, headers: Headers = ()) -> None:
        self.started = self.finished = True
        self.status = exc.status
        self.failure = exc

    def start_stream(self, status: int, content_type: bytes, headers: Headers = ()) -> None:
        raise RuntimeError("a collected answer is never streamed")

    def write(self, events: bytes) -> None:
        raise RuntimeError("a collected answer is never streamed")

    def end_stream(self) -> None:
        raise RuntimeError("a collected answer is never streamed")

    def fail_stream(self, exc: ProxyError) -> None:
        raise RuntimeError("a collected answer is never streamed")

    def abort(self) -> None:
        self.finished = True


class Delegating:
    """A responder over the client's own exchange (``inner``) for a front end that is a
    translation of another API (the Messages and Responses APIs over chat completions):
    the client's exchange keeps the deadline, the task, flow control and what went out;
    the subclass translates the request's body and the answers."""

    method = b"POST"
    url = b"/v1/chat/completions"
    inline = False       # HTTP exchanges only: theirs start a task
    pending = None

    def __init__(self, inner: Responder, body: bytes) -> None:
        self.inner = inner
        self.body = body
        self.headers = inner.headers

    @property
    def deadline(self) -> float:
        return self.inner.deadline

    @property
    def task(self) -> asyncio.Task | None:
        return self.inner.task

    @task.setter
    def task(self, task: asyncio.Task | None) -> None:
        self.inner.task = task

    @property
    def started(self) -> bool:
        return self.inner.started

    @property
    def finished(self) -> bool:
        return self.inner.finished

    @property
    def on_pause(self) -> Callable[[], None] | None:
        return self.inner.on_pause

    @on_pause.setter
    def on_pause(self, callback: Callable[[], None] | None) -> None:
        self.inner.on_pause = callback

    @property
    def on_resume(self) -> Callable[[], None] | None:
        return self.inner.on_resume

    @on_resume.setter
    def on_resume(self, callback: Callable[[], None] | None) -> None:
        self.inner.on_resume = callback

    @property
    def client_gone(self) -> bool:
        return self.inner.client_gone

    @property
    def client_paused(self) -> bool:
        return self.inner.client_paused

    @property
    def from_loopback(self) -> bool:
        return self.inner.from_loopback

    def abort(self) -> None:
        self.inner.abort()

    # === a native attempt (proxy/passthrough.py): the provider's own answer, as it came ===

    # Set by the gateway when a deployment may speak this front end's API itself.
    native = None
    _native_stream = False

    def _native_whole(self, status: int, headers: list) -> bool:
        native = self.native
        if native is None or not native.on or native.whole is None:
            return False
        self.inner.respond(status, native.whole, JSON, headers)
        return True

    def _native_start(self, status: int, headers: list) -> bool:
        native = self.native
        if native is None or not native.on:
            return False
        self._native_stream = True
        self.inner.start_stream(status, EVENT_STREAM, headers)
        return True

    def _native_write(self) -> bool:
        if not self._native_stream:
            return False
        out = self.native.take_events()
        if out:
            self.inner.write(out)
        return True

    def _native_end(self, closing: bytes = b"") -> bool:
        """Ends a native stream (with ``closing``, an error event in the API's shape, when
        it broke)."""
        if not self._native_stream:
            return False
        out = self.native.take_events() + closing
        if out:
            self.inner.write(out)
        self.inner.end_stream()
        return True


def data_events(events: bytes) -> list[bytes]:
    """The ``data:`` payloads of whole SSE events, ``[DONE]`` and comments left out."""
    out = []
    for block in events.split(b"\n\n"):
        if block[:6] == b"data: " and b"\n" not in block:
            data = block[6:]     # one data line: what every upstream sends, read at once
        elif block:
            data = b"\n".join(line[5:].strip() for line in block.split(b"\n")
                              if line.startswith(b"data:"))
        else:
            continue
        if data and data != b"[DONE]":
            out.append(data)
    return out
