"""The endpoint table: per-endpoint load, latency, errors and state, and the choices made
from them. The reference implementation: ``scoring.pyx`` must agree with it exactly.

Rows are endpoints (replicas). A deployment is a group of rows; route policies rank groups.
Time is passed in (``now_s``, seconds from any fixed origin) and so is randomness (``rnd``,
a callable returning floats in [0, 1)), so every result is reproducible.
"""

import math
from collections.abc import Callable, Sequence

__all__ = ("EP_EJECTED", "EP_HALF_OPEN", "EP_HEALTHY", "EP_OPEN", "POLICY_COST",
           "POLICY_LATENCY", "POLICY_SCORE", "EndpointTable")

# Endpoint states. Only HEALTHY endpoints and idle HALF_OPEN ones (one trial at a time)
# can be picked.
EP_HEALTHY = 0
EP_EJECTED = 1      # health probes or outlier detection took it out
EP_OPEN = 2         # circuit open
EP_HALF_OPEN = 3    # circuit half-open: admits one request at a time

POLICY_COST = 0
POLICY_LATENCY = 1
POLICY_SCORE = 2


def _check_index(table: "EndpointTable", i: int) -> None:
    if not 0 <= i < table._n:
        raise IndexError("endpoint index out of range")


def _finite(name: str, value: float, low: float = 0.0) -> float:
    value = float(value)
    if not math.isfinite(value) or value < low:
        raise ValueError("%s must be finite and >= %g" % (name, low))
    return value


class EndpointTable:
    """Endpoint statistics in flat arrays, and power-of-two-choices over them.

    Latency is a peak-EWMA: a sample above the average replaces it at once, one below pulls
    it down with weight ``1 - exp(-elapsed / decay_s)``. Load is ``latency × (inflight + 1)``.
    """

    def __init__(self, decay_s: float = 10.0, default_rtt_us: float = 1_000_000.0,
                 error_decay_s: float = 30.0) -> None:
        self._decay_s = _finite("decay_s", decay_s, 1e-9)
        self._default_rtt_us = _finite("default_rtt_us", default_rtt_us)
        self._error_decay_s = _finite("error_decay_s", error_decay_s, 1e-9)
        self._n = 0
        self._rtt = []          # peak-EWMA latency, microseconds, > 0
        self._ttft = []         # EWMA time to first token, microseconds; default until sampled
        self._stamp = []        # now_s of the last sample; -1 before the first
        self._err = []          # EWMA of failures, 0..1
        self._err_stamp = []
        self._inflight = []     # requests started and not yet recorded, >= 0
        self._consecutive = []  # failures since the last success
        self._state = []        # EP_*
        self._weight = []       # > 0: a replica with weight 2 takes twice the load
        self._price = []        # USD per 1M tokens (input + output), >= 0
        self._quality = []      # 0..1

    def __len__(self) -> int:
        return self._n

    def add(self, weight: float = 1.0, price: float = 0.0, quality: float = 0.5) -> int:
        """A new endpoint row; returns its index."""
        weight = _finite("weight", weight)
        if weight <= 0.0:
            raise ValueError("weight must be > 0")
        price = _finite("price", price)
        quality = _finite("quality", quality)
        if quality > 1.0:
            raise ValueError("quality must be between 0 and 1")
        self._rtt.append(self._default_rtt_us)
        self._ttft.append(self._default_rtt_us)
        self._stamp.append(-1.0)
        self._err.append(0.0)
        self._err_stamp.append(-1.0)
        self._inflight.append(0)
        self._consecutive.append(0)
        self._state.append(EP_HEALTHY)
        self._weight.append(weight)
        self._price.append(price)
        self._quality.append(quality)
        self._n += 1
        return self._n - 1

    # === feeding ===

    def start(self, i: int) -> None:
        """A request was sent to endpoint ``i``."""
        _check_index(self, i)
        self._inflight[i] += 1

    def record(self, i: int, now_s: float, rtt_us: float, ttft_us: float, failed: bool) -> None:
        """A request to ``i`` finished: its latency, time to first token (< 0: none) and
        whether it failed (a failure's latency still counts: a timeout is slow)."""
        _check_index(self, i)
        rtt_us = _finite("rtt_us", rtt_us)
        if self._inflight[i] > 0:
            self._inflight[i] -= 1
        self._rtt[i] = self._peak_ewma(self._rtt[i], self._stamp[i], now_s, rtt_us)
        if ttft_us >= 0.0:
            self._ttft[i] = self._peak_ewma(self._ttft[i], self._stamp[i], now_s, ttft_us)
        self._stamp[i] = now_s
        sample = 1.0 if failed else 0.0
        if self._err_stamp[i] < 0.0:
            self._err[i] = sample
        else:
            w = math.exp(-max(now_s - self._err_stamp[i], 0.0) / self._error_decay_s)
            self._err[i] = self._err[i] * w + sample * (1.0 - w)
        self._err_stamp[i] = now_s
        self._consecutive[i] = self._consecutive[i] + 1 if failed else 0

    def cancel(self, i: int) -> None:
        """A request to ``i`` ended without a result worth learning from (client left)."""
        _check_index(self, i)
        if self._inflight[i] > 0:
            self._inflight[i] -= 1

    def _peak_ewma(self, current: float, stamp: float, now_s: float, sample: float) -> float:
        if stamp < 0.0 or sample > current:
            return sample
        w = math.exp(-max(now_s - stamp, 0.0) / self._decay_s)
        blended = current * w + sample * (1.0 - w)
        # Decaying never rises: the blend of two values may round an ulp past both.
        return current if blended > current else blended

    def set_state(self, i: int, state: int) -> None:
        _check_index(self, i)
        if state not in (EP_HEALTHY, EP_EJECTED, EP_OPEN, EP_HALF_OPEN):
            raise ValueError("unknown endpoint state")
        self._state[i] = state

    # === reading ===

    def state(self, i: int) -> int:
        _check_index(self, i)
        return self._state[i]

    def available(self, i: int) -> bool:
        _check_index(self, i)
        return self._available(i)

    def _available(self, i: int) -> bool:
        state = self._state[i]
        return state == EP_HEALTHY or (state == EP_HALF_OPEN and self._inflight[i] == 0)

    def load(self, i: int) -> float:
        _check_index(self, i)
        return self._load(i)

    def inflight(self, i: int) -> int:
        _check_index(self, i)
        return self._inflight[i]

    def _load(self, i: int) -> float:
        return self._rtt[i] * (self._inflight[i] + 1) / self._weight[i]

    def stats(self, i: int) -> dict:
        _check_index(self, i)
        return {"rtt_us": self._rtt[i], "ttft_us": self._ttft[i], "error_rate": self._err[i],
                "inflight": self._inflight[i], "consecutive_failures": self._consecutive[i],
                "state": self._state[i], "weight": self._weight[i], "price": self._price[i],
                "quality": self._quality[i]}

    # === choosing ===

    def pick(self, candidates: Sequence[int], rnd: Callable[[], float]) -> int:
        """Power of two choices among the available ``candidates``: two distinct ones drawn
        at random, the one with the lower load wins (the first on a tie). -1 when none is
        available. ``rnd`` is called twice when two or more are available, else not at all."""
        usable = []
        for i in candidates:
            _check_index(self, i)
            if self._available(i):
                usable.append(i)
        n = len(usable)
        if n == 0:
            return -1
        if n == 1:
            return usable[0]
        a = min(int(rnd() * n), n - 1)
        b = min(int(rnd() * (n - 1)), n - 2)
        if b >= a:
            b += 1
        return usable[b] if self._load(usable[b]) < self._load(usable[a]) else usable[a]

    def rank(self, groups: Sequence[Sequence[int]], policy: int,
             weights: Sequence[float] = (0.0, 0.0, 0.0, 0.0)) -> list[int]:
        """Groups (deployments: lists of endpoint rows) best first; those with no available
        endpoint come last, in their given order.

        A group's price and quality are its first row's; its latency is the lowest latency
        and its load the lowest load among its available rows (each taken on its own). ``policy`` POLICY_COST orders
        by price, then latency; POLICY_LATENCY by load (latency × (inflight + 1)); POLICY_SCORE
        by ``weights`` = (cost, latency, quality, load) over features normalised to 0..1 across
        the available groups: lower cost, latency and load and higher quality score better.
        Ties keep the given order.
        """
        if policy not in (POLICY_COST, POLICY_LATENCY, POLICY_SCORE):
            raise ValueError("unknown policy")
        if len(weights) != 4:
            raise ValueError("weights must be (cost, latency, quality, load)")
        w = [_finite("weight", x) for x in weights]
        live = []     # (group index, price, latency, quality, load)
        dead = []
        for g, rows in enumerate(groups):
            if not rows:
                raise ValueError("a group needs at least one endpoint")
            best_rtt = best_load = math.inf
            for i in rows:
                _check_index(self, i)
                if self._available(i):
                    load = self._load(i)
                    if load < best_load:
                        best_load = load
                    if self._rtt[i] < best_rtt:
                        best_rtt = self._rtt[i]
            if best_load == math.inf:
                dead.append(g)
            else:
                first = rows[0]
                live.append((g, self._price[first], best_rtt, self._quality[first], best_load))
        if policy == POLICY_COST:
            keys = [(item[1], item[2]) for item in live]
        elif policy == POLICY_LATENCY:
            keys = [(item[4], 0.0) for item in live]
        else:
            spans = []
            for f in (1, 2, 3, 4):
                low = min((item[f] for item in live), default=0.0)
                high = max((item[f] for item in live), default=0.0)
                spans.append((low, high - low))

            def norm(value: float, f: int) -> float:
                low, span = spans[f - 1]
                return (value - low) / span if span > 0.0 else 0.0

            keys = [(w[0] * norm(item[1], 1) + w[1] * norm(item[2], 2)
                     + w[2] * (1.0 - norm(item[3], 3)) + w[3] * norm(item[4], 4), 0.0)
                    for item in live]
        order = sorted(range(len(live)), key=lambda k: (keys[k], k))
        return [live[k][0] for k in order] + dead
