# The API of _fastpath.scoring (compiled) and _fastpath.scoring_py (its pure-Python twin).

from collections.abc import Callable, Sequence
from typing import Final, TypedDict, final

__all__ = ("EP_EJECTED", "EP_HALF_OPEN", "EP_HEALTHY", "EP_OPEN", "POLICY_COST",
           "POLICY_LATENCY", "POLICY_SCORE", "EndpointTable")

# Endpoint states: only HEALTHY endpoints and idle HALF_OPEN ones can be picked.
EP_HEALTHY: Final = 0
EP_EJECTED: Final = 1
EP_OPEN: Final = 2
EP_HALF_OPEN: Final = 3

# rank() policies.
POLICY_COST: Final = 0
POLICY_LATENCY: Final = 1
POLICY_SCORE: Final = 2

class _EndpointStats(TypedDict):
    rtt_us: float               # peak-EWMA latency, microseconds
    ttft_us: float              # peak-EWMA time to first token, microseconds
    error_rate: float           # EWMA of failures, 0..1
    inflight: int
    consecutive_failures: int
    state: int                  # EP_*
    weight: float
    price: float                # USD per 1M tokens
    quality: float              # 0..1

# Final: the compiled class cannot be subclassed (the twin does not enforce it).
@final
class EndpointTable:
    def __init__(self, decay_s: float = 10.0, default_rtt_us: float = 1_000_000.0,
                 error_decay_s: float = 30.0) -> None: ...
    def __len__(self) -> int: ...
    def add(self, weight: float = 1.0, price: float = 0.0, quality: float = 0.5) -> int: ...
    def start(self, i: int) -> None: ...
    def record(self, i: int, now_s: float, rtt_us: float, ttft_us: float,
               failed: bool) -> None: ...
    def cancel(self, i: int) -> None: ...
    def set_state(self, i: int, state: int) -> None: ...
    def state(self, i: int) -> int: ...
    def available(self, i: int) -> bool: ...
    def load(self, i: int) -> float: ...
    def inflight(self, i: int) -> int: ...
    def stats(self, i: int) -> _EndpointStats: ...
    def pick(self, candidates: Sequence[int], rnd: Callable[[], float]) -> int: ...
    def rank(self, groups: Sequence[Sequence[int]], policy: int,
             weights: Sequence[float] = (0.0, 0.0, 0.0, 0.0)) -> list[int]: ...
