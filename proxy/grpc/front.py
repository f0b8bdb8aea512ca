"""The gRPC front end: ``llmedge.v1.Gateway`` on a grpc.aio server in the HTTP front end's loop.

Chat and ChatStream translate the request to the OpenAI JSON body and hand it to the same
``Gateway.handle`` an HTTP request goes through (validation, routing, cache, shedding,
dispatcher with fallbacks and breakers, metrics) with a ``GrpcExchange`` to answer into.
The client's deadline bounds the whole answer, every attempt and fallback included: the
dispatcher tries nothing past it, and grpc's core ends the call when it passes (the handler
keeps no timer of its own, which would race the core's and cost a timer per call). A
cancelled or expired call cancels the handler, which cancels the request's task, which
aborts the upstream request.
Health (``grpc.health.v1``) is SERVING once ready and NOT_SERVING from the start of a drain;
server reflection lists the services.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import _fastpath
import grpc
import orjson
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from ..config import GrpcLimits, parse_address
from ..errors import BadRequest, ProxyError, refusal
from ..gateway import SHUTTING_DOWN, Gateway
from ..metric_types import Counter
from ..routing.router import Router
from . import decoding, status, translate
from ._gen import gateway_pb2 as pb
from ._gen import gateway_pb2_grpc as pb_grpc
from .exchange import BAD_EVENT, CHAT_URL, ROUTE_URL, GrpcExchange

log = logging.getLogger("llmedge.grpc")

SERVICE = pb.DESCRIPTOR.services_by_name["Gateway"].full_name
# Left to RPCs still running after the drain waited for every proxied request: only the
# quick ones (Route, ListModels) and health watches, which end with the server.
STOP_GRACE_S = 1.0
# A status message (or trailer value) longer than this is cut. Messages may quote what the
# client sent (a model name); grpc clients refuse trailers past 16 KiB (and some past 8 KiB)
# and would see RESOURCE_EXHAUSTED instead of the real status. grpc percent-encodes
# non-ASCII, up to 12 bytes a character: 512 characters stay under 8 KiB.
MAX_DETAILS = 512
# A client whose deadline passes cancels the call (RST_STREAM) by its own clock, which runs
# ahead of llmedge's copy of the deadline by the time the call took to arrive: a cancellation
# this close to the deadline is the deadline's.
DEADLINE_SLACK_S = 0.25


def request_headers(context: grpc.aio.ServicerContext) -> dict[bytes, bytes]:
    """Request metadata as the lower-case header dict of the HTTP front end."""
    headers: dict[bytes, bytes] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):  # "-bin" metadata is bytes and means nothing here
            headers[key.encode("latin-1")] = value.encode("utf-8")
    return headers


def route_decision(router: Router, explain: dict[str, Any],
                   session: str | None) -> pb.RouteDecision:
    """The gateway's route explanation (POST /v1/route) as a RouteDecision."""
    targets = []
    for name in explain.get("deployments", ()):
        target = router.targets.get(name)
        if target is None:  # swapped out by a reload in between: name it, nothing more
            targets.append(pb.RouteTarget(deployment=name))
            continue
        targets.append(pb.RouteTarget(
            deployment=name, upstream_model=target.upstream_model, price=target.price,
            quality=target.quality, usable=target.unusable is None,
            unusable_reason=target.unusable or ""))
    plan = router.routes.get(explain.get("route", ""))
    return pb.RouteDecision(
        route=explain.get("route", ""), reason=explain.get("reason", ""), targets=targets,
        policy=explain.get("policy", ""),
        session=(session or "") if plan is not None and plan.affinity else "",
        explain_json=orjson.dumps(explain).decode())


def _bounded(text: str) -> str:
    if len(text) <= MAX_DETAILS:
        return text
    return "%s... [%d characters cut]" % (text[:MAX_DETAILS - 32], len(text) - MAX_DETAILS + 32)


async def _fail(context: grpc.aio.ServicerContext, failure: status.Failure) -> NoReturn:
    await context.abort(failure.code, _bounded(failure.message),
                        tuple((key, _bounded(value)) for key, value in failure.trailers))
    raise AssertionError("unreachable: abort raises")


Rpc = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _ended(exc: BaseException, context: grpc.aio.ServicerContext) -> str:
    """The status of a call whose handler left with ``exc`` instead of an answer."""
    if not isinstance(exc, asyncio.CancelledError):
        return "UNKNOWN"  # as grpc answers it
    remaining = context.time_remaining()
    if remaining is not None and remaining <= DEADLINE_SLACK_S:
        return "DEADLINE_EXCEEDED"
    return "CANCELLED"


def _rpc(method: str) -> Callable[[Rpc], Rpc]:
    """An RPC of the servicer. It answers a request message that did not decode, and counts
    the calls that end without an answer or an abort of their own: cancelled by the client
    or because the deadline passed (the handler sees both as a cancellation), and failures
    grpc answers UNKNOWN. An answer is counted as the handler returns, an abort in ``_fail``
    before it aborts: grpc sends the status during ``abort``, so a count after it could come
    after the client has already read the counter."""
    def wrap(handler: Rpc) -> Rpc:
        @functools.wraps(handler)
        async def rpc(self: GatewayServicer, request: Any,
                      context: grpc.aio.ServicerContext) -> Any:
            try:
                if isinstance(request, decoding.Undecodable):
                    await self._fail(context, method,
                                     status.from_error(BadRequest(request.message)))
                result = await handler(self, request, context)
            except grpc.aio.AbortError:
                raise
            except (asyncio.CancelledError, Exception) as exc:
                if context.code() is None:  # else it ended in an abort, counted there
                    self._counter.labels(method, _ended(exc, context)).inc()
                raise
            self._ok[method].inc()
            return result
        return rpc
    return wrap


def _cancel(ex: GrpcExchange) -> None:
    """The handler is leaving before the answer finished: stop the request (and with it
    the upstream request). An inline request (Chat) ran in the handler's own task: it ended
    with the handler, unless the cancellation comes from elsewhere (a forced exit)."""
    task = ex.task
    if not ex.finished and task is not None and not task.done() \
            and task is not asyncio.current_task():
        task.cancel(SHUTTING_DOWN if ex.pending is not None else None)


async def _inline(ex: GrpcExchange) -> None:
    """Run an inline request to its end. A drain that ran out of time (or a forced exit)
    cancels it as it cancels requests in tasks of their own, and the call then ends as
    theirs do: UNAVAILABLE, shutting down; a client that left cancels the call itself."""
    try:
        await ex.pending
    except asyncio.CancelledError as exc:
        if exc.args != (SHUTTING_DOWN,):
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        if not ex.finished:
            ex.drop()


class GatewayServicer(pb_grpc.GatewayServicer):
    def __init__(self, gateway: Gateway, counter: Counter) -> None:
        self.gateway = gateway
        self._counter = counter
        self._ok = {m: counter.labels(m, "OK") for m in ("Chat", "ChatStream", "Route",
                                                          "ListModels")}
        # Chat and ChatStream calls being answered: a drain waits for them (their last
        # events may still be on the way to the client after the request task ended).
        self.active: set[GrpcExchange] = set()
        self.idle = asyncio.Event()
        self.idle.set()
        self.refusing = False         # draining, past the drain delay: no new Chat calls
        self._models: pb.ListModelsResponse | None = None
        self._models_of: Router | None = None

    def models(self) -> pb.ListModelsResponse:
        router = self.gateway.router  # a reload swaps it: build once per router
        if self._models_of is not router:
            self._models = pb.ListModelsResponse(models=[
                pb.Model(id=name, owned_by="llmedge-route" if name in router.routes
                         else "llmedge-deployment")
                for name in [*router.routes, *router.targets]])
            self._models_of = router
        assert self._models is not None
        return self._models

    # === RPCs ===

    @_rpc("Chat")
    async def Chat(self, request: pb.ChatRequest,
                   context: grpc.aio.ServicerContext) -> pb.ChatResponse:
        # The request runs in this handler's own task: a unary call waits for nothing else,
        # and a task and a future of its own would cost it more than its routing does.
        ex = await self._start(request, context, "Chat", inline=True)
        try:
            if ex.pending is not None:
                await _inline(ex)
            while not ex.finished:
                await ex.wait()
        finally:
            self._end(ex)
        doc = await self._whole_answer(ex, context, "Chat")
        # Most answers are written as bytes at once; the others go through a message.
        return _fastpath.response_bytes(doc) or translate.chat_response(doc)

    @_rpc("ChatStream")
    async def ChatStream(self, request: pb.ChatRequest,
                         context: grpc.aio.ServicerContext) -> None:
        ex = await self._start(request, context, "ChatStream")
        try:
            while not (ex.started or ex.finished):
                await ex.wait()
            if not ex.streaming:
                # A whole answer: an error, or an upstream that did not stream.
                doc = await self._whole_answer(ex, context, "ChatStream")
                await context.write(translate.completion_as_chunk(doc))
                return
            await context.send_initial_metadata(status.metadata(ex.response_headers))
            while True:
                while ex.events:
                    doc = ex.take()
                    await context.write(_fastpath.chunk_bytes(doc) or translate.chat_chunk(doc))
                if ex.error is not None or ex.finished:
                    break
                await ex.wait()
        finally:
            self._end(ex)
        if ex.error is not None:
            # Cut after it began: the upstream failed (worth a retry), unless what it sent
            # could not be translated.
            await self._fail(context, "ChatStream", status.from_error(
                ex.error, ex.response_headers,
                grpc.StatusCode.INTERNAL if ex.error.code == BAD_EVENT
                else grpc.StatusCode.UNAVAILABLE))
        if ex.aborted or ex.dropped:
            await self._fail_answer(ex, context, "ChatStream")

    @_rpc("Route")
    async def Route(self, request: pb.ChatRequest,
                    context: grpc.aio.ServicerContext) -> pb.RouteDecision:
        # Through the gateway's POST /v1/route, as Chat goes through its chat endpoint: one
        # explainer, and routes that decide asynchronously (classify) work the same.
        ex = await self._start(request, context, "Route")
        try:
            while not ex.finished:
                await ex.wait()
        finally:
            self._end(ex)
        if ex.aborted or ex.dropped or ex.status >= 300:
            await self._fail_answer(ex, context, "Route")
        headers = ex.headers
        session = headers.get(b"x-llmedge-session")
        decision = route_decision(self.gateway.router, orjson.loads(ex.payload),
                                  session.decode("utf-8", "replace") if session
                                  else request.user or None)
        return decision

    @_rpc("ListModels")
    async def ListModels(self, request: pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        return self.models()

    # === helpers ===

    async def _start(self, request: pb.ChatRequest, context: grpc.aio.ServicerContext,
                     method: str, inline: bool = False) -> GrpcExchange:
        stream = method == "ChatStream"
        if self.refusing and method != "Route":
            await self._fail(context, method, status.Failure(
                grpc.StatusCode.UNAVAILABLE, "llmedge is draining; retry on another instance",
                [("retry-after", "0")]))
        try:
            body = translate.request_body(request, stream)
        except ProxyError as exc:
            await self._fail(context, method, status.from_error(exc))
        ex = GrpcExchange(request_headers(context), body,
                          ROUTE_URL if method == "Route" else CHAT_URL)
        remaining = context.time_remaining()
        if remaining is not None:
            # The dispatcher bounds every connect and first byte by it and tries no further
            # candidate once it has passed; grpc's core ends the call when it passes.
            ex.deadline = time.monotonic() + remaining
        ex.inline = inline
        self.active.add(ex)
        self.idle.clear()
        try:
            self.gateway.handle(ex)
        except BaseException:
            self._end(ex)
            raise
        if ex.task is not None and ex.pending is None:
            ex.task.add_done_callback(ex.task_done)
        return ex

    def _end(self, ex: GrpcExchange) -> None:
        _cancel(ex)
        self.active.discard(ex)
        if not self.active:
            self.idle.set()

    def cancel_all(self) -> None:
        """Stop every request being answered (a forced exit)."""
        for ex in list(self.active):
            _cancel(ex)

    async def _whole_answer(self, ex: GrpcExchange, context: grpc.aio.ServicerContext,
                            method: str) -> Any:
        """The decoded JSON of a whole answer, its metadata sent; a failed or undecodable
        one ends the call with its status instead."""
        if ex.aborted or ex.dropped or ex.status >= 300:
            await self._fail_answer(ex, context, method)
        try:
            doc = orjson.loads(ex.payload)
        except orjson.JSONDecodeError:
            await self._fail(context, method, status.Failure(
                grpc.StatusCode.INTERNAL, "the upstream's answer is not JSON",
                status.metadata(ex.response_headers)))
        await context.send_initial_metadata(status.metadata(ex.response_headers))
        return doc

    async def _fail_answer(self, ex: GrpcExchange, context: grpc.aio.ServicerContext,
                           method: str) -> NoReturn:
        if ex.dropped:
            await self._fail(context, method, status.Failure(
                grpc.StatusCode.UNAVAILABLE, "llmedge stopped answering this call (it is "
                "shutting down); retry on another instance", status.metadata(ex.response_headers)))
        if ex.aborted:
            await self._fail(context, method, status.Failure(
                grpc.StatusCode.INTERNAL, "internal error", status.metadata(ex.response_headers)))
        failure = ex.failure
        if failure is None:  # a whole answer, but not a success
            failure = refusal(ex.status, "upstream_error", "answered %d" % ex.status)
        await self._fail(context, method, status.from_error(failure, ex.response_headers))

    async def _fail(self, context: grpc.aio.ServicerContext, method: str,
                    failure: status.Failure) -> NoReturn:
        self._counter.labels(method, failure.code.name).inc()
        await _fail(context, failure)


def server_options(limits: GrpcLimits, reuse_port: bool) -> list[tuple[str, Any]]:
    def ms(seconds: float) -> int:
        return int(seconds * 1000)

    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", limits.max_receive_message_bytes),
        ("grpc.max_send_message_length", limits.max_send_message_bytes),
        ("grpc.max_concurrent_streams", limits.max_concurrent_streams),
        ("grpc.keepalive_time_ms", ms(limits.keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", ms(limits.keepalive_timeout_s)),
        ("grpc.keepalive_permit_without_calls", int(limits.permit_keepalive_without_calls)),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", ms(limits.min_ping_interval_s)),
        ("grpc.http2.max_ping_strikes", limits.max_ping_strikes),
        # gRPC turns SO_REUSEPORT on by default: a second llmedge on the same port would then
        # silently take half the traffic. Only --workers shares a port on purpose.
        ("grpc.so_reuseport", int(reuse_port)),
    ]
    for name, value in (("grpc.max_connection_idle_ms", limits.max_connection_idle_s),
                        ("grpc.max_connection_age_ms", limits.max_connection_age_s),
                        ("grpc.max_connection_age_grace_ms", limits.max_connection_age_grace_s)):
        if value is not None:
            options.append((name, ms(value)))
    return options


class GenericOnly:
    """A server that takes a generated ``add_*_to_server``'s handlers as generic ones only.
    grpc.aio's serving loop keeps a task per registered method and waits on all of them for
    every call; health checks and reflection are rare calls, found as well through the
    generic handlers, so they do not make every Chat call wait on four more tasks."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        pass


class GrpcFront:
    """Owns the grpc.aio server: ``start()``, ``set_ready()``, ``enter_drain()``, ``stop()``."""

    def __init__(self, gateway: Gateway, address: str, limits: GrpcLimits,
                 reuse_port: bool = False) -> None:
        self.gateway = gateway
        self.address = address
        self.limits = limits
        self.reuse_port = reuse_port
        self.port = 0
        self.health = HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._drain_deadline: float | None = None
        counter = Counter("llmedge_grpc_requests", "gRPC calls answered, by method and status.",
                          ["method", "code"], registry=gateway.metrics.registry)
        self.servicer = GatewayServicer(gateway, counter)

    async def start(self) -> tuple[str, int]:
        """Bind and serve; health is NOT_SERVING until ``set_ready``."""
        host, port = parse_address(self.address)
        server = grpc.aio.server(options=server_options(self.limits, self.reuse_port),
                                 maximum_concurrent_rpcs=self.limits.max_concurrent_rpcs)
        decoding.add_gateway(self.servicer, server)
        rare = GenericOnly(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, rare)
        names = (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(names), rare)
        target = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
        try:
            self.port = server.add_insecure_port(target)
        except RuntimeError as exc:
            raise OSError("server.grpc: cannot listen on %s: %s" % (self.address, exc)) from None
        if not self.port:
            raise OSError("server.grpc: cannot listen on %s" % self.address)
        for service in ("", SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        decoding.quiet_metadata_decoding(True)
        await server.start()
        self._server = server
        return host, self.port

    async def set_ready(self, ready: bool) -> None:
        state = (health_pb2.HealthCheckResponse.SERVING if ready
                 else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in ("", SERVICE):
            await self.health.set(service, state)

    async def enter_drain(self) -> None:
        """NOT_SERVING from now on, and watchers told; calls are still served."""
        await self.health.enter_graceful_shutdown()

    def stop_accepting(self, timeout: float) -> None:
        """Where the HTTP listener closes: new Chat calls are refused with UNAVAILABLE while
        the calls in flight finish, for up to ``timeout`` seconds."""
        self.servicer.refusing = True
        self._drain_deadline = asyncio.get_running_loop().time() + timeout

    def force(self) -> None:
        """A second signal: stop waiting for calls in flight."""
        self._drain_deadline = None
        self.servicer.cancel_all()

    async def stop(self) -> None:
        """Once the calls in flight are answered (or the drain's time is up), close. Not
        server.stop(grace) alone: health watches never end by themselves, so the grace
        would always be spent in full."""
        if self._server is None:
            return
        deadline = self._drain_deadline
        if deadline is not None:
            try:
                async with asyncio.timeout_at(deadline):
                    await self.servicer.idle.wait()
            except TimeoutError:
                log.warning("drain timeout: %d gRPC calls still being answered",
                            len(self.servicer.active))
        await self._server.stop(STOP_GRACE_S)
        self._server = None
        decoding.quiet_metadata_decoding(False)
