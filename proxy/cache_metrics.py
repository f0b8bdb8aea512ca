"""Response-cache metrics, registered into the process's ``Metrics`` registry.

Labels stay bounded: routes come from the config, ``op`` and ``kind`` from fixed sets,
``backend`` is ``memory`` or ``redis``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .metric_types import Counter, Histogram
from .metrics import Metrics

# Cache operations are micro- to milliseconds: finer buckets than request latency.
OP_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
              0.1, 0.25, 1.0)


class _MemoryStats(Collector):
    """Entries, bytes and evictions of the in-process store, read at scrape time."""

    def __init__(self, stats: Callable[[], tuple[int, int, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator:
        entries, size, evictions = self._stats()
        yield GaugeMetricFamily("llmedge_cache_entries", "Entries in the in-process cache.",
                                value=entries)
        yield GaugeMetricFamily("llmedge_cache_bytes", "Bytes held by the in-process cache.",
                                value=size)
        yield CounterMetricFamily("llmedge_cache_evictions",
                                  "Entries evicted from the in-process cache to stay in bounds.",
                                  value=evictions)


class CacheMetrics:
    def __init__(self, metrics: Metrics, backend: str) -> None:
        self._metrics = metrics
        registry = metrics.registry
        self.backend = backend
        self._stores = Counter(
            "llmedge_cache_stores", "Answers stored in the response cache, by route.",
            ["route"], registry=registry)
        self._stored_bytes = Counter(
            "llmedge_cache_stored_bytes", "Bytes of answers stored, by route.",
            ["route"], registry=registry)
        self._coalesced = Counter(
            "llmedge_cache_coalesced",
            "Requests answered by waiting for an identical request in flight (single-flight), "
            "by route and where the leader ran (local process or another instance).",
            ["route", "scope"], registry=registry)
        self._errors = Counter(
            "llmedge_cache_backend_errors",
            "Failed cache backend operations, by backend, operation and kind "
            "(timeout, error, breaker_open).", ["backend", "op", "kind"], registry=registry)
        self._latency = Histogram(
            "llmedge_cache_operation_seconds", "Latency of cache backend operations.",
            ["backend", "op"], buckets=OP_BUCKETS, registry=registry)

    def memory_stats(self, stats: Callable[[], tuple[int, int, int]]) -> None:
        self._metrics.registry.register(_MemoryStats(stats))

    def lookup(self, route: str, result: str) -> None:
        self._metrics.cache(route, result)

    def store(self, route: str, size: int) -> None:
        self._stores.labels(route).inc()
        self._stored_bytes.labels(route).inc(size)

    def coalesced(self, route: str, scope: str) -> None:
        self._coalesced.labels(route, scope).inc()

    def error(self, op: str, kind: str) -> None:
        self._errors.labels(self.backend, op, kind).inc()

    def latency(self, op: str, seconds: float) -> None:
        self._latency.labels(self.backend, op).observe(seconds)
