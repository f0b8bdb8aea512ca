"""Counters, gauges and histograms for the request path, exported through prometheus-client.

prometheus-client's own types take a lock and walk several method layers on every update
(about 1.5 µs per histogram observation here); with a dozen updates per request that was a
fifth of llmedge's CPU per request. The event loop is the only writer, so these keep plain
numbers, and turn them into metric families only when /metrics is scraped.

Same shape as prometheus-client's: ``family.labels(*values).inc()``, or ``family.inc()``
without labels.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class _CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _GaugeChild(_CounterChild):
    __slots__ = ("function",)

    def __init__(self) -> None:
        super().__init__()
        self.function: Callable[[], float] | None = None

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value

    def set_function(self, function: Callable[[], float]) -> None:
        self.function = function

    def read(self) -> float:
        return self.value if self.function is None else float(self.function())


class _HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)   # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Family(Collector):
    child_type: type = _CounterChild

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: CollectorRegistry | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], object] = {}
        if not self.labelnames:
            self._unlabelled = self.labels()
        if registry is not None:
            registry.register(self)

    def _new_child(self):
        return self.child_type()

    def labels(self, *values: str):
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError("%s takes labels %s" % (self.name, self.labelnames))
            child = self._children[values] = self._new_child()
        return child

    def describe(self):
        return []   # names are checked by the registry at collect time only


class Counter(_Family):
    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled.inc(amount)

    def collect(self):
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value)
        yield family


class Gauge(_Family):
    child_type = _GaugeChild

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled.inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._unlabelled.dec(amount)

    def set(self, value: float) -> None:
        self._unlabelled.set(value)

    def set_function(self, function: Callable[[], float]) -> None:
        self._unlabelled.set_function(function)

    def collect(self):
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(values, child.read())
        yield family


class Histogram(_Family):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 buckets: Sequence[float] = (), registry: CollectorRegistry | None = None
                 ) -> None:
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self._les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self):
        return _HistogramChild(self.bounds)

    def observe(self, value: float) -> None:
        self._unlabelled.observe(value)

    def collect(self):
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            running = 0
            buckets = []
            for le, count in zip(self._les, child.counts):
                running += count
                buckets.append((le, running))
            family.add_metric(values, buckets, child.sum)
        yield family
