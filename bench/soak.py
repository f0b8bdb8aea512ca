"""Soak test: a mixed, faulty load against llmedge for a while; RSS and open fds must stay flat.

Starts four upstream simulators and one llmedge (one worker) in front of them, all on
127.0.0.1, then for ``--duration`` seconds runs at the same time:

* a non-streaming and a streaming load generator (``bench/load.py``, one subprocess each,
  closed loop on ``--connections`` and ``--stream-connections`` keep-alive connections) on the
  route ``soak``: weighted over the deployments ``flaky`` and ``staller``, with ``healthy`` as
  its fallback. Those simulators take ``--upstream-ms`` to answer, as an LLM would, which sets
  the request rate (about connections / latency) and keeps llmedge's CPU well below a core.
  A closed loop keeps the number of client connections fixed, so the count of open fds
  does not follow the load's random peaks and a leak stands out;
* a fault injector (``POST /_sim/config``): ``flaky`` answers 10 % of requests with a 5xx or a
  429 and, for a short burst in every ``--fault-period``, drops streams mid-body
  (``drop_after``) or closes non-streamed requests unanswered; ``staller``, for a burst in every
  period, leaves streams silent mid-body or non-streamed requests unanswered, so llmedge's
  idle and first-byte timeouts fire. These exercise llmedge's fallback (failures before the
  first byte) and its mid-stream error path (an SSE error event after the stream started);
* a disconnecting client: every ``--disconnect-interval`` it opens a request on the route
  ``slow`` (a simulator pacing its tokens) and goes away early: FIN or RST after the first
  event of a stream, before a non-streamed answer, right after sending, or a half-close;
* a sampler: every ``--sample-interval`` seconds llmedge's RSS (VmRSS), open file
  descriptors (entries of /proc/PID/fd), CPU use and the requests it has answered
  (``llmedge_requests_total`` from its /metrics, which doubles as a liveness probe).

After the load, it waits for llmedge to settle (no request in flight, no client connection
left), checks that a request is still answered and that llmedge stops cleanly on SIGTERM.

Verdict: after ``--warmup`` seconds of samples, the median of the first quarter of the samples
is compared to the median of the last quarter. RSS is flat when it grew by less than
``--rss-tolerance-mb`` or by less than ``--rss-tolerance-pct`` %; open fds are flat when they
grew by fewer than ``--fd-tolerance``. After settling, every fd llmedge holds beyond its idle
count must be an upstream connection a simulator still sees open. The exit status is 0 when
all is well, 1 when something grew, llmedge died, stopped answering, did not settle or did not
exit cleanly, 2 when the soak could not start, 130 when interrupted (everything it started is
stopped in every case).

With two or more CPUs llmedge is pinned to the first and everything else (simulators, load
generators, this script) to the second (``--no-pin`` to leave placement to the kernel). The
processes it starts run in sessions of their own and die with it (PR_SET_PDEATHSIG), so a
Ctrl-C, a SIGTERM or even a SIGKILL of the soak leaves nothing behind. No traffic leaves
127.0.0.1.

    python bench/soak.py                          # 300 s
    python bench/soak.py --quick                  # ~20 s
    python bench/soak.py --duration 600 --json soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httptools

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import (HOST, Proc, choose_cpus, cpu_model, git_sha, log_tail,  # noqa: E402
                     pid_cpu_s, pin, spawn, start_listening, stop_popen, version_of)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
LOAD = BENCH / "load.py"
ROUTE = "soak"
SLOW_ROUTE = "slow"
PROBE_TIMEOUT = 5.0
LOAD_TIMEOUT = 10.0         # per request in the load generators
LOG_TAIL_LINES = 20         # lines of a log quoted in an error
SIMULATORS = ("flaky", "staller", "healthy", "paced")
ERROR_STATUSES = (500, 502, 503, 429)

LLMEDGE_CONFIG = """\
server:
  http: {host}:0
  workers: 1
  keepalive_timeout_s: {keepalive}
  drain_timeout_s: 5
deployments:
  - name: flaky
    base_url: http://{host}:{flaky}/v1
    model: sim-model
    timeouts: {{first_byte_s: 5, idle_s: 5}}
  - name: staller
    base_url: http://{host}:{staller}/v1
    model: sim-model
    timeouts: {{first_byte_s: {stall_timeout}, idle_s: {stall_timeout}}}
  - name: healthy
    base_url: http://{host}:{healthy}/v1
    model: sim-model
    timeouts: {{first_byte_s: 5, idle_s: 5}}
  - name: paced
    base_url: http://{host}:{paced}/v1
    model: sim-model
    timeouts: {{first_byte_s: 5, idle_s: 5}}
routes:
  - name: {route}
    deployments: [flaky, staller]
    policy: weighted
    weights: {{flaky: 2, staller: 1}}
    fallbacks: [healthy]
  - name: {slow_route}
    deployments: [paced]
"""


# === processes ===

class Server(Proc):
    """A started server process (simulator or llmedge): ``machine.Proc``, plus its open file
    descriptors, a CPU reading that is None once it is gone, and its exit code kept."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.exit_code: int | None = None

    def fds(self) -> int | None:
        try:
            return len(os.listdir("/proc/%d/fd" % self.pid))
        except OSError:
            return None

    def cpu_s(self) -> float | None:  # type: ignore[override]
        try:
            return pid_cpu_s(self.pid)
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> int | None:
        if self.exit_code is None:
            self.exit_code = stop_popen(self.popen)
        return self.exit_code


def start_server(name: str, cmd: list[str], cpu: int | None, workdir: Path,
                 procs: list) -> Server:
    """Start a process that prints ``LISTENING host:port`` once ready, in a session of its
    own (a Ctrl-C at the terminal reaches the soak alone, which then stops its children in
    order: llmedge's exit status on SIGTERM is one of the checks); it joins ``procs`` at
    once, so it is stopped whatever happens next."""
    server = start_listening(name, cmd, cpu, workdir, own_session=True, started=procs,
                             proc_type=Server, best_effort_pin=True)
    assert isinstance(server, Server)
    return server


# === a small HTTP client (asyncio streams, no threads) ===

class _Parsed:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


def request_bytes(port: int, method: str, path: str, body: bytes = b"",
                  keep_alive: bool = False) -> bytes:
    head = ["%s %s HTTP/1.1" % (method, path), "Host: %s:%d" % (HOST, port),
            "User-Agent: llmedge-bench-soak/0.1"]
    if body or method == "POST":
        head += ["Content-Type: application/json", "Content-Length: %d" % len(body)]
    if not keep_alive:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


async def http_call(port: int, method: str, path: str, payload=None,
                    timeout: float = PROBE_TIMEOUT) -> tuple[int, dict, bytes]:
    """One request on a connection of its own to 127.0.0.1:port: (status, headers, body)."""
    body = b"" if payload is None else json.dumps(payload).encode()
    parsed = _Parsed()
    parser = httptools.HttpResponseParser(parsed)
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(request_bytes(port, method, path, body))
            while not parsed.complete:
                data = await reader.read(65536)
                if not data:
                    break
                parser.feed_data(data)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
    if not parsed.complete:
        raise ConnectionError("%s %s: connection closed before the response was complete"
                              % (method, path))
    parsed.status = parser.get_status_code()
    return parsed.status, parsed.headers, b"".join(parsed.body)


def chat_body(model: str, stream: bool, text: str = "soak") -> bytes:
    return json.dumps({"model": model, "stream": stream,
                       "messages": [{"role": "user", "content": text}]}).encode()


async def chat(port: int, model: str, stream: bool) -> tuple[int, bytes]:
    body = json.loads(chat_body(model, stream))
    status, _, data = await http_call(port, "POST", "/v1/chat/completions", body,
                                      timeout=LOAD_TIMEOUT)
    return status, data


async def sanity_check(port: int, model: str) -> str | None:
    """None when a plain and a streamed chat request both come back whole."""
    try:
        status, data = await chat(port, model, False)
        if status != 200 or "choices" not in json.loads(data):
            return "chat answered %d: %r" % (status, data[:200])
        status, data = await chat(port, model, True)
        if status != 200 or b"[DONE]" not in data:
            return "streamed chat answered %d: %r" % (status, data[:200])
    except (OSError, ValueError, TimeoutError, httptools.HttpParserError) as exc:
        return "chat request failed: %r" % exc
    return None


# === llmedge's metrics ===

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[str, list[tuple[dict, float]]]:
    out: dict[str, list[tuple[dict, float]]] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            try:
                value = float(match.group(3))
            except ValueError:
                continue
            labels = dict(_LABEL.findall(match.group(2) or ""))
            out.setdefault(match.group(1), []).append((labels, value))
    return out


def metric_sum(metrics: dict, name: str, **labels: str) -> float:
    return sum(v for got, v in metrics.get(name, ())
               if all(got.get(k) == want for k, want in labels.items()))


def metric_by(metrics: dict, name: str, *keys: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in metrics.get(name, ()):
        key = "/".join(labels.get(k, "-") for k in keys)
        out[key] = out.get(key, 0.0) + value
    return {k: int(v) if v == int(v) else v for k, v in sorted(out.items())}


async def fetch_metrics(port: int) -> dict:
    status, _, body = await http_call(port, "GET", "/metrics")
    if status != 200:
        raise ConnectionError("/metrics answered %d" % status)
    return parse_metrics(body.decode("utf-8", "replace"))


# === the faults ===

class FaultInjector:
    """Keeps ``flaky`` answering errors at ``error_rate``; once per period, a burst of dropped
    connections on ``flaky`` and, half a period later, a burst of stalls on ``staller``.

    Odd and even periods alternate what a burst does: ``drop_after``/``stall_after`` of 3 or 2
    (streams break mid-body, after llmedge has started answering the client) and 0
    (non-streamed requests are closed or never answered: llmedge falls back)."""

    def __init__(self, sims: dict[str, Server], period: float, burst: float,
                 error_rate: float) -> None:
        self.flaky = sims["flaky"].port
        self.staller = sims["staller"].port
        self.period = period
        self.burst = min(burst, period / 2)
        self.error_rate = error_rate
        self.counts = {"periods": 0, "drop_bursts": 0, "stall_bursts": 0, "config_errors": 0}
        self.last_error: str | None = None

    async def configure(self, port: int, **options) -> None:
        try:
            status, _, body = await http_call(port, "POST", "/_sim/config", options)
            if status != 200:
                raise ConnectionError("answered %d: %r" % (status, body[:200]))
        except (OSError, TimeoutError, httptools.HttpParserError) as exc:
            self.counts["config_errors"] += 1
            self.last_error = "%s: %r" % (options, exc)

    async def run(self) -> None:
        k = 0
        while True:
            self.counts["periods"] += 1
            status = ERROR_STATUSES[k % len(ERROR_STATUSES)]
            await self.configure(self.flaky, error_rate=self.error_rate, error_status=status,
                                 retry_after=1 if status in (429, 503) else None,
                                 drop_after=3 if k % 2 == 0 else 0)
            self.counts["drop_bursts"] += 1
            await asyncio.sleep(self.burst)
            await self.configure(self.flaky, drop_after=None)
            await asyncio.sleep(self.period / 2 - self.burst)
            await self.configure(self.staller, stall_after=2 if k % 2 == 0 else 0)
            self.counts["stall_bursts"] += 1
            await asyncio.sleep(self.burst)
            await self.configure(self.staller, stall_after=None)
            await asyncio.sleep(self.period / 2 - self.burst)
            k += 1

    async def clear(self) -> None:
        for port in (self.flaky, self.staller):
            await self.configure(port, error_rate=0, drop_after=None, stall_after=None,
                                 retry_after=None)


# === the disconnecting client ===

DISCONNECT_KINDS = ("stream_fin", "stream_rst", "wait_fin", "send_close", "half_close")


class Disconnector:
    """Requests on the paced route that the client abandons, one kind after the other."""

    def __init__(self, port: int, interval: float) -> None:
        self.port = port
        self.interval = interval
        self.counts = dict.fromkeys(DISCONNECT_KINDS, 0)
        self.errors: dict[str, int] = {}
        self.last_error: str | None = None

    def _error(self, kind: str, what: str) -> None:
        key = "%s: %s" % (kind, what.split(":")[0])
        self.errors[key] = self.errors.get(key, 0) + 1
        self.last_error = "%s: %s" % (kind, what)

    async def run(self) -> None:
        i = 0
        while True:
            kind = DISCONNECT_KINDS[i % len(DISCONNECT_KINDS)]
            i += 1
            try:
                async with asyncio.timeout(PROBE_TIMEOUT):
                    await self.one(kind)
                self.counts[kind] += 1
            except TimeoutError:
                self._error(kind, "timeout: no progress within %gs" % PROBE_TIMEOUT)
            except (OSError, ValueError) as exc:
                self._error(kind, "%s: %s" % (type(exc).__name__, exc))
            await asyncio.sleep(self.interval)

    async def one(self, kind: str) -> None:
        stream = kind != "wait_fin"
        reader, writer = await asyncio.open_connection(HOST, self.port)
        try:
            writer.write(request_bytes(self.port, "POST", "/v1/chat/completions",
                                       chat_body(SLOW_ROUTE, stream), keep_alive=True))
            if kind == "send_close":
                await writer.drain()
                return
            if kind == "wait_fin":
                await asyncio.sleep(0.05)   # the paced answer takes far longer
                return
            # Read until the first event of the stream has arrived.
            seen = b""
            while b"data:" not in seen:
                data = await reader.read(4096)
                if not data:
                    raise ValueError("connection closed before the first event: %r"
                                     % seen[:200])
                seen += data
            if not seen.startswith(b"HTTP/1.1 200"):
                raise ValueError("answered %r" % seen[:60])
            if kind == "stream_rst":
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    # Linger on, zero seconds: close() sends a reset, not a FIN.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            elif kind == "half_close":
                # The client has given up: llmedge must close its side promptly.
                writer.write_eof()
                while await reader.read(65536):
                    pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


# === sampling ===

class Sampler:
    def __init__(self, edge: Server, samples: list[dict]) -> None:
        self.edge = edge
        self.samples = samples
        self.t0 = time.monotonic()
        self._prev: tuple[float, float, float] | None = None   # (time, cpu_s, requests)

    async def sample(self, phase: str) -> dict:
        edge = self.edge
        now = time.monotonic()
        s: dict = {"t": round(now - self.t0, 1), "phase": phase,
                   "rss_kb": edge.status_kb("VmRSS"), "fds": edge.fds(),
                   "alive": edge.alive(), "probe_ok": False, "probe_ms": None,
                   "requests": None, "rps": None, "cpu_pct": None, "inflight": None,
                   "client_connections": None}
        cpu = edge.cpu_s()
        p0 = time.perf_counter()
        try:
            m = await fetch_metrics(edge.port)
            s["probe_ok"] = True
            s["probe_ms"] = round((time.perf_counter() - p0) * 1000, 1)
            s["requests"] = int(metric_sum(m, "llmedge_requests_total"))
            s["inflight"] = int(metric_sum(m, "llmedge_inflight_requests"))
            s["client_connections"] = int(metric_sum(m, "llmedge_client_connections"))
            upstream = metric_sum(m, "llmedge_upstream_connections")
            if s["fds"] is not None and upstream is not None:
                # The upstream pool grows to its high-water mark as traffic shifts between
                # endpoints; that is not a leak, so it is judged apart from the rest.
                s["upstream_connections"] = int(upstream)
                s["fds_other"] = s["fds"] - int(upstream)
        except (OSError, TimeoutError, ValueError, httptools.HttpParserError) as exc:
            s["probe_error"] = repr(exc)
        if self._prev is not None and cpu is not None:
            t_prev, cpu_prev, req_prev = self._prev
            dt = now - t_prev
            if dt > 0:
                s["cpu_pct"] = round(100 * (cpu - cpu_prev) / dt, 1)
                if s["requests"] is not None and req_prev is not None and phase == "load":
                    s["rps"] = round((s["requests"] - req_prev) / dt, 1)
        if cpu is not None:
            self._prev = (now, cpu, s["requests"])
        self.samples.append(s)
        return s


# === verdict ===

def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (t seconds, value) points, per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return None
    return 60 * sum((t - mt) * (v - mv) for t, v in points) / var


def judge(report: dict, args) -> dict:
    samples = [s for s in report["samples"] if s["phase"] == "load"]
    post = [s for s in samples if s["t"] >= args.warmup and s["rss_kb"] is not None
            and s["fds"] is not None]
    problems: list[str] = []
    verdict: dict = {"ok": False, "problems": problems, "warmup_s": args.warmup,
                     "samples_judged": len(post), "quarter": 0, "rss": None, "fds": None,
                     "alive": True, "answering": True, "settled": None,
                     "fd_accounting": None, "clean_exit": None}
    edge = report.get("llmedge", {})
    if edge.get("died"):
        verdict["alive"] = False
        problems.append("llmedge died during the soak: %s" % edge["died"])
    failed = [s for s in samples if not s["probe_ok"]]
    if failed:
        verdict["answering"] = False
        problems.append("llmedge's /metrics did not answer within %gs in %d of %d samples "
                        "(first at t=%ss: %s)" % (PROBE_TIMEOUT, len(failed), len(samples),
                                                  failed[0]["t"], failed[0].get("probe_error")))
    counted = [s for s in samples if s["requests"] is not None]
    stuck = [b for a, b in zip(counted, counted[1:]) if b["requests"] <= a["requests"]]
    if stuck:
        verdict["answering"] = False
        problems.append("llmedge answered no request between two samples %d time(s) (first "
                        "at t=%ss)" % (len(stuck), stuck[0]["t"]))
    answered = report.get("requests_answered") or 0
    if not answered:
        verdict["answering"] = False
        problems.append("no request was answered successfully")

    if len(post) < 4:
        problems.append("too few samples after the %gs warm-up to judge (%d, need 4): "
                        "lengthen --duration or shorten --sample-interval"
                        % (args.warmup, len(post)))
    else:
        q = max(1, len(post) // 4)
        verdict["quarter"] = q
        first, last = post[:q], post[-q:]
        r0, r1 = median([s["rss_kb"] for s in first]), median([s["rss_kb"] for s in last])
        growth_mb = (r1 - r0) / 1024
        growth_pct = 100 * (r1 - r0) / r0 if r0 else 0.0
        rss_flat = growth_mb < args.rss_tolerance_mb or growth_pct < args.rss_tolerance_pct
        verdict["rss"] = {
            "first_quarter_median_mb": round(r0 / 1024, 2),
            "last_quarter_median_mb": round(r1 / 1024, 2),
            "growth_mb": round(growth_mb, 2), "growth_pct": round(growth_pct, 2),
            "slope_mb_per_min": _round(slope_per_min([(s["t"], s["rss_kb"] / 1024)
                                                      for s in post]), 3),
            "max_mb": round(max(s["rss_kb"] for s in post) / 1024, 2),
            "tolerance": "< %g MB or < %g %%" % (args.rss_tolerance_mb, args.rss_tolerance_pct),
            "flat": rss_flat}
        if not rss_flat:
            problems.append("RSS grew from %.1f MB to %.1f MB (+%.1f MB, +%.1f %%): a leak?"
                            % (r0 / 1024, r1 / 1024, growth_mb, growth_pct))
        fd_key = "fds_other" if all("fds_other" in s for s in post) else "fds"
        verdict["fds_judged"] = fd_key
        f0, f1 = median([s[fd_key] for s in first]), median([s[fd_key] for s in last])
        fds_flat = f1 - f0 < args.fd_tolerance
        verdict["fds"] = {
            "first_quarter_median": f0, "last_quarter_median": f1, "growth": f1 - f0,
            "slope_per_min": _round(slope_per_min([(s["t"], s[fd_key]) for s in post]), 2),
            "max": max(s[fd_key] for s in post),
            "tolerance": "< %d" % args.fd_tolerance, "flat": fds_flat}
        if not fds_flat:
            problems.append("open fds%s grew from %g to %g (+%g): a descriptor leak?"
                            % (" other than upstream connections" if fd_key == "fds_other"
                               else "", f0, f1, f1 - f0))

    settle = report.get("settle")
    if settle is not None:
        verdict["settled"] = settle["settled"]
        if not settle["settled"]:
            problems.append("after the load, llmedge did not settle within %gs: %s in flight, "
                            "%s client connections" % (settle["waited_s"], settle["inflight"],
                                                       settle["client_connections"]))
        acc = settle.get("fd_accounting")
        if acc is not None:
            verdict["fd_accounting"] = acc
            if acc["unexplained"] >= args.fd_tolerance:
                problems.append("after settling llmedge holds %d fds more than when idle, of "
                                "which only %d are upstream connections the simulators see "
                                "open: %d unexplained (sockets left in CLOSE_WAIT?)"
                                % (acc["extra_fds"], acc["upstream_connections"],
                                   acc["unexplained"]))
        if settle.get("final_check"):
            problems.append("after the load a request through the route failed: %s"
                            % settle["final_check"])
    code = edge.get("exit_code")
    if "exit_code" in edge:
        verdict["clean_exit"] = code == 0
        if code != 0 and not edge.get("died"):
            problems.append("llmedge exited with %s on SIGTERM (expected 0)" % code)
    verdict["ok"] = not problems
    return verdict


def _round(v, nd):
    return None if v is None else round(v, nd)


# === the run ===

def load_cmd(port: int, args, stream: bool, out: Path, cpu: int | None) -> list[str]:
    cmd = [sys.executable, str(LOAD), "--url",
           "http://%s:%d/v1/chat/completions" % (HOST, port), "--model", ROUTE,
           "--connections", str(args.stream_connections if stream else args.connections),
           "--duration", str(args.duration), "--warmup", "0", "--timeout", str(LOAD_TIMEOUT),
           "--json", str(out), "--quiet"]
    if stream:
        cmd.append("--stream")
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    return cmd


async def sim_stats(sims: dict[str, Server]) -> dict[str, dict]:
    out = {}
    for name, sim in sims.items():
        try:
            status, _, body = await http_call(sim.port, "GET", "/_sim/stats")
            stats = json.loads(body) if status == 200 else {"error": "answered %d" % status}
        except (OSError, TimeoutError, ValueError, httptools.HttpParserError) as exc:
            stats = {"error": repr(exc)}
        stats.pop("last_headers", None)
        stats.pop("last_body", None)
        out[name] = stats
    return out


async def upstream_connections(sims: dict[str, Server]) -> int | None:
    """Connections the simulators see open, less the one asking each of them."""
    total = 0
    for stats in (await sim_stats(sims)).values():
        if "active_connections" not in stats:
            return None
        total += stats["active_connections"] - 1
    return total


async def soak(args, report: dict, procs: list, workdir: Path) -> None:
    cpus = report["meta"]["pinning"]
    if cpus["load"] is not None:
        pin(0, cpus["load"], best_effort=True)
    sims: dict[str, Server] = {}
    for i, name in enumerate(SIMULATORS):
        cmd = [sys.executable, "-m", "proxy.sim", "--host", HOST, "--port", "0",
               "--name", name, "--seed", str(i + 1)]
        if name == "paced":
            cmd += ["--tokens-per-s", str(args.paced_tokens_per_s)]
        else:
            cmd += ["--ttft-ms", str(args.upstream_ms)]
        sims[name] = start_server("sim-" + name, cmd, cpus["load"], workdir, procs)
    config = workdir / "llmedge.yaml"
    config.write_text(LLMEDGE_CONFIG.format(
        host=HOST, route=ROUTE, slow_route=SLOW_ROUTE, keepalive=args.keepalive,
        stall_timeout=args.stall_timeout, **{n: s.port for n, s in sims.items()}))
    edge = start_server("llmedge", [sys.executable, "-m", "proxy", "--log-level", "warning",
                                    "serve", "-c", str(config)], cpus["proxy"], workdir, procs)
    info = report["llmedge"] = {"pid": edge.pid, "port": edge.port,
                                "startup_s": round(edge.startup_s, 3)}
    await asyncio.sleep(0.2)
    idle_upstream = await upstream_connections(sims)
    idle_fds = edge.fds()
    info["idle"] = {"rss_mb": round((edge.status_kb("VmRSS") or 0) / 1024, 1),
                    "fds": idle_fds, "upstream_connections": idle_upstream}
    for route in (ROUTE, SLOW_ROUTE):
        problem = await sanity_check(edge.port, route)
        if problem:
            raise RuntimeError("llmedge sanity check on route %s failed: %s" % (route, problem))

    sampler = Sampler(edge, report["samples"])
    faults = FaultInjector(sims, args.fault_period, args.fault_burst, args.error_rate)
    disconnector = Disconnector(edge.port, args.disconnect_interval)
    loads = {}
    print("soak: %gs of load on llmedge (pid %d, port %d); sampling every %gs"
          % (args.duration, edge.pid, edge.port, args.sample_interval), file=sys.stderr,
          flush=True)
    tasks: list[asyncio.Task] = []
    sampler.t0 = time.monotonic()
    await sampler.sample("load")
    for kind, stream in (("non_streaming", False), ("streaming", True)):
        out = workdir / ("load-%s.json" % kind)
        log_path = workdir / ("load-%s.log" % kind)
        with open(log_path, "wb") as log:
            popen = spawn(load_cmd(edge.port, args, stream, out, cpus["load"]),
                          stdout=subprocess.DEVNULL, stderr=log, own_session=True)
        procs.append(popen)
        loads[kind] = (popen, out, log_path)
    try:
        if args.faults:
            tasks.append(asyncio.create_task(faults.run()))
        if args.disconnect_interval > 0:
            tasks.append(asyncio.create_task(disconnector.run()))
        end = sampler.t0 + args.duration
        next_at = sampler.t0 + args.sample_interval
        while next_at <= end + 1e-6:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            s = await sampler.sample("load")
            next_at += args.sample_interval
            if args.verbose:
                print("soak: t=%5.1fs rss %.1f MB fds %s requests %s" % (
                    s["t"], (s["rss_kb"] or 0) / 1024, s["fds"], s["requests"]),
                    file=sys.stderr, flush=True)
            if not edge.alive():
                info["died"] = "exited with %s at t=%ss:\n%s" % (
                    edge.popen.returncode, s["t"], log_tail(edge.log_path, LOG_TAIL_LINES))
                break
            dead = [k for k, (p, _, _) in loads.items() if p.poll() not in (None, 0)]
            if dead:
                raise RuntimeError("load generator %s failed (%s):\n%s" % (
                    dead[0], loads[dead[0]][0].returncode,
                    log_tail(loads[dead[0]][2], LOG_TAIL_LINES)))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if "died" not in info:
        # The generators drain (answers still due, up to their timeout) and exit.
        deadline = time.monotonic() + LOAD_TIMEOUT + 30
        while any(p.poll() is None for p, _, _ in loads.values()) and \
                time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if args.faults:
            await faults.clear()
    report["load"] = {}
    for kind, (popen, out, log_path) in loads.items():
        if popen.poll() is None:
            stop_popen(popen)
        try:
            data = json.loads(out.read_text())
        except (OSError, ValueError):
            report["load"][kind] = {"error": "no result (exit %s):\n%s" % (
                popen.returncode, log_tail(log_path, LOG_TAIL_LINES))}
            continue
        report["load"][kind] = {
            "connections": data["options"]["connections"],
            "achieved_rps": data["achieved_rps"],
            "requests_ok": data["requests"], "errors": data["errors"],
            "error_count": data["error_count"], "latency_us": data["latency_us"],
            "ttfb_us": data["ttfb_us"], "totals": data["totals"],
            "generator_cpu_util": data["generator"]["cpu_util"]}
    report["requests_answered"] = sum(r.get("requests_ok", 0) for r in report["load"].values())
    report["disconnects"] = {"done": disconnector.counts, "total": sum(
        disconnector.counts.values()), "errors": disconnector.errors,
        "last_error": disconnector.last_error}
    report["fault_schedule"] = {**faults.counts, "last_error": faults.last_error}

    if "died" not in info:
        # Settle: nothing in flight and no client connection but the probe's own.
        settle = {"settled": False, "inflight": None, "client_connections": None}
        t_settle = time.monotonic()
        while True:
            try:
                m = await fetch_metrics(edge.port)
                settle["inflight"] = int(metric_sum(m, "llmedge_inflight_requests"))
                settle["client_connections"] = int(metric_sum(m, "llmedge_client_connections"))
                if settle["inflight"] == 0 and settle["client_connections"] <= 1:
                    settle["settled"] = True
                    break
            except (OSError, TimeoutError, ValueError, httptools.HttpParserError) as exc:
                settle["error"] = repr(exc)
            if time.monotonic() - t_settle > args.settle_timeout:
                break
            await asyncio.sleep(0.2)
        settle["waited_s"] = round(time.monotonic() - t_settle, 1)
        settle["final_check"] = await sanity_check(edge.port, ROUTE)
        await asyncio.sleep(0.5)   # let the connections of the final check close
        after = await sampler.sample("after")
        upstream = await upstream_connections(sims)
        if idle_fds is not None and after["fds"] is not None and upstream is not None \
                and idle_upstream is not None:
            extra = after["fds"] - idle_fds
            grown_upstream = upstream - idle_upstream
            settle["fd_accounting"] = {
                "idle_fds": idle_fds, "fds": after["fds"], "extra_fds": extra,
                "upstream_connections": grown_upstream,
                "unexplained": extra - grown_upstream}
        report["settle"] = settle
        info["rss_peak_mb"] = round((edge.status_kb("VmHWM") or 0) / 1024, 1)

    m = None
    try:
        m = await fetch_metrics(edge.port)
    except (OSError, TimeoutError, ValueError, httptools.HttpParserError):
        pass
    sims_stats = await sim_stats(sims)
    faults_seen: dict = {"simulators": {}}
    for name, st in sims_stats.items():
        faults_seen["simulators"][name] = {k: st.get(k) for k in (
            "requests", "errors_injected", "streams_started", "streams_completed",
            "streams_dropped", "streams_stalled", "streams_aborted", "connections_opened")}
    injected = sum((st.get("errors_injected") or 0) + (st.get("streams_dropped") or 0)
                   + (st.get("streams_stalled") or 0) for st in sims_stats.values())
    faults_seen["injected_total"] = injected
    if m is not None:
        faults_seen["llmedge_upstream_errors"] = metric_by(
            m, "llmedge_upstream_errors_total", "deployment", "kind")
        faults_seen["llmedge_stream_failures"] = metric_by(
            m, "llmedge_stream_failures_total", "deployment")
        faults_seen["llmedge_attempts"] = metric_by(m, "llmedge_upstream_attempts_total",
                                                    "deployment")
        faults_seen["llmedge_requests"] = metric_by(m, "llmedge_requests_total", "route",
                                                    "deployment", "status")
        faults_seen["upstream_errors_total"] = int(metric_sum(m, "llmedge_upstream_errors_total"))
        faults_seen["stream_failures_total"] = int(metric_sum(m, "llmedge_stream_failures_total"))
    faults_seen["client_disconnects"] = report["disconnects"]["total"]
    faults_seen["observed_total"] = (faults_seen.get("upstream_errors_total", 0)
                                     + faults_seen["client_disconnects"])
    report["faults"] = faults_seen

    info["exit_code"] = edge.stop()
    info["log_tail"] = log_tail(edge.log_path, 10)


# === report ===

def _mb(kb) -> str:
    return "-" if kb is None else "%.1f" % (kb / 1024)


def _v(v, fmt="%s") -> str:
    return "-" if v is None else fmt % v


def markdown(report: dict) -> str:
    m = report["meta"]
    out = ["## llmedge soak: %gs, mixed load with injected faults" % m["duration"], ""]
    out.append("- machine: %s, nproc %s, Linux %s; Python %s; llmedge %s (git %s)" % (
        m["cpu_model"], m["nproc"], m["kernel"], m["python"], m["llmedge"],
        (m["git"] or "?")[:12]))
    p = m["pinning"]
    out.append("- pinning: %s" % ("llmedge on CPU %s; simulators, load generators and this "
                                  "script on CPU %s" % (p["proxy"], p["load"])
                                  if p["proxy"] is not None else "none (%s)" % p.get("why")))
    out.append("- load: closed loop, %d non-streaming + %d streaming connections on route `%s` "
               "(weighted flaky/staller, fallback healthy; upstreams answer in %g ms); a client "
               "disconnect every %gs; faults %s" % (
                   m["connections"], m["stream_connections"], ROUTE, m["upstream_ms"],
                   m["disconnect_interval"],
                   "every %gs (error rate %g)" % (m["fault_period"], m["error_rate"])
                   if m["faults"] else "off"))
    out.append("- command: `%s`" % m["command"])
    out.append("")
    out.append("| t s | phase | RSS MB | fds | requests | req/s | CPU % | in flight "
               "| client conns | probe ms |")
    out.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in report["samples"]:
        out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            s["t"], s["phase"] + ("" if s["t"] >= m["warmup"] or s["phase"] != "load"
                                  else " (warm-up)"),
            _mb(s["rss_kb"]), _v(s["fds"]), _v(s["requests"]), _v(s["rps"], "%.0f"),
            _v(s["cpu_pct"], "%.0f"), _v(s["inflight"]), _v(s["client_connections"]),
            _v(s["probe_ms"]) if s["probe_ok"] else "**failed**"))
    load = report.get("load") or {}
    if load:
        out += ["", "| load | connections | req/s ok | ok | errors |",
                "|---|---:|---:|---:|---|"]
        for kind, r in load.items():
            if "error" in r:
                out.append("| %s | - | - | - | %s |" % (kind, r["error"].splitlines()[0]))
                continue
            errors = ", ".join("%s: %d" % kv for kv in r["errors"].items()) or "0"
            out.append("| %s | %d | %.1f | %d | %s |" % (
                kind, r["connections"], r["achieved_rps"], r["requests_ok"], errors))
    f = report.get("faults")
    if f:
        sims = f["simulators"]
        out += ["", "Faults: injected %d (%s); llmedge saw %s upstream errors (%s), ended %s "
                "streams with an SSE error; %d client disconnects (%s)%s." % (
                    f["injected_total"],
                    ", ".join("%s: %s errors, %s dropped, %s stalled" % (
                        n, s.get("errors_injected"), s.get("streams_dropped"),
                        s.get("streams_stalled")) for n, s in sims.items()
                        if n in ("flaky", "staller")),
                    f.get("upstream_errors_total", "?"),
                    ", ".join("%s %s" % (k, v) for k, v in
                              f.get("llmedge_upstream_errors", {}).items()),
                    f.get("stream_failures_total", "?"), f["client_disconnects"],
                    ", ".join("%s %d" % kv for kv in report["disconnects"]["done"].items()),
                    "; upstream streams aborted on `paced`: %s" % sims.get("paced", {}).get(
                        "streams_aborted") if "paced" in sims else "")]
        if report["disconnects"]["errors"]:
            out.append("")
            out.append("Disconnect client problems: %s (last: %s)" % (
                report["disconnects"]["errors"], report["disconnects"]["last_error"]))
    v = report["verdict"]
    out += ["", "### verdict: %s" % ("flat: no leak, llmedge stayed up and answering"
                                     if v["ok"] else "FAILED"), ""]
    if v["rss"]:
        r = v["rss"]
        out.append("- RSS: first-quarter median %.1f MB, last-quarter median %.1f MB: %+.1f MB "
                   "(%+.1f %%), slope %s MB/min; tolerance %s: %s" % (
                       r["first_quarter_median_mb"], r["last_quarter_median_mb"],
                       r["growth_mb"], r["growth_pct"], _v(r["slope_mb_per_min"]),
                       r["tolerance"], "flat" if r["flat"] else "**grew**"))
    if v["fds"]:
        d = v["fds"]
        out.append("- open fds: first-quarter median %g, last-quarter median %g: %+g, slope %s "
                   "per min; tolerance %s: %s" % (
                       d["first_quarter_median"], d["last_quarter_median"], d["growth"],
                       _v(d["slope_per_min"]), d["tolerance"],
                       "flat" if d["flat"] else "**grew**"))
    out.append("- judged %d samples after a %gs warm-up (quarters of %d)" % (
        v["samples_judged"], v["warmup_s"], v["quarter"]))
    settle = report.get("settle")
    if settle:
        acc = settle.get("fd_accounting")
        out.append("- after the load: settled in %ss (%s in flight, %s client connections)%s"
                   % (settle["waited_s"], settle["inflight"], settle["client_connections"],
                      "; fds %d vs %d idle, +%d upstream connections still pooled, %d "
                      "unexplained" % (acc["fds"], acc["idle_fds"], acc["upstream_connections"],
                                       acc["unexplained"]) if acc else ""))
    edge = report.get("llmedge", {})
    if "exit_code" in edge:
        out.append("- llmedge exit status on SIGTERM: %s; peak RSS (VmHWM) %s MB" % (
            edge["exit_code"], edge.get("rss_peak_mb", "-")))
    for problem in v["problems"]:
        out.append("- **problem:** %s" % problem)
    return "\n".join(out) + "\n"


# === main ===

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of load (default: 300, or 15 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="a short run: 15 s of load sampled every second")
    p.add_argument("--sample-interval", type=float, default=None,
                   help="seconds between samples (default: 5, or 1 with --quick)")
    p.add_argument("--warmup", type=float, default=None,
                   help="samples before this many seconds are not judged (default: 10%% of "
                        "--duration, at least 5 s and at most 30 s or half the duration)")
    p.add_argument("--connections", type=int, default=8,
                   help="connections of the non-streaming load generator (closed loop)")
    p.add_argument("--stream-connections", type=int, default=4,
                   help="connections of the streaming load generator (closed loop)")
    p.add_argument("--upstream-ms", type=float, default=20.0,
                   help="time the simulators behind the route take to answer (TTFT)")
    p.add_argument("--no-faults", dest="faults", action="store_false",
                   help="inject no upstream faults")
    p.add_argument("--error-rate", type=float, default=0.1,
                   help="share of requests `flaky` answers with an error status")
    p.add_argument("--fault-period", type=float, default=2.0,
                   help="seconds between bursts of dropped and stalled upstream responses")
    p.add_argument("--fault-burst", type=float, default=0.25,
                   help="seconds each burst lasts")
    p.add_argument("--stall-timeout", type=float, default=0.25,
                   help="first-byte and idle timeout of the `staller` deployment")
    p.add_argument("--disconnect-interval", type=float, default=0.25,
                   help="seconds between abandoned client requests (0: none)")
    p.add_argument("--paced-tokens-per-s", type=float, default=20.0,
                   help="token pacing of the simulator behind the route the disconnecting "
                        "client uses")
    p.add_argument("--keepalive", type=float, default=75.0,
                   help="llmedge's server.keepalive_timeout_s: idle client connections close "
                        "after this (a short one makes the fd count follow the load's bursts)")
    p.add_argument("--rss-tolerance-mb", type=float, default=8.0)
    p.add_argument("--rss-tolerance-pct", type=float, default=10.0)
    p.add_argument("--fd-tolerance", type=int, default=10)
    p.add_argument("--settle-timeout", type=float, default=15.0,
                   help="seconds to wait after the load for llmedge to have nothing in flight")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--workdir", default=None,
                   help="keep configs and logs here (default: a temporary directory)")
    p.add_argument("--json", default=None, help="write the whole report as JSON here")
    p.add_argument("--verbose", "-v", action="store_true", help="print each sample as taken")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 15.0 if args.quick else 300.0
    if args.sample_interval is None:
        args.sample_interval = 1.0 if args.quick else 5.0
    if args.warmup is None:
        # Long enough for the generators to open all their connections (the first bursts of
        # faults make them), short enough to leave most samples to judge.
        args.warmup = min(30.0, max(5.0, 0.1 * args.duration), args.duration / 2)
    if not args.duration > 0 or not args.sample_interval > 0 or args.warmup < 0:
        parser.error("--duration and --sample-interval must be > 0, --warmup >= 0")
    if args.warmup >= args.duration:
        parser.error("--warmup must be shorter than --duration")
    if args.connections < 1 or args.stream_connections < 1 or args.upstream_ms < 0:
        parser.error("--connections and --stream-connections must be >= 1, "
                     "--upstream-ms >= 0")
    if not args.fault_period > 0 or not 0 <= args.error_rate <= 1 or args.fault_burst < 0:
        parser.error("--fault-period must be > 0, --fault-burst >= 0 and --error-rate "
                     "between 0 and 1")
    if not args.stall_timeout > 0 or args.disconnect_interval < 0:
        parser.error("--stall-timeout must be > 0 and --disconnect-interval >= 0")

    cpus = choose_cpus(args.no_pin)
    report: dict = {"meta": {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "git": git_sha(), "python": sys.version.split()[0], "llmedge": version_of("llmedge"),
        "cpu_model": cpu_model(), "nproc": os.cpu_count(), "kernel": platform.release(),
        "pinning": cpus, "duration": args.duration, "sample_interval": args.sample_interval,
        "warmup": args.warmup, "connections": args.connections,
        "stream_connections": args.stream_connections, "upstream_ms": args.upstream_ms,
        "faults": args.faults, "error_rate": args.error_rate,
        "fault_period": args.fault_period, "fault_burst": args.fault_burst,
        "stall_timeout": args.stall_timeout, "disconnect_interval": args.disconnect_interval,
        "keepalive": args.keepalive}, "samples": []}

    procs: list[subprocess.Popen] = []
    status = 0
    tmp = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="llmedge-soak-")
        workdir = Path(tmp.name)
    try:
        asyncio.run(_run(args, report, procs, workdir))
    except RuntimeError as exc:
        report["error"] = str(exc)
        print("soak: %s" % exc, file=sys.stderr)
        status = 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        report["error"] = "interrupted"
        print("soak: interrupted; stopping everything it started", file=sys.stderr)
        status = 130
    finally:
        # Everything started, newest first: the load generators, llmedge, the simulators.
        for popen in reversed(procs):
            stop_popen(popen)
        if tmp is not None:
            tmp.cleanup()
    if status == 0:
        report["verdict"] = judge(report, args)
        sys.stdout.write(markdown(report))
        status = 0 if report["verdict"]["ok"] else 1
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    return status


async def _run(args, report: dict, procs: list, workdir: Path) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await soak(args, report, procs, workdir)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main())
