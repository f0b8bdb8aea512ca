"""The HTTP application: endpoints, request validation and per-request bookkeeping."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from urllib.parse import parse_qs, quote, unquote_to_bytes

import msgspec
import orjson


from .accesslog import AccessLog
from .anthropic import translate as messages_api
from .anthropic.exchange import MessagesResponder
from .responses_api import translate as responses_api
from .responses_api.exchange import ResponsesResponder
from .accounting import ask_for_usage, cost_usd
from .budget import RetryBudget
from .cache import Entry, sse_replay
from .caching import ResponseCache, Ticket
from .dispatch import Answer, Dispatcher
from .errors import (BadRequest, InternalError, MethodNotAllowed, NotFound, Overloaded,
                     ProxyError, ReloadRejected, refusal)
from .jsondoc import decode_view
from .metrics import Metrics
from .passthrough import COUNT_TOKENS_PATH, Native
from .responder import EVENT_STREAM, JSON, Responder
from .routing.explain import explain_body
from .routing.router import Router, parse_tags
from .runtime import Live

log = logging.getLogger("llmedge.gateway")


class MessageView(msgspec.Struct):
    role: str


class StreamOptionsView(msgspec.Struct):
    include_usage: bool | None = None


class ChatView(msgspec.Struct):
    """The part of a chat request routing needs; msgspec skips every other field."""

    model: str
    messages: list[MessageView]
    stream: bool | None = False
    user: str | None = None
    # Read because llmedge may set include_usage: a stream_options that is not an object
    # would go upstream unread and its tokens uncounted.
    stream_options: StreamOptionsView | None = None


class EmbeddingsView(msgspec.Struct):
    model: str
    input: msgspec.Raw
    user: str | None = None


_chat_decoder = msgspec.json.Decoder(ChatView)
_embeddings_decoder = msgspec.json.Decoder(EmbeddingsView)

NO_TAGS: frozenset[str] = frozenset()
CHAT_PATH = b"/chat/completions"
EMBEDDINGS_PATH = b"/embeddings"
# The message of the cancellation a drain that ran out of time sends the requests left: a
# front end that runs a request in its own task (Responder.inline) tells it from a client
# that left.
SHUTTING_DOWN = "llmedge is shutting down"
_REQUEST_ID_OK = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


class Gateway:
    """Answers every request of every front end (``http.front.Application``; the gRPC
    front calls ``handle`` too), through a ``responder.Responder``."""

    def __init__(self, live: Live, metrics: Metrics, cache: ResponseCache,
                 budget: RetryBudget, access_log: AccessLog | None = None) -> None:
        self.live = live
        self.metrics = metrics
        self.cache = cache
        self.dispatcher = Dispatcher(metrics, cache, budget)
        self.access_log = access_log
        self.draining = False
        self.started = False
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self._request_prefix = os.urandom(4).hex().encode()
        self._request_count = 0
        self._tasks: set[asyncio.Task] = set()
        self.reloader = None  # async () -> summary dict; set by the server
        self.fleet = None     # fleet.Fleet with --workers N: answers for every worker

    @property
    def router(self) -> Router:
        """The router in use (a reload swaps it)."""
        return self.live.current.router

    # === http.front.Application ===

    def connection_count(self, delta: int) -> None:
        self.metrics.connections.inc(delta)

    def handle(self, ex: Responder) -> None:
        path = ex.url.partition(b"?")[0]
        if path == b"/v1/chat/completions":
            self._proxy(ex, CHAT_PATH, _chat_decoder)
        elif path == b"/v1/messages":
            self._messages(ex)
        elif path == b"/v1/messages/count_tokens":
            self._messages(ex, COUNT_TOKENS_PATH)
        elif path == b"/v1/responses":
            self._responses(ex)
        elif path == b"/v1/embeddings":
            self._proxy(ex, EMBEDDINGS_PATH, _embeddings_decoder)
        elif path == b"/v1/route":
            self._route(ex)
        elif path == b"/v1/models":
            self._get(ex) and ex.respond(200, self.router.models_body)
        elif path.startswith(b"/v1/models/"):
            self._get(ex) and self._model(ex, path[11:])
        elif path == b"/healthz":
            self._get(ex) and ex.respond(200, b'{"status":"ok"}')
        elif path == b"/readyz":
            self._get(ex) and self._ready(ex)
        elif path == b"/admin/upstreams":
            self._get(ex) and self._admin(ex) and self._admin_upstreams(ex)
        elif path == b"/admin/cache":
            self._admin_cache(ex)
        elif path == b"/admin/reload":
            self._post(ex) and self._admin(ex) and self._reload(ex)
        elif path == b"/metrics":
            self._get(ex) and self._metrics(ex)
        else:
            ex.fail(NotFound("no such endpoint: %s" % path.decode("latin-1"),
                                     code="not_found"))

    # === endpoints ===

    def _get(self, ex: Responder) -> bool:
        if ex.method == b"HEAD":
            return True  # answered as GET; the exchange leaves the body out
        return self._method(ex, b"GET")

    def _post(self, ex: Responder) -> bool:
        return self._method(ex, b"POST")

    def _method(self, ex: Responder, method: bytes) -> bool:
        if ex.method == method:
            return True
        ex.fail(MethodNotAllowed("use %s for this endpoint" % method.decode(),
                                         code="method_not_allowed"),
                    ((b"allow", b"GET, HEAD" if method == b"GET" else method),))
        return False

    def _model(self, ex: Responder, name: bytes) -> None:
        body = self.router.model_bodies.get(name)
        if body is None:
            # Quoted or not, the same id: %2F and / alike.
            body = self.router.model_bodies.get(quote(unquote_to_bytes(name), safe="").encode())
        if body is None:
            ex.fail(NotFound("The model %r does not exist: it names no route or "
                                     "deployment" % unquote_to_bytes(name).decode("utf-8",
                                                                                   "replace"),
                                     param="model"))
            return
        ex.respond(200, body)

    def _reload(self, ex: Responder) -> None:
        if self.reloader is None:
            ex.fail(refusal(501, "server_error", "this server cannot reload"))
            return
        task = asyncio.get_running_loop().create_task(self._run_reload(ex, self.reloader))
        ex.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _run_reload(ex: Responder, reloader) -> None:
        try:
            summary = await reloader()
        except ReloadRejected as exc:
            body = {"error": {
                "message": "reload rejected; the previous configuration keeps serving: "
                           + exc.reason,
                "type": "invalid_request_error", "param": None, "code": "invalid_config",
                "problems": exc.problems}}
            workers = getattr(exc, "workers", None)   # set by Fleet.reload
            if workers is not None:
                body["workers"] = workers
            ex.respond(400, orjson.dumps(body))
            return
        ex.respond(200, orjson.dumps(summary))

    def _admin(self, ex: Responder) -> bool:
        token = self.live.current.admin_token
        if token is None:
            # No token configured: the admin endpoints are this host's alone. A request a
            # proxy forwarded comes from wherever that proxy's client is.
            headers = ex.headers
            if ex.from_loopback and not (b"x-forwarded-for" in headers
                                         or b"forwarded" in headers
                                         or b"x-real-ip" in headers):
                return True
            ex.fail(refusal(403, "permission_error",
                            "admin endpoints answer clients on this host only; set "
                            "server.admin_token_env to use them from elsewhere",
                            "admin_loopback_only"))
            return False
        scheme, _, credential = ex.headers.get(b"authorization", b"").partition(b" ")
        # The scheme's name is case-insensitive (RFC 9110); the token is compared in
        # constant time.
        if scheme.lower() == b"bearer" and hmac.compare_digest(credential.strip(), token[7:]):
            return True
        ex.fail(refusal(401, "authentication_error", "admin endpoints need the admin token",
                        "invalid_admin_token"),
                ((b"www-authenticate", b'Bearer realm="llmedge admin"'),))
        return False

    def upstream_rows(self) -> list[dict]:
        """The live endpoint table: state, statistics, and why each endpoint is in its state."""
        router = self.router
        return [{"deployment": target.name, "url": endpoint.url,
                 "usable": target.unusable is None, "unusable_reason": target.unusable,
                 "open_connections": endpoint.open_connections,
                 **stats, **router.breakers.describe(row)}
                for target, endpoint, row, stats in router.endpoint_stats()]

    def _admin_upstreams(self, ex: Responder) -> None:
        fleet = self.fleet
        if fleet is None:
            ex.respond(200, orjson.dumps({"endpoints": self.upstream_rows()}))
        else:
            self._spawn(ex, self._answer_for_all(ex, fleet.upstreams, JSON))

    def _metrics(self, ex: Responder) -> None:
        metrics = self.metrics
        if self.fleet is None:
            ex.respond(200, metrics.exposition(), metrics.content_type)
        else:
            self._spawn(ex, self._answer_for_all(ex, self.fleet.exposition,
                                                 metrics.content_type))

    @staticmethod
    async def _answer_for_all(ex: Responder, answer, content_type: bytes) -> None:
        """Respond with what the fleet (every worker) answers: bytes, or a dict as JSON."""
        try:
            body = await answer()
        except Exception:
            log.exception("unexpected error answering for every worker")
            ex.fail(InternalError())
            return
        ex.respond(200, body if isinstance(body, bytes) else orjson.dumps(body),
                   content_type)

    def _ready(self, ex: Responder) -> None:
        reasons = self.router.unready()
        if self.draining:
            reasons.insert(0, "draining")
        elif not self.started:
            reasons.insert(0, "starting")
        if reasons:
            ex.respond(503, msgspec.json.encode({"status": "unready", "reasons": reasons}))
        else:
            ex.respond(200, b'{"status":"ready"}')

    def _route(self, ex: Responder) -> None:
        """``POST /v1/route``: the decision a chat request would get, explained; no upstream."""
        if not self._method(ex, b"POST"):
            return
        router = self.router
        try:
            view = decode_view(_chat_decoder, ex.body)
            plan = router.plan(view.model)
            tags = ex.headers.get(b"x-llmedge-tags")
            session = ex.headers.get(b"x-llmedge-session")
            args = (router.table, router.rnd, parse_tags(tags) if tags else NO_TAGS,
                    session.decode("utf-8", "replace") if session else view.user, ex.body)
            if plan.asynchronous:
                self._spawn(ex, self._route_async(ex, router, plan, args))
                return
            decision = plan.decide(*args)
        except ProxyError as exc:
            ex.fail(exc)
            return
        ex.respond(200, explain_body(router, plan, decision))

    async def _route_async(self, ex: Responder, router: Router, plan, args) -> None:
        try:
            decision = await plan.decide_async(*args)
        except ProxyError as exc:
            ex.fail(exc)
            return
        except Exception:
            log.exception("unexpected error deciding a route")
            ex.fail(InternalError())
            return
        ex.respond(200, explain_body(router, plan, decision))

    def _spawn(self, ex: Responder, coro) -> None:
        """Run a request's decision as a task the exchange and the gateway own."""
        task = asyncio.get_running_loop().create_task(coro)
        ex.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _proxy(self, ex: Responder, path: bytes, decoder: msgspec.json.Decoder,
               native: Native | None = None) -> None:
        if ex.method != b"POST":
            self._method(ex, b"POST")
            return
        started = time.perf_counter()
        answer = None
        runtime = self.live.current
        router = runtime.router
        try:
            try:
                view = decoder.decode(ex.body)
            except (msgspec.MsgspecError, RecursionError):
                # Says why (or reads what only looked broken: a lone surrogate escape).
                view = decode_view(decoder, ex.body)
            if path is CHAT_PATH and not view.messages:
                raise BadRequest("messages: must contain at least one message",
                                 param="messages")
            plan = router.plan(view.model)
            tags = ex.headers.get(b"x-llmedge-tags")
            session = ex.headers.get(b"x-llmedge-session")
            session = session.decode("utf-8", "replace") if session else view.user
            required = parse_tags(tags) if tags else NO_TAGS
            args = (router.table, router.rnd, required, session, ex.body)
            stream = bool(getattr(view, "stream", False))
            answer = Answer(ex, runtime, plan, path, ex.body, view.model, stream,
                            self._request_id(ex), session)
            answer.tags = required
            answer.native = native
            # The cache looks first: a hit pays for no classifier and no LLM tier.
            if plan.cache is not None and path is CHAT_PATH and self._from_cache(answer, stream):
                self._account(answer, started)
                return
            if answer.ticket is None and not plan.asynchronous:
                self._decided(answer, plan.decide(*args))
                args = None
            # else: decided in the request's task, after the cache's lookup that waits (a
            # Redis GET, an identical request in flight), or awaiting the LLM tier.
        except ProxyError as exc:
            self._refuse(ex, path, exc, started,
                         answer.request_id if answer is not None else self._request_id(ex))
            return
        self._start(answer, started, args)

    def _messages(self, ex: Responder, path: bytes = CHAT_PATH) -> None:
        """An Anthropic Messages request: translated, then answered as a chat completion
        whose answer (and every error) goes back in the Messages API's shapes. A token
        count (``COUNT_TOKENS_PATH``) is routed the same way, but only a deployment of
        Anthropic's own API can answer it."""
        messages = MessagesResponder(ex, b"", "")
        if ex.method != b"POST":
            messages.fail(MethodNotAllowed("use POST for this endpoint",
                                           code="method_not_allowed"), ((b"allow", b"POST"),))
            return
        try:
            try:
                doc = orjson.loads(ex.body)
            except orjson.JSONDecodeError as exc:
                raise BadRequest("the request body is not valid JSON: %s" % exc) from None
            if path is COUNT_TOKENS_PATH and isinstance(doc, dict):
                # A count has no max_tokens and no stream; the translation, which routing
                # reads, wants the one and must not see the other.
                doc = {**doc, "max_tokens": doc.get("max_tokens", 1), "stream": False}
            chat = messages_api.chat_request(doc)
        except BadRequest as exc:
            self._refuse(messages, b"/messages" if path is CHAT_PATH else path, exc,
                         time.perf_counter(), self._request_id(ex))
            return
        messages.body = orjson.dumps(chat)
        messages.model = chat["model"]
        messages.native = Native("anthropic", ex.body, chat["model"])
        self._proxy(messages, path, _chat_decoder, messages.native)

    def _responses(self, ex: Responder) -> None:
        """An OpenAI Responses request: translated, then answered as a chat completion
        whose answer goes back as a ``response`` (or its event stream)."""
        if not self._post(ex):
            return
        try:
            try:
                doc = orjson.loads(ex.body)
            except orjson.JSONDecodeError as exc:
                raise BadRequest("the request body is not valid JSON: %s" % exc) from None
            chat = responses_api.chat_request(doc)
        except BadRequest as exc:
            self._refuse(ex, b"/responses", exc, time.perf_counter(), self._request_id(ex))
            return
        responses = ResponsesResponder(ex, orjson.dumps(chat), doc)
        responses.native = Native("responses", ex.body, chat["model"])
        self._proxy(responses, CHAT_PATH, _chat_decoder, responses.native)

    def _refuse(self, ex: Responder, path: bytes, exc: ProxyError, started: float,
                request_id: bytes) -> None:
        """Refused before any upstream was asked (a bad request, tags no deployment has),
        but still one of the client's requests: it can be found by its id like any other."""
        ex.fail(exc, ((b"x-request-id", request_id),))
        self.metrics.request("-", "-", exc.status, time.perf_counter() - started)
        if self.access_log is not None:
            self.access_log.write({"ts": time.time(),
                                   "request_id": request_id.decode("latin-1"),
                                   "path": "/v1" + path.decode(),
                                   "status": exc.status, "error": exc.code or exc.type,
                                   "duration_ms": round((time.perf_counter() - started)
                                                        * 1e3, 3)})

    def _decided(self, answer: Answer, decision) -> None:
        answer.candidates = decision.targets
        answer.session = decision.session
        answer.reason = decision.reason.encode("utf-8", "replace")

    def _start(self, answer: Answer, started: float, args: tuple | None) -> None:
        """Hand the request to its task; ``args`` when its route is still to decide."""
        ex = answer.exchange
        runtime = answer.runtime
        if runtime.deadline_s is not None:
            answer.deadline = time.monotonic() + runtime.deadline_s
        if ex.deadline and (not answer.deadline or ex.deadline < answer.deadline):
            answer.deadline = ex.deadline  # the client's own (a gRPC deadline)
        if self.inflight >= runtime.max_inflight:
            # Shed at once: a bounded answer now beats an unbounded queue.
            answer.status = 503
            ex.fail(Overloaded("llmedge is at max_inflight (%d requests); retry shortly"
                                       % runtime.max_inflight, retry_after=1.0))
            self.metrics.shed("server_max_inflight")
            if answer.ticket is not None:
                self.cache.release(answer.ticket)
            self._account(answer, started)
            return
        if answer.stream and answer.path is CHAT_PATH:
            # Ask for usage so tokens and cost are counted; strip it again on the way back
            # if the client did not ask.
            with_usage = ask_for_usage(answer.body)
            if with_usage is not None:
                answer.body = with_usage
                answer.strip_usage = True
        self.inflight += 1
        self.metrics.inflight.inc()
        self.idle.clear()
        run = self._run(answer, started, args)
        if ex.inline:
            ex.pending = run   # awaited by the front end, before anything else awaits
            task = asyncio.current_task()
            assert task is not None
        else:
            task = asyncio.get_running_loop().create_task(run)
        ex.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, answer: Answer, started: float, args: tuple | None) -> None:
        ticket = answer.ticket
        ex = answer.exchange
        refused = False
        try:
            if ticket is not None:
                entry = await self.cache.resolve(ticket)
                if entry is not None and self._serve_hit(answer, ticket, entry):
                    return
            if args is not None:
                plan = answer.plan
                try:
                    decision = (await plan.decide_async(*args) if plan.asynchronous
                                else plan.decide(*args))
                except ProxyError as exc:
                    # Refused as a route that decides at once refuses, and counted so.
                    refused = True
                    self._refuse(ex, answer.path, exc, started, answer.request_id)
                    return
                self._decided(answer, decision)
            await self.dispatcher.run(answer, answer.candidates)
        except asyncio.CancelledError:
            if not answer.complete:
                answer.status = 499  # the client went away; nothing left to answer
            raise
        except Exception:
            log.exception("unexpected error answering %s", answer.request_id)
            answer.status = 500
            if not ex.started:
                ex.fail(InternalError(), answer.response_headers())
            elif not ex.finished:
                ex.abort()
        finally:
            if ticket is not None:
                self.cache.release(ticket)
            self.inflight -= 1
            self.metrics.inflight.dec()
            if self.inflight == 0:
                self.idle.set()
            if not refused:
                self._account(answer, started)

    def _account(self, answer: Answer, started: float) -> None:
        """Metrics and the access log line of one answered request."""
        elapsed = time.perf_counter() - started
        metrics = self.metrics
        route = answer.plan.name
        upstream = answer.upstream
        deployment = upstream.name if upstream is not None else "-"
        if answer.cache_state == b"hit":
            deployment = "cache"
        metrics.request(route, deployment, answer.status, elapsed)
        overhead = max(0.0, elapsed - answer.upstream_s)
        if answer.attempts:
            metrics.overhead(overhead)
        ttft = 0.0
        if answer.first_event_at:
            # perf_counter and monotonic share a clock on Linux, but not everywhere: go
            # through the elapsed time.
            ttft = max(0.0, elapsed - (time.monotonic() - answer.first_event_at))
            metrics.first_token(route, deployment, ttft)
        usage = answer.usage
        cost = 0.0
        if usage is not None and upstream is not None and answer.cache_state != b"hit":
            cost = cost_usd(usage, upstream.price_in, upstream.price_out)
            metrics.usage(route, deployment, usage.prompt_tokens, usage.completion_tokens,
                          cost)
        log = self.access_log
        if log is not None:
            record = {
                "ts": time.time(), "request_id": answer.request_id.decode("latin-1"),
                "path": "/v1" + answer.path.decode(), "route": route, "deployment": deployment,
                "decision": answer.reason.decode("utf-8", "replace"),
                "attempts": answer.attempts, "retries": answer.retries,
                "status": answer.status, "stream": answer.stream,
                "cache": answer.cache_state.decode(),
                "duration_ms": round(elapsed * 1e3, 3),
                "upstream_ms": round(answer.upstream_s * 1e3, 3),
                "overhead_us": round(overhead * 1e6, 1),
            }
            if ttft:
                record["ttft_ms"] = round(ttft * 1e3, 3)
            if usage is not None:
                record["prompt_tokens"] = usage.prompt_tokens
                record["completion_tokens"] = usage.completion_tokens
                record["cost_usd"] = cost
            if answer.failures:
                record["failures"] = [e.kind for e in answer.failures]
            if answer.continuations:
                record["continued"] = answer.continuations
            log.write(record)

    def _from_cache(self, answer: Answer, stream: bool) -> bool:
        """Answer from the in-process cache at once when the route caches and the request
        allows it; otherwise leave a ticket for the request task (a Redis lookup, waiting
        for an identical request in flight, storing the answer). True when answered."""
        ex = answer.exchange
        try:
            ticket = self.cache.ticket(answer.plan.name, answer.plan.cache,
                                       orjson.loads(ex.body), ex.headers, stream, answer.tags)
        except ValueError:
            # Valid JSON with no canonical form to key it by (a lone surrogate, a number
            # beyond a double, a very long integer): answered, but not from or into the cache.
            self.cache.bypass(answer.plan.name)
            return False
        if ticket is None:
            return False
        answer.ticket = ticket
        if ticket.lookup:
            answer.cache_state = b"miss"
            if self.cache.sync:
                entry = self.cache.get_now(ticket)
                if entry is not None:
                    return self._serve_hit(answer, ticket, entry)
        return False

    def _serve_hit(self, answer: Answer, ticket: Ticket, entry: Entry) -> bool:
        """Answer from ``entry``; False (nothing sent) when it cannot be used — stored from
        a deployment the request's tags rule out, or a foreign or damaged value in a shared
        Redis: the request then goes on as a miss."""
        ex = answer.exchange
        upstream = answer.runtime.router.targets.get(entry.upstream.decode("utf-8", "replace"))
        if answer.tags and (upstream is None or not answer.tags <= upstream.tags):
            # Tagged requests have keys of their own, but a reload may have changed which
            # tags a deployment carries since the answer was stored.
            return False
        content_type = entry.content_type
        try:
            replay = sse_replay(entry.body, ticket.include_usage) if ticket.stream else b""
        except (ValueError, TypeError, AttributeError):
            return False
        if b"\r" in content_type or b"\n" in content_type:
            content_type = JSON
        answer.cache_state = b"hit"
        answer.upstream = upstream
        answer.reason = b"cache hit"
        answer.status = 200
        extra = (*answer.response_headers(), (b"age", b"%d" % entry.age_s))
        if ticket.stream:
            ex.start_stream(200, EVENT_STREAM, extra)
            ex.write(replay)
            ex.end_stream()
        else:
            ex.respond(200, entry.body, content_type, extra)
        return True

    def _admin_cache(self, ex: Responder) -> None:
        """``DELETE /admin/cache`` drops every stored answer, ``?route=NAME`` one route's."""
        if not self._method(ex, b"DELETE"):
            return
        if not self._admin(ex):
            return
        query = parse_qs(ex.url.partition(b"?")[2].decode("latin-1"), keep_blank_values=True)
        unknown = sorted(set(query) - {"route"})
        if unknown or len(query.get("route", ())) > 1 or query.get("route") == [""]:
            # A typo must not empty every route's cache.
            ex.fail(BadRequest(
                "DELETE /admin/cache takes one query parameter, route=NAME (got %s)"
                % ", ".join(unknown or ["route=%s" % v for v in query["route"]]),
                param="route"))
            return
        route = query.get("route", [None])[0]
        if route is not None and route not in self.router.routes:
            ex.fail(NotFound("no such route: %s" % route, code="route_not_found"))
            return
        task = asyncio.get_running_loop().create_task(self._clear_cache(ex, route))
        ex.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _clear_cache(self, ex: Responder, route: str | None) -> None:
        workers = None
        try:
            if self.fleet is not None:
                deleted, workers = await self.fleet.delete_cache(route)
            else:
                deleted = await self.cache.delete(route)
        except Exception as exc:  # the backend is down or slow: say so, keep serving
            log.warning("DELETE /admin/cache failed: %s: %s", type(exc).__name__, exc)
            ex.fail(refusal(503, "server_error", "the cache backend did not answer: %s"
                            % (type(exc).__name__,), "cache_unavailable"))
            return
        body = {"deleted": deleted, "route": route}
        if workers is not None:
            body["workers"] = workers
        ex.respond(200, orjson.dumps(body))

    def _request_id(self, ex: Responder) -> bytes:
        given = ex.headers.get(b"x-request-id")
        if given and len(given) <= 128 and all(c in _REQUEST_ID_OK for c in given):
            return given
        self._request_count += 1
        return b"%s-%x" % (self._request_prefix, self._request_count)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel(SHUTTING_DOWN)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.cache.aclose()
