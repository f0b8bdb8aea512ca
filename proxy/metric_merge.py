"""One exposition for several worker processes: each worker's registry as plain samples,
merged into one set of families and rendered as prometheus-client would render a registry.

Merging works on prometheus-client's families and samples, not on llmedge's own types, so a
family added later (a collector, a cache backend's gauges) is covered without code of its
own here. The rules:

- counters, histograms (buckets, ``_sum``, ``_count``) and summaries add up;
- gauges add up (in-flight requests, connections, cache entries: each worker holds its own
  share), except the per-worker views in ``WORST_OF``, which take the largest worker's
  value: an endpoint's latency or error rate is what the worst-placed worker sees.
  ``llmedge_endpoint_state`` adds up too, so it reads "how many workers see this endpoint
  in this state";
- anything else (info, stateset, untyped) takes the largest value.

What a peer sends is checked as it is merged: a family of an unknown type or with an
invalid name, one whose type disagrees with the same family from another worker, a sample
whose name does not belong to its family or with an invalid label name, is left out. A
worker with a bug (or from another version) can cost the scrape its own series, never
make the exposition unparseable.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator

import msgspec
from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric

log = logging.getLogger("llmedge.metrics")

WORST_OF = frozenset({"llmedge_endpoint_latency_seconds", "llmedge_endpoint_error_rate"})
_ADDITIVE = frozenset({"counter", "histogram", "summary", "gaugehistogram"})
# The sample names each type may have, as suffixes of the family's name.
_SUFFIXES = {
    "counter": ("_total", "_created"), "gauge": ("",), "unknown": ("",), "stateset": ("",),
    "info": ("_info",), "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
}
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class Sample(msgspec.Struct, array_like=True):
    name: str
    labels: dict[str, str]
    value: float


class Family(msgspec.Struct, array_like=True):
    name: str           # as prometheus-client keeps it: a counter's without ``_total``
    type: str
    documentation: str
    unit: str
    samples: list[Sample]


def snapshot(registry) -> list[Family]:
    """What ``registry`` would expose now, as plain data another process can decode."""
    return [Family(m.name, m.type, m.documentation, m.unit,
                   [Sample(s.name, s.labels, s.value) for s in m.samples])
            for m in registry.collect()]


def _adds(family: Family) -> bool:
    if family.type == "gauge":
        return family.name not in WORST_OF
    return family.type in _ADDITIVE


def merge(snapshots: Iterable[list[Family]]) -> list[Family]:
    """The families of every snapshot, same-named samples (same labels) combined. Order:
    first appearance, so a lone snapshot comes back as it was."""
    merged: dict[str, Family] = {}
    positions: dict[str, dict[tuple, int]] = {}
    good_labels: set[str] = set()
    for families in snapshots:
        for family in families:
            name = family.name
            into = merged.get(name)
            if into is None:
                if family.type not in _SUFFIXES or not _METRIC_NAME.fullmatch(name):
                    continue
                into = merged[name] = Family(name, family.type, family.documentation,
                                             family.unit, [])
                positions[name] = {}
            elif into.type != family.type:
                continue
            names = {name + suffix for suffix in _SUFFIXES[into.type]}
            where = positions[name]
            adds = _adds(into)
            samples = into.samples
            for sample in family.samples:
                if sample.name not in names or not _labels_ok(sample.labels, good_labels):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                at = where.get(key)
                if at is None:
                    where[key] = len(samples)
                    samples.append(Sample(sample.name, dict(sample.labels), sample.value))
                elif adds:
                    samples[at].value += sample.value
                elif sample.value > samples[at].value:
                    samples[at].value = sample.value
    return list(merged.values())


def _labels_ok(labels: dict[str, str], good: set[str]) -> bool:
    for label in labels:
        if label not in good:
            if label.startswith("__") or not _LABEL_NAME.fullmatch(label):
                return False
            good.add(label)
    return True


class _Families:
    """Just enough of a registry for ``generate_latest``."""

    def __init__(self, families: list[Family]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            try:
                metric = Metric(family.name, family.documentation, family.type, family.unit)
            except ValueError as exc:   # only a peer's data can get here
                log.warning("dropping metric family %r from the scrape: %s", family.name, exc)
                continue
            for sample in family.samples:
                metric.add_sample(sample.name, sample.labels, sample.value)
            yield metric


def render(families: list[Family]) -> bytes:
    """The Prometheus text exposition of ``families``."""
    return generate_latest(_Families(families))
