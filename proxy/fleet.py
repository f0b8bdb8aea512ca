"""What one worker of ``--workers N`` answers for all of them: ``/metrics``,
``/admin/upstreams``, ``POST /admin/reload`` and ``DELETE /admin/cache``.

Whichever worker the kernel hands the call to asks its peers (``peers``) at once, with a
short bound, and answers with what came back: a worker that is stuck, or gone while it
restarts, costs the answer its share, never the answer itself, and every answer says which
workers it holds. Nothing here runs per request; a scrape costs one round trip per peer.

Why the workers ask each other, rather than the parent collecting or a shared directory
of metric files: the parent owns no event loop and no listener (the port belongs to the
workers' SO_REUSEPORT sockets), and files shared between processes would put a write on
every counter update, where today an update is an add to a Python number. Asking at scrape
time also covers what is only known live (endpoint states, cache sizes) and the admin
calls with the same mechanism.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from .errors import ReloadRejected
from .metric_merge import Family, Sample, merge, render, snapshot
from .metrics import Metrics
from .peers import PeerServer, Request, WorkerSet, ask_all

# A scrape or an endpoint listing must come back well inside a scraper's own timeout.
QUERY_TIMEOUT_S = 1.5
# Administration is rare and may wait: a reload reads the file and may train classifiers.
ADMIN_TIMEOUT_S = 10.0
RELOAD_TIMEOUT_S = 60.0


def _decoder(result_type) -> msgspec.msgpack.Decoder:
    return msgspec.msgpack.Decoder(tuple[str | None, result_type | None])


_metrics_answer = _decoder(list[Family])
_rows_answer = _decoder(list[dict[str, Any]])
_reload_answer = _decoder(dict[str, Any])
_count_answer = _decoder(int)


def _status_rows(answers: dict[int, Any], answered: str) -> list[dict]:
    return [{"worker": i, "status": answered if answers[i] is not None else "missing"}
            for i in sorted(answers)]


def _reload_row(outcome: dict | ReloadRejected) -> dict:
    if isinstance(outcome, ReloadRejected):
        return {"status": "rejected", "reason": outcome.reason, "problems": outcome.problems}
    row = {"status": outcome["status"], "reloads": outcome["reloads"]}
    if "needs_restart" in outcome:
        row["needs_restart"] = outcome["needs_restart"]
    return row


class Fleet:
    def __init__(self, workers: WorkerSet, metrics: Metrics, gateway,
                 reload: Callable[[], Awaitable[dict]]) -> None:
        self.workers = workers
        self.metrics = metrics
        self.gateway = gateway            # its rows, its cache
        self._reload = reload             # this worker's own reload
        self.server = PeerServer(workers.path(workers.index), {
            "metrics": self._serve_metrics, "upstreams": self._serve_upstreams,
            "reload": self._serve_reload, "cache_delete": self._serve_cache_delete})

    async def start(self) -> None:
        await self.server.start()

    async def aclose(self) -> None:
        await self.server.aclose()

    # === what this worker tells its peers ===

    def _serve_metrics(self, request: Request) -> list[Family]:
        return snapshot(self.metrics.registry)

    def _serve_upstreams(self, request: Request) -> list[dict]:
        return self.gateway.upstream_rows()

    async def _serve_reload(self, request: Request) -> dict:
        return _reload_row(await self._reload_here())

    async def _serve_cache_delete(self, request: Request) -> int:
        return await self.gateway.cache.delete(request.route)

    async def _reload_here(self) -> dict | ReloadRejected:
        try:
            return await self._reload()
        except ReloadRejected as exc:
            return exc

    # === what this worker answers for all ===

    async def exposition(self) -> bytes:
        answers = await ask_all(self.workers, "metrics", _metrics_answer, QUERY_TIMEOUT_S)
        snapshots = [snapshot(self.metrics.registry)]
        snapshots += [answers[i] for i in sorted(answers) if answers[i] is not None]
        families = merge(snapshots)
        missing = len(answers) + 1 - len(snapshots)
        families.append(Family(
            "llmedge_workers", "gauge", "Worker processes whose metrics this scrape adds up "
            "(answered) and those that did not answer in time (missing).", "",
            [Sample("llmedge_workers", {"state": "answered"}, len(snapshots)),
             Sample("llmedge_workers", {"state": "missing"}, missing)]))
        return render(families)

    async def upstreams(self) -> dict:
        """Every worker's endpoint rows, each with its ``worker`` index."""
        answers = await ask_all(self.workers, "upstreams", _rows_answer, QUERY_TIMEOUT_S)
        answers[self.workers.index] = self.gateway.upstream_rows()
        rows = []
        for index in sorted(answers):
            for row in answers[index] or ():
                row["worker"] = index
                rows.append(row)
        return {"endpoints": rows,
                "workers": _status_rows(answers, "answered")}

    async def reload(self) -> dict:
        """Every worker reloads the file; the answer is this worker's summary plus one row
        per worker. Raises ReloadRejected (with ``workers``) when this worker rejected it."""
        local, answers = await asyncio.gather(
            self._reload_here(),
            ask_all(self.workers, "reload", _reload_answer, RELOAD_TIMEOUT_S))
        answers[self.workers.index] = _reload_row(local)
        rows = [{"worker": i, **(answers[i] or {"status": "missing"})} for i in sorted(answers)]
        if isinstance(local, ReloadRejected):
            local.workers = rows
            raise local
        return {**local, "workers": rows}

    async def delete_cache(self, route: str | None) -> tuple[int, list[dict] | None]:
        """Deleted answers, summed over the workers when each keeps its own (memory) cache;
        a shared store (Redis) is cleared once, by this worker, and ``workers`` is None."""
        cache = self.gateway.cache
        if cache.backend.shared:
            return await cache.delete(route), None
        deleted = await cache.delete(route)
        counts = await ask_all(self.workers, "cache_delete", _count_answer, ADMIN_TIMEOUT_S,
                               route)
        counts[self.workers.index] = deleted
        rows = _status_rows(counts, "cleared")
        for row in rows:
            if row["status"] == "cleared":
                row["deleted"] = counts[row["worker"]]
        return sum(n for n in counts.values() if n is not None), rows
