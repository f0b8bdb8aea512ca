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
from .caching import open_cache
import msgspec

from .config import Config, ServerSection, load, parse_address
from .errors import ConfigError, ReloadRejected
from .accesslog import AccessLog
from .fleet import Fleet
from .gateway import Gateway
from .outlier import OutlierDetector
from .health import HealthChecker
from .providers.aws_credentials import CredentialRenewal
from .http.front import HttpFront, Limits
from .loopback import is_loopback
from .metrics import Metrics
from .peers import WorkerSet
from .routing.classify_route import prepare as prepare_classifiers
from .routing.router import Router
from .runtime import Live, Runtime
from .upstream.pool import ssl_context as upstream_ssl_context

log = logging.getLogger("llmedge")

# Server settings a reload applies; the others (listeners, limits, workers) need a restart.
RELOADABLE_SERVER_FIELDS = frozenset({"max_inflight", "admin_token_env"})


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
                 sock: socket.socket | None = None, config_path: str | None = None,
                 workers: WorkerSet | None = None) -> None:
        self.config = config
        self.workers = workers              # with --workers N: where the others listen
        self.fleet: Fleet | None = None
        self.config_path = config_path      # what a reload reads; None: reload refused
        self.reloads = 0
        self.access_log: AccessLog | None = None
        self.outliers: OutlierDetector | None = None
        self._reload_lock = asyncio.Lock()
        self._reload_tasks: set[asyncio.Task] = set()
        self.reuse_port = reuse_port
        self._sock = sock
        self.metrics = Metrics()
        self.live: Live | None = None   # the runtime in use: router and settings
        self.gateway: Gateway | None = None
        self.health: HealthChecker | None = None
        self.aws: CredentialRenewal | None = None   # renews the router's AWS credentials
        self.fronts: set[HttpFront] = set()
        self.address: tuple[str, int] | None = None
        self.grpc = None                  # GrpcFront when server.grpc is set
        self.grpc_address: tuple[str, int] | None = None
        self._http_server: asyncio.AbstractServer | None = None
        self._stop = asyncio.Event()
        self._force = False
        self._forced = asyncio.Event()

    @property
    def router(self) -> Router | None:
        """The router in use: what the next reload is compared with, and metrics read."""
        return self.live.current.router if self.live is not None else None

    async def start(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        admin_token = self._admin_token(config)
        await loop.run_in_executor(None, prepare_classifiers, config)  # training: off the loop
        ssl_context = await _ssl_context(config)
        # Bedrock's credentials may be fetched over the network: not on the loop.
        router = await loop.run_in_executor(None, Router, config, ssl_context)
        self.live = Live(Runtime(router, config, admin_token))
        self.metrics.upstream_connections.set_function(
            lambda: sum(e.open_connections for t in self.router.targets.values()
                        for e in t.endpoints))
        cache = await open_cache(config.cache, self.metrics)
        if config.server.access_log:
            self.access_log = AccessLog(config.server.access_log)
        self.gateway = Gateway(self.live, self.metrics, cache,
                               RetryBudget(config.upstream.retry_budget), self.access_log)
        self.metrics.watch_endpoints(self._endpoint_rows)
        self.metrics.watch_llm_router(lambda: self.router.llm_outcomes)
        self.gateway.reloader = self.reload
        if self.workers is not None:
            # Before the listener: once this worker takes calls, it answers for all.
            self.fleet = Fleet(self.workers, self.metrics, self.gateway, self.reload)
            await self.fleet.start()
            self.gateway.fleet = self.fleet
            self.gateway.reloader = self.fleet.reload
        server = config.server
        limits = Limits(server.max_body_bytes, server.max_header_bytes, server.max_headers,
                        server.request_timeout_s, server.keepalive_timeout_s,
                        server.max_pipelined)
        if server.grpc is not None:
            from .grpc.front import GrpcFront  # grpc loads only when it is used

            self.grpc = GrpcFront(self.gateway, server.grpc, server.grpc_limits,
                                  self.reuse_port)
            self.grpc_address = await self.grpc.start()
        if server.http is not None:
            sock = self._sock or make_listener(server.http, self.reuse_port)
            gateway, fronts = self.gateway, self.fronts
            self._http_server = await loop.create_server(
                lambda: HttpFront(gateway, limits, loop, fronts), sock=sock)
            self.address = sock.getsockname()[:2]
        if self.address is not None and self.live.current.admin_token is None \
                and not is_loopback(self.address):
            log.warning("/admin/* has no token (server.admin_token_env): it answers clients "
                        "on this host only, though llmedge listens on %s", server.http)
        for name, var in ((t.name, t.unusable) for t in self.router.targets.values()
                          if t.unusable):
            log.warning("deployment %s is unusable: %s", name, var)
        # Last in start(): a start-up that fails earlier leaves no probe task behind.
        self.health = HealthChecker(self.router, config, metrics=self.metrics)
        self.health.start()
        self.outliers = OutlierDetector(self.live, self.metrics)
        self.outliers.start()
        self.aws = CredentialRenewal(self.router.aws_credentials())
        self.aws.start()
        self.gateway.started = True
        if self.grpc is not None:
            await self.grpc.set_ready(not self.router.unready())
        log.info("llmedge serving on%s%s (fastpath=%s)",
                 " http://%s:%d" % self.address if self.address else "",
                 " grpc://%s:%d" % self.grpc_address if self.grpc_address else "",
                 _fastpath.IMPLEMENTATION)

    @staticmethod
    def _admin_token(config: Config) -> bytes | None:
        """``Authorization`` value the admin endpoints need (None: no token configured)."""
        var = config.server.admin_token_env
        if not var:
            return None
        token = os.environ.get(var, "")
        if not token:
            raise OSError("server.admin_token_env: %s is not set" % var)
        return b"Bearer " + token.encode("latin-1")

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self) -> None:
        task = asyncio.get_running_loop().create_task(self._reload_logged())
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_tasks.discard)

    def _endpoint_rows(self):
        if self.router is not None:
            for target, endpoint, _, stats in self.router.endpoint_stats():
                yield target.name, endpoint.url, stats

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except ReloadRejected:
            pass  # logged by reload(); the old configuration keeps serving

    # === hot reload ===

    async def reload(self) -> dict:
        """Read the config file again and swap routes, deployments and upstream settings
        atomically. Requests already running finish on the configuration they started
        with; endpoints present in both keep their statistics, circuits and connections.
        Raises ReloadRejected (the old configuration keeps serving) on any problem."""
        if self.config_path is None:
            raise ReloadRejected("this server was not started from a file; nothing to reload")
        async with self._reload_lock:
            if self.gateway is None or self.gateway.draining:
                raise ReloadRejected("the server is stopping")
            loop = asyncio.get_running_loop()
            try:
                # Reading and checking the file, training, building: not on the loop.
                config = await loop.run_in_executor(None, load, self.config_path)
                await loop.run_in_executor(None, prepare_classifiers, config)
                ssl_context = await _ssl_context(config)
                router = await loop.run_in_executor(
                    None, functools.partial(Router, config, ssl_context, previous=self.router))
            except ConfigError as exc:
                self.metrics.reload(False)
                log.error("reload rejected, still serving the previous configuration: %s",
                          "; ".join(exc.problems))
                raise ReloadRejected("; ".join(exc.problems), exc.problems) from None
            except (OSError, ssl.SSLError) as exc:
                self.metrics.reload(False)
                log.error("reload rejected, still serving the previous configuration: %s", exc)
                raise ReloadRejected(str(exc)) from None
            try:
                summary = await self._swap(config, router)
            except ReloadRejected:
                self.metrics.reload(False)
                raise
            self.metrics.reload(True)
            return summary

    async def _swap(self, config: Config, router: Router) -> dict:
        old_config, old_router, old_health = self.config, self.router, self.health
        assert self.gateway is not None and self.live is not None and old_router is not None
        ignored = [name for name in ServerSection.__struct_fields__
                   if name not in RELOADABLE_SERVER_FIELDS
                   and getattr(config.server, name) != getattr(old_config.server, name)]
        needs_restart = ["server.%s" % name for name in ignored]
        if config.cache != old_config.cache:
            # The cache's store (and its Redis connections) lives as long as the process.
            needs_restart.append("cache")
            config.cache = old_config.cache
        # server.http may have been overridden on the command line: keep what is in use.
        config.server = msgspec.structs.replace(
            old_config.server, max_inflight=config.server.max_inflight,
            admin_token_env=config.server.admin_token_env)
        try:
            admin_token = self._admin_token(config)
        except OSError as exc:
            log.error("reload rejected, still serving the previous configuration: %s", exc)
            raise ReloadRejected(str(exc)) from None
        runtime = Runtime(router, config, admin_token)
        # From here on nothing awaits until the swap is complete: no request sees half.
        router.adopt()
        self.live.current = runtime
        if runtime.retry_budget != old_config.upstream.retry_budget:
            # The budget counts requests: its window restarts under the new settings.
            self.gateway.dispatcher.budget.configure(runtime.retry_budget)
        health = HealthChecker(router, config, previous=old_health, metrics=self.metrics)
        if old_health is not None:
            for row in old_health.rows - health.rows:
                # No longer probed (or gone): probes have no say over it any more.
                router.breakers.set_probe(row, True, "health probes off since the reload")
        self.health = health
        self.config = config
        health.start()
        old_aws, self.aws = self.aws, CredentialRenewal(router.aws_credentials())
        self.aws.start()
        self.reloads += 1
        if old_health is not None:
            await old_health.aclose()
        if old_aws is not None:
            await old_aws.aclose()
        if self.grpc is not None:
            # gRPC health says what /readyz would: a reload can make a route servable or not.
            await self.grpc.set_ready(not router.unready())
        kept, added, removed = router.changes
        summary = {
            "status": "reloaded", "reloads": self.reloads,
            "routes": sorted(router.routes), "deployments": sorted(router.targets),
            "endpoints_kept": kept, "endpoints_added": added, "endpoints_removed": removed,
        }
        if needs_restart:
            summary["needs_restart"] = needs_restart
            log.warning("reload: changes to %s take effect only after a restart",
                        ", ".join(summary["needs_restart"]))
        log.info("reloaded %s: %d routes, %d deployments; endpoints kept %d, added %d, "
                 "removed %d", self.config_path, len(router.routes), len(router.targets),
                 kept, added, removed)
        return summary

    def _on_signal(self) -> None:
        if self._stop.is_set():
            self._force = True  # a second signal: stop waiting for in-flight requests
            self._forced.set()
            log.warning("second signal: exiting without waiting")
            for front in list(self.fronts):
                front.abort()
            if self.grpc is not None:
                self.grpc.force()
        self._stop.set()

    async def undo_start(self) -> None:
        """Close what a start-up that failed half-way had opened (a listener that could not
        bind, say), while the loop still runs to close it."""
        if self.grpc is not None:
            await self.grpc.stop()
        if self._http_server is not None:
            self._http_server.close()
        if self.fleet is not None:
            await self.fleet.aclose()
        if self.gateway is not None:
            await self.gateway.aclose()
        if self.router is not None:
            self.router.close()

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
        if self.grpc is not None:
            await self.grpc.enter_drain()
        delay = self.config.server.drain_delay_s
        if delay > 0 and not self._force:
            # /readyz says "draining" while everything is still served, so that load
            # balancers stop sending before the listener goes away.
            log.info("draining: unready, still serving for %gs before closing listeners",
                     delay)
            try:
                async with asyncio.timeout(delay):
                    await self._forced.wait()
            except TimeoutError:
                pass
        if self.grpc is not None:
            self.grpc.stop_accepting(self.config.server.drain_timeout_s)
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
        if self.fleet is not None:
            # Peers asked until now got this worker's last numbers; from here on they get a
            # refused connection at once, not a wait.
            await self.fleet.aclose()
        for task in list(self._reload_tasks):
            task.cancel()
        for front in list(self.fronts):
            front.abort()
        if self.outliers is not None:
            await self.outliers.aclose()
        if self.aws is not None:
            await self.aws.aclose()
        if self.grpc is not None:
            await self.grpc.stop()
        if self.health is not None:
            # Before the pools close: a probe in flight owns a connection of an endpoint.
            await self.health.aclose()
        self.router.close()
        if self._http_server is not None:
            await self._http_server.wait_closed()
        if self.access_log is not None:
            # The writer thread may block on its file: not on the loop.
            await asyncio.get_running_loop().run_in_executor(None, self.access_log.close)
        log.info("llmedge stopped")


async def _ssl_context(config: Config) -> ssl.SSLContext | None:
    # Loading CA certificates reads files: not on the loop.
    return await asyncio.get_running_loop().run_in_executor(None, upstream_ssl_context, config)


async def serve(config: Config, *, reuse_port: bool = False, ready_line: bool = True,
                config_path: str | None = None, workers: WorkerSet | None = None) -> None:
    server = Server(config, reuse_port=reuse_port, config_path=config_path, workers=workers)
    try:
        await server.start()
    except BaseException:
        await server.undo_start()
        raise
    server.install_signals()
    if ready_line:
        # One machine-readable line per front end, so scripts and tests learn ephemeral
        # ports; the gRPC one first, so whoever waits for LISTENING has both. One write
        # call: with --workers the lines of several processes must not interleave.
        lines = b""
        if server.grpc_address is not None:
            lines += b"LISTENING-GRPC %s:%d\n" % (server.grpc_address[0].encode(),
                                                  server.grpc_address[1])
        if server.address is not None:
            lines += b"LISTENING %s:%d\n" % (server.address[0].encode(), server.address[1])
        os.write(sys.stdout.fileno(), lines)
    await server.serve_until_stopped()
