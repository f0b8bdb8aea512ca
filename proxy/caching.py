"""The response cache as the request path sees it: which requests may use it (a ``Ticket``),
the backend behind a deadline and a breaker, single-flight, and administration.

The cache can never take the proxy down: every backend operation has a short deadline, a
failure counts against a small breaker, and while the breaker is open the backend is not
called at all. Whatever goes wrong, the request carries on as a miss and goes upstream.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from .cache import Entry, MemoryBackend, new_entry, repeatable, request_key
from .cache_backend import CacheBackend
from .cache_metrics import CacheMetrics
from .config import CacheBreakerConfig, CacheSection, RouteCache
from .metrics import Metrics
from .responder import JSON
from .sse_assemble import assemble


log = logging.getLogger("llmedge.cache")

T = TypeVar("T")
_FAILED: Any = object()       # a backend operation that did not succeed
# Admin deletes walk the keyspace: they get their own, longer deadline.
ADMIN_TIMEOUT_S = 30.0
# A follower of another instance's lock looks for the answer this often (growing to 8x).
LOCK_POLL_S = 0.01
ERROR_LOG_EVERY_S = 10.0
CLOSE_TIMEOUT_S = 2.0


async def open_cache(section: CacheSection, metrics: Metrics) -> ResponseCache:
    """The cache a config asks for. The Redis client is imported in a thread: its ~0.1 s of
    imports would otherwise stall the loop."""
    if section.backend == "redis":
        await asyncio.get_running_loop().run_in_executor(
            None, importlib.import_module, "proxy.cache_redis")
    return ResponseCache(section, metrics)


class StreamRecording:
    """The bytes of a streamed answer as the client was sent them, up to ``limit``: past it
    the answer is too big to store and the copy is dropped (``parts`` None)."""

    __slots__ = ("parts", "size", "limit")

    def __init__(self, limit: int) -> None:
        self.parts: list[bytes] | None = []
        self.size = 0
        self.limit = limit

    def add(self, data: bytes) -> None:
        parts = self.parts
        if parts is not None:
            self.size += len(data)
            if self.size > self.limit:
                self.parts = None
            else:
                parts.append(data)


class Ticket:
    """What the cache may do for one request."""

    __slots__ = ("route", "key", "ttl_s", "lookup", "store", "stream", "include_usage",
                 "flight", "lock_token", "entry", "leader")

    def __init__(self, route: str, key: bytes, ttl_s: float, lookup: bool, store: bool,
                 stream: bool, include_usage: bool) -> None:
        self.route = route
        self.key = key
        self.ttl_s = ttl_s
        self.lookup = lookup          # False: cache-control no-cache
        self.store = store            # False: cache-control no-store
        self.stream = stream
        self.include_usage = include_usage
        self.flight: asyncio.Future[Entry | None] | None = None  # set while leading locally
        self.lock_token: bytes | None = None                     # set while holding the lock
        self.entry: Entry | None = None                          # the answer, once known


class CacheBreaker:
    """closed (calls go through) -> open after ``failures`` in a row (no calls for
    ``open_s``, doubling up to ``max_open_s`` while it keeps failing) -> half-open (one
    trial call) -> closed on its success."""

    def __init__(self, config: CacheBreakerConfig) -> None:
        self.config = config
        self.failed = 0
        self.open_until = 0.0
        self.backoff = config.open_s
        self.trial = False

    def allow(self, now: float) -> bool:
        if not self.open_until:
            return True
        if now < self.open_until or self.trial:
            return False
        self.trial = True
        return True

    def success(self) -> None:
        self.failed = 0
        self.open_until = 0.0
        self.backoff = self.config.open_s
        self.trial = False

    def failure(self, now: float) -> None:
        self.failed += 1
        if self.trial or self.failed >= self.config.failures:
            self.open_until = now + self.backoff
            self.backoff = min(self.backoff * 2, self.config.max_open_s)
            self.failed = 0
            self.trial = False


def cache_directives(value: bytes) -> set[bytes]:
    """The directive names of a Cache-Control value (``no-cache, max-age=0`` -> {no-cache,
    max-age}): matched whole, so ``x-no-cache`` is not no-cache."""
    if not value:
        return set()
    return {part.partition(b"=")[0].strip().lower() for part in value.split(b",")}


class ResponseCache:
    def __init__(self, section: CacheSection, metrics: Metrics) -> None:
        self.section = section
        self.metrics = CacheMetrics(metrics, section.backend)
        self.breaker = CacheBreaker(section.breaker)
        self.timeout_s = section.timeout_ms / 1000.0
        self.tenant_header = (section.tenant_header.lower().encode("latin-1")
                              if section.tenant_header else None)
        self.backend: CacheBackend
        if section.backend == "memory":
            backend = MemoryBackend(section.max_entries, section.max_bytes)
            store = backend.store
            self.metrics.memory_stats(lambda: (len(store), store.bytes, store.evictions))
            self.backend = backend
        else:
            from .cache_redis import RedisBackend  # only a redis setup needs the client
            self.backend = RedisBackend(section)
        # In-process lookups answer without awaiting anything; others need the request task.
        self.sync = self.backend.in_process
        self._flights: dict[bytes, asyncio.Future[Entry | None]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._token_prefix = os.urandom(6).hex().encode()
        self._tokens = 0
        self._last_error_log = 0.0

    # === request path ===

    def ticket(self, route: str, policy: RouteCache, request: dict,
               headers: dict[bytes, bytes], stream: bool,
               tags: frozenset[str] = frozenset()) -> Ticket | None:
        """None when the request may not use the cache (``x-llmedge-cache: bypass``)."""
        if policy.when != "always" and not repeatable(request):
            self.metrics.lookup(route, "bypass")
            return None
        control = cache_directives(headers.get(b"cache-control", b""))
        lookup, store = b"no-cache" not in control, b"no-store" not in control
        if not lookup:
            self.metrics.lookup(route, "bypass")
            if not store:
                return None
        tenant = headers.get(self.tenant_header) if self.tenant_header else None
        # Marked by its source: a tenant named like someone's API key is still someone else.
        tenant = b"tenant:" + tenant if tenant else headers.get(b"authorization")
        key = request_key(route, request, tenant, policy, tags)
        options = request.get("stream_options")
        usage = isinstance(options, dict) and bool(options.get("include_usage"))
        return Ticket(route, key, policy.ttl_s, lookup, store, stream, usage)

    def bypass(self, route: str) -> None:
        """A request of a caching route that could not use the cache."""
        self.metrics.lookup(route, "bypass")

    def get_now(self, ticket: Ticket) -> Entry | None:
        """The in-process lookup, answered at once (memory backend only); a hit is counted
        here, a miss later by ``resolve``, which may still find the answer."""
        entry = self.backend.get_now(ticket.key)  # type: ignore[attr-defined]
        if entry is not None:
            self.metrics.lookup(ticket.route, "hit")
        return entry

    async def resolve(self, ticket: Ticket) -> Entry | None:
        """After ``get_now`` missed (or for Redis): the backend lookup, then single-flight.
        An entry means the request is answered from the cache; None means go upstream (and
        the request may now be the leader others wait for)."""
        key = ticket.key
        if ticket.lookup:
            entry = await self._get(ticket)
            if entry is not None:
                self.metrics.lookup(ticket.route, "hit")
                return entry
            flight = self._flights.get(key)
            if flight is not None:
                entry = await self._follow(flight)
                if entry is not None:
                    self.metrics.lookup(ticket.route, "hit")
                    self.metrics.coalesced(ticket.route, "local")
                    return entry
        if ticket.store and key not in self._flights:
            ticket.flight = self._flights[key] = asyncio.get_running_loop().create_future()
            if ticket.lookup and self.section.lock and self.backend.shared:
                entry = await self._cross_instance(ticket)
                if entry is not None:
                    ticket.entry = entry
                    self.metrics.lookup(ticket.route, "hit")
                    self.metrics.coalesced(ticket.route, "remote")
                    return entry
        if ticket.lookup:
            self.metrics.lookup(ticket.route, "miss")
        return None

    def record(self, ticket: Ticket) -> StreamRecording:
        """A copy of a streamed answer, taken as it goes to the client, for ``store_stream``."""
        return StreamRecording(self.section.max_entry_bytes)

    async def store_stream(self, ticket: Ticket, recording: StreamRecording,
                           upstream: bytes) -> None:
        """Keep a streamed answer as the completion it adds up to, when it came whole and
        within the size bound; a stream cut, failed or too big is not stored."""
        if recording.parts is None:
            return
        body = assemble(b"".join(recording.parts))
        if body is not None:
            await self.store(ticket, body, JSON, upstream)  # stored as the completion

    async def store(self, ticket: Ticket, body: bytes, content_type: bytes,
                    upstream: bytes) -> None:
        """Keep a whole successful answer (and hand it to whoever waits for it)."""
        entry = ticket.entry = new_entry(body, content_type, upstream, ticket.route)
        if not ticket.store or entry.size > self.section.max_entry_bytes:
            return
        backend = self.backend
        if self.sync:
            stored = backend.put_now(ticket.key, entry, ticket.ttl_s)  # type: ignore[attr-defined]
        else:
            stored = await self._op("set", lambda: backend.put(ticket.route, ticket.key, entry,
                                                               ticket.ttl_s))
        if stored is True:
            self.metrics.store(ticket.route, entry.size)

    def release(self, ticket: Ticket) -> None:
        """The request is over: wake its followers with what it got (None: on their own)."""
        flight = ticket.flight
        if flight is not None:
            ticket.flight = None
            if self._flights.get(ticket.key) is flight:
                del self._flights[ticket.key]
            if not flight.done():
                flight.set_result(ticket.entry)
        token = ticket.lock_token
        if token is not None:
            ticket.lock_token = None
            # Freed at once, answer or not: the answer was stored before this, so the other
            # instances' followers find it, or (none) see the lock gone and ask themselves.
            # Left to expire, it would hold back the next miss once the answer's TTL ends.
            backend = self.backend
            self._spawn(self._op("unlock", lambda: backend.unlock(ticket.key, token)))

    # === internals ===

    async def _get(self, ticket: Ticket) -> Entry | None:
        backend = self.backend
        if self.sync:
            return backend.get_now(ticket.key)  # type: ignore[attr-defined]
        entry = await self._op("get", lambda: backend.get(ticket.route, ticket.key))
        return None if entry is _FAILED else entry

    async def _follow(self, flight: asyncio.Future[Entry | None]) -> Entry | None:
        try:
            async with asyncio.timeout(self.section.wait_s):
                # shield: one follower giving up must not cancel what the others wait for.
                return await asyncio.shield(flight)
        except TimeoutError:
            return None

    async def _cross_instance(self, ticket: Ticket) -> Entry | None:
        """Another instance may already be asking upstream: take the lock or wait for its
        answer (bounded); None = this request goes upstream itself."""
        backend = self.backend
        self._tokens += 1
        token = b"%s-%d" % (self._token_prefix, self._tokens)
        got = await self._op("lock", lambda: backend.lock(ticket.key, token,
                                                          self.section.lock_ttl_s))
        if got is _FAILED:
            return None
        if got:
            ticket.lock_token = token
            return None
        deadline = time.monotonic() + self.section.wait_s
        pause = LOCK_POLL_S
        while time.monotonic() < deadline:
            await asyncio.sleep(pause)
            pause = min(pause * 2, LOCK_POLL_S * 8)
            found = await self._op("poll", lambda: backend.poll(ticket.route, ticket.key))
            if found is _FAILED:
                return None
            entry, locked = found
            if entry is not None:
                return entry
            if not locked:
                return None       # the leader gave up or failed: ask upstream ourselves
        return None

    async def _op(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        """One backend call under the deadline and the breaker; ``_FAILED`` if it did not
        succeed (counted, logged at most every few seconds, never raised)."""
        now = time.monotonic()
        if not self.breaker.allow(now):
            self.metrics.error(op, "breaker_open")
            return _FAILED
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await call()
        except TimeoutError:
            kind = "timeout"
        except msgspec.DecodeError:
            # A value this version cannot read: a miss, and no sign Redis is unwell.
            self.metrics.error(op, "decode")
            return _FAILED
        except Exception as exc:  # redis.RedisError, OSError, ...: all mean "unavailable"
            kind = "error"
            self._log_error(op, exc)
        else:
            self.breaker.success()
            self.metrics.latency(op, time.perf_counter() - started)
            return result
        self.breaker.failure(time.monotonic())
        self.metrics.error(op, kind)
        return _FAILED

    def _log_error(self, op: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_EVERY_S:
            self._last_error_log = now
            log.warning("cache backend %s failed (%s: %s); serving without the cache while it "
                        "fails", op, type(exc).__name__, exc)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # === administration ===

    async def delete(self, route: str | None) -> int:
        """Drop every stored answer (of one route). Raises when the backend cannot."""
        async with asyncio.timeout(None if self.sync else ADMIN_TIMEOUT_S):
            return await self.backend.delete(route)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for flight in self._flights.values():
            if not flight.done():
                flight.set_result(None)
        self._flights.clear()
        if not self.sync:
            try:
                # A frozen Redis must not hold up the drain.
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self.backend.aclose()
            except (TimeoutError, OSError) as exc:
                log.warning("closing the cache's Redis connections: %s", type(exc).__name__)
