"""Session affinity: a session's requests go to one replica of a deployment while that
replica is available and not overloaded (bounded-load consistent hashing)."""

from __future__ import annotations

from _fastpath import EndpointTable, HashRing

from ..upstream.pool import Endpoint


class SessionAffinity:
    __slots__ = ("ring", "rows")

    def __init__(self, endpoints: list[Endpoint], rows: list[int]) -> None:
        # Keyed by URL: a replica keeps its sessions across reloads that keep it.
        self.ring = HashRing([e.url for e in endpoints])
        self.rows = rows

    def lookup(self, session: str, table: EndpointTable, epsilon: float) -> int:
        """The index of the replica for ``session``; -1 when none is available."""
        rows = self.rows
        loads = [table.inflight(r) for r in rows]
        available = [table.available(r) for r in rows]
        return self.ring.lookup_bounded(session, loads, epsilon, available)
