"""Passive outlier detection: a replica whose success rate falls well below its peers' is
taken out of rotation for a while, before its errors add up to an open circuit.

The breakers count every attempt's outcome per table row (``Breakers.tally``); once per
interval this side task compares the replicas of each deployment that saw enough traffic.
A replica is judged against the others of its own deployment only: when every replica
fails alike the trouble is the model or the request mix, not one server, and ejecting
would only move load around. ``max_ejection_percent`` caps how many replicas of one
deployment can be out at once, and one always stays.
"""

from __future__ import annotations

import asyncio
import logging
import math

from .metrics import Metrics
from .runtime import Live

log = logging.getLogger("llmedge.outlier")


class OutlierDetector:
    def __init__(self, live: Live, metrics: Metrics) -> None:
        self.live = live                # settings and deployments as the last reload left them
        self.metrics = metrics
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        # Runs even when disabled: a reload may enable it, and a sleeping task costs nothing.
        self._task = asyncio.get_running_loop().create_task(self._run(),
                                                            name="outlier detection")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.live.current.outlier.interval_s)
            try:
                self.sweep()
            except Exception:  # a bug here must not end detection for good
                log.exception("outlier detection sweep failed")

    def sweep(self) -> list[int]:
        """Judge the interval that just ended; returns the rows ejected."""
        runtime = self.live.current
        config = runtime.outlier
        breakers = runtime.router.breakers
        tally, breakers.tally = breakers.tally, {}
        ejected: list[int] = []
        if not config.enabled:
            return ejected
        self.metrics.outlier_sweeps.inc()
        for target in list(runtime.router.targets.values()):
            rows = target.rows
            if len(rows) < 2:
                continue
            rates = {}
            for row in rows:
                ok, failed = tally.get(row, (0, 0))
                if ok + failed >= config.min_requests:
                    rates[row] = ok / (ok + failed)
            if len(rates) < 2:
                continue
            out_now = sum(1 for row in rows if breakers.outlier_ejected(row))
            room = min(math.floor(len(rows) * config.max_ejection_percent / 100),
                       len(rows) - 1) - out_now
            total = sum(rates.values())
            candidates = []
            for row, rate in rates.items():
                peers = (total - rate) / (len(rates) - 1)
                if rate < peers - config.success_rate_gap:
                    candidates.append((rate, peers, row))
            for rate, peers, row in sorted(candidates)[:max(0, room)]:
                wait = breakers.eject_outlier(
                    row, config.eject_s, config.max_eject_s,
                    "outlier: success rate %.0f%% against %.0f%% of its peers"
                    % (rate * 100, peers * 100))
                self.metrics.outlier_ejection(target.name)
                log.warning("outlier: ejected a replica of %s for %.0fs (success rate %.0f%% "
                            "vs peers %.0f%%)", target.name, wait, rate * 100, peers * 100)
                ejected.append(row)
        return ejected
