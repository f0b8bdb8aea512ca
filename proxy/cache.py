"""Response cache pieces: keys (``_fastpath.cache_key`` plus a tenant namespace), the stored
entry, the in-process LRU backend, and the SSE replay of a stored completion.

Only whole, successful answers are stored. A hit on a streaming request is replayed as a
well-formed SSE stream built from the stored completion. ``caching.ResponseCache`` puts
these together with a backend, single-flight and metrics.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import msgspec
import orjson
import xxhash

from _fastpath import cache_key

from .config import RouteCache

SHARED_NAMESPACE = ""


class Entry(msgspec.Struct, array_like=True):
    """One stored answer: a whole chat completion (streams are assembled into one).

    ``stored_at`` is wall-clock time, so the age is right wherever the entry is read (Redis
    entries are shared by processes). Encoded as a msgpack array: no field names on the wire.
    """

    body: bytes
    content_type: bytes
    upstream: bytes
    route: str
    stored_at: float

    @property
    def age_s(self) -> int:
        age = time.time() - self.stored_at
        # A clock step back, or a damaged value in a shared store: an age of 0, not an error.
        return int(age) if 0.0 <= age < 1e9 else 0

    @property
    def size(self) -> int:
        return len(self.body) + len(self.content_type) + len(self.upstream) + len(self.route)


def new_entry(body: bytes, content_type: bytes, upstream: bytes, route: str) -> Entry:
    return Entry(body, content_type, upstream, route, time.time())


class MemoryCache:
    """LRU with TTL; every operation is a dict operation, nothing blocks the loop."""

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        # key -> (entry, expiry on the monotonic clock)
        self._entries: OrderedDict[bytes, tuple[Entry, float]] = OrderedDict()
        self.hits = self.misses = self.stores = self.evictions = 0

    def get(self, key: bytes) -> Entry | None:
        item = self._entries.get(key)
        if item is None:
            self.misses += 1
            return None
        entry, expires_at = item
        if expires_at <= time.monotonic():
            self._drop(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: bytes, entry: Entry, ttl_s: float) -> bool:
        size = entry.size
        if size > self.max_bytes:
            return False
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (entry, time.monotonic() + ttl_s)
        self.bytes += size
        self.stores += 1
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.evictions += 1
        return True

    def delete(self, route: str | None = None) -> int:
        """Drop every entry (of one route): an admin operation, O(entries)."""
        keys = [k for k, (e, _) in self._entries.items() if route is None or e.route == route]
        for key in keys:
            self._drop(key)
        return len(keys)

    def _drop(self, key: bytes) -> None:
        entry, _ = self._entries.pop(key)
        self.bytes -= entry.size

    def __len__(self) -> int:
        return len(self._entries)


class MemoryBackend:
    """``CacheBackend`` in this process: nothing shared, nothing to lock, answered at once
    (``get_now``/``put_now`` let the request path skip the await)."""

    name = "memory"
    shared = False
    in_process = True

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.store = MemoryCache(max_entries, max_bytes)

    def get_now(self, key: bytes) -> Entry | None:
        return self.store.get(key)

    def put_now(self, key: bytes, entry: Entry, ttl_s: float) -> bool:
        return self.store.put(key, entry, ttl_s)

    async def get(self, route: str, key: bytes) -> Entry | None:
        return self.store.get(key)

    async def put(self, route: str, key: bytes, entry: Entry, ttl_s: float) -> bool:
        return self.store.put(key, entry, ttl_s)

    async def lock(self, key: bytes, token: bytes, ttl_s: float) -> bool:
        return True   # no other instance asks this store: always the leader

    async def poll(self, route: str, key: bytes) -> tuple[Entry | None, bool]:
        return self.store.get(key), False

    async def unlock(self, key: bytes, token: bytes) -> None:
        pass

    async def delete(self, route: str | None) -> int:
        return self.store.delete(route)

    async def aclose(self) -> None:
        pass


def repeatable(request: dict) -> bool:
    """An answer worth repeating: sampling switched off, or pinned by a seed."""
    return request.get("temperature") == 0 or request.get("seed") is not None


def namespace(tenant: bytes | None, policy: RouteCache) -> str:
    """One tenant's answers are never served to another: the namespace is a digest of the
    tenant (the client's credentials or a configured header), unless the route says its
    cache is shared."""
    if policy.shared or not tenant:
        return SHARED_NAMESPACE
    return xxhash.xxh3_64_hexdigest(tenant)


def request_key(route: str, request: dict, tenant: bytes | None, policy: RouteCache,
                tags: frozenset[str] = frozenset()) -> bytes:
    """The key of a request's answer; a request with compliance tags (``x-llmedge-tags``)
    has answers of its own, from the deployments those tags allow."""
    space = namespace(tenant, policy)
    if tags:
        space += "|tags:" + ",".join(sorted(tags))
    return cache_key(route, request, space)


def sse_replay(body: bytes, include_usage: bool) -> bytes:
    """A stored chat completion as the stream the upstream would have sent."""
    doc = orjson.loads(body)
    base = {"id": doc.get("id", "chatcmpl-cached"), "object": "chat.completion.chunk",
            "created": doc.get("created", 0), "model": doc.get("model", "")}
    for field in ("system_fingerprint", "service_tier"):
        if doc.get(field) is not None:
            base[field] = doc[field]
    events = []
    for choice in doc.get("choices") or []:
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        first = {"role": message.get("role", "assistant"),
                 "content": "" if message.get("content") is not None else None}
        events.append({**base, "choices": [{"index": index, "delta": first,
                                            "finish_reason": None}]})
        delta = {k: v for k, v in message.items() if k != "role" and v is not None}
        if "tool_calls" in delta:
            delta["tool_calls"] = [{**call, "index": i}
                                   for i, call in enumerate(delta["tool_calls"])]
        if delta:
            events.append({**base, "choices": [{"index": index, "delta": delta,
                                                "finish_reason": None}]})
        events.append({**base, "choices": [{"index": index, "delta": {},
                                            "finish_reason": choice.get("finish_reason")}]})
    if include_usage and doc.get("usage") is not None:
        events.append({**base, "choices": [], "usage": doc["usage"]})
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
