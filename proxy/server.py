"""Server: start-up, listening sockets, signals and graceful drain for one worker."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import ssl
import sys

import _fastpath

from .budget import RetryBudget
from .caching import ResponseCache
from .config import Config, parse_address
from .gateway import Gateway
from .health import HealthChecker
from .http.front import HttpFront, Limits
from .metrics import Metrics
from .routing.router import Router

log = logging.getLogger("llmedge")


def make_listener(address: str, reuse_port: bool) -> socket.socket:
    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class Server:
    def __init__(self, config: Config, *, reuse_port: bool = False,
                 sock: socket.socket | None = None) -> None:
        self.config = config
        self.reuse_port = reuse_port
        self._sock = sock
        self.metrics = Metrics()
        self.router: Router | None = None
        self.gateway: Gateway | None = None
        self.health: HealthChecker | None = None
        self.fronts: set[HttpFront] = set()
        self.address: tuple[str, int] | None = None
        self._http_server: asyncio.AbstractServer | None = None
        self._stop = asyncio.Event()
        self._force = False

    async def start(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        # Loading CA certificates reads files: not on the loop.
        needs_tls = any(u.startswith("https:") for d in config.deployments for u in d.urls)
        ssl_context = None
        if needs_tls:
            ssl_context = await loop.run_in_executor(
                None, functools.partial(ssl.create_default_context,
                                        cafile=config.upstream.ca_file))
        self.router = Router(config, ssl_context)
        endpoints = [e for t in self.router.targets.values() for e in t.endpoints]
        self.metrics.upstream_connections.set_function(
            lambda: sum(e.open_connections for e in endpoints))
        self.gateway = Gateway(self.router, self.metrics,
                               ResponseCache(config.cache, self.metrics),
                               RetryBudget(config.upstream.retry_budget))
        self.gateway.max_inflight = config.server.max_inflight
        if config.server.admin_token_env:
            token = os.environ.get(config.server.admin_token_env, "")
            if not token:
                raise OSError("server.admin_token_env: %s is not set"
                              % config.server.admin_token_env)
            self.gateway.admin_token = b"Bearer " + token.encode("latin-1")
        server = config.server
        limits = Limits(server.max_body_bytes, server.max_header_bytes, server.max_headers,
                        server.request_timeout_s, server.keepalive_timeout_s,
                        server.max_pipelined)
        if server.grpc is not None:
            log.warning("server.grpc is set, but this version has no gRPC front end; "
                        "serving HTTP only")
        if server.http is not None:
            sock = self._sock or make_listener(server.http, self.reuse_port)
            gateway, fronts = self.gateway, self.fronts
            self._http_server = await loop.create_server(
                lambda: HttpFront(gateway, limits, loop, fronts), sock=sock)
            self.address = sock.getsockname()[:2]
        for name, var in ((t.name, t.unusable) for t in self.router.targets.values()
                          if t.unusable):
            log.warning("deployment %s is unusable: %s", name, var)
        # Last in start(): a start-up that fails earlier leaves no probe task behind.
        self.health = HealthChecker(self.router, config)
        self.health.start()
        self.gateway.started = True
        log.info("llmedge serving on http://%s:%d (fastpath=%s)", self.address[0],
                 self.address[1], _fastpath.IMPLEMENTATION)

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)

    def _on_signal(self) -> None:
        if self._stop.is_set():
            self._force = True  # a second signal: stop waiting for in-flight requests
            log.warning("second signal: exiting without waiting")
            for front in list(self.fronts):
                front.abort()
        self._stop.set()

    async def serve_until_stopped(self) -> None:
        await self._stop.wait()
        await self.drain()

    def stop(self) -> None:
        self._stop.set()

    async def drain(self) -> None:
        """Stop accepting, let in-flight requests finish (up to drain_timeout_s), close."""
        gateway = self.gateway
        assert gateway is not None and self.router is not None
        gateway.draining = True
        if self._http_server is not None:
            self._http_server.close()
        for front in list(self.fronts):
            front.shutdown()
        try:
            async with asyncio.timeout(self.config.server.drain_timeout_s):
                await gateway.idle.wait()
        except TimeoutError:
            log.warning("drain timeout: cancelling %d in-flight requests", gateway.inflight)
        await gateway.aclose()
        for front in list(self.fronts):
            front.abort()
        if self.health is not None:
            # Before the pools close: a probe in flight owns a connection of an endpoint.
            await self.health.aclose()
        self.router.close()
        if self._http_server is not None:
            await self._http_server.wait_closed()
        log.info("llmedge stopped")


async def serve(config: Config, *, reuse_port: bool = False, ready_line: bool = True) -> None:
    server = Server(config, reuse_port=reuse_port)
    await server.start()
    server.install_signals()
    if ready_line and server.address is not None:
        # One machine-readable line, so scripts and tests learn an ephemeral port.
        # One write call: with --workers the lines of several processes must not interleave.
        os.write(sys.stdout.fileno(), b"LISTENING %s:%d\n" % (server.address[0].encode(),
                                                               server.address[1]))
    await server.serve_until_stopped()
