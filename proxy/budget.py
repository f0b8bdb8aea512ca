"""The retry budget: retries and fallbacks across the whole process are capped at a share
of recent requests plus a small floor, so an outage cannot multiply the load on what is
left (a retry storm)."""

from __future__ import annotations

import time

from .config import RetryBudgetConfig

BUCKETS = 10


class RetryBudget:
    """Counts requests and retries in ``BUCKETS`` time slices covering ``window_s``."""

    def __init__(self, config: RetryBudgetConfig, clock=time.monotonic) -> None:
        self._clock = clock
        self.configure(config)
        self.exhausted = 0

    def configure(self, config: RetryBudgetConfig) -> None:
        """(Re)start counting under ``config``; a reload resets the window, which errs on
        the side of allowing retries for one window."""
        self.ratio = config.ratio
        self.floor = config.min_per_s * config.window_s
        self._slice = config.window_s / BUCKETS
        clock = self._clock
        self._requests = [0] * BUCKETS
        self._retries = [0] * BUCKETS
        self._current = int(clock() / self._slice)

    def _advance(self) -> int:
        now = int(self._clock() / self._slice)
        if now != self._current:
            # Clear the slices that passed since the last call (all of them after a long gap).
            for step in range(1, min(now - self._current, BUCKETS) + 1):
                i = (self._current + step) % BUCKETS
                self._requests[i] = self._retries[i] = 0
            self._current = now
        return now % BUCKETS

    def request(self) -> None:
        self._requests[self._advance()] += 1

    def try_retry(self) -> bool:
        """Take one retry (or fallback) from the budget; False when it is spent."""
        i = self._advance()
        allowed = self.floor + self.ratio * sum(self._requests)
        if sum(self._retries) + 1 > allowed:
            self.exhausted += 1
            return False
        self._retries[i] += 1
        return True
