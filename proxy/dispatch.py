"""The dispatcher: send one request to its candidates in order until one answers.

A candidate is skipped or abandoned on connect errors, timeouts, resets, 429 and 5xx, for
as long as nothing has reached the client. Once a stream has started, an upstream failure
ends it with an SSE error event: never a truncation that looks complete.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time


from .accounting import NotJson, read_answer
from .budget import RetryBudget
from .caching import ResponseCache, Ticket
from .errors import (ContextWindowExceeded, DeadlineExceeded, ProxyError,
                     UpstreamBadResponse,
                     UpstreamError, UpstreamReset, UpstreamSaturated, UpstreamStatus,
                     UpstreamTimeout, UpstreamUnavailable, refusal)
from .responder import EVENT_STREAM, JSON, AnswerHeaders, Responder, is_event_stream
from .retry_rules import retry_delay
from .rewrite import replace_model
from .metrics import Metrics
from .passthrough import COUNT_TOKENS_PATH, Native
from .providers import Untranslatable
from .routing.router import RoutePlan, Router, Target
from .runtime import Runtime
from .continuation import Splice, continuation_body, read_partial
from .relay import SseRelay
from .upstream.answers import error_for_client, excerpt
from .upstream.context_limit import context_exceeded
from .upstream.conn import ResponseHead, failed_status, status_error
from .upstream.pool import Endpoint

log = logging.getLogger("llmedge.dispatch")

USER_AGENT = b"user-agent: llmedge/0.1\r\n"
DEFAULT_RETRY_AFTER_S = 1.0
_NO_TAGS: frozenset[str] = frozenset()


class Answer:
    """What one request needs while its candidates are tried."""

    __slots__ = ("exchange", "plan", "path", "body", "model", "stream", "request_id",
                 "attempts", "upstream", "status", "session", "reason", "head_at", "candidates",
                 "cache_state", "ticket", "failures", "_bodies", "deadline", "upstream_s",
                 "first_event_at", "usage", "strip_usage", "retries", "complete",
                 "transcript", "transcript_bytes", "continuing", "continuations", "tags",
                 "runtime", "native")

    def __init__(self, exchange: Responder, runtime: Runtime | None, plan: RoutePlan,
                 path: bytes, body: bytes, model: str, stream: bool, request_id: bytes,
                 session: str | None = None, reason: str = "") -> None:
        self.exchange = exchange
        # The configuration this request started under; None for a request llmedge makes
        # itself (the LLM router tier's question), which goes straight to ``attempt``.
        self.runtime = runtime
        self.plan = plan
        self.path = path              # below the deployment's base URL, e.g. /chat/completions
        self.body = body
        self.model = model            # as the client named it
        self.stream = stream
        self.request_id = request_id
        self.attempts = 0
        self.upstream: Target | None = None
        self.status = 0
        self.session = session          # set when the route keeps sessions on one replica
        self.reason = reason.encode("utf-8", "replace")
        self.head_at = 0.0
        self.candidates: list[Target] = []
        self.cache_state = b"bypass"
        self.failures: list[UpstreamError] = []
        self.ticket: Ticket | None = None  # what the cache may do for this request
        self._bodies: dict[str, bytes] = {}
        self.deadline = 0.0             # time.monotonic() by which a head must arrive; 0: none
        self.upstream_s = 0.0           # time spent in upstream attempts
        self.first_event_at = 0.0       # time.monotonic() of the first streamed event sent
        self.usage = None               # accounting.Usage of the answer, when reported
        self.strip_usage = False        # usage was asked for by llmedge, not the client
        self.retries = 0
        self.complete = False           # a stream's [DONE] reached the client
        # The events the client was sent, while a candidate could continue a cut answer.
        self.transcript: list[bytes] | None = None
        self.transcript_bytes = 0
        self.continuing: tuple[Splice, bytes] | None = None   # the attempt continues one
        self.continuations: list[dict] = []
        self.tags: frozenset[str] = _NO_TAGS   # what the client's x-llmedge-tags require
        # The client's own request, for a deployment that speaks its API (passthrough.py).
        self.native: Native | None = None

    def body_for(self, target: Target) -> bytes:
        model = target.upstream_model
        if model == self.model:
            return self.body
        body = self._bodies.get(model)
        if body is None:
            # Only "model" changes; everything else the client sent goes upstream as is.
            body = self._bodies[model] = replace_model(self.body, model, self.model)
        return body

    def response_headers(self) -> AnswerHeaders:
        upstream = self.upstream
        return AnswerHeaders((self.plan.name_bytes,
                              upstream.name_bytes if upstream is not None else b"-",
                              self.cache_state, b"%d" % self.attempts, self.reason,
                              self.request_id))


class Dispatcher:
    """Stateless across requests: each answer carries the runtime (router, retry rules) it
    started under."""

    def __init__(self, metrics: Metrics, cache: ResponseCache, budget: RetryBudget,
                 rnd=random.random) -> None:
        self.metrics = metrics
        self.cache = cache
        self.budget = budget
        self._rnd = rnd

    async def run(self, answer: Answer, candidates: list[Target]) -> None:
        self.budget.request()
        if answer.stream and any(t.continuation for t in candidates[1:]):
            answer.transcript = []
        errors: list[str] = []
        last: UpstreamError | None = None
        metrics = self.metrics
        router = answer.runtime.router
        # After a prompt too long for a deployment's context window: only deployments with
        # a larger window, or one not known, may take it (None: no such limit yet).
        window_over: int | None = None
        for index, target in enumerate(candidates):
            if target.unusable:
                errors.append("%s: %s" % (target.name, target.unusable))
                continue
            if window_over is not None and target.context_window is not None \
                    and target.context_window <= window_over:
                errors.append("%s: not tried: its context window (%d) is no larger"
                              % (target.name, target.context_window))
                continue
            tries = 0
            while True:
                if target.max_inflight and target.inflight >= target.max_inflight:
                    # Full: shed to the next candidate at once instead of queueing.
                    last = UpstreamSaturated("%s is at max_inflight %d"
                                             % (target.name, target.max_inflight))
                    errors.append("%s: %s" % (target.name, last.message))
                    answer.failures.append(last)
                    metrics.shed("deployment_max_inflight")
                    break
                picked = router.pick_endpoint(target, answer.session, answer.plan.epsilon)
                if picked is None:
                    if tries:
                        break   # its last failure opened the circuit: that error stands
                    # Ejected or circuit open everywhere: skipped, and not an attempt
                    # (nothing was sent).
                    last = UpstreamUnavailable("every endpoint of %s is out of service"
                                               % target.name)
                    errors.append("%s: %s" % (target.name, last.message))
                    answer.failures.append(last)
                    break
                if answer.deadline and time.monotonic() >= answer.deadline:
                    last = DeadlineExceeded("the request's deadline passed before %s could "
                                            "be tried" % target.name)
                    errors.append("%s: %s" % (target.name, last.message))
                    answer.failures.append(last)
                    self._fail(answer, last, errors)
                    return
                if answer.attempts and not self.budget.try_retry():
                    # Trying again now would add load during what may be an outage; the
                    # budget says enough of that is already happening.
                    errors.append("%s: not tried: the retry budget is spent" % target.name)
                    metrics.upstream_error(target.name, "retry_budget")
                    metrics.shed("retry_budget")
                    self._fail(answer, last, errors)
                    return
                if answer.attempts and answer.upstream is not target:
                    metrics.fallback(answer.plan.name)
                answer.attempts += 1
                answer.upstream = target
                target.inflight += 1
                try:
                    await self.attempt(answer, router, target, *picked, self.cache)
                    metrics.attempt(target.name, "ok")
                    return
                except UpstreamError as exc:
                    metrics.attempt(target.name, exc.kind)
                    metrics.upstream_error(target.name, exc.kind)
                    if answer.exchange.started:
                        if not await self._continue(answer, target, exc,
                                                    candidates[index + 1:]):
                            self._end_broken_stream(answer, target, exc)
                        return
                    errors.append("%s: %s" % (target.name, exc.message))
                    answer.failures.append(exc)
                    last = exc
                    if isinstance(exc, ContextWindowExceeded) and target.context_window:
                        window_over = max(window_over or 0, target.context_window)
                finally:
                    target.inflight -= 1
                if isinstance(last, DeadlineExceeded):
                    break
                if not await self._backoff(answer, target, last, tries):
                    break
                tries += 1
        self._fail(answer, last, errors)

    async def _backoff(self, answer: Answer, target: Target, exc: UpstreamError,
                       tries: int) -> bool:
        """Whether to try the same deployment again (proxy/retry_rules.py), after the wait
        the rules give; nothing waits past the request's deadline."""
        delay = retry_delay(exc, tries, answer.runtime.retry, self._rnd)
        if delay is None:
            return False
        if answer.deadline and time.monotonic() + delay >= answer.deadline:
            return False
        self.metrics.retry(target.name)
        answer.retries += 1
        if delay > 0:
            await asyncio.sleep(delay)
        return True

    @staticmethod
    async def attempt(answer: Answer, router: Router, target: Target, row: int,
                      endpoint: Endpoint, cache: ResponseCache | None) -> None:
        """One try at one deployment's chosen replica, and what the try taught about that
        replica recorded back into the endpoint table and its breaker. Every request to an
        upstream goes through here (the LLM router tier's questions too, with no cache and
        a ``responder.Collector``)."""
        router.attempt_started(row)
        started = time.monotonic()
        try:
            first_event_at = await Dispatcher._exchange(answer, target, endpoint, cache)
        except Untranslatable:
            # Nothing was sent: the request, not the endpoint, is why.
            answer.upstream_s += time.monotonic() - started
            router.attempt_dropped(row)
            raise
        except ContextWindowExceeded:
            # The endpoint did its job: it answered, fast, that the prompt is too long.
            now = time.monotonic()
            answer.upstream_s += now - started
            router.attempt_succeeded(row, started, now, answer.head_at)
            raise
        except UpstreamError as exc:
            now = time.monotonic()
            answer.upstream_s += now - started
            if (isinstance(exc, UpstreamTimeout) and answer.deadline
                    and now >= answer.deadline - 0.001):
                # Cut short by the request's deadline, not by the endpoint's timeout.
                router.attempt_dropped(row)
                raise DeadlineExceeded("the request's deadline passed while waiting for %s"
                                       % target.name) from None
            router.attempt_failed(row, started, now, exc)
            raise
        except BaseException:
            answer.upstream_s += time.monotonic() - started
            router.attempt_dropped(row)
            raise
        now = time.monotonic()
        answer.upstream_s += now - started
        router.attempt_succeeded(row, started, now, answer.head_at, first_event_at)

    @staticmethod
    async def _exchange(answer: Answer, target: Target, endpoint: Endpoint,
                        cache: ResponseCache | None) -> float:
        """Send the request to one endpoint and answer the client from it; returns when the
        first streamed event went out (0.0 for whole responses). A stream is bounded from
        the request to its first content token by the deployment's ``first_token_s``."""
        timeouts = target.timeouts
        connect_s, first_byte_s = timeouts.connect_s, timeouts.first_byte_s
        first_token_s = timeouts.first_token_s if answer.stream else 0.0
        if answer.deadline:
            left = max(0.001, answer.deadline - time.monotonic())
            connect_s, first_byte_s = min(connect_s, left), min(first_byte_s, left)
            if first_token_s:
                first_token_s = min(first_token_s, left)
        continuing = answer.continuing
        body = continuing[1] if continuing is not None else answer.body_for(target)
        path = answer.path
        adapter = target.adapter
        native = answer.native
        if native is not None:
            # A deployment that speaks the client's own API takes its request as it is.
            passing = target.speaks.get(native.api) if continuing is None else None
            native.begin(passing is not None)
            if passing is not None:
                adapter = passing
            else:
                native = None
                if path == COUNT_TOKENS_PATH:
                    raise Untranslatable("%s does not count tokens (only a deployment of "
                                         "provider anthropic does)" % target.name)
        if adapter is not None:
            if not adapter.serves(path):
                raise Untranslatable("%s (provider %s) has no /v1%s" % (
                    target.name, adapter.name, path.decode("latin-1")))
            body = (native.body_for(target.upstream_model) if native is not None
                    else adapter.request_body(body, answer.stream))
            path = adapter.request_path(path, answer.stream)
            auth = target.auth_header + adapter.signed_headers(
                endpoint.scheme, endpoint.host_header, endpoint.base_path + path, body)
        else:
            auth = target.auth_header
        request = [Dispatcher._request_head(answer, endpoint, path, len(body), auth), body]
        conn, head = await endpoint.send(request, connect_s, first_byte_s, timeouts.idle_s,
                                         first_token_s)
        try:
            answer.head_at = time.monotonic()
            if adapter is not None:
                head.status = adapter.status(head.status)
            status = head.status
            if first_token_s and not (200 <= status < 300 and _streamed(
                    head.headers.get(b"content-type", b""), adapter)):
                conn.content_started()   # not a stream: its body is the whole answer
            if failed_status(status):
                raise status_error(head, await conn.read_whole())
            if 300 <= status < 400:
                # A redirect llmedge does not follow, and the client cannot use: the
                # deployment's base_url is wrong, or something in front of it is.
                where = head.headers.get(b"location", b"").decode("latin-1")
                raise UpstreamBadResponse("%s answered %d%s; llmedge does not follow redirects"
                                          % (target.name, status,
                                             " to %s" % excerpt(where.encode(), 120)
                                             if where else ""))
            content_type = head.headers.get(b"content-type", JSON)
            ticket = answer.ticket
            # A continued answer is two models' work: not stored as either's.
            storing = (cache is not None and ticket is not None and ticket.store
                       and status == 200 and continuing is None and not answer.continuations)
            succeeded = 200 <= status < 300
            if continuing is not None and not (succeeded and is_event_stream(content_type)):
                # Whatever else it answered cannot go into a stream already under way.
                payload = await conn.read_whole()
                raise UpstreamBadResponse("%s answered a continuation with %d %s: %s" % (
                    target.name, status, content_type.decode("latin-1"), excerpt(payload, 80)))
            if answer.stream and succeeded and _streamed(content_type, adapter):
                relay = SseRelay(answer, conn, head,
                                 cache.record(ticket) if storing else None,
                                 on_commit=conn.content_started,
                                 transform=continuing[0].rewrite if continuing else None)
                feed = relay.feed
                translator = adapter.stream(target.upstream_model) if adapter else None
                if translator is not None:
                    feed = _translated(translator, relay.feed, native)
                early = conn.take_early()
                if early:
                    feed(early)
                try:
                    await conn.stream_to(feed)
                    if translator is not None:
                        tail = translator.end()
                        if tail:
                            relay.feed(tail)
                except UpstreamError:
                    if not relay.done:
                        raise
                    # The stream's own end marker went out: the answer is whole, only the
                    # connection broke (or idled) after it.
                if relay.pending:
                    relay.settle()
                if not relay.done and not (relay.committed and relay.finished):
                    # HTTP's own end (a last chunk, or a close) may come from an upstream
                    # that crashed: only the [DONE], or at least a finish reason, tells a
                    # chat stream's end from a cut.
                    if conn.framed_by_close:
                        raise UpstreamReset("upstream closed the stream before its end")
                    raise UpstreamBadResponse("upstream ended the stream before its end "
                                              "(no finish reason, no [DONE])")
                answer.status = status
                if relay.recording is not None:
                    # Stored before the stream's last byte: whoever reads the whole stream
                    # and asks again (here or on another instance) finds it.
                    await cache.store_stream(ticket, relay.recording, target.name_bytes)
                relay.finish()
                first_event_at = relay.committed_at
            else:
                payload = await conn.read_whole()
                if succeeded:
                    if answer.stream:
                        raise Dispatcher._not_a_stream(target, head, payload)
                    if adapter is not None:
                        if native is not None:
                            native.whole = payload   # what the client gets
                        if path != COUNT_TOKENS_PATH:   # (not an answer: a count)
                            payload = Dispatcher._translated_answer(target, adapter,
                                                                    payload)
                        content_type = JSON
                    try:
                        answer.usage = read_answer(payload)
                    except NotJson as exc:
                        raise UpstreamBadResponse("%s answered %d but %s: %s" % (
                            target.name, status, exc, excerpt(payload, 80))) from None
                    if b"json" not in content_type.lower():
                        content_type = JSON  # it is JSON, whatever the upstream said
                    answer.status = status
                    if storing:
                        await cache.store(ticket, payload, content_type, target.name_bytes)
                    answer.exchange.respond(status, payload, content_type,
                                            answer.response_headers())
                else:
                    if context_exceeded(status, payload):
                        raise ContextWindowExceeded(
                            "%s refused the prompt as too long for its context window"
                            % target.name, upstream_status=status, body=payload,
                            content_type=content_type)
                    answer.status = status
                    answer.exchange.fail(error_for_client(status, payload, content_type,
                                                          target.name),
                                         answer.response_headers())
                first_event_at = 0.0
        except BaseException:
            conn.abort()
            raise
        if conn.reusable(head):
            endpoint.release(conn)
        else:
            conn.close()
        return first_event_at

    @staticmethod
    def _not_a_stream(target: Target, head: ResponseHead, payload: bytes) -> UpstreamError:
        """A whole answer to a request for a stream: retryable, nothing reached the client."""
        content_type = head.headers.get(b"content-type", b"")
        return UpstreamBadResponse(
            "%s answered a request for a stream with %d %s instead of an event stream: %s"
            % (target.name, head.status, content_type.decode("latin-1") or "(no type)",
               excerpt(payload, 80)))

    @staticmethod
    def _translated_answer(target: Target, adapter, payload: bytes) -> bytes:
        try:
            return adapter.answer(payload)
        except (ValueError, TypeError, AttributeError):
            raise UpstreamBadResponse("%s answered 200 but not a %s answer: %s" % (
                target.name, adapter.name, excerpt(payload, 80))) from None

    @staticmethod
    def _request_head(answer: Answer, endpoint: Endpoint, path: bytes, length: int,
                      auth: bytes) -> bytes:
        return (b"POST %s%s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n%saccept: %s\r\nx-request-id: %s\r\n%s\r\n" % (
                    endpoint.base_path, path, endpoint.host_header, length,
                    auth,
                    EVENT_STREAM if answer.stream else JSON,
                    answer.request_id, USER_AGENT))

    async def _continue(self, answer: Answer, failed: Target, exc: UpstreamError,
                        rest: list[Target]) -> bool:
        """Finish an answer cut mid-stream on the next candidates that can continue it
        (proxy/continuation.py); False when none could, and the stream must end broken.
        A continuation cut in turn is continued again, from the longer answer."""
        if answer.native is not None and answer.native.on:
            # The client has the provider's own events, which another model's continuation
            # (Chat Completions) cannot extend.
            return False
        metrics = self.metrics
        router = answer.runtime.router
        route = answer.plan.name
        while answer.transcript is not None:
            partial = read_partial(answer.transcript)
            if partial is None:
                return False
            for position, target in enumerate(rest):
                if not target.continuation or target.unusable or (
                        target.max_inflight and target.inflight >= target.max_inflight):
                    continue
                picked = router.pick_endpoint(target, answer.session, answer.plan.epsilon)
                if picked is None:
                    continue
                if answer.deadline and time.monotonic() >= answer.deadline:
                    return False
                if not self.budget.try_retry():
                    metrics.shed("retry_budget")
                    return False
                before = answer.usage
                splice = Splice(partial, failed.name, target.name, before)
                answer.continuing = (splice, continuation_body(answer.body, partial,
                                                               target.upstream_model))
                sent = answer.transcript_bytes
                metrics.fallback(route)
                answer.attempts += 1
                answer.upstream = target
                target.inflight += 1
                try:
                    await self.attempt(answer, router, target, *picked, self.cache)
                except UpstreamError as again:
                    metrics.attempt(target.name, again.kind)
                    metrics.upstream_error(target.name, again.kind)
                    metrics.continuation(route, target.name, "failed")
                    answer.failures.append(again)
                    if answer.transcript_bytes != sent:
                        # It added to the answer before it broke: continue from there.
                        failed, exc, rest = target, again, rest[position + 1:]
                        break
                    continue
                finally:
                    target.inflight -= 1
                    answer.continuing = None
                metrics.attempt(target.name, "ok")
                metrics.continuation(route, target.name, "ok")
                since = answer.usage if answer.usage is not before else None
                splice.usage = since
                answer.usage = splice.total()
                answer.continuations.append({"from": failed.name, "to": target.name,
                                             "at_chars": splice.continued_at,
                                             "after": exc.kind})
                return True
            else:
                return False
        return False

    def _end_broken_stream(self, answer: Answer, target: Target, exc: UpstreamError) -> None:
        self.metrics.stream_failure(target.name)
        answer.status = 502
        answer.exchange.fail_stream(refusal(
            502, "upstream_error", "upstream %s failed mid-stream: %s" % (target.name,
                                                                          exc.message),
            "upstream_" + exc.kind))

    def _fail(self, answer: Answer, last: UpstreamError | None, errors: list[str]) -> None:
        answer.exchange.fail(self._failure(answer, last, errors), answer.response_headers())

    def _failure(self, answer: Answer, last: UpstreamError | None,
                 errors: list[str]) -> ProxyError:
        """Why no candidate answered, as the one error the client gets."""
        if isinstance(last, UpstreamStatus):
            # The last upstream's own answer says best what went wrong (429 keeps its hint).
            retry_after = last.retry_after
            if retry_after is None and last.upstream_status in (429, 503):
                # A client told to back off must be told for how long.
                retry_after = DEFAULT_RETRY_AFTER_S
            answer.status = last.upstream_status
            return error_for_client(last.upstream_status, last.body, last.content_type,
                                    answer.upstream.name if answer.upstream else "-",
                                    retry_after)
        if answer.failures and all(isinstance(e, UpstreamSaturated) for e in answer.failures):
            answer.status = 429
            return refusal(429, "rate_limit_error",
                           "every deployment is at its max_inflight: " + "; ".join(errors),
                           "deployments_saturated", retry_after=1.0)
        if answer.failures and all(isinstance(e, (UpstreamUnavailable, UpstreamSaturated))
                                   for e in answer.failures):
            # Every candidate's circuit is open: fail fast, and say when to come back.
            rows = [row for t in answer.candidates for row in t.rows]
            breakers = answer.runtime.router.breakers
            wait = breakers.retry_after(rows)
            if breakers.all_rate_limited(rows):
                status, type_, code = 429, "rate_limit_error", "rate_limited"
                message = "every upstream is rate-limited: " + "; ".join(errors)
            else:
                status, type_, code = 503, "upstream_error", "upstream_unavailable"
                message = "every upstream is unavailable: " + "; ".join(errors)
            answer.status = status
            return refusal(status, type_, message, code,
                           retry_after=wait if wait is not None else 1.0)
        message = "no upstream could answer: " + "; ".join(errors) if errors else \
            "no upstream could answer"
        if last is None:
            answer.status = 503
            return refusal(503, "upstream_error", message, "upstream_unavailable")
        answer.status = last.status
        return refusal(last.status, last.type, message, "upstream_" + last.kind)


def _streamed(content_type: bytes, adapter) -> bool:
    """Whether an answer of this type is a stream (Bedrock's is not SSE)."""
    return is_event_stream(content_type) or (adapter is not None
                                             and adapter.is_stream(content_type))


def _translated(translator, sink, native: Native | None):
    """``sink`` fed the Chat Completions events of a provider's stream; a native attempt's
    client is sent the provider's own events instead, at the moments the relay writes."""
    def feed(data: bytes) -> None:
        events = translator.feed(data)
        if native is not None:
            passed = translator.passed()
            if passed:
                native.events.append(passed)
        if events:
            sink(events)
    return feed
