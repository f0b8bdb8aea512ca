"""HttpFront: the client-facing HTTP/1.1 protocol over httptools.

One instance per client connection. Requests are parsed straight from ``data_received``;
pipelined requests queue on the connection and are answered strictly in order; each is
an ``Exchange`` the application answers synchronously or from a task it owns.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

import httptools

from ..errors import InternalError, ProxyError, http_body, retry_after_header
from ..responder import AnswerHeaders, Headers
from . import wire
from ..loopback import is_loopback

log = logging.getLogger("llmedge.http")


def origin_form(url: bytes) -> bytes:
    """``http://host:port/path?q`` -> ``/path?q``: the absolute form HTTP/1.1 servers must
    accept (RFC 9112 3.2.2), as if the client had sent the path alone."""
    scheme, sep, rest = url.partition(b"://")
    if not sep:
        return url
    slash = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    path = rest[slash:]
    return path if path.startswith(b"/") else b"/" + path


# How long a refused request's remaining bytes are read and dropped before the close.
LINGER_S = 2.0


class Limits:
    __slots__ = ("max_body", "max_header_bytes", "max_headers", "request_timeout",
                 "keepalive_timeout", "max_pipelined")

    def __init__(self, max_body: int, max_header_bytes: int, max_headers: int,
                 request_timeout: float, keepalive_timeout: float, max_pipelined: int) -> None:
        self.max_body = max_body
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.request_timeout = request_timeout
        self.keepalive_timeout = keepalive_timeout
        self.max_pipelined = max_pipelined


class Application(Protocol):
    def handle(self, exchange: Exchange) -> None:
        """Answer the exchange now, or start a task that will (and set ``exchange.task``)."""

    def connection_count(self, delta: int) -> None: ...


class Exchange:
    """One request and the means to answer it (a ``responder.Responder``). Bytes are
    written to the client directly."""

    deadline = 0.0  # time.monotonic() by which the client wants its answer; 0: none

    inline = False   # the gateway starts a task per request (see responder.Responder)
    pending = None

    __slots__ = ("front", "method", "url", "headers", "body", "keep_alive", "http10",
                 "task", "started", "finished", "chunked", "on_pause", "on_resume")

    def __init__(self, front: HttpFront, method: bytes, url: bytes,
                 headers: dict[bytes, bytes], body: bytes, keep_alive: bool,
                 http10: bool) -> None:
        self.front = front
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.http10 = http10
        self.task: asyncio.Task | None = None
        self.started = False          # the response head has been written
        self.finished = False
        self.chunked = False
        # Flow control: set by whoever produces the body (an upstream connection), so a
        # slow client pauses reading from the upstream instead of growing our buffers.
        self.on_pause: Callable[[], None] | None = None
        self.on_resume: Callable[[], None] | None = None

    @property
    def client_gone(self) -> bool:
        return self.front.transport is None

    @property
    def client_paused(self) -> bool:
        return self.front.write_paused

    @property
    def from_loopback(self) -> bool:
        """The client connected from this host (asked only by access checks)."""
        transport = self.front.transport
        return transport is not None and is_loopback(transport.get_extra_info("peername"))

    def respond(self, status: int, body: bytes, content_type: bytes = wire.JSON,
                headers: Headers = ()) -> None:
        """A whole response with a Content-Length."""
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        keep = self.keep_alive and not self.front.last_answer
        head = b"%scontent-type: %s\r\ncontent-length: %d\r\n%s%s\r\n" % (
            wire.status_line(status), content_type, len(body),
            # A proxied answer's own headers (nearly every response) without a call.
            wire.ANSWER_HEADERS % headers if type(headers) is AnswerHeaders
            else wire.header_block(headers),
            wire.KEEP_ALIVE if keep else wire.CLOSE)
        if self.method == b"HEAD":
            body = b""  # the head says what a GET would get; nothing follows it
        self.front.write(head + body if len(body) < 16384 else head)
        if len(body) >= 16384:
            self.front.write(body)
        self.keep_alive = keep
        self._finish()

    def fail(self, exc: ProxyError, headers: Headers = ()) -> None:
        body, content_type = http_body(exc)
        if exc.retry_after is not None:
            headers = (*headers, (b"retry-after", retry_after_header(exc.retry_after)))
        self.respond(exc.status, body, content_type or wire.JSON, headers)

    def start_stream(self, status: int, content_type: bytes, headers: Headers = ()) -> None:
        """Write the head of a streamed response; the body follows with ``write``."""
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        keep = self.keep_alive and not self.front.last_answer and not self.http10
        self.chunked = not self.http10
        self.keep_alive = keep
        self.front.write(b"%scontent-type: %s\r\ncache-control: no-cache\r\n%s%s%s\r\n" % (
            wire.status_line(status), content_type,
            b"transfer-encoding: chunked\r\n" if self.chunked else b"",
            wire.header_block(headers),
            wire.KEEP_ALIVE if keep else wire.CLOSE))

    def write(self, data: bytes) -> None:
        if not data or self.finished:
            return
        if self.chunked:
            self.front.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.front.write(data)

    def end_stream(self) -> None:
        if self.finished:
            return
        if self.chunked:
            self.front.write(b"0\r\n\r\n")
        self._finish()

    def fail_stream(self, exc: ProxyError) -> None:
        # After a blank line: bytes passed on without an event's end (an upstream that does
        # not speak SSE) must not swallow the error into their last line.
        self.write(b"\n\n" + wire.sse_error_event(exc))
        if not self.chunked:
            self.keep_alive = False  # without chunked framing only a close ends the body
        self.end_stream()

    def abort(self) -> None:
        """Drop the connection: used when a response cannot be completed honestly."""
        self.keep_alive = False
        self.front.abort()

    def _finish(self) -> None:
        self.finished = True
        self.on_pause = self.on_resume = None
        self.front.exchange_done(self)


class HttpFront(asyncio.Protocol):
    __slots__ = ("app", "limits", "loop", "transport", "parser", "write_paused", "closing",
                 "_url", "_headers", "_header_bytes", "_body", "_body_size", "_rejected",
                 "_current", "_queue", "_read_paused", "_timer", "_registry", "_deferred_error",
                 "_continue_due", "_chunked", "_chunk", "_tail", "_begun", "_unparsed",
                 "_discarding")

    def __init__(self, app: Application, limits: Limits, loop: asyncio.AbstractEventLoop,
                 registry: set[HttpFront]) -> None:
        self.app = app
        self.limits = limits
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.write_paused = False
        self.closing = False          # no new requests: answer what is queued, then close
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._rejected = False        # this request was answered early (413, 431): drop it
        self._current: Exchange | None = None
        self._queue: deque[Exchange] = deque()
        self._read_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._registry = registry
        # An error found while earlier pipelined requests are still being answered: it is
        # written after them, so none of those is lost and the replies stay in order.
        self._deferred_error: tuple[int, str] | None = None
        # "Expect: 100-continue" from a request queued behind another: said when it is due.
        self._continue_due = False
        # A chunked request body is being read; its current chunk's bytes after a size line
        # just read (-1: no chunk open, -2: the open chunk's size was checked).
        self._chunked = False
        self._chunk = -1
        # The last bytes read before these, where a chunk's size line may have begun.
        self._tail = b""
        self._begun = False           # some of a request's head or body has been read
        # A request whose body the parser does not read (it asked to upgrade): the
        # exchange, the body bytes still to come, and those that came.
        self._unparsed: tuple[Exchange, int, list[bytes]] | None = None
        self._discarding = False      # lingering after a refusal: what comes is dropped

    # === transport callbacks ===

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._registry.add(self)
        self.app.connection_count(1)
        # A client that connects and sends nothing is as slow as one that sends slowly.
        self._arm(self.limits.request_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._registry.discard(self)
        self.app.connection_count(-1)
        self._disarm()
        for exchange in ([self._current] if self._current else []) + list(self._queue):
            if exchange.task is not None and not exchange.task.done():
                exchange.task.cancel()
        self._queue.clear()

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return   # the rest of a refused request: the answer has gone out
        if self._unparsed is not None:
            data = self._take_unparsed_body(data)
            if not data:
                return
        try:
            self.parser.feed_data(data)
            if self._chunked and not self._rejected:
                if self._chunk >= 0:
                    self._check_chunk_size(data)
                self._tail = data[-64:] if len(data) >= 64 else (self._tail + data)[-64:]
        except httptools.HttpParserUpgrade as upgrade:
            # llmedge speaks HTTP/1.1 only, and a server may ignore Upgrade: the request
            # is answered as it is, and the bytes after its head are its body and the next
            # requests, not another protocol.
            rest = data[upgrade.args[0]:]
            if rest:
                self.data_received(rest)
        except httptools.HttpParserError as exc:
            if not self._rejected:
                self._fail(400, "malformed HTTP request: %s" % exc)
            else:
                self._close_after_write()

    def eof_received(self) -> bool | None:
        # A client that closes its side has given up on what it asked (as nginx reads it):
        # returning False closes the transport, and connection_lost cancels the request so
        # the upstream stops generating.
        return False

    def pause_writing(self) -> None:
        self.write_paused = True
        ex = self._current
        if ex is not None and ex.on_pause is not None:
            ex.on_pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self._current
        if ex is not None and ex.on_resume is not None:
            ex.on_resume()

    # === parser callbacks ===

    def on_message_begin(self) -> None:
        self._begun = True
        self._url = b""
        self._headers = {}
        self._header_bytes = 0
        self._body = []
        self._body_size = 0
        self._rejected = False
        self._arm(self.limits.request_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self.limits.max_header_bytes:
            self._reject(414, "request URL too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if (self._header_bytes > self.limits.max_header_bytes
                or len(self._headers) >= self.limits.max_headers):
            self._reject(431, "request headers too large or too many")
            return
        name = name.lower()
        if name in self._headers:
            self._headers[name] += b", " + value
        else:
            self._headers[name] = value

    def on_headers_complete(self) -> None:
        if self._rejected:
            return
        headers = self._headers
        host = headers.get(b"host")
        if host is None:
            if self.parser.get_http_version() != "1.0":
                self._reject(400, "an HTTP/1.1 request needs a Host header")
                return
        elif b"," in host:
            self._reject(400, "a request has one Host header, not several")
            return
        length = headers.get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.limits.max_body:
                self._reject(413, "request body larger than %d bytes" % self.limits.max_body)
                return
        else:
            # Without a length the body is chunked (httptools refuses any other framing).
            self._chunked = b"transfer-encoding" in headers
        expect = headers.get(b"expect")
        if expect is not None and expect.lower() != b"100-continue":
            self._reject(417, "the only expectation understood is 100-continue, not %r"
                         % expect.decode("latin-1"))
            return
        if expect is not None:
            # An interim response may not land inside another request's answer: a request
            # queued behind others is told to continue when the line is free.
            if self._current is None and not self._queue:
                if self.transport is not None:
                    self.transport.write(wire.CONTINUE)
            else:
                self._continue_due = True

    def on_chunk_header(self) -> None:
        self._chunk = 0

    def on_chunk_complete(self) -> None:
        self._chunk = -1

    def on_body(self, body: bytes) -> None:
        if self._rejected:
            return
        if self._chunk >= 0:
            self._chunk += len(body)
        self._body_size += len(body)
        if self._body_size > self.limits.max_body:
            self._reject(413, "request body larger than %d bytes" % self.limits.max_body)
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._chunked = False
        self._chunk = -1
        self._begun = False
        if self._rejected:
            return
        self._continue_due = False
        self._disarm()
        parser = self.parser
        url = self._url
        if url[:1] != b"/" and url[:4].lower() == b"http":
            url = origin_form(url)
        exchange = Exchange(self, parser.get_method(), url, self._headers,
                            b"".join(self._body), parser.should_keep_alive(),
                            parser.get_http_version() == "1.0")
        # Nothing of this request is pending any more: the idle timer must see a clean slate.
        self._body = []
        self._url = b""
        self._headers = {}
        self._body_size = 0
        if parser.should_upgrade():
            # The parser stopped at the head of a request asking to upgrade: its body, if
            # it has one, is read here before the request is answered.
            length = exchange.headers.get(b"content-length", b"0")
            if b"transfer-encoding" in exchange.headers:
                self._reject(400, "a request asking to upgrade may not have a chunked body")
                return
            if length.isdigit() and int(length) > 0:
                self._unparsed = (exchange, int(length), [])
                self._arm(self.limits.request_timeout)
                return
        if self._current is None:
            self._start(exchange)
        else:
            self._queue_exchange(exchange)

    def _take_unparsed_body(self, data: bytes) -> bytes:
        """Body bytes of the request the parser let go; returns what follows the body."""
        exchange, need, parts = self._unparsed
        parts.append(data[:need])
        need -= len(parts[-1])
        if need > 0:
            self._unparsed = (exchange, need, parts)
            return b""
        self._unparsed = None
        self._disarm()
        exchange.body = b"".join(parts)
        self._dispatch(exchange)
        return data[len(parts[-1]):]

    def _dispatch(self, exchange: Exchange) -> None:
        if self._current is None:
            self._start(exchange)
        else:
            self._queue_exchange(exchange)

    def _queue_exchange(self, exchange: Exchange) -> None:
        self._queue.append(exchange)
        if len(self._queue) >= self.limits.max_pipelined and not self._read_paused:
            self._read_paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def _check_chunk_size(self, data: bytes) -> None:
        """Refuse at once a chunk whose declared size alone passes the body limit, rather
        than once that many bytes came in. The parser does not say the size, but the size
        line ends just before the chunk's bytes, and those are the end of this read."""
        after = self._chunk                  # the chunk's bytes in this read
        self._chunk = -2                     # checked: not again until the next chunk
        buf = self._tail + data
        end = len(buf) - after - 2           # where the size line's CRLF starts
        if end < 0 or buf[end:end + 2] != b"\r\n":
            return
        start = buf.rfind(b"\n", 0, end)
        if start < 0:
            return   # the line began before the bytes kept: not known, so not refused
        line = buf[start + 1:end]
        try:
            size = int(line.partition(b";")[0].strip(), 16)
        except ValueError:
            return
        if self._body_size - after + size > self.limits.max_body:
            self._reject(413, "request body larger than %d bytes" % self.limits.max_body)

    # === exchanges ===

    def _start(self, exchange: Exchange) -> None:
        self._current = exchange
        try:
            self.app.handle(exchange)
        except Exception:  # the application's bug must not take the connection's peers down
            log.exception("unhandled error answering %s %s", exchange.method, exchange.url)
            if not exchange.started:
                exchange.fail(InternalError())
            elif not exchange.finished:
                exchange.abort()

    def exchange_done(self, exchange: Exchange) -> None:
        if exchange is not self._current:
            return
        self._current = None
        if not exchange.keep_alive:
            self._close_after_write()
            return
        if self._queue:
            if (self._read_paused and len(self._queue) < self.limits.max_pipelined
                    and not self.closing):
                self._read_paused = False
                if self.transport is not None:
                    self.transport.resume_reading()
            self._start(self._queue.popleft())
        elif self._deferred_error is not None:
            self._write_error(*self._deferred_error)
        elif self.closing:
            self._close_after_write()
        else:
            if self._continue_due and self.transport is not None:
                self._continue_due = False
                self.transport.write(wire.CONTINUE)
            if self._timer is None:
                self._arm(self.limits.keepalive_timeout)

    @property
    def last_answer(self) -> bool:
        """The response being written is the connection's last one."""
        return (self.closing or self._deferred_error is not None) and not self._queue

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def shutdown(self) -> None:
        """Drain: finish what is being answered, take no new request, then close."""
        self.closing = True
        if self._current is None and not self._queue:
            self._close_after_write()

    @property
    def busy(self) -> bool:
        return self._current is not None or bool(self._queue)

    # === errors and timers ===

    def _reject(self, status: int, message: str) -> None:
        """Answer a request that must not be read further, then close the connection."""
        self._rejected = True
        self._fail(status, message)

    def _fail(self, status: int, message: str) -> None:
        """Answer a request that cannot be parsed further, then close: the stream of
        requests has lost its framing. Requests complete before it are answered first."""
        if self.transport is None or self._discarding:
            return
        if self._current is None and not self._queue:
            self._write_error(status, message)
        elif self._deferred_error is None:
            self._deferred_error = (status, message)
            self.transport.pause_reading()

    def _write_error(self, status: int, message: str) -> None:
        if self.transport is None:
            return
        body = wire.error_body(message, "invalid_request_error")
        self.transport.write(b"%scontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s"
                             % (wire.status_line(status), len(body), body))
        if self._rejected and self.transport.can_write_eof():
            self._linger()
        else:
            self._close_after_write()

    def _linger(self) -> None:
        """Close after a refusal while the client may still be sending what was refused
        (a body past the limit): closing at once would reset the connection and lose the
        answer in the client's socket. So half-close, read and drop what still comes for
        a while, as nginx does, then close."""
        self._discarding = True
        self.transport.write_eof()
        if self._read_paused or self._deferred_error is not None:
            self.transport.resume_reading()
        self._arm(LINGER_S)

    def _close_after_write(self) -> None:
        self._disarm()
        if self.transport is not None:
            self.transport.close()

    def _arm(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(delay, self._on_timeout)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timeout(self) -> None:
        self._timer = None
        if self.transport is None:
            return
        if self._discarding:
            self.transport.close()
        elif self._current is None and not self._queue and self.parser_mid_request():
            self._fail(408, "request not received in time")
        elif self._current is None and not self._queue:
            self.transport.close()

    def parser_mid_request(self) -> bool:
        return self._begun or self._unparsed is not None
