"""Route policies: each orders a route's (already filtered) deployments for one request.

A policy is a small class in the POLICIES registry; its constructor takes the route's
config and validates what it needs, and ``order()`` is one call into ``_fastpath`` where
there is work to do. ``order`` returns indices into the candidates it was given, best
first, and a short reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from _fastpath import POLICY_COST, POLICY_LATENCY, POLICY_SCORE, EndpointTable, WeightedOrder

from ..config import Route


class Policy:
    name = "?"

    def order(self, candidates: Sequence, table: EndpointTable,
              rnd: Callable[[], float]) -> list[int]:
        raise NotImplementedError


class Ordered(Policy):
    """The deployments in the order the route lists them."""

    name = "ordered"

    def __init__(self, route: Route) -> None:
        pass

    def order(self, candidates, table, rnd):
        return list(range(len(candidates)))


class Direct(Ordered):
    """A request that names a deployment: that deployment alone."""

    name = "direct"

    def __init__(self) -> None:
        pass


class Weighted(Policy):
    """A weighted random first choice; the rest follow by weight as fallbacks."""

    name = "weighted"

    def __init__(self, route: Route) -> None:
        self._weights = {name: route.weights.get(name, 1.0) for name in route.deployments}
        if not any(w > 0 for w in self._weights.values()):
            raise ValueError("at least one weight must be > 0")
        self._full = WeightedOrder([self._weights[n] for n in route.deployments])
        self._full_names = tuple(route.deployments)

    def order(self, candidates, table, rnd):
        names = tuple(t.name for t in candidates)
        if names == self._full_names:
            return self._full.order(rnd)
        # Some deployments were filtered out for this request: weigh the ones left.
        weights = [self._weights[n] for n in names]
        if not any(w > 0 for w in weights):
            return list(range(len(candidates)))
        return WeightedOrder(weights).order(rnd)


class _Ranked(Policy):
    """Orders deployments from the endpoint table's statistics, in one call."""

    kind = POLICY_COST
    weights = (0.0, 0.0, 0.0, 0.0)

    def __init__(self, route: Route) -> None:
        pass

    def order(self, candidates, table, rnd):
        return table.rank([t.rows for t in candidates], self.kind, self.weights)


class Cost(_Ranked):
    """The cheapest available deployment first (then by expected latency)."""

    name = "cost"
    kind = POLICY_COST


class Latency(_Ranked):
    """The deployment with the lowest expected latency under its current load first."""

    name = "latency"
    kind = POLICY_LATENCY


class Score(_Ranked):
    """A weighted objective over normalised cost, latency, quality and load."""

    name = "score"
    kind = POLICY_SCORE

    def __init__(self, route: Route) -> None:
        objective = route.objective
        if objective is None:
            raise ValueError("policy 'score' needs an objective")
        self.weights = (objective.cost, objective.latency, objective.quality, objective.load)


POLICIES: dict[str, type[Policy]] = {
    "ordered": Ordered,
    "weighted": Weighted,
    "cost": Cost,
    "latency": Latency,
    "score": Score,
}
