"""Route policies: each orders a route's deployments for one request.

A policy is a small class in the POLICIES registry; its constructor takes the route's
config and validates what it needs, and ``order()`` is one call into ``_fastpath`` where
there is work to do.
"""

from __future__ import annotations

from collections.abc import Callable

from _fastpath import WeightedOrder

from ..config import Route


class Ordered:
    """The deployments in the order the route lists them."""

    reason = "ordered"

    def __init__(self, route: Route) -> None:
        self._order = list(range(len(route.deployments)))

    def order(self, rnd: Callable[[], float]) -> list[int]:
        return self._order


class Weighted:
    """A weighted random first choice; the rest follow by weight as fallbacks."""

    reason = "weighted"

    def __init__(self, route: Route) -> None:
        weights = [route.weights.get(name, 1.0) for name in route.deployments]
        if not any(w > 0 for w in weights):
            raise ValueError("at least one weight must be > 0")
        self._weighted = WeightedOrder(weights)

    def order(self, rnd: Callable[[], float]) -> list[int]:
        return self._weighted.order(rnd)


class Direct:
    """A request that names a deployment: that deployment alone."""

    reason = "direct"
    _only = [0]

    def order(self, rnd: Callable[[], float]) -> list[int]:
        return self._only


POLICIES: dict[str, type[Ordered] | type[Weighted]] = {
    "ordered": Ordered,
    "weighted": Weighted,
}
