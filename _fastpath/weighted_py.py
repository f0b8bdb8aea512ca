"""Weighted ordering of candidates: the reference implementation.

This is the spec for ``weighted.pyx``; both must return the same indices for the same
weights and the same sequence of random numbers.
"""

import math
from collections.abc import Callable, Sequence

__all__ = ("WeightedOrder",)


def _checked_weights(weights: Sequence[float]) -> list[float]:
    checked = [float(w) for w in weights]
    if not checked:
        raise ValueError("weights must not be empty")
    for w in checked:
        if not math.isfinite(w) or w < 0.0:
            raise ValueError("weights must be finite and >= 0")
    return checked


class WeightedOrder:
    """Orders candidate indices by weighted random sampling without replacement.

    The first index is chosen with probability proportional to its weight among all
    candidates, the second among those left, and so on; candidates of weight 0 come last,
    in index order, so they serve only as fallbacks.
    """

    __slots__ = ("_weights",)

    def __init__(self, weights: Sequence[float]) -> None:
        self._weights = _checked_weights(weights)

    def __len__(self) -> int:
        return len(self._weights)

    def pick(self, r: float) -> int:
        """The index chosen by one draw ``r`` in [0, 1)."""
        total = 0.0
        for w in self._weights:
            total += w
        return self._select(self._weights, total, r)

    def order(self, rnd: Callable[[], float]) -> list[int]:
        """Every index, ordered by successive weighted draws from ``rnd()`` in [0, 1)."""
        remaining = list(self._weights)
        positive = 0
        for w in remaining:
            if w > 0.0:
                positive += 1
        result = []
        for _ in range(positive):
            # The total is summed afresh each round: subtracting the chosen weight would
            # let a tiny weight vanish in rounding and be chosen twice.
            total = 0.0
            for w in remaining:
                total += w
            i = self._select(remaining, total, rnd())
            result.append(i)
            remaining[i] = 0.0
        for i, w in enumerate(self._weights):
            if w == 0.0:
                result.append(i)
        return result

    @staticmethod
    def _select(weights: list[float], total: float, r: float) -> int:
        target = r * total
        last_positive = -1
        acc = 0.0
        for i, w in enumerate(weights):
            if w <= 0.0:
                continue
            last_positive = i
            acc += w
            if target < acc:
                return i
        # r close to 1.0 can leave target >= acc through rounding: the last candidate wins.
        # With no positive weight at all, the first candidate stands.
        return last_positive if last_positive >= 0 else 0
