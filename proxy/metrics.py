"""Prometheus metrics. Label children are resolved once per label set and kept, so the
request path touches a dict and a counter, never the registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST.encode()

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "llmedge_requests", "Requests answered, by route, deployment and status.",
            ["route", "deployment", "status"], registry=registry)
        self._latency = Histogram(
            "llmedge_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by route.",
            ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self._upstream_errors = Counter(
            "llmedge_upstream_errors", "Failed upstream attempts, by deployment and kind.",
            ["deployment", "kind"], registry=registry)
        self._attempts = Counter(
            "llmedge_upstream_attempts", "Upstream attempts, by deployment.",
            ["deployment"], registry=registry)
        self._stream_failures = Counter(
            "llmedge_stream_failures",
            "Streams ended by an upstream failure after the client got the first byte.",
            ["deployment"], registry=registry)
        self._cache = Counter(
            "llmedge_cache_lookups", "Response cache lookups, by route and result.",
            ["route", "result"], registry=registry)
        self.inflight = Gauge("llmedge_inflight_requests", "Requests being answered.",
                              registry=registry)
        self.connections = Gauge("llmedge_client_connections", "Open client connections.",
                                 registry=registry)
        self.upstream_connections = Gauge(
            "llmedge_upstream_connections", "Open connections to upstream endpoints.",
            registry=registry)
        self._children: dict[tuple, object] = {}

    def _child(self, metric, *labels: str):
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request(self, route: str, deployment: str, status: int, seconds: float) -> None:
        self._child(self._requests, route, deployment, str(status)).inc()
        self._child(self._latency, route).observe(seconds)

    def attempt(self, deployment: str) -> None:
        self._child(self._attempts, deployment).inc()

    def upstream_error(self, deployment: str, kind: str) -> None:
        self._child(self._upstream_errors, deployment, kind).inc()

    def stream_failure(self, deployment: str) -> None:
        self._child(self._stream_failures, deployment).inc()

    def cache(self, route: str, result: str) -> None:
        self._child(self._cache, route, result).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
