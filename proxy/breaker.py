"""Circuit breakers, one per endpoint, and the single place that decides an endpoint's
state in the endpoint table.

Classic terms: *closed* lets traffic through; *open* lets none; *half-open* admits exactly
one trial request (the table's pick only takes a half-open endpoint with nothing in flight).

    closed --(K consecutive failures, or failure rate over a minimum volume)--> open
    open --(backoff, growing with each re-opening up to a cap)--> half-open
    open --(a health probe passes right after one failed)--> half-open at once
    half-open --(trial succeeds)--> closed;  --(trial fails)--> open, longer backoff
    a 429 opens the circuit exactly until its Retry-After (or a default cooldown)

Health probes report separately (``set_probe``): an endpoint whose probes fail is ejected
whatever its breaker says, and comes back to its breaker's state when they pass again.

Every probe verdict also reaches the circuit (``probe_verdict``). A pass that follows a
failure means the probe saw the endpoint down and back, so an open circuit stops waiting out
its backoff. A pass alone proves nothing: a server can answer ``/models`` while failing every
completion, and half-opening on every passing probe would then send a doomed trial each
probe interval instead of each backoff. A circuit opened by a 429 keeps its Retry-After.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from _fastpath import EP_EJECTED, EP_HALF_OPEN, EP_HEALTHY, EP_OPEN, EndpointTable

from .config import BreakerConfig

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class _Circuit:
    __slots__ = ("state", "consecutive", "openings", "open_until", "timer", "probe_ok",
                 "probe_down", "window_start", "ok", "failed", "reason", "rate_limited",
                 "outlier_timer", "ejections")

    def __init__(self) -> None:
        self.state = CLOSED
        self.consecutive = 0
        self.openings = 0
        self.open_until = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.probe_ok = True
        self.probe_down = False         # the last health probe failed
        self.window_start = 0.0
        self.ok = 0
        self.failed = 0
        self.reason = "no failures"
        self.rate_limited = False       # open because the upstream said 429
        self.outlier_timer: asyncio.TimerHandle | None = None  # set while ejected as outlier
        self.ejections = 0              # outlier ejections so far: each lasts longer


class Breakers:
    """Owns every endpoint's circuit and its timers; ``aclose`` cancels them."""

    def __init__(self, table: EndpointTable, config: BreakerConfig,
                 rnd=random.random, clock=time.monotonic) -> None:
        self.table = table
        self.config = config
        self._rnd = rnd
        self._clock = clock
        self._circuits: dict[int, _Circuit] = {}
        self.opened_total = 0
        # [successes, failures] per row since outlier detection last looked.
        self.tally: dict[int, list[int]] = {}
        # Told the row of each circuit that opens for a fault (not a 429), so the health
        # checker can probe it sooner than its interval; set by the checker running now.
        self.on_open: Callable[[int], None] | None = None

    def _circuit(self, row: int) -> _Circuit:
        circuit = self._circuits.get(row)
        if circuit is None:
            circuit = self._circuits[row] = _Circuit()
        return circuit

    # === outcomes of real requests ===

    def on_success(self, row: int) -> None:
        tally = self.tally.get(row)
        if tally is None:
            tally = self.tally[row] = [0, 0]
        tally[0] += 1
        circuit = self._circuits.get(row)
        if circuit is None:
            return  # never failed: nothing to track
        circuit.consecutive = 0
        self._count(circuit, failed=False)
        if circuit.state == HALF_OPEN:
            circuit.state = CLOSED
            circuit.openings = 0
            circuit.reason = "trial request succeeded"
            self._publish(row, circuit)

    def on_failure(self, row: int, kind: str, retry_after: float | None = None,
                   rate_limited: bool = False) -> None:
        circuit = self._circuit(row)
        if rate_limited:
            # A 429 says exactly when to come back; it is not a fault of the endpoint.
            wait = retry_after if retry_after is not None else self.config.cooldown_429_s
            self._open(row, circuit, wait, "rate limited (429) for %.3gs" % wait, grow=False)
            return
        tally = self.tally.get(row)
        if tally is None:
            tally = self.tally[row] = [0, 0]
        tally[1] += 1
        circuit.consecutive += 1
        self._count(circuit, failed=True)
        config = self.config
        if circuit.state == HALF_OPEN:
            self._open(row, circuit, None, "trial request failed (%s)" % kind)
        elif circuit.state == CLOSED:
            total = circuit.ok + circuit.failed
            if circuit.consecutive >= config.consecutive_failures:
                self._open(row, circuit, None, "%d consecutive failures (last: %s)"
                           % (circuit.consecutive, kind))
            elif total >= config.min_requests and circuit.failed >= config.failure_rate * total:
                self._open(row, circuit, None, "%d of %d requests failed in %gs"
                           % (circuit.failed, total, config.window_s))

    def _count(self, circuit: _Circuit, failed: bool) -> None:
        now = self._clock()
        if now - circuit.window_start > self.config.window_s:
            circuit.window_start = now
            circuit.ok = circuit.failed = 0
        if failed:
            circuit.failed += 1
        else:
            circuit.ok += 1

    # === state changes ===

    def _open(self, row: int, circuit: _Circuit, wait: float | None, reason: str,
              grow: bool = True) -> None:
        config = self.config
        if wait is None:
            wait = min(config.open_s * (2 ** circuit.openings), config.max_open_s)
            wait *= 1.0 + config.jitter * (2.0 * self._rnd() - 1.0)
        if grow:
            circuit.openings += 1
        circuit.rate_limited = not grow
        circuit.state = OPEN
        circuit.open_until = self._clock() + wait
        circuit.reason = reason
        circuit.ok = circuit.failed = 0
        self.opened_total += 1
        if circuit.timer is not None:
            circuit.timer.cancel()
        circuit.timer = asyncio.get_running_loop().call_later(wait, self._half_open, row)
        self._publish(row, circuit)
        if grow and self.on_open is not None:
            self.on_open(row)

    def _half_open(self, row: int) -> None:
        circuit = self._circuits[row]
        circuit.timer = None
        if circuit.state == OPEN:
            circuit.state = HALF_OPEN
            circuit.reason = "backoff over: admitting one trial request"
            self._publish(row, circuit)

    def probe_verdict(self, row: int, ok: bool) -> None:
        """One health probe's result, whatever the probe streaks make of it."""
        circuit = self._circuits.get(row)
        if circuit is None:
            if ok:
                return  # nothing ever failed there
            circuit = self._circuit(row)
        was_down, circuit.probe_down = circuit.probe_down, not ok
        if ok and was_down and circuit.state == OPEN and not circuit.rate_limited:
            if circuit.timer is not None:
                circuit.timer.cancel()
                circuit.timer = None
            circuit.state = HALF_OPEN
            circuit.reason = ("a health probe passes again after failing: admitting one trial "
                              "request" if circuit.probe_ok else "a health probe passes again "
                              "after failing: one trial request once the probes restore it")
            self._publish(row, circuit)

    def in_doubt(self, row: int) -> bool:
        """Open for a fault, so a health probe may find it back sooner than its backoff."""
        circuit = self._circuits.get(row)
        return circuit is not None and circuit.state == OPEN and not circuit.rate_limited

    def set_probe(self, row: int, ok: bool, reason: str = "") -> None:
        """Health probes' verdict: a failing endpoint is ejected whatever its breaker says."""
        circuit = self._circuit(row)
        if ok:
            circuit.probe_down = False  # also when probing stops: no stale failure may count
        if circuit.probe_ok != ok:
            circuit.probe_ok = ok
            if reason:
                if ok and circuit.state == HALF_OPEN:
                    reason += ": admitting one trial request"
                circuit.reason = reason
            self._publish(row, circuit)

    def eject_outlier(self, row: int, base_s: float, max_s: float, reason: str) -> float:
        """Passive outlier detection's verdict: out of rotation for a while that grows with
        each ejection; returns how long."""
        circuit = self._circuit(row)
        circuit.ejections += 1
        wait = min(base_s * circuit.ejections, max_s)
        if circuit.outlier_timer is not None:
            circuit.outlier_timer.cancel()
        circuit.outlier_timer = asyncio.get_running_loop().call_later(
            wait, self._return_outlier, row)
        circuit.reason = reason
        self._publish(row, circuit)
        return wait

    def _return_outlier(self, row: int) -> None:
        circuit = self._circuits.get(row)
        if circuit is None:
            return
        circuit.outlier_timer = None
        circuit.reason = "outlier ejection over"
        self._publish(row, circuit)

    def outlier_ejected(self, row: int) -> bool:
        circuit = self._circuits.get(row)
        return circuit is not None and circuit.outlier_timer is not None

    def _publish(self, row: int, circuit: _Circuit) -> None:
        if not circuit.probe_ok or circuit.outlier_timer is not None:
            state = EP_EJECTED
        elif circuit.state == OPEN:
            state = EP_OPEN
        elif circuit.state == HALF_OPEN:
            state = EP_HALF_OPEN
        else:
            state = EP_HEALTHY
        self.table.set_state(row, state)

    # === reading ===

    def state(self, row: int) -> str:
        circuit = self._circuits.get(row)
        return CLOSED if circuit is None else circuit.state

    def describe(self, row: int) -> dict:
        circuit = self._circuits.get(row)
        if circuit is None:
            return {"circuit": CLOSED, "probe_ok": True, "reason": "no failures",
                    "outlier_ejected": False}
        info = {"circuit": circuit.state, "probe_ok": circuit.probe_ok,
                "reason": circuit.reason, "consecutive_failures": circuit.consecutive,
                "outlier_ejected": circuit.outlier_timer is not None}
        if circuit.state == OPEN:
            info["open_for_s"] = round(max(0.0, circuit.open_until - self._clock()), 3)
        return info

    def retry_after(self, rows: list[int]) -> float | None:
        """When the soonest of these open circuits lets a request through again."""
        now = self._clock()
        waits = [self._circuits[r].open_until - now for r in rows
                 if r in self._circuits and self._circuits[r].state == OPEN]
        return max(0.0, min(waits)) if waits else None

    def all_rate_limited(self, rows: list[int]) -> bool:
        """Every open circuit among these rows was opened by a 429."""
        open_ = [self._circuits[r] for r in rows
                 if r in self._circuits and self._circuits[r].state == OPEN]
        return bool(open_) and all(c.rate_limited for c in open_)

    def forget(self, row: int) -> None:
        """An endpoint left the configuration: its circuit and timer go with it."""
        circuit = self._circuits.pop(row, None)
        if circuit is not None:
            for timer in (circuit.timer, circuit.outlier_timer):
                if timer is not None:
                    timer.cancel()

    def aclose(self) -> None:
        for circuit in self._circuits.values():
            for timer in (circuit.timer, circuit.outlier_timer):
                if timer is not None:
                    timer.cancel()
            circuit.timer = circuit.outlier_timer = None
