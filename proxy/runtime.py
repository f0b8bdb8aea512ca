"""Runtime: what serving reads from the configuration in use, as one object.

A reload builds a whole new ``Runtime`` (off the loop, where building is costly) and makes it
current in one assignment, so no request ever sees half of one configuration and half of
the next. A request keeps the runtime it started with until it is answered.
"""

from __future__ import annotations

from .config import Config, OutlierConfig, RetryBudgetConfig, RetryConfig
from .routing.router import Router


class Runtime:
    __slots__ = ("router", "retry", "deadline_s", "max_inflight", "admin_token",
                 "retry_budget", "outlier")

    def __init__(self, router: Router, config: Config, admin_token: bytes | None) -> None:
        self.router = router
        upstream = config.upstream
        self.retry: RetryConfig = upstream.retry
        # From a request's arrival to an upstream's response head (None: attempts alone).
        self.deadline_s: float | None = upstream.deadline_s
        self.max_inflight: int = config.server.max_inflight
        self.admin_token = admin_token   # b"Bearer <token>" when the config sets one
        self.retry_budget: RetryBudgetConfig = upstream.retry_budget
        self.outlier: OutlierConfig = upstream.outlier


class Live:
    """Where every component finds the runtime in use; a reload replaces ``current``."""

    __slots__ = ("current",)

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime
