"""An HDR-style latency histogram: integer microseconds, log-linear buckets, bounded memory.

Values are bucketed the way HdrHistogram does it: every power-of-two range ``[2^k, 2^(k+1))``
is cut into ``2^(bits-1)`` equal sub-buckets, so the relative error of any recorded value is
below ``2^-(bits-1)`` (0.1 % with the default ``bits=11``) whatever its magnitude, and values
below ``2^bits`` µs are exact. Memory is fixed by the largest trackable value: one counter per
bucket, about 24,000 of them (190 kB) for the default hour at µs resolution. Larger values are
clamped to the maximum and counted in ``clamped``.

A percentile is reported as the highest value equivalent to its bucket (as HdrHistogram does),
capped at the exact maximum recorded; min, max and mean are exact.
"""

from __future__ import annotations

from array import array

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def percentile_key(p: float) -> str:
    """50.0 -> "p50", 99.9 -> "p99.9"."""
    return "p%s" % ("%g" % p)


class Histogram:
    __slots__ = ("bits", "half", "max_value", "counts", "count", "total", "min", "max",
                 "clamped")

    def __init__(self, max_value: int = 3_600_000_000, bits: int = 11) -> None:
        if bits < 2 or bits > 20:
            raise ValueError("bits must be between 2 and 20")
        if max_value < 1:
            raise ValueError("max_value must be >= 1")
        self.bits = bits
        self.half = 1 << (bits - 1)
        self.max_value = max_value
        self.counts = array("q", bytes(8 * (self._index(max_value) + 1)))
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0
        self.clamped = 0

    def _index(self, value: int) -> int:
        shift = value.bit_length() - self.bits
        if shift <= 0:
            return value
        return shift * self.half + (value >> shift)

    def _bounds(self, index: int) -> tuple[int, int]:
        """The lowest and highest value that land in bucket ``index``."""
        shift = max(0, index // self.half - 1)
        sub = index - shift * self.half
        return sub << shift, ((sub + 1) << shift) - 1

    def record(self, value: float, n: int = 1) -> None:
        """Record ``value`` (µs; negatives count as 0, fractions are rounded)."""
        v = int(value + 0.5) if value > 0 else 0
        if v > self.max_value:
            v = self.max_value
            self.clamped += n
        self.counts[self._index(v)] += n
        if self.count == 0 or v < self.min:
            self.min = v
        if v > self.max:
            self.max = v
        self.count += n
        self.total += v * n

    def merge(self, other: Histogram) -> None:
        if other.bits != self.bits or other.max_value != self.max_value:
            raise ValueError("histograms with different layouts cannot be merged")
        if other.count == 0:
            return
        counts = self.counts
        for i, c in enumerate(other.counts):
            if c:
                counts[i] += c
        self.min = other.min if self.count == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total
        self.clamped += other.clamped

    def value_at(self, percentile: float) -> int:
        """The value below or at which ``percentile`` % of the recorded values fall."""
        if self.count == 0:
            return 0
        if percentile >= 100.0:
            return self.max
        # The rank of the wanted value, 1-based, as HdrHistogram computes it.
        rank = max(1, int(percentile / 100.0 * self.count + 0.5))
        seen = 0
        for i, c in enumerate(self.counts):
            if c:
                seen += c
                if seen >= rank:
                    return max(self.min, min(self._bounds(i)[1], self.max))
        return self.max

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def summary(self, percentiles: tuple[float, ...] = PERCENTILES) -> dict[str, float]:
        """count, min, mean, max and the percentiles, in µs."""
        out: dict[str, float] = {"count": self.count, "min": self.min,
                                 "mean": round(self.mean, 1), "max": self.max}
        for p in percentiles:
            out[percentile_key(p)] = self.value_at(p)
        if self.clamped:
            out["clamped"] = self.clamped
        return out

    def distribution(self) -> list[tuple[float, int]]:
        """(percentile, value µs) at every non-empty bucket: the points of a latency plot."""
        points = []
        seen = 0
        for i, c in enumerate(self.counts):
            if c:
                seen += c
                points.append((100.0 * seen / self.count,
                               max(self.min, min(self._bounds(i)[1], self.max))))
        return points

    def to_sparse(self) -> dict[str, object]:
        """A compact JSON-able form: non-empty buckets only."""
        return {"bits": self.bits, "max_value": self.max_value, "count": self.count,
                "total": self.total, "min": self.min, "max": self.max, "clamped": self.clamped,
                "buckets": {str(i): c for i, c in enumerate(self.counts) if c}}

    @classmethod
    def from_sparse(cls, data: dict) -> Histogram:
        h = cls(int(data["max_value"]), int(data["bits"]))
        for i, c in data["buckets"].items():
            h.counts[int(i)] = int(c)
        h.count = int(data["count"])
        h.total = int(data["total"])
        h.min = int(data["min"])
        h.max = int(data["max"])
        h.clamped = int(data.get("clamped", 0))
        return h
