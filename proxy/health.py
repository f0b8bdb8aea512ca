"""Active health probes: one task per endpoint, all owned by one ``HealthChecker``.

A probe is ``GET {base_path}{path}`` (by default ``/v1/models``) with the deployment's
credentials, on a connection of its own that is closed afterwards: it exercises the connect
(and TLS) path real traffic depends on, never competes with requests for a pooled
connection, and cannot be fooled by a stale keep-alive socket. Only the response head is
read; the status is the verdict:

* 2xx and 3xx pass.
* 5xx, a refused or reset connection, a malformed answer and a timeout fail.
* Other 4xx (404: the server has no such path; 401/403: it rejects the key; 429: it is
  busy) pass: the server is up and answering HTTP, which is what a liveness probe asks.
  Ejecting on them would take a whole deployment out over a probe path it does not serve,
  and rate limits are the breaker's business (it honours ``Retry-After``). Each such status
  is logged once per endpoint so the path or key gets fixed.

``unhealthy_after`` failures in a row eject the endpoint, ``healthy_after`` passes in a row
restore it; these transitions are reported through ``Breakers.set_probe`` (the one writer of
endpoint states). Every single verdict also goes to ``Breakers.probe_verdict``: a pass right
after a failure half-opens an open circuit at once, ejected or not.

An endpoint in doubt -- its last probe failed, probes ejected it, or its circuit is open for
a fault -- is probed every ``unhealthy_interval_s`` instead of ``interval_s``, so that a
recovery is seen within about a second rather than a whole interval later. The breaker tells
the checker when a circuit opens (``Breakers.on_open``), and that endpoint's sleep is cut
short. Probes start one interval after ``start()``, not at once: a starting proxy should not
open a connection to every upstream in the same instant, and until the first verdict real
traffic and the breaker guard the endpoint anyway.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable

from .config import Config, HealthConfig, health_of
from .errors import UpstreamError
from .metrics import Metrics
from .routing.router import Router, Target
from .upstream.pool import Endpoint

log = logging.getLogger("llmedge.health")


class _Probe:
    """One endpoint's probe request and its streaks."""

    __slots__ = ("target", "endpoint", "row", "config", "request", "healthy", "passed",
                 "failed", "last", "last_at", "warned", "wake")

    def __init__(self, target: Target, endpoint: Endpoint, row: int,
                 config: HealthConfig) -> None:
        self.target = target
        self.endpoint = endpoint
        self.row = row
        self.config = config
        # Built once: a probe sends the same bytes every time.
        self.request = (b"GET %s%s HTTP/1.1\r\nhost: %s\r\n%saccept: application/json\r\n"
                        b"user-agent: llmedge-health\r\nconnection: close\r\n\r\n"
                        % (endpoint.base_path, config.path.encode("ascii"),
                           endpoint.host_header, target.auth_header))
        self.healthy = True       # the table starts every endpoint healthy
        self.passed = 0           # consecutive passing probes
        self.failed = 0           # consecutive failing probes
        self.last = "not probed yet"
        self.last_at = 0.0        # time.monotonic() of the last verdict
        self.warned: set[int] = set()   # 4xx statuses already logged
        self.wake = asyncio.Event()     # set when the endpoint's circuit opens


class HealthChecker:
    """Probes every endpoint of every deployment whose health config is enabled.

    ``start()`` creates one task per endpoint (strong references are kept here);
    ``aclose()`` cancels and awaits them. A probe's failure is a verdict, never an
    exception in the loop; a task that dies of a bug is logged by its done-callback.
    """

    def __init__(self, router: Router, config: Config,
                 rnd: Callable[[], float] = random.random,
                 previous: HealthChecker | None = None, metrics: Metrics | None = None) -> None:
        """``previous``: the checker this one replaces on a reload; an endpoint probed by
        both keeps its streaks, so a reload neither restores an ejected endpoint early nor
        forgets failures that were about to eject it."""
        self._breakers = router.breakers
        self._metrics = metrics
        self._rnd = rnd
        self._probes: dict[int, _Probe] = {}   # by table row
        self._tasks: set[asyncio.Task[None]] = set()
        for dep in config.deployments:
            health = health_of(config, dep)
            target = router.targets[dep.name]
            # Without its key a deployment is never used, and nothing may be sent for it.
            if not health.enabled or target.unusable:
                continue
            for endpoint, row in zip(target.endpoints, target.rows):
                probe = self._probes[row] = _Probe(target, endpoint, row, health)
                before = previous._probes.get(row) if previous is not None else None
                if before is not None:
                    probe.healthy, probe.passed, probe.failed = \
                        before.healthy, before.passed, before.failed
                    probe.last, probe.last_at = before.last, before.last_at
                elif not router.breakers.describe(row)["probe_ok"]:
                    # Probing was switched off while the endpoint was ejected, and is on
                    # again: passes must restore it.
                    probe.healthy = False

    @property
    def rows(self) -> set[int]:
        """Table rows of the probed endpoints."""
        return set(self._probes)

    @property
    def probed(self) -> int:
        """How many endpoints are probed."""
        return len(self._probes)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        # This checker hears of openings from now on; the one it replaces no longer does.
        self._breakers.on_open = self._circuit_opened
        for probe in self._probes.values():
            task = loop.create_task(self._run(probe), name="health %s" % probe.endpoint.url)
            self._tasks.add(task)
            task.add_done_callback(self._on_done)
        if self._probes:
            log.info("health: probing %d endpoint(s)", len(self._probes))

    def _on_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A probe loop only ends by cancellation: anything else is a bug, and that
            # endpoint is no longer probed.
            log.error("%s stopped: please report this bug", task.get_name(),
                      exc_info=task.exception())

    def _circuit_opened(self, row: int) -> None:
        probe = self._probes.get(row)
        if probe is not None:
            probe.wake.set()

    async def aclose(self) -> None:
        if self._breakers.on_open == self._circuit_opened:
            self._breakers.on_open = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # === one endpoint ===

    async def _run(self, probe: _Probe) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + self._interval(probe)
        while True:
            probe.wake.clear()
            try:
                async with asyncio.timeout_at(due):
                    await probe.wake.wait()
            except TimeoutError:
                ok, reason = await self._probe(probe)
                self._record(probe, ok, reason)
                due = loop.time() + self._interval(probe)
            else:
                # The circuit just opened: the next probe comes as soon as for an endpoint
                # in doubt, or sooner if it was due anyway.
                due = min(due, loop.time() + self._interval(probe))

    def _interval(self, probe: _Probe) -> float:
        """Until the next probe: short while the endpoint is in doubt, jittered."""
        config = probe.config
        interval = config.interval_s
        if probe.failed or not probe.healthy or self._breakers.in_doubt(probe.row):
            interval = min(interval, config.unhealthy_interval_s)
        return interval * (1.0 + config.jitter * (2.0 * self._rnd() - 1.0))

    async def _probe(self, probe: _Probe) -> tuple[bool, str]:
        """(passed, what happened); every failure mode is caught here."""
        config = probe.config
        conn = None
        try:
            # One deadline for connect, TLS and the response head together.
            async with asyncio.timeout(config.timeout_s):
                conn = await probe.endpoint.connect(config.timeout_s)
                conn.send([probe.request], config.timeout_s, config.timeout_s)
                head = await conn.head()
        except TimeoutError:
            return False, "no answer within %gs" % config.timeout_s
        except UpstreamError as exc:
            return False, exc.message
        except (OSError, ssl.SSLError) as exc:  # what connect() does not wrap
            return False, "%s: %s" % (type(exc).__name__, exc)
        finally:
            if conn is not None:
                conn.close()
        status = head.status
        if status >= 500:
            return False, "answered %d" % status
        if status >= 400 and status not in probe.warned:
            probe.warned.add(status)
            log.warning("health probe of %s (%s) answered %d; counted as passing since the "
                        "server is up, but check the deployment's health.path and key",
                        probe.endpoint.url, probe.target.name, status)
        return True, "answered %d" % status

    def _record(self, probe: _Probe, ok: bool, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.probe(probe.target.name, ok)
        probe.last = reason
        probe.last_at = time.monotonic()
        self._breakers.probe_verdict(probe.row, ok)
        config = probe.config
        if ok:
            probe.passed += 1
            probe.failed = 0
            if not probe.healthy and probe.passed >= config.healthy_after:
                probe.healthy = True
                log.info("health: %s (%s) restored after %d passing probes",
                         probe.endpoint.url, probe.target.name, probe.passed)
                self._breakers.set_probe(probe.row, True, "health probes pass again (%d in "
                                         "a row)" % probe.passed)
        else:
            probe.failed += 1
            probe.passed = 0
            if log.isEnabledFor(logging.DEBUG):
                log.debug("health probe of %s failed: %s", probe.endpoint.url, reason)
            if probe.healthy and probe.failed >= config.unhealthy_after:
                probe.healthy = False
                log.warning("health: %s (%s) ejected after %d failed probes (last: %s)",
                            probe.endpoint.url, probe.target.name, probe.failed, reason)
                self._breakers.set_probe(probe.row, False, "%d health probes failed in a "
                                         "row (last: %s)" % (probe.failed, reason))

    # === reading ===

    def describe(self, row: int) -> dict | None:
        """The probe state of a table row (None when that endpoint is not probed)."""
        probe = self._probes.get(row)
        if probe is None:
            return None
        info: dict = {"healthy": probe.healthy, "last": probe.last,
                      "passed_in_a_row": probe.passed, "failed_in_a_row": probe.failed}
        if probe.last_at:
            info["last_age_s"] = round(time.monotonic() - probe.last_at, 3)
        return info
