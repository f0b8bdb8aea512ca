"""proxy.metric_types exports what prometheus-client's own types would for the same updates
(apart from the ``_created`` timestamps those add)."""

from __future__ import annotations

import prometheus_client as pc
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from proxy import metric_types as lite

BUCKETS = (0.0005, 0.001, 0.01, 0.1, 1.0, 10.0)
LABELS = st.sampled_from(["a", "b", "c"])


def exposition(registry: CollectorRegistry) -> list[str]:
    return sorted(line for line in generate_latest(registry).decode().splitlines()
                  if "_created" not in line)


@settings(max_examples=100, deadline=None)
@given(counts=st.lists(st.tuples(LABELS, st.floats(0, 1e6)), max_size=30),
       observations=st.lists(st.tuples(LABELS, st.one_of(
           st.sampled_from(BUCKETS), st.floats(0, 100))), max_size=30),
       gauge=st.lists(st.sampled_from([1, -1]), max_size=20))
def test_same_exposition_as_prometheus_client(counts, observations, gauge):
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    families = []
    for module, registry in ((lite, ours), (pc, theirs)):
        counter = module.Counter("x_requests", "doc", ["route"], registry=registry)
        hist = module.Histogram("x_seconds", "doc", ["route"], buckets=BUCKETS,
                                registry=registry)
        plain = module.Histogram("x_overhead_seconds", "doc", buckets=BUCKETS,
                                 registry=registry)
        level = module.Gauge("x_inflight", "doc", registry=registry)
        families.append((counter, hist, plain, level))
    for counter, hist, plain, level in families:
        for label, amount in counts:
            counter.labels(label).inc(amount)
        for label, value in observations:
            hist.labels(label).observe(value)
            plain.observe(value)
        for step in gauge:
            level.inc() if step > 0 else level.dec()
    assert exposition(ours) == exposition(theirs)


def test_gauge_function_is_read_at_scrape_time():
    registry = CollectorRegistry()
    gauge = lite.Gauge("x_connections", "doc", registry=registry)
    value = [3]
    gauge.set_function(lambda: value[0])
    value[0] = 7
    assert "x_connections 7.0" in generate_latest(registry).decode()
