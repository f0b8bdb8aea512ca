"""The Redis backend of the response cache, for several llmedge instances sharing answers.

``redis.asyncio`` with the hiredis parser, one bounded connection pool per process. Each
command is bounded by the cache's ``timeout_ms`` (socket timeouts here, an overall deadline
in ``caching``), and redis-py's own retries are off: a slow or absent Redis must cost a
request one short wait, never a retry loop.

Keys are ``<prefix>c:<route digest>:{<key hex>}``. The hash tag (the part in braces) is what
Redis Cluster hashes, so a value and its single-flight lock ``<prefix>l:{<key hex>}`` share
a slot and can be read with one MGET; the route digest lets ``DELETE /admin/cache?route=``
find a route's keys with SCAN (on every primary with ``cache.cluster``, where the cluster
client sends each key to its slot's node). Values are msgpack arrays (``cache.Entry``) and
expire by Redis itself (``SET ... PX``).
"""

from __future__ import annotations

import msgspec
import xxhash
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .cache import Entry
from .config import CacheSection

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Entry).decode

# Delete the lock only while it is still ours: an expired lock may have a new owner.
_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def _glob_escape(text: bytes) -> bytes:
    out = bytearray()
    for byte in text:
        if byte in b"*?[]\\":
            out.append(0x5C)
        out.append(byte)
    return bytes(out)


def route_tag(route: str) -> bytes:
    # A digest, not the name: a route named with braces or glob characters must not change
    # the hash tag or the SCAN pattern.
    return xxhash.xxh3_64_hexdigest(route.encode("utf-8")).encode()


class RedisBackend:
    """``CacheBackend`` in Redis (or a Redis Cluster), shared by every instance."""

    name = "redis"
    shared = True
    in_process = False

    def __init__(self, section: CacheSection) -> None:
        timeout = section.timeout_ms / 1000.0
        no_retry = Retry(NoBackoff(), 0)
        self.pool: BlockingConnectionPool | None = None
        self.client: Redis | RedisCluster
        if section.cluster:
            # The cluster client finds the other nodes from this one and sends each key to
            # its slot's primary; pool_size is per node.
            self.client = RedisCluster.from_url(
                section.url, max_connections=section.pool_size, socket_timeout=timeout,
                socket_connect_timeout=timeout, retry=no_retry)
        else:
            self.pool = BlockingConnectionPool.from_url(
                section.url, max_connections=section.pool_size, timeout=timeout,
                socket_timeout=timeout, socket_connect_timeout=timeout, retry=no_retry)
            self.client = Redis(connection_pool=self.pool, retry=no_retry)
        self.prefix = section.key_prefix.encode("utf-8")
        self._unlock = self.client.register_script(_UNLOCK)

    def value_key(self, route: str, key: bytes) -> bytes:
        return b"%sc:%s:{%s}" % (self.prefix, route_tag(route), key.hex().encode())

    def lock_key(self, key: bytes) -> bytes:
        return b"%sl:{%s}" % (self.prefix, key.hex().encode())

    async def get(self, route: str, key: bytes) -> Entry | None:
        raw = await self.client.get(self.value_key(route, key))
        return None if raw is None else _decode(raw)

    async def put(self, route: str, key: bytes, entry: Entry, ttl_s: float) -> bool:
        await self.client.set(self.value_key(route, key), _encode(entry),
                              px=max(1, int(ttl_s * 1000)))
        return True

    async def lock(self, key: bytes, token: bytes, ttl_s: float) -> bool:
        return bool(await self.client.set(self.lock_key(key), token, nx=True,
                                          px=max(1, int(ttl_s * 1000))))

    async def poll(self, route: str, key: bytes) -> tuple[Entry | None, bool]:
        """(the stored entry, whether the lock is still held), in one round trip."""
        raw, lock = await self.client.mget([self.value_key(route, key), self.lock_key(key)])
        return (None if raw is None else _decode(raw)), lock is not None

    async def unlock(self, key: bytes, token: bytes) -> None:
        await self._unlock(keys=[self.lock_key(key)], args=[token])

    async def delete(self, route: str | None) -> int:
        pattern = _glob_escape(self.prefix) + b"c:" + (
            route_tag(route) + b":*" if route is not None else b"*")
        deleted = 0
        batch: list[bytes] = []
        async for name in self.client.scan_iter(match=pattern, count=1000):
            batch.append(name)
            if len(batch) >= 500:
                deleted += await self.client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await self.client.unlink(*batch)
        return deleted

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.pool is not None:
            await self.pool.disconnect()
