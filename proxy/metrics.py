"""Prometheus metrics. Each family keeps its label children in a dict, so the request path
touches a dict and a number (``metric_types``), never the registry.

Every label value comes from the configuration (route and deployment names, error kinds,
endpoint URLs) or from a small fixed set; nothing a client sends becomes a label, so the
number of series is bounded by the config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .endpoint_states import STATE_NAMES
from .metric_types import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# llmedge's own share of a request: tens of microseconds when all is well.
OVERHEAD_BUCKETS = (0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01,
                    0.05, 0.1)


class Metrics:
    content_type = CONTENT_TYPE_LATEST.encode()

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "llmedge_requests", "Requests answered, by route, deployment and status.",
            ["route", "deployment", "status"], registry=registry)
        self._latency = Histogram(
            "llmedge_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by route and the "
            "deployment that answered.",
            ["route", "deployment"], buckets=LATENCY_BUCKETS, registry=registry)
        self._ttft = Histogram(
            "llmedge_time_to_first_token_seconds",
            "Streamed requests: time from arrival to the first event sent to the client.",
            ["route", "deployment"], buckets=LATENCY_BUCKETS, registry=registry)
        self._overhead = Histogram(
            "llmedge_overhead_seconds",
            "llmedge's own time per proxied request: total time minus time spent waiting "
            "on upstreams.", buckets=OVERHEAD_BUCKETS, registry=registry)
        self._upstream_errors = Counter(
            "llmedge_upstream_errors", "Failed upstream attempts, by deployment and kind.",
            ["deployment", "kind"], registry=registry)
        self._attempts = Counter(
            "llmedge_upstream_attempts",
            "Upstream attempts, by deployment and outcome (ok or the error kind).",
            ["deployment", "outcome"], registry=registry)
        self._retries = Counter(
            "llmedge_retries", "Attempts repeated on the same deployment after a failure.",
            ["deployment"], registry=registry)
        self._fallbacks = Counter(
            "llmedge_fallbacks", "Requests that moved on to another deployment, by route.",
            ["route"], registry=registry)
        self._shed = Counter(
            "llmedge_shed_requests",
            "Requests or attempts refused at once instead of queued, by reason.",
            ["reason"], registry=registry)
        self._stream_failures = Counter(
            "llmedge_stream_failures",
            "Streams ended by an upstream failure after the client got the first byte.",
            ["deployment"], registry=registry)
        self._continuations = Counter(
            "llmedge_stream_continuations",
            "Streams cut mid-answer and continued on another deployment, by route, the "
            "deployment that continued, and result (ok, failed).",
            ["route", "deployment", "result"], registry=registry)
        self._tokens = Counter(
            "llmedge_tokens", "Tokens reported by upstreams' usage, by direction.",
            ["route", "deployment", "direction"], registry=registry)
        self._cost = Counter(
            "llmedge_cost_usd", "Cost of answered requests in USD, from usage and prices.",
            ["route", "deployment"], registry=registry)
        self._cache = Counter(
            "llmedge_cache_lookups", "Response cache lookups, by route and result.",
            ["route", "result"], registry=registry)
        self._probes = Counter(
            "llmedge_health_probes", "Health probes, by deployment and result.",
            ["deployment", "result"], registry=registry)
        self._outliers = Counter(
            "llmedge_outlier_ejections", "Replicas taken out of rotation by outlier "
            "detection, by deployment.", ["deployment"], registry=registry)
        self.outlier_sweeps = Counter(
            "llmedge_outlier_sweeps", "Outlier detection passes over the replicas.",
            registry=registry)
        self._reloads = Counter(
            "llmedge_config_reloads", "Configuration reloads, by result.", ["result"],
            registry=registry)
        self.inflight = Gauge("llmedge_inflight_requests", "Requests being answered.",
                              registry=registry)
        self.connections = Gauge("llmedge_client_connections", "Open client connections.",
                                 registry=registry)
        self.upstream_connections = Gauge(
            "llmedge_upstream_connections", "Open connections to upstream endpoints.",
            registry=registry)

    def request(self, route: str, deployment: str, status: int, seconds: float) -> None:
        self._requests.labels(route, deployment, str(status)).inc()
        self._latency.labels(route, deployment).observe(seconds)

    def first_token(self, route: str, deployment: str, seconds: float) -> None:
        self._ttft.labels(route, deployment).observe(seconds)

    def overhead(self, seconds: float) -> None:
        self._overhead.observe(seconds)

    def attempt(self, deployment: str, outcome: str) -> None:
        self._attempts.labels(deployment, outcome).inc()

    def retry(self, deployment: str) -> None:
        self._retries.labels(deployment).inc()

    def fallback(self, route: str) -> None:
        self._fallbacks.labels(route).inc()

    def shed(self, reason: str) -> None:
        self._shed.labels(reason).inc()

    def upstream_error(self, deployment: str, kind: str) -> None:
        self._upstream_errors.labels(deployment, kind).inc()

    def stream_failure(self, deployment: str) -> None:
        self._stream_failures.labels(deployment).inc()

    def continuation(self, route: str, deployment: str, result: str) -> None:
        self._continuations.labels(route, deployment, result).inc()

    def usage(self, route: str, deployment: str, prompt: int, completion: int,
              cost: float) -> None:
        self._tokens.labels(route, deployment, "in").inc(prompt)
        self._tokens.labels(route, deployment, "out").inc(completion)
        self._cost.labels(route, deployment).inc(cost)

    def cache(self, route: str, result: str) -> None:
        self._cache.labels(route, result).inc()

    def probe(self, deployment: str, ok: bool) -> None:
        self._probes.labels(deployment, "pass" if ok else "fail").inc()

    def outlier_ejection(self, deployment: str) -> None:
        self._outliers.labels(deployment).inc()

    def reload(self, ok: bool) -> None:
        self._reloads.labels("ok" if ok else "rejected").inc()

    def watch_endpoints(self, rows: Callable[[], Iterator[tuple[str, str, dict]]]) -> None:
        """Per-endpoint gauges read from the live table at scrape time: nothing to keep in
        step on the request path, and a reload changes what they report at once."""
        self.registry.register(_EndpointCollector(rows))

    def watch_llm_router(self, counts: Callable[[], dict[tuple[str, str], int]]) -> None:
        """What classify routes' LLM tiers answered, read from the live router at scrape."""
        self.registry.register(_LlmRouterCollector(counts))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _LlmRouterCollector(Collector):
    def __init__(self, counts: Callable[[], dict[tuple[str, str], int]]) -> None:
        self._counts = counts

    def describe(self):
        return []

    def collect(self):
        calls = CounterMetricFamily(
            "llmedge_llm_router_calls", "Questions to classify routes' LLM router tiers, by "
            "route and result (answered, cached, not_a_class, timeout, failed).",
            labels=["route", "result"])
        for (route, result), n in sorted(self._counts().items()):
            calls.add_metric([route, result], n)
        yield calls


class _EndpointCollector(Collector):
    STATES = tuple(STATE_NAMES.values())

    def __init__(self, rows: Callable[[], Iterator[tuple[str, str, dict]]]) -> None:
        self._rows = rows

    def describe(self):
        return []   # collected on demand only: the rows change with reloads

    def collect(self):
        state = GaugeMetricFamily(
            "llmedge_endpoint_state", "1 for the state each endpoint is in (circuit and "
            "health combined).", labels=["deployment", "endpoint", "state"])
        inflight = GaugeMetricFamily(
            "llmedge_endpoint_inflight", "Requests in flight per endpoint.",
            labels=["deployment", "endpoint"])
        latency = GaugeMetricFamily(
            "llmedge_endpoint_latency_seconds", "Peak-EWMA response-head latency per "
            "endpoint.", labels=["deployment", "endpoint"])
        errors = GaugeMetricFamily(
            "llmedge_endpoint_error_rate", "EWMA of failed attempts per endpoint (0..1).",
            labels=["deployment", "endpoint"])
        for deployment, url, stats in self._rows():
            for name in self.STATES:
                state.add_metric([deployment, url, name],
                                 1.0 if stats["state"] == name else 0.0)
            inflight.add_metric([deployment, url], stats["inflight"])
            latency.add_metric([deployment, url], stats["rtt_us"] / 1e6)
            errors.add_metric([deployment, url], stats["error_rate"])
        yield from (state, inflight, latency, errors)
