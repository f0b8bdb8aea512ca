"""The control plane between ``--workers`` processes: each worker listens on a Unix socket
in a private directory the parent made, and any worker can ask every other one a question.

Only scrapes and admin calls travel here, never a request: the request path does not know
this exists. A question is one connection: a length-prefixed msgpack request, one
length-prefixed msgpack reply, close. The directory is 0700, so only the user llmedge runs
as can connect, and each worker's socket is named after its index, so a restarted worker
takes over its predecessor's path.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

log = logging.getLogger("llmedge.peers")

MAX_REQUEST = 64 * 1024          # requests are an op and a route name
MAX_REPLY = 256 * 1024 * 1024    # a scrape of a large config is megabytes, not this
WARN_EVERY_S = 60.0


class WorkerSet:
    """Where the workers listen, and which one this process is."""

    def __init__(self, directory: str, index: int, count: int) -> None:
        self.directory = directory
        self.index = index
        self.count = count

    def path(self, index: int) -> str:
        return "%s/%d.sock" % (self.directory, index)

    def peers(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]


class Request(msgspec.Struct, array_like=True):
    op: str
    route: str | None = None


_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(Request)


def _frame(payload: Any) -> bytes:
    body = _encoder.encode(payload)
    return len(body).to_bytes(4, "big") + body


class PeerError(Exception):
    """A peer answered, but with an error or with something that is not an answer."""


# === serving ===

Handler = Callable[[Request], Any]   # returns the answer, or an awaitable of it


class PeerServer:
    """Answers other workers' questions with ``handlers[op](request)``. Owns its listener,
    its connections and the tasks of asynchronous answers; ``aclose`` ends them all."""

    def __init__(self, path: str, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_PeerConnection] = set()
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        # The parent removed whatever a previous worker of this index left at the path.
        self._server = await asyncio.get_running_loop().create_unix_server(
            lambda: _PeerConnection(self), path=self.path)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for connection in list(self._connections):
            connection.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def answer(self, connection: _PeerConnection, payload: bytes) -> None:
        try:
            request = _request_decoder.decode(payload)
            handler = self.handlers.get(request.op)
            if handler is None:
                connection.reply("unknown op %r" % request.op, None)
                return
            result = handler(request)
        except msgspec.DecodeError as exc:
            connection.reply("bad request: %s" % exc, None)
            return
        except Exception as exc:
            log.exception("answering a peer")
            connection.reply("%s: %s" % (type(exc).__name__, exc), None)
            return
        if not inspect.isawaitable(result):
            connection.reply(None, result)
            return
        task = asyncio.ensure_future(self._finish(connection, result))
        connection.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _finish(connection: _PeerConnection, pending) -> None:
        try:
            result = await pending
        except Exception as exc:
            log.exception("answering a peer")
            connection.reply("%s: %s" % (type(exc).__name__, exc), None)
            return
        connection.reply(None, result)


class _PeerConnection(asyncio.Protocol):
    def __init__(self, server: PeerServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.task: asyncio.Task | None = None
        self.asked = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server._connections.add(self)

    def connection_lost(self, exc) -> None:
        self.server._connections.discard(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()   # the asker gave up: nobody wants the answer

    def data_received(self, data: bytes) -> None:
        if self.asked:
            return
        self.buffer += data
        if len(self.buffer) < 4:
            return
        size = int.from_bytes(self.buffer[:4], "big")
        if size > MAX_REQUEST:
            self.abort()
            return
        if len(self.buffer) >= 4 + size:
            self.asked = True
            payload, self.buffer = self.buffer[4:4 + size], b""
            self.server.answer(self, payload)

    def reply(self, error: str | None, result: Any) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        try:
            frame = _frame((error, result))
        except (TypeError, ValueError, OverflowError) as exc:
            frame = _frame(("cannot encode the answer: %s" % exc, None))
        transport.write(frame)
        transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


# === asking ===

_last_warning: dict[tuple[int, str], float] = {}


async def ask(path: str, op: str, decoder: msgspec.msgpack.Decoder, timeout: float,
              route: str | None = None) -> Any:
    """One question to the worker at ``path``. ``decoder`` decodes ``(error, result)``.
    Raises OSError, TimeoutError, EOF (IncompleteReadError), PeerError or msgspec errors."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(_frame(Request(op, route)))
            size = int.from_bytes(await reader.readexactly(4), "big")
            if size > MAX_REPLY:
                raise PeerError("a %d-byte answer" % size)
            body = await reader.readexactly(size)
        finally:
            writer.close()
    error, result = decoder.decode(body)
    if error is not None:
        raise PeerError(error)
    return result


async def ask_all(workers: WorkerSet, op: str, decoder: msgspec.msgpack.Decoder,
                  timeout: float, route: str | None = None) -> dict[int, Any]:
    """Every peer's answer by index, all asked at once; None for a peer that did not answer
    in time or answered with something unusable (logged at most once a minute per peer)."""

    async def one(index: int) -> Any:
        try:
            return await ask(workers.path(index), op, decoder, timeout, route)
        except (OSError, TimeoutError, EOFError, PeerError, msgspec.MsgspecError) as exc:
            now = time.monotonic()
            key = (index, op)
            if now - _last_warning.get(key, -WARN_EVERY_S) >= WARN_EVERY_S:
                _last_warning[key] = now
                log.warning("worker %d did not answer %s: %s: %s", index, op,
                            type(exc).__name__, exc)
            return None

    indexes = workers.peers()
    answers = await asyncio.gather(*(one(i) for i in indexes))
    return dict(zip(indexes, answers))
