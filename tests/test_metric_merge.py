"""proxy.metric_merge: one worker's snapshot renders exactly what its registry would; several
workers' snapshots add up (counters, histograms, count-like gauges) or take the worst
(per-endpoint latency and error rate); data from a peer that makes no sense drops out of
the scrape instead of breaking it."""

from __future__ import annotations

import math
import re

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy import metric_types as lite
from proxy.cache_metrics import CacheMetrics
from proxy.metric_merge import Family, Sample, merge, render, snapshot
from proxy.metrics import Metrics

BUCKETS = (0.001, 0.01, 0.1, 1.0)
ROUTES = st.sampled_from(["a", "b", "c"])
STATES = ("healthy", "ejected", "open", "half-open")
URLS = ("http://u1/v1", "http://u2/v1")
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")


def parse(text: bytes) -> dict[tuple[str, str], float]:
    samples = {}
    for line in text.decode().splitlines():
        match = _LINE.match(line)
        if match:
            samples[(match.group(1), match.group(2) or "")] = float(match.group(3))
    return samples


def wire(families: list[Family]) -> list[Family]:
    """Through msgpack and back, as a peer's snapshot arrives."""
    return msgspec.msgpack.decode(msgspec.msgpack.encode(families), type=list[Family])


def _endpoint_rows(rows):
    return lambda: iter(rows)


def test_one_snapshot_renders_exactly_what_the_registry_does():
    metrics = Metrics()
    cache = CacheMetrics(metrics, "memory")
    cache.memory_stats(lambda: (3, 300, 1))
    cache.store("faq", 120)
    cache.latency("get", 0.0003)
    metrics.watch_endpoints(_endpoint_rows([
        ("alpha", URLS[0], {"state": "open", "inflight": 2, "rtt_us": 1500.0,
                            "error_rate": 0.25})]))
    metrics.watch_llm_router(lambda: {("pick", "answered"): 4})
    for status, seconds in ((200, 0.02), (200, 0.4), (502, 3.0)):
        metrics.request("auto", "alpha", status, seconds)
    metrics.first_token("auto", "alpha", 0.01)
    metrics.overhead(0.00004)
    metrics.usage("auto", "alpha", 10, 20, 0.0001)
    metrics.attempt("alpha", "ok")
    metrics.inflight.inc()
    metrics.connections.inc(3)
    metrics.upstream_connections.set_function(lambda: 5)
    metrics.outlier_sweeps.inc()
    expected = generate_latest(metrics.registry)
    assert render(merge([snapshot(metrics.registry)])) == expected
    assert render(merge([wire(snapshot(metrics.registry))])) == expected


def _worker_registry(counts, observations, level):
    registry = CollectorRegistry()
    counter = lite.Counter("x_requests", "doc", ["route"], registry=registry)
    hist = lite.Histogram("x_seconds", "doc", ["route"], buckets=BUCKETS, registry=registry)
    gauge = lite.Gauge("x_inflight", "doc", registry=registry)
    for route, amount in counts:
        counter.labels(route).inc(amount)
    for route, value in observations:
        hist.labels(route).observe(value)
    gauge.set(level)
    return registry


WORKER = st.tuples(
    st.lists(st.tuples(ROUTES, st.integers(0, 1000)), max_size=20),
    st.lists(st.tuples(ROUTES, st.sampled_from([2.0 ** -10, 2.0 ** -7, 0.5, 2.0, 32.0])),
             max_size=20),
    st.integers(0, 50))


@settings(max_examples=100, deadline=None)
@given(per_worker=st.lists(WORKER, min_size=1, max_size=4))
def test_counters_histograms_and_gauges_add_up(per_worker):
    # What one process would show had it seen every worker's updates.
    everything = _worker_registry(
        [c for counts, _, _ in per_worker for c in counts],
        [o for _, observations, _ in per_worker for o in observations],
        sum(level for _, _, level in per_worker))
    snapshots = [wire(snapshot(_worker_registry(*w))) for w in per_worker]
    merged = parse(render(merge(snapshots)))
    assert merged == parse(generate_latest(everything))


ENDPOINT = st.fixed_dictionaries({
    "state": st.sampled_from(STATES), "inflight": st.integers(0, 10),
    "rtt_us": st.floats(0, 1e7), "error_rate": st.floats(0, 1)})


@settings(max_examples=100, deadline=None)
@given(per_worker=st.lists(st.tuples(ENDPOINT, ENDPOINT), min_size=1, max_size=4))
def test_endpoint_views_count_workers_and_take_the_worst(per_worker):
    snapshots = []
    for stats in per_worker:
        metrics = Metrics()
        metrics.watch_endpoints(_endpoint_rows(
            [("alpha", url, s) for url, s in zip(URLS, stats)]))
        snapshots.append(wire(snapshot(metrics.registry)))
    merged = parse(render(merge(snapshots)))
    for i, url in enumerate(URLS):
        labels = '{deployment="alpha",endpoint="%s"}' % url
        views = [stats[i] for stats in per_worker]
        for state in STATES:
            key = ("llmedge_endpoint_state",
                   '{deployment="alpha",endpoint="%s",state="%s"}' % (url, state))
            assert merged[key] == sum(v["state"] == state for v in views)
        assert merged[("llmedge_endpoint_inflight", labels)] == sum(v["inflight"] for v in views)
        assert math.isclose(merged[("llmedge_endpoint_latency_seconds", labels)],
                            max(v["rtt_us"] for v in views) / 1e6)
        assert merged[("llmedge_endpoint_error_rate", labels)] == max(
            v["error_rate"] for v in views)


def test_a_series_only_one_worker_has_is_kept():
    one, two = Metrics(), Metrics()
    one.request("auto", "alpha", 200, 0.1)
    two.request("auto", "beta", 200, 0.1)
    two.request("auto", "beta", 200, 0.1)
    merged = parse(render(merge([snapshot(one.registry), snapshot(two.registry)])))
    assert merged[("llmedge_requests_total",
                   '{deployment="alpha",route="auto",status="200"}')] == 1
    assert merged[("llmedge_requests_total",
                   '{deployment="beta",route="auto",status="200"}')] == 2


TEXT = st.text(max_size=12)
ANY_SAMPLE = st.builds(Sample, TEXT, st.dictionaries(TEXT, TEXT, max_size=3),
                       st.floats(allow_nan=True, allow_infinity=True))
ANY_FAMILY = st.builds(
    Family, st.one_of(st.sampled_from(["llmedge_requests", "llmedge_inflight_requests"]), TEXT),
    st.sampled_from(["counter", "gauge", "histogram", "info", "untyped", "bogus", ""]),
    TEXT, st.sampled_from(["", "seconds", "x y"]), st.lists(ANY_SAMPLE, max_size=4))


@settings(max_examples=200, deadline=None)
@given(peer=st.lists(ANY_FAMILY, max_size=6))
def test_nonsense_from_a_peer_never_breaks_the_scrape(peer):
    local = Metrics()
    local.request("auto", "alpha", 200, 0.1)
    local.inflight.inc()
    text = render(merge([snapshot(local.registry), wire(peer)]))
    # A scraper can still read it, and this worker's own series are all there.
    parsed = {f.name: f for f in text_string_to_metric_families(text.decode())}
    assert parsed["llmedge_request_duration_seconds"].type == "histogram"
    assert parsed["llmedge_requests"].type == "counter"
    ours = {(s.name, tuple(sorted(s.labels.items())))
            for f in text_string_to_metric_families(generate_latest(local.registry).decode())
            for s in f.samples}
    assert ours <= {(s.name, tuple(sorted(s.labels.items())))
                    for f in parsed.values() for s in f.samples}
