"""The in-process response cache: exact keys from ``_fastpath.cache_key``, LRU bounded by
entries and by bytes, TTL per entry.

Only whole, successful answers are stored. A hit on a streaming request is replayed as a
well-formed SSE stream built from the stored completion.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import orjson
import xxhash

from _fastpath import cache_key

from .config import RouteCache

SHARED_NAMESPACE = ""


class Entry:
    __slots__ = ("body", "content_type", "upstream", "stored_at", "expires_at")

    def __init__(self, body: bytes, content_type: bytes, upstream: bytes, ttl_s: float) -> None:
        self.body = body
        self.content_type = content_type
        self.upstream = upstream
        self.stored_at = time.monotonic()
        self.expires_at = self.stored_at + ttl_s

    @property
    def age_s(self) -> int:
        return int(time.monotonic() - self.stored_at)


class MemoryCache:
    """LRU with TTL; every operation is a dict operation, nothing blocks the loop."""

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self.hits = self.misses = self.stores = self.evictions = 0

    def get(self, key: bytes) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if entry.expires_at <= time.monotonic():
            self._drop(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: bytes, entry: Entry) -> None:
        size = len(entry.body)
        if size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = entry
        self.bytes += size
        self.stores += 1
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.evictions += 1

    def _drop(self, key: bytes) -> None:
        entry = self._entries.pop(key)
        self.bytes -= len(entry.body)

    def __len__(self) -> int:
        return len(self._entries)


def repeatable(request: dict) -> bool:
    """An answer worth repeating: sampling switched off, or pinned by a seed."""
    return request.get("temperature") == 0 or request.get("seed") is not None


def namespace(authorization: bytes | None, policy: RouteCache) -> str:
    """One tenant's answers are never served to another: the namespace is a digest of the
    client's credentials, unless the route says its cache is shared."""
    if policy.shared or not authorization:
        return SHARED_NAMESPACE
    return xxhash.xxh3_64_hexdigest(authorization)


def request_key(route: str, request: dict, authorization: bytes | None,
                policy: RouteCache) -> bytes:
    return cache_key(route, request, namespace(authorization, policy))


def sse_replay(body: bytes, include_usage: bool) -> bytes:
    """A stored chat completion as the stream the upstream would have sent."""
    doc = orjson.loads(body)
    base = {"id": doc.get("id", "chatcmpl-cached"), "object": "chat.completion.chunk",
            "created": doc.get("created", 0), "model": doc.get("model", "")}
    events = []
    for choice in doc.get("choices") or []:
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        first = {"role": message.get("role", "assistant"), "content": ""}
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
