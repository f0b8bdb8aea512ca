"""CacheBackend: where the response cache keeps its entries — in this process
(``cache.MemoryBackend``) or in Redis (``cache_redis.RedisBackend``), behind one interface.

``ResponseCache`` (``caching.py``) puts every call to a backend that is not in process
under a deadline and a breaker; an in-process one answers at once and is called without.
"""

from __future__ import annotations

from typing import Protocol

from .cache import Entry


class CacheBackend(Protocol):
    name: str
    # Other instances read and write it: a miss may wait for another instance's answer
    # (the lock), and clearing it once clears it for all.
    shared: bool
    in_process: bool   # answered without I/O: get_now and put_now may be used

    async def get(self, route: str, key: bytes) -> Entry | None: ...

    async def put(self, route: str, key: bytes, entry: Entry, ttl_s: float) -> bool: ...

    async def lock(self, key: bytes, token: bytes, ttl_s: float) -> bool:
        """Become the one instance asking upstream for ``key``; False: another is."""

    async def poll(self, route: str, key: bytes) -> tuple[Entry | None, bool]:
        """(the stored entry, whether the lock is still held)."""

    async def unlock(self, key: bytes, token: bytes) -> None: ...

    async def delete(self, route: str | None) -> int:
        """Drop every stored answer (of one route); how many were dropped."""

    async def aclose(self) -> None: ...
