"""Which failed attempts are worth another try at the same deployment, and when.

The deployment a request was routed to is the model the client asked for, so it gets a
second chance where one can help, and none where it cannot:

- a timeout (no connection, no head, no first token, silence mid-stream): never. A silent or
  slow upstream would make each retry wait as long again; the next candidate goes at once;
- a 5xx, a reset, an answer that was not what was asked for, a stream that opened with an
  error event: up to ``same_deployment``
  times (default once), after a full-jitter exponential backoff;
- a 429 with a ``Retry-After`` of at most ``max_retry_after_s``: waited out, once. A longer
  one leaves the endpoint to its breaker (open until then) and the next candidate answers;
- anything else (connection refused, every endpoint out, the deployment saturated, the
  request's own deadline, an over-long prompt): never.

The retry budget and the request's deadline bound all of it (the dispatcher checks both).
"""

from __future__ import annotations

from collections.abc import Callable

from .config import RetryConfig
from .errors import (ContextWindowExceeded, UpstreamBadResponse, UpstreamError, UpstreamReset, UpstreamStatus,
                     UpstreamStreamError, UpstreamTimeout)


def retry_delay(exc: UpstreamError, tries: int, retry: RetryConfig,
                rnd: Callable[[], float]) -> float | None:
    """Seconds to wait before trying the same deployment again after ``exc`` (its
    ``tries``-th retry would be next), or None: move on to the next candidate."""
    if isinstance(exc, (UpstreamTimeout, ContextWindowExceeded)):
        return None   # the same model would refuse the same prompt again
    if isinstance(exc, UpstreamStatus) and exc.upstream_status == 429:
        wait = exc.retry_after
        if tries == 0 and wait is not None and wait <= retry.max_retry_after_s:
            return wait   # exact: the upstream said when; the breaker opens until then too
        return None
    if isinstance(exc, (UpstreamStatus, UpstreamReset, UpstreamBadResponse,
                        UpstreamStreamError)):
        if tries >= retry.same_deployment:
            return None
        # Full jitter: clients that failed together do not come back together.
        return rnd() * min(retry.max_backoff_s, retry.backoff_s * (2 ** tries))
    return None
