"""Compare llmedge's own upstream client with aiohttp, against one upstream simulator.

    python bench/client_compare.py [--seconds 3] [--repeats 3] [--json out.json]

Starts ``python -m proxy.sim`` on 127.0.0.1 (``--chunks 16``, unpaced, no TTFT) as a
subprocess, pinned to core 1 while this process is pinned to core 0 (when two cores are
available), and measures, on uvloop, in one run:

  (a) ``llmedge``: ``proxy.upstream.pool.Endpoint`` + ``UpstreamConn``, used exactly as
      ``proxy.dispatch.Dispatcher._attempt`` uses them (take_idle/connect, send, head,
      read_whole or take_early + stream_to, release when reusable, abort on any error,
      one retry on a fresh connection when a reused one was closed before answering);
  (b) ``aiohttp``: one ``ClientSession`` over a keep-alive ``TCPConnector`` (limit >= the
      concurrency); ``resp.read()`` for whole bodies, ``resp.content.iter_any()`` for streams;

Scenarios (POST /v1/chat/completions, small JSON body):
  json   c=1   latency p50/p99          json   c=64  requests/s, client CPU µs per request
  stream c=1   TTFB + total p50/p99     stream c=16  same, plus requests/s and CPU µs/request
(every metric is recorded for every scenario; the table shows them all).

Each measurement uses a fresh client, warms it up (--warmup s, same concurrency, so the pool
is full), then runs for a fixed --seconds; scenarios are run client a, b, a, b, ...
(--repeats) so that drift shows. Other processes on the machine skew numbers: each run first
waits (up to --quiet-wait s) for them to go quiet, the CPU they used during each window is
reported, and the summary takes the median over uncontended windows.

Every request is validated (status 200, JSON body / SSE ending in ``data: [DONE]``); failures,
timeouts and hangs are counted as errors and reported, and the exit status is 1. After each
measurement the script checks for leaks: open fds, connections the simulator saw opened
during the measured window (a keep-alive client opens none), pool state, stray tasks.

Bounded in time: per-request timeouts, a per-measurement deadline that cancels stragglers,
and a watchdog thread that kills the simulator and exits if the whole run overruns. The
simulator gets PR_SET_PDEATHSIG so it cannot outlive this process. All traffic is 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import aiohttp  # noqa: E402
from machine import Proc, start_listening  # noqa: E402
import httptools  # noqa: E402
import uvloop  # noqa: E402

from proxy.errors import UpstreamReset  # noqa: E402
from proxy.upstream.pool import Endpoint  # noqa: E402

HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
BODY_JSON = (b'{"model":"sim-model","messages":[{"role":"user","content":"Say hello."}],'
             b'"max_tokens":32}')
BODY_STREAM = (b'{"model":"sim-model","messages":[{"role":"user","content":"Say hello."}],'
               b'"max_tokens":32,"stream":true}')
SSE_DONE = b"data: [DONE]\n\n"
JSON_TYPE = b"application/json"
EVENT_STREAM = b"text/event-stream"
USER_AGENT = "llmedge/0.1"
REQUEST_ID = "bench-0000000000000000"

SCENARIOS = [  # (name, streaming, concurrency)
    ("json", False, 1),
    ("json", False, 64),
    ("stream", True, 1),
    ("stream", True, 16),
]


class BenchError(Exception):
    """A response that arrived but is wrong (status, body)."""


# ==== the clients ==============================================================================

class LlmedgeClient:
    """llmedge's upstream client, driven the way Dispatcher._attempt drives it."""

    name = "llmedge"

    def __init__(self, port: int, timeout: float, max_idle: int) -> None:
        self.endpoint = Endpoint("http://%s:%d" % (HOST, port), max_idle, None)
        self.timeout = timeout
        self.stale_retries = 0   # reused connection found closed, retried on a fresh one
        self.not_reusable = 0    # connections closed instead of released after success
        ep = self.endpoint

        def head(length: int, accept: bytes) -> bytes:  # == Dispatcher._request_head
            return (b"POST %s%s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n%saccept: %s\r\nx-request-id: %s\r\n%s\r\n" % (
                        ep.base_path, PATH.encode(), ep.host_header, length, b"",
                        accept, REQUEST_ID.encode(),
                        b"user-agent: %s\r\n" % USER_AGENT.encode()))

        self.req_json = [head(len(BODY_JSON), JSON_TYPE), BODY_JSON]
        self.req_stream = [head(len(BODY_STREAM), EVENT_STREAM), BODY_STREAM]

    async def start(self) -> None:
        pass

    async def _send(self, request: list[bytes]):
        ep, t = self.endpoint, self.timeout
        conn = ep.take_idle()
        if conn is None:
            conn = await ep.connect(t)
        try:
            conn.send(request, t, t)
            try:
                head = await conn.head()
            except UpstreamReset:
                if not (conn.reused and not conn.received_any):
                    raise
                self.stale_retries += 1
                conn.abort()
                conn = await ep.connect(t)
                conn.send(request, t, t)
                head = await conn.head()
        except BaseException:
            conn.abort()
            raise
        return conn, head

    def _finish(self, conn, head) -> None:
        if conn.reusable(head):
            self.endpoint.release(conn)
        else:
            self.not_reusable += 1
            conn.close()

    async def request_json(self) -> tuple[int, int]:
        conn, head = await self._send(self.req_json)
        try:
            payload = await conn.read_whole()
        except BaseException:
            conn.abort()
            raise
        self._finish(conn, head)
        if head.status != 200 or not payload.startswith(b"{"):
            raise BenchError("status %d, body %r" % (head.status, payload[:80]))
        return 0, 1

    async def request_stream(self) -> tuple[int, int]:
        """-> (perf_counter_ns of the first body byte seen, body pieces seen)."""
        conn, head = await self._send(self.req_stream)
        state = [0, 0, b""]  # first-byte ns, pieces, tail

        def sink(data: bytes) -> None:
            if not state[0]:
                state[0] = time.perf_counter_ns()
            state[1] += 1
            state[2] = data if len(data) >= 14 else (state[2] + data)[-14:]

        try:
            if head.status != 200 or not head.headers.get(
                    b"content-type", b"").startswith(EVENT_STREAM):
                payload = await conn.read_whole()
                raise BenchError("status %d, body %r" % (head.status, payload[:80]))
            early = conn.take_early()
            if early:
                sink(early)
            await conn.stream_to(sink)
        except BaseException:
            conn.abort()
            raise
        self._finish(conn, head)
        if not state[2].endswith(SSE_DONE):
            raise BenchError("stream did not end with [DONE]: %r" % state[2])
        return state[0], state[1]

    def pool_state(self) -> dict:
        ep = self.endpoint
        return {"open": ep.open_connections, "idle": len(ep._idle),
                "stale_retries": self.stale_retries, "not_reusable": self.not_reusable}

    async def close(self) -> None:
        self.endpoint.close()
        await asyncio.sleep(0)  # let connection_lost run


class AiohttpClient:
    name = "aiohttp"

    def __init__(self, port: int, timeout: float, limit: int) -> None:
        self.url = "http://%s:%d%s" % (HOST, port, PATH)
        self.timeout = timeout
        self.limit = limit
        self.session: aiohttp.ClientSession | None = None
        common = {"content-type": "application/json", "x-request-id": REQUEST_ID,
                  "user-agent": USER_AGENT}
        self.h_json = {**common, "accept": "application/json"}
        self.h_stream = {**common, "accept": "text/event-stream"}

    async def start(self) -> None:
        self.connector = aiohttp.TCPConnector(limit=self.limit, limit_per_host=0,
                                              keepalive_timeout=60.0, force_close=False)
        self.session = aiohttp.ClientSession(
            connector=self.connector, timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def request_json(self) -> tuple[int, int]:
        async with self.session.post(self.url, data=BODY_JSON, headers=self.h_json) as resp:
            payload = await resp.read()
            status = resp.status
        if status != 200 or not payload.startswith(b"{"):
            raise BenchError("status %d, body %r" % (status, payload[:80]))
        return 0, 1

    async def request_stream(self) -> tuple[int, int]:
        first = pieces = 0
        tail = b""
        async with self.session.post(self.url, data=BODY_STREAM, headers=self.h_stream) as resp:
            if resp.status != 200 or not resp.headers.get(
                    "content-type", "").startswith("text/event-stream"):
                payload = await resp.read()
                raise BenchError("status %d, body %r" % (resp.status, payload[:80]))
            async for data in resp.content.iter_any():
                if not first:
                    first = time.perf_counter_ns()
                pieces += 1
                tail = data if len(data) >= 14 else (tail + data)[-14:]
        if not tail.endswith(SSE_DONE):
            raise BenchError("stream did not end with [DONE]: %r" % tail)
        return first, pieces

    def pool_state(self) -> dict:
        conns = getattr(self.connector, "_conns", {})
        idle = sum(len(v) for v in conns.values())
        acquired = len(getattr(self.connector, "_acquired", ()))
        return {"idle": idle, "acquired": acquired}

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        await asyncio.sleep(0)


CLIENTS = {"llmedge": LlmedgeClient, "aiohttp": AiohttpClient,
}


# ==== measuring ================================================================================

class Record:
    __slots__ = ("lat", "ttfb", "pieces", "errors", "error_kinds")

    def __init__(self) -> None:
        self.lat: list[int] = []
        self.ttfb: list[int] = []
        self.pieces = 0
        self.errors = 0
        self.error_kinds: dict[str, int] = {}

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        key = "%s: %s" % (type(exc).__name__, str(exc)[:120])
        if len(self.error_kinds) < 20 or key in self.error_kinds:
            self.error_kinds[key] = self.error_kinds.get(key, 0) + 1


async def worker(fn, stream: bool, deadline: float, rec: Record) -> None:
    perf_ns = time.perf_counter_ns
    lat, ttfb = rec.lat.append, rec.ttfb.append
    deadline_ns = int(deadline * 1e9)
    while perf_ns() < deadline_ns:
        t0 = perf_ns()
        try:
            first, pieces = await fn()
        except asyncio.CancelledError:
            rec.error(TimeoutError("cancelled at the measurement deadline (hung request)"))
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is counted
            rec.error(exc)
            await asyncio.sleep(0.001)  # no hot loop if the upstream is gone
            continue
        t1 = perf_ns()
        lat(t1 - t0)
        if stream:
            ttfb((first or t1) - t0)
        rec.pieces += pieces


async def drive(client, stream: bool, conc: int, seconds: float,
                grace: float) -> tuple[Record, float]:
    rec = Record()
    fn = client.request_stream if stream else client.request_json
    start = time.perf_counter()
    tasks = [asyncio.ensure_future(worker(fn, stream, start + seconds, rec)) for _ in range(conc)]
    done, pending = await asyncio.wait(tasks, timeout=seconds + grace)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending, timeout=grace)
    elapsed = time.perf_counter() - start
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            rec.error(t.exception())
    return rec, elapsed


def pct(sorted_ns: list[int], p: float) -> float | None:
    if not sorted_ns:
        return None
    k = max(0, min(len(sorted_ns) - 1, math.ceil(p / 100 * len(sorted_ns)) - 1))
    return sorted_ns[k] / 1000.0  # µs


def proc_cpu_s(pid: int) -> float | None:
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
        rest = data[data.rfind(")") + 2:].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def system_cpu() -> tuple[float, float] | None:
    """(busy seconds summed over all cores, steal seconds) from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tck = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / tck, steal / tck


def fd_count() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


async def sim_stats(port: int) -> dict | None:
    """GET /_sim/stats on its own short-lived connection (not through either client)."""
    try:
        async with asyncio.timeout(5):
            r, w = await asyncio.open_connection(HOST, port)
            w.write(b"GET /_sim/stats HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            data = await r.read()
            w.close()
        return json.loads(data.partition(b"\r\n\r\n")[2])
    except (OSError, TimeoutError, ValueError) as exc:
        sys.stderr.write("cannot read simulator stats: %r\n" % exc)
        return None


CONTENDED = 0.25  # other processes using more than this share of a core: a contended window


async def wait_for_quiet(sim_pid: int, max_wait: float) -> float:
    """Wait (at most max_wait s) until other processes use < 20% of a core; -> seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait:
        a, sa, pa = system_cpu(), proc_cpu_s(sim_pid), time.process_time()
        await asyncio.sleep(0.2)
        b, sb, pb = system_cpu(), proc_cpu_s(sim_pid), time.process_time()
        if a is None or b is None or sa is None or sb is None:
            break
        if ((b[0] - a[0]) - (pb - pa) - (sb - sa)) / 0.2 < 0.2:
            break
    return time.perf_counter() - start


async def measure(cls, args, port: int, sim_pid: int, scenario, rep: int) -> dict:
    sname, stream, conc = scenario
    waited = await wait_for_quiet(sim_pid, args.quiet_wait) if args.quiet_wait > 0 else 0.0
    fds0 = fd_count()
    if issubclass(cls, LlmedgeClient):
        client = cls(port, args.timeout, max_idle=max(256, conc))
    else:
        client = cls(port, args.timeout, limit=max(100, 2 * conc))
    await client.start()
    result: dict = {"scenario": sname, "stream": stream, "concurrency": conc,
                    "client": client.name, "rep": rep, "quiet_wait_s": waited}
    try:
        warm, _ = await drive(client, stream, conc, args.warmup, args.grace)
        result["warmup_requests"] = len(warm.lat)
        result["warmup_errors"] = warm.errors
        result["warmup_error_kinds"] = warm.error_kinds
        st0 = await sim_stats(port)
        gc.collect()
        sc0 = proc_cpu_s(sim_pid)
        sys0 = system_cpu()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        pt0 = time.process_time()
        rec, elapsed = await drive(client, stream, conc, args.seconds, args.grace)
        pt1 = time.process_time()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        sc1 = proc_cpu_s(sim_pid)
        sys1 = system_cpu()
        st1 = await sim_stats(port)
        result["pool_after"] = client.pool_state()
    finally:
        await client.close()
    await asyncio.sleep(0.05)
    fds1 = fd_count()
    n = len(rec.lat)
    lat = sorted(rec.lat)
    ttfb = sorted(rec.ttfb)
    cpu = pt1 - pt0
    result.update({
        "seconds": elapsed,
        "requests": n,
        "errors": rec.errors,
        "error_kinds": rec.error_kinds,
        "rps": n / elapsed if elapsed > 0 else 0.0,
        "lat_p50_us": pct(lat, 50), "lat_p99_us": pct(lat, 99),
        "lat_mean_us": (sum(lat) / n / 1000.0) if n else None,
        "ttfb_p50_us": pct(ttfb, 50) if stream else None,
        "ttfb_p99_us": pct(ttfb, 99) if stream else None,
        "pieces_per_request": rec.pieces / n if n else None,
        "cpu_s": cpu,
        "cpu_user_s": ru1.ru_utime - ru0.ru_utime,
        "cpu_sys_s": ru1.ru_stime - ru0.ru_stime,
        "cpu_us_per_req": cpu / n * 1e6 if n else None,
        "client_cpu_util": cpu / elapsed if elapsed > 0 else None,
        "ctx_switches_vol": ru1.ru_nvcsw - ru0.ru_nvcsw,
        "ctx_switches_invol": ru1.ru_nivcsw - ru0.ru_nivcsw,
        "sim_cpu_util": ((sc1 - sc0) / elapsed) if sc0 is not None and sc1 is not None else None,
        # CPU used by everything else on the machine in the window, in cores (tick-granular).
        "other_cpu_util": (((sys1[0] - sys0[0]) - cpu - (sc1 - sc0)) / elapsed
                           if sys0 and sys1 and sc0 is not None and sc1 is not None else None),
        "steal_util": ((sys1[1] - sys0[1]) / elapsed) if sys0 and sys1 else None,
        "cpu_user_us_per_req": (ru1.ru_utime - ru0.ru_utime) / n * 1e6 if n else None,
        "cpu_sys_us_per_req": (ru1.ru_stime - ru0.ru_stime) / n * 1e6 if n else None,
        # The stats GET itself is one request and one connection; subtract it.
        "sim_requests": st1["requests"] - st0["requests"] if st0 and st1 else -1,
        "sim_new_connections": (st1["connections_opened"] - st0["connections_opened"] - 1
                                if st0 and st1 else -1),
        "fd_delta": fds1 - fds0,
        "stray_tasks": len(asyncio.all_tasks()) - 1,
    })
    other = result["other_cpu_util"]
    result["contended"] = other is not None and other > CONTENDED
    return result


# ==== simulator subprocess, pinning, watchdog ==================================================

def start_simulator(args, core: int | None, tmp: Path) -> Proc:
    cmd = [sys.executable, "-m", "proxy.sim", "--host", HOST, "--port", "0",
           "--chunks", str(args.chunks), "--tokens-per-s", "0", "--ttft-ms", "0"]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return start_listening("simulator", cmd, None, tmp, env=env, own_session=True,
                           affinity=None if core is None else {core})


def start_watchdog(budget_s: float, proc_holder: list) -> threading.Timer:
    def fire() -> None:
        sys.stderr.write("client_compare: watchdog: run exceeded %.0fs, aborting\n" % budget_s)
        sys.stderr.flush()
        for proc in proc_holder:
            try:
                proc.kill()
            except OSError:
                pass
        os._exit(3)
    t = threading.Timer(budget_s, fire)
    t.daemon = True
    t.start()
    return t


def machine_info(bench_core, sim_core) -> dict:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        from aiohttp import http_parser
        aio_c = http_parser.HttpResponseParser.__module__ == "aiohttp._http_parser"
    except Exception:  # noqa: BLE001
        aio_c = None
    return {
        "nproc": os.cpu_count(),
        "affinity_available": sorted(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "uvloop": uvloop.__version__,
        "aiohttp": aiohttp.__version__,
        "aiohttp_c_parser": aio_c,
        "httptools": httptools.__version__,
        "bench_core": bench_core,
        "sim_core": sim_core,
    }


# ==== reporting ================================================================================

def merged_kinds(r: dict) -> dict[str, int]:
    kinds = dict(r["warmup_error_kinds"])
    for k, v in r["error_kinds"].items():
        kinds[k] = kinds.get(k, 0) + v
    return kinds


def fmt(v, spec="%.0f") -> str:
    return "-" if v is None else spec % v


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    m = len(values) // 2
    return values[m] if len(values) % 2 else (values[m - 1] + values[m]) / 2


def tables(runs: list[dict], clients: list[str]) -> str:
    out = []
    out.append("### Every measurement, in the order run\n")
    out.append("| # | scenario | c | client | rep | reqs | req/s | p50 µs | p99 µs "
               "| TTFB p50 µs | TTFB p99 µs | CPU µs/req | of which sys | client CPU | sim CPU "
               "| other CPU | new conns | errors |")
    out.append("|" + "---|" * 18)

    def share(v):
        return fmt(100 * max(0.0, v) if v is not None else None, "%.0f%%")

    for i, r in enumerate(runs, 1):
        errs = r["errors"] + r["warmup_errors"]
        out.append("| %d | %s | %d | %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s "
                   "| %s%s | %d | %s |"
                   % (i, r["scenario"], r["concurrency"], r["client"], r["rep"], r["requests"],
                      fmt(r["rps"]), fmt(r["lat_p50_us"]), fmt(r["lat_p99_us"]),
                      fmt(r["ttfb_p50_us"]), fmt(r["ttfb_p99_us"]),
                      fmt(r["cpu_us_per_req"], "%.1f"), fmt(r["cpu_sys_us_per_req"], "%.1f"),
                      share(r["client_cpu_util"]), share(r["sim_cpu_util"]),
                      share(r["other_cpu_util"]), " ⚠" if r["contended"] else "",
                      r["sim_new_connections"], ("**%d**" % errs) if errs else "0"))
    out.append("")
    out.append("CPU µs/req: this process's CPU (user+sys) / completed requests. client CPU, sim "
               "CPU, other CPU: share of one core used by this process, by the simulator, and by "
               "everything else on the machine during the window (⚠: over %d%%, a contended "
               "window). new conns: connections the simulator accepted during the measured "
               "window (a keep-alive pool opens none).\n" % (100 * CONTENDED))
    ref = "aiohttp" if "aiohttp" in clients else clients[-1]
    others = [c for c in clients if c != ref]
    out.append("### Summary (median over the uncontended repeats, or over all of them, marked *, "
               "when every repeat was contended; ratio = client / %s: < 1 is better for latency "
               "and CPU, > 1 for req/s)\n" % ref)
    metrics = [("req/s", "rps", "%.0f"), ("p50 µs", "lat_p50_us", "%.0f"),
               ("p99 µs", "lat_p99_us", "%.0f"), ("TTFB p50 µs", "ttfb_p50_us", "%.0f"),
               ("TTFB p99 µs", "ttfb_p99_us", "%.0f"), ("CPU µs/req", "cpu_us_per_req", "%.1f")]
    out.append("| scenario | c | metric | " + " | ".join(clients) + " | "
               + " | ".join("%s / %s" % (c, ref) for c in others) + " |")
    out.append("|" + "---|" * (3 + len(clients) + len(others)))
    seen = []
    for r in runs:
        if (r["scenario"], r["stream"], r["concurrency"]) not in seen:
            seen.append((r["scenario"], r["stream"], r["concurrency"]))
    for sname, stream, conc in seen:
        sel = [r for r in runs if r["scenario"] == sname and r["concurrency"] == conc]
        for label, key, spec in metrics:
            if key.startswith("ttfb") and not stream:
                continue
            vals, cells = {}, []
            for c in clients:
                mine = [r for r in sel if r["client"] == c]
                quiet = [r for r in mine if not r["contended"]]
                vals[c] = median([r[key] for r in (quiet or mine)])
                cells.append(fmt(vals[c], spec) + ("" if quiet or not mine else "*"))
            for c in others:
                a, b = vals[c], vals[ref]
                cells.append("%.2f" % (a / b) if a is not None and b else "-")
            out.append("| %s | %d | %s | %s |" % (sname, conc, label, " | ".join(cells)))
    return "\n".join(out)


# ==== main =====================================================================================

async def run_all(args, port: int, sim: subprocess.Popen, clients: list[str],
                  scenarios) -> tuple[list[dict], dict[str, int]]:
    sim_pid = sim.pid
    loop = asyncio.get_running_loop()
    if not isinstance(loop, uvloop.Loop):
        raise SystemExit("not running on uvloop: %r" % loop)
    # One-off warm-up of every client and code path (imports, first connects, the resolver
    # thread pool, allocator), so the first measurement is not penalised.
    warm_errors: dict[str, int] = {}
    for name in clients:
        for stream in sorted({s[1] for s in scenarios}):
            client = CLIENTS[name](port, args.timeout, 256)
            await client.start()
            try:
                rec, _ = await drive(client, stream, 4, max(0.2, args.warmup), args.grace)
            finally:
                await client.close()
            for k, v in rec.error_kinds.items():
                warm_errors["%s: %s" % (name, k)] = v
    await asyncio.sleep(0.05)
    if warm_errors:
        sys.stderr.write("ERRORS during the global warm-up: %s\n" % warm_errors)
    runs: list[dict] = []
    total = len(scenarios) * args.repeats * len(clients)
    for scenario in scenarios:
        for rep in range(1, args.repeats + 1):
            for name in clients:
                if sim.poll() is not None:
                    sys.stderr.write("simulator exited (status %s): stopping early\n"
                                     % sim.returncode)
                    return runs, warm_errors
                r = await measure(CLIENTS[name], args, port, sim_pid, scenario, rep)
                runs.append(r)
                errs = r["errors"] + r["warmup_errors"]
                sys.stderr.write(
                    "[%d/%d] %-6s c=%-3d %-8s rep %d: %6d reqs %8.0f req/s p50 %7s µs "
                    "CPU %6s µs/req%s\n" % (
                        len(runs), total, scenario[0], scenario[2], name, rep, r["requests"],
                        r["rps"], fmt(r["lat_p50_us"]), fmt(r["cpu_us_per_req"], "%.1f"),
                        ("  ERRORS: %d %s" % (errs, merged_kinds(r))
                         if errs else "")))
                sys.stderr.flush()
    return runs, warm_errors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="measured duration per run (3)")
    p.add_argument("--warmup", type=float, default=0.5, help="warm-up per run, seconds (0.5)")
    p.add_argument("--repeats", type=int, default=3, help="a,b rounds per scenario (3)")
    p.add_argument("--clients", default="llmedge,aiohttp",
                   help="comma-separated, in run order, from: llmedge, aiohttp "
                        "(llmedge's client with its keep-alive verdict fixed in this script) "
                        "(llmedge,aiohttp)")
    p.add_argument("--scenarios", default="json:1,json:64,stream:1,stream:16",
                   help="comma-separated kind:concurrency (json:1,json:64,stream:1,stream:16)")
    p.add_argument("--chunks", type=int, default=16, help="simulator --chunks (16)")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, s (10)")
    p.add_argument("--grace", type=float, default=5.0,
                   help="after the deadline, how long in-flight requests may take (5)")
    p.add_argument("--quiet-wait", type=float, default=2.0,
                   help="before each run, wait up to this long for other processes to go "
                        "quiet (2; 0 = don't)")
    p.add_argument("--no-pin", action="store_true", help="do not pin the processes to cores")
    p.add_argument("--json", metavar="PATH", help="write all results as JSON to PATH")
    args = p.parse_args(argv)

    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    for c in clients:
        if c not in CLIENTS:
            p.error("unknown client %r (have %s)" % (c, ", ".join(CLIENTS)))
    scenarios = []
    for item in args.scenarios.split(","):
        kind, _, conc = item.strip().partition(":")
        if kind not in ("json", "stream") or not conc.isdigit() or int(conc) < 1:
            p.error("bad scenario %r" % item)
        scenarios.append((kind, kind == "stream", int(conc)))
    if args.seconds <= 0 or args.warmup < 0 or args.repeats < 1:
        p.error("--seconds must be > 0, --warmup >= 0, --repeats >= 1")

    avail = sorted(os.sched_getaffinity(0))
    bench_core = sim_core = None
    if not args.no_pin and len(avail) >= 2:
        bench_core, sim_core = avail[0], avail[1]

    n_runs = len(scenarios) * args.repeats * len(clients)
    budget = 30 + n_runs * (args.seconds + args.warmup + 2 * args.grace + args.quiet_wait + 12)
    holder: list = []
    watchdog = start_watchdog(budget, holder)

    tmp = Path(tempfile.mkdtemp(prefix="llmedge-client-compare-"))
    try:
        sim = start_simulator(args, sim_core, tmp)
    except RuntimeError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        watchdog.cancel()
        raise SystemExit(str(exc)) from None
    proc, port = sim.popen, sim.port
    holder.append(proc)
    if bench_core is not None:
        os.sched_setaffinity(0, {bench_core})
    info = machine_info(bench_core, sim_core)
    sys.stderr.write("simulator pid %d on %s:%d (core %s); benchmark on core %s; "
                     "budget %.0fs\n" % (proc.pid, HOST, port, sim_core, bench_core, budget))
    runs: list[dict] = []
    warm_errors: dict[str, int] = {}
    sim_rc = None
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runs, warm_errors = runner.run(run_all(args, port, proc, clients, scenarios))
    finally:
        sim_rc = sim.stop()
        watchdog.cancel()
        shutil.rmtree(tmp, ignore_errors=True)

    total_errors = sum(r["errors"] + r["warmup_errors"] for r in runs) + sum(warm_errors.values())
    leaks = [r for r in runs if r["fd_delta"] > 0 or r["stray_tasks"] > 0
             or r["sim_new_connections"] > 0]
    print("## llmedge upstream client vs aiohttp\n")
    print("%s, %d cpu(s) (nproc), kernel %s; Python %s, uvloop %s, aiohttp %s (C parser: %s), "
          "httptools %s. Benchmark pinned to core %s, simulator to core %s. %.1fs per run "
          "after %.1fs warm-up, %d repeat(s), simulator --chunks %d unpaced.\n" % (
              info["cpu_model"], info["nproc"], info["kernel"], info["python"], info["uvloop"],
              info["aiohttp"], info["aiohttp_c_parser"], info["httptools"], bench_core, sim_core,
              args.seconds, args.warmup, args.repeats, args.chunks))
    print(tables(runs, clients))
    print()
    if total_errors:
        print("**ERRORS: %d request(s) failed in this run; numbers with errors are suspect.**"
              % total_errors)
        if warm_errors:
            print("- global warm-up: %s" % warm_errors)
        for r in runs:
            kinds = merged_kinds(r)
            if kinds:
                print("- %s c=%d %s rep %d: %s" % (r["scenario"], r["concurrency"], r["client"],
                                                 r["rep"], kinds))
    else:
        print("No errors (%d measured requests, all validated)." % sum(r["requests"] for r in runs))
    if leaks:
        print("**Connection churn / possible leaks:**")
        for r in leaks:
            churn = r["requests"] and r["sim_new_connections"] >= 0.9 * r["requests"]
            print("- %s c=%d %s rep %d: fd delta %d, stray tasks %d, new upstream connections "
                  "during the measured window %d for %d requests%s" % (
                      r["scenario"], r["concurrency"], r["client"], r["rep"], r["fd_delta"],
                      r["stray_tasks"], r["sim_new_connections"], r["requests"],
                      " (one per request: connections are not reused)" if churn else ""))
    else:
        print("No leaks seen (fds back to baseline, no stray tasks, no new upstream "
              "connections during measured windows).")
    if sim_rc not in (0, None):
        print("Simulator exited with status %s." % sim_rc)
    if len(runs) < n_runs:
        print("**INCOMPLETE: %d of %d measurements ran.**" % (len(runs), n_runs))

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "config": vars(args), "runs": runs,
                       "global_warmup_errors": warm_errors,
                       "total_errors": total_errors, "simulator_exit": sim_rc}, f, indent=2)
        print("\nJSON written to %s" % args.json)
    return 1 if total_errors or len(runs) < n_runs else 0


if __name__ == "__main__":
    sys.exit(main())
