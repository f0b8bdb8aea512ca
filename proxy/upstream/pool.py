"""Per-endpoint pools of keep-alive upstream connections."""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..errors import UpstreamConnectError, UpstreamReset, UpstreamTimeout
from .conn import ResponseHead, UpstreamConn

if TYPE_CHECKING:
    from ..config import Config


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """The TLS context for https upstreams, None when there are none. Reads CA files:
    blocking, so not on a running loop."""
    if not any(u.startswith("https:") for d in config.deployments for u in d.urls):
        return None
    return ssl.create_default_context(cafile=config.upstream.ca_file)


class Endpoint:
    """One upstream server (a replica of a deployment) and its idle connections."""

    __slots__ = ("url", "scheme", "host", "port", "base_path", "host_header", "ssl",
                 "max_idle", "_idle", "_all")

    def __init__(self, url: str, max_idle: int, ssl_context: ssl.SSLContext | None) -> None:
        parts = urlsplit(url)
        self.url = url
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/").encode()
        default_port = 443 if parts.scheme == "https" else 80
        host = ("[%s]" % self.host) if ":" in self.host else self.host
        self.host_header = (host if self.port == default_port
                            else "%s:%d" % (host, self.port)).encode("idna")
        self.ssl = ssl_context if parts.scheme == "https" else None
        self.max_idle = max_idle
        self._idle: list[UpstreamConn] = []
        self._all: set[UpstreamConn] = set()

    def take_idle(self) -> UpstreamConn | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.alive:
                return conn
        return None

    async def connect(self, timeout: float) -> UpstreamConn:
        loop = asyncio.get_running_loop()
        conn = UpstreamConn(loop)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: conn, self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None)
        except TimeoutError:
            conn.abort()
            raise UpstreamTimeout("connect to %s timed out after %.3gs"
                                  % (self.url, timeout)) from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamConnectError("cannot connect to %s: %s"
                                       % (self.url, exc.strerror or exc)) from exc
        conn.on_close = self._forget
        self._all.add(conn)
        return conn

    async def send(self, request: list[bytes], connect_s: float, first_byte_s: float,
                   idle_s: float, first_token_s: float = 0.0
                   ) -> tuple[UpstreamConn, ResponseHead]:
        """Send ``request`` on an idle connection (or a new one) and wait for the response
        head; on failure the connection is aborted before the error propagates."""
        conn = self.take_idle()
        if conn is None:
            conn = await self.connect(connect_s)
        try:
            conn.send(request, first_byte_s, idle_s, first_token_s)
            try:
                return conn, await conn.head()
            except UpstreamReset:
                if not (conn.reused and not conn.received_any):
                    raise
                # The server closed an idle keep-alive connection as we reused it: nothing
                # was processed, so the same endpoint gets one more go on a fresh one.
                conn.abort()
                conn = await self.connect(connect_s)
                conn.send(request, first_byte_s, idle_s, first_token_s)
                return conn, await conn.head()
        except BaseException:
            conn.abort()
            raise

    def release(self, conn: UpstreamConn) -> None:
        if conn.alive and len(self._idle) < self.max_idle:
            if conn.paused:
                conn.ready_to_idle()   # reading again: it must see the upstream close it
            conn.reused = True
            self._idle.append(conn)
        else:
            conn.close()

    def _forget(self, conn: UpstreamConn) -> None:
        self._all.discard(conn)
        # Dead idle connections are skipped lazily by take_idle; trim here too so a burst
        # of server-side closes does not leave the list long.
        if conn in self._idle:
            self._idle.remove(conn)

    def retire(self) -> None:
        """Out of the configuration after a reload: idle connections close now, busy ones
        when the request on them (still on the old configuration) is done."""
        self.max_idle = 0
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    def close(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._idle.clear()

    @property
    def open_connections(self) -> int:
        return len(self._all)
