"""UpstreamConn: one keep-alive HTTP/1.1 connection to an upstream, over httptools.

The response head is awaited by the request's task; the body either accumulates (whole
responses) or goes straight from ``data_received`` to a sink that writes to the client,
with no task or queue in between. Timers are ``call_later`` handles, one per connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httptools

from ..errors import (FirstTokenTimeout, UpstreamError, UpstreamReset, UpstreamStatus,
                      UpstreamTimeout)

# Whole (non-streamed) upstream bodies above this are refused rather than buffered.
MAX_WHOLE_BODY = 64 * 1024 * 1024
# Body bytes that arrive before a sink is attached; past this, reading pauses.
EARLY_BUFFER = 1024 * 1024


class ResponseHead:
    __slots__ = ("status", "headers")

    def __init__(self, status: int, headers: dict[bytes, bytes]) -> None:
        self.status = status
        self.headers = headers


def retry_after(headers: dict[bytes, bytes]) -> float | None:
    value = headers.get(b"retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date: rare from LLM APIs, and no worse than no hint


def failed_status(status: int) -> bool:
    """An answer that counts as a failure of the endpoint (and may be retried elsewhere)."""
    return status == 429 or status >= 500


def status_error(head: ResponseHead, body: bytes) -> UpstreamStatus:
    """The failure a 429 or 5xx answer stands for, with the upstream's body and its
    Retry-After hint."""
    return UpstreamStatus("upstream answered %d" % head.status, upstream_status=head.status,
                          body=body, content_type=head.headers.get(b"content-type"),
                          retry_after=retry_after(head.headers))


class UpstreamConn(asyncio.Protocol):
    __slots__ = ("loop", "transport", "parser", "alive", "reused", "received_any",
                 "_headers", "_head_waiter", "_done_waiter", "_body", "_body_size",
                 "_sink", "_complete", "_error", "_timer", "_idle_s",
                 "_last_activity", "_timeout_kind", "_paused_by_client", "_early_paused",
                 "_keep_alive", "_until_close", "_surplus", "_first_token_at",
                 "_first_token_s", "on_close")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.alive = False
        self.reused = False            # served a request before: may have been closed by peer
        self.received_any = False      # any byte of the current response arrived
        self._headers: dict[bytes, bytes] = {}
        self._head_waiter: asyncio.Future[ResponseHead] | None = None
        self._done_waiter: asyncio.Future[None] | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._sink: Callable[[bytes], None] | None = None
        self._complete = False
        self._error: UpstreamError | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle_s = 0.0
        self._last_activity = 0.0
        self._timeout_kind = ""
        self._paused_by_client = False
        self._early_paused = False
        self._keep_alive = False
        # The body has no length and no chunks: it ends when the upstream closes.
        self._until_close = False
        # Bytes came after the answer was complete: the connection's framing is lost.
        self._surplus = False
        self._first_token_at = 0.0     # loop time by which content must start (0: no bound)
        self._first_token_s = 0.0
        self.on_close: Callable[[UpstreamConn], None] | None = None

    # === transport callbacks ===

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.alive = True

    def connection_lost(self, exc: Exception | None) -> None:
        by_peer = self.alive  # abort() and close() mark the connection dead first
        self.alive = False
        self.transport = None
        self._cancel_timer()
        if (by_peer and exc is None and self._until_close and not self._complete
                and self._head_waiter is None and self._error is None):
            # HTTP/1.0-style framing: the close is the end of the body, not a failure.
            self._message_done(keep_alive=False)
        if not self._complete and (self._head_waiter is not None or self._done_waiter is not None):
            err = UpstreamReset("upstream closed the connection%s"
                                % (" before answering" if not self.received_any else
                                   " in the middle of the response"))
            if exc is not None:
                err.__cause__ = exc
            self._fail(err)
        if self.on_close is not None:
            self.on_close(self)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self._last_activity = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            err = UpstreamReset("upstream sent a malformed response: %s" % exc)
            self._fail(err)
            self.abort()

    def pause_writing(self) -> None:
        pass  # request bodies are bounded by max_body_bytes; the kernel absorbs them

    def resume_writing(self) -> None:
        pass

    # === parser callbacks ===

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._surplus:
            self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        if self._complete or self._surplus:
            # An answer nobody asked for: whatever comes next on this connection could be
            # taken for the next request's answer.
            self._surplus = True
            self.abort()
            return
        status = self.parser.get_status_code()
        if status < 200:  # 1xx interim responses carry nothing for us
            self._headers = {}
            return
        if self._timeout_kind == "first_byte":
            self._arm_idle()
        headers = self._headers
        self._until_close = (
            status not in (204, 304) and b"content-length" not in headers
            and b"chunked" not in headers.get(b"transfer-encoding", b"").lower())
        waiter = self._head_waiter
        self._head_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(ResponseHead(status, self._headers))

    def on_body(self, body: bytes) -> None:
        if self._surplus:
            return
        sink = self._sink
        if sink is not None:
            sink(body)
            return
        self._body.append(body)
        self._body_size += len(body)
        if self._body_size > MAX_WHOLE_BODY:
            self._fail(UpstreamReset("upstream response larger than %d bytes" % MAX_WHOLE_BODY))
            self.abort()
        elif self._body_size > EARLY_BUFFER and self._done_waiter is None and not self._early_paused:
            self._early_paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._surplus or self.parser.get_status_code() < 200:
            return
        self._complete = True
        # Asked here: once feed_data returns, the parser has reset for the next message.
        self._keep_alive = self.parser.should_keep_alive()
        self._cancel_timer()
        waiter = self._done_waiter
        self._done_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _message_done(self, keep_alive: bool) -> None:
        self._complete = True
        self._keep_alive = keep_alive
        self._cancel_timer()
        waiter = self._done_waiter
        self._done_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # === the request's side ===

    def send(self, data: list[bytes], first_byte_s: float, idle_s: float,
             first_token_s: float = 0.0) -> None:
        """Write one request and start its first-byte timer; with ``first_token_s`` (a
        stream) the answer's content must also begin that soon (``content_started``). One
        timer handle serves every bound: a second timer per request costs as much as the
        rest of the bookkeeping."""
        assert self.transport is not None
        self.received_any = False
        self._headers = {}
        self._body = []
        self._body_size = 0
        self._sink = None
        self._complete = False
        self._keep_alive = False
        self._until_close = False
        self._error = None
        if self._paused_by_client or self._early_paused:
            self.ready_to_idle()
        self._idle_s = idle_s
        self._head_waiter = self.loop.create_future()
        self._timeout_kind = "first_byte"
        self._cancel_timer()
        if first_token_s:
            self._first_token_s = first_token_s
            self._first_token_at = self.loop.time() + first_token_s
            if first_token_s < first_byte_s:
                first_byte_s = first_token_s
        else:
            self._first_token_at = 0.0
        self._timer = self.loop.call_later(first_byte_s, self._on_timer)
        self.transport.writelines(data)

    def content_started(self) -> None:
        """The answer's first content token arrived: the first-token bound is met."""
        self._first_token_at = 0.0

    async def head(self) -> ResponseHead:
        waiter = self._head_waiter
        if waiter is None:
            raise self._error or UpstreamReset("no request in flight")
        return await waiter

    async def read_whole(self) -> bytes:
        """The rest of the body, buffered."""
        if not self._complete:
            if self._error is not None:
                raise self._error
            self._done_waiter = self.loop.create_future()
            if self._early_paused and self.transport is not None:
                self._early_paused = False
                self.transport.resume_reading()
            await self._done_waiter
        body = b"".join(self._body)
        self._body = []
        return body

    def take_early(self) -> bytes:
        """Body bytes that arrived before a sink was attached."""
        body = b"".join(self._body)
        self._body = []
        self._body_size = 0
        return body

    async def stream_to(self, sink: Callable[[bytes], None]) -> None:
        """Hand every further body chunk to ``sink`` as it arrives; return when complete."""
        self._sink = sink
        if self._complete:
            return
        if self._error is not None:
            raise self._error
        self._done_waiter = self.loop.create_future()
        if self._early_paused and self.transport is not None and not self._paused_by_client:
            self._early_paused = False
            self.transport.resume_reading()
        try:
            await self._done_waiter
        finally:
            self._sink = None

    @property
    def framed_by_close(self) -> bool:
        """The last answer had no length and no chunks: it ended when the upstream closed."""
        return self._until_close

    def reusable(self, head: ResponseHead) -> bool:
        return (self.alive and self._complete and self._error is None
                and self._keep_alive and not self._surplus
                and head.headers.get(b"connection", b"").lower() != b"close")

    @property
    def paused(self) -> bool:
        return self._paused_by_client or self._early_paused

    def ready_to_idle(self) -> None:
        """Read again whatever paused reading during the last answer (a slow client, a
        large early body): an idle connection must notice the upstream closing it, and
        the next answer on it must be read at all."""
        if (self._paused_by_client or self._early_paused) and self.transport is not None:
            self.transport.resume_reading()
        self._paused_by_client = self._early_paused = False

    def pause_reading(self) -> None:
        """The client cannot take more: stop reading so TCP pushes back on the upstream."""
        self._paused_by_client = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        self._paused_by_client = False
        self._last_activity = self.loop.time()
        if self.transport is not None:
            self.transport.resume_reading()

    def fail(self, err: UpstreamError) -> None:
        """End the answer in progress with ``err`` (what the request's side then raises),
        and the connection with it: its framing is no longer known."""
        self._fail(err)
        self.abort()

    def abort(self) -> None:
        self.alive = False
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.alive = False
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()

    # === timers ===

    def _arm_idle(self) -> None:
        self._timeout_kind = "idle"
        self._cancel_timer()
        now = self._last_activity = self.loop.time()
        delay = self._idle_s
        if self._first_token_at and self._first_token_at - now < delay:
            delay = max(0.0, self._first_token_at - now)
        self._timer = self.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self.loop.time()
        first_token_at = self._first_token_at
        if first_token_at and now >= first_token_at - 0.001:
            err: UpstreamError = FirstTokenTimeout(
                "upstream sent no content within %.3gs (first_token_s)" % self._first_token_s)
        elif self._timeout_kind == "idle":
            # Rearming on every chunk would cost a timer per chunk; instead check the
            # last activity and sleep for the rest. A reader paused by the client is
            # not idle on the upstream's account.
            remaining = self._last_activity + self._idle_s - now
            if remaining > 0 or self._paused_by_client:
                delay = max(remaining, self._idle_s / 4)
                if first_token_at:
                    delay = min(delay, max(0.0, first_token_at - now))
                self._timer = self.loop.call_later(delay, self._on_timer)
                return
            err = UpstreamTimeout("upstream sent nothing for %.3gs" % self._idle_s)
        else:
            err = UpstreamTimeout("upstream did not answer within the first-byte timeout")
        self._fail(err)
        self.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, err: UpstreamError) -> None:
        if self._error is None:
            self._error = err
        for name in ("_head_waiter", "_done_waiter"):
            waiter = getattr(self, name)
            setattr(self, name, None)
            if waiter is not None and not waiter.done():
                waiter.set_exception(err)
