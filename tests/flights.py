"""Single-flight checks shared by the cache tests. Not a test module."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

from procs import Response, metric_value, wait_for


def overlapping_requests(first, rest, sims, send: Callable[[object], Response],
                         n: int = 6, send_first: Callable[[object], Response] | None = None
                         ) -> list[Response]:
    """n identical requests while the first is still upstream (the first to ``first`` with
    ``send_first``, the others to ``rest``): exactly one upstream request between them."""
    # The simulator holds the answer back for 3 s: the followers are sent, and shown to be
    # waiting inside llmedge, well within that.
    sims.gamma.configure(ttft_ms=3000)
    results: list = [None] * n

    def run(i: int, edge) -> None:
        results[i] = (send_first or send)(edge) if i == 0 else send(edge)

    threads = [threading.Thread(target=run, args=(0, first))]
    threads[0].start()
    sims.gamma.wait_stat("chat", 1)
    for i in range(1, n):
        threads.append(threading.Thread(target=run, args=(i, rest)))
        threads[-1].start()
    wait_for(lambda: metric_value(rest.metrics(), "llmedge_inflight_requests")
             >= (n if rest is first else n - 1), message="followers waiting in llmedge")
    assert sims.gamma.stats()["chat"] == 1, "the followers must not have gone upstream"
    for t in threads:
        t.join(timeout=60)
    assert all(r is not None and r.status == 200 for r in results), results
    assert [r.headers["x-llmedge-cache"] for r in results] == ["miss"] + ["hit"] * (n - 1)
    assert len({json.loads(r.body)["id"] for r in results[1:]}) == 1
    assert sims.gamma.stats()["chat"] == 1
    return results
