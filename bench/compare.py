"""llmedge against direct and nginx, in one run: added latency, CPU per request, TTFB, RSS.

Starts the upstream simulator (``python -m proxy.simulator``), llmedge (one worker) in front of
it, and nginx as a plain keep-alive reverse proxy when ``nginx`` is on PATH; then runs the
same closed-loop loads (``bench/load.py``, one subprocess per measurement) against each:

* ``c1``         1 connection, non-streaming: latency and what each proxy adds to it (p50, p99)
* ``c64``        64 connections, non-streaming: requests/s and the proxy's CPU µs per request
                 (utime + stime of the proxy process from /proc/PID/stat, over the run)
* ``stream_c1``  1 connection, streaming: time to first byte, and what each proxy adds
* ``stream_paced`` (not with ``--quick``) 1 connection, streaming with the simulator pacing
                 chunks (``--paced-tokens-per-s``): time between chunks and chunks per response
                 through each target, to show chunks are forwarded as they arrive

With two or more CPUs the proxies are pinned to the first and the simulator and the load
generator to the second (``--no-pin`` to leave placement to the kernel). Peak RSS is VmHWM
from /proc/PID/status; idle RSS is VmRSS after start-up.

    python bench/compare.py                    # 5 s per measurement
    python bench/compare.py --quick --json out.json

``--peers litellm,portkey`` is accepted, and reported as not implemented yet.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
LOAD = BENCH / "load.py"
TARGETS = ("direct", "nginx", "llmedge")
KNOWN_PEERS = ("litellm", "portkey")
ROUTE = "auto"
STARTUP_TIMEOUT = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
NOISY_CORES = 0.1     # CPU used by other processes during a measurement worth a warning

LLMEDGE_CONFIG = """\
server:
  http: 127.0.0.1:0
  workers: 1
deployments:
  - name: sim-a
    base_url: http://127.0.0.1:{port}/v1
    model: sim-model
  - name: sim-b
    base_url: http://127.0.0.1:{port}/v1
    model: sim-model
routes:
  - name: {route}
    deployments: [sim-a, sim-b]
    policy: ordered
"""

NGINX_CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy_temp;
    fastcgi_temp_path {tmp}/fastcgi_temp;
    uwsgi_temp_path {tmp}/uwsgi_temp;
    scgi_temp_path {tmp}/scgi_temp;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    upstream sim {{
        server 127.0.0.1:{upstream};
        keepalive 128;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=2048;
        location / {{
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


# === processes ===

class Proc:
    """A started server process and what /proc says about it."""

    def __init__(self, name: str, popen: subprocess.Popen, port: int, startup_s: float,
                 log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.pid = popen.pid
        self.port = port
        self.startup_s = startup_s
        self.log_path = log_path

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process (all its threads)."""
        with open("/proc/%d/stat" % self.pid) as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def status_kb(self, key: str) -> int | None:
        try:
            with open("/proc/%d/status" % self.pid) as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self.popen.wait()
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        return code


def pin(pid: int, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(pid, {cpu})


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start_listening(name: str, cmd: list[str], cpu: int | None, tmp: Path,
                    env: dict | None = None) -> Proc:
    """Start a process that prints ``LISTENING host:port`` when ready."""
    log_path = tmp / ("%s.log" % name)
    log = open(log_path, "wb")
    t0 = time.perf_counter()
    popen = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True,
                             env=env)
    log.close()
    pin(popen.pid, cpu)
    line = ""
    deadline = t0 + STARTUP_TIMEOUT
    while not line.endswith("\n") and time.perf_counter() < deadline and popen.poll() is None:
        ready, _, _ = select.select([popen.stdout], [], [], 0.05)
        if ready:
            line += popen.stdout.readline()
    startup = time.perf_counter() - t0
    if not line.startswith("LISTENING "):
        Proc(name, popen, 0, startup, log_path).stop()
        raise RuntimeError("%s did not start (got %r):\n%s" % (name, line, log_tail(log_path)))
    return Proc(name, popen, int(line.strip().rsplit(":", 1)[1]), startup, log_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(nginx: str, upstream_port: int, cpu: int | None, tmp: Path) -> Proc:
    ndir = tmp / "nginx"
    ndir.mkdir()
    port = free_port()
    conf = ndir / "nginx.conf"
    conf.write_text(NGINX_CONFIG.format(tmp=ndir, upstream=upstream_port, port=port))
    log_path = ndir / "stderr.log"
    log = open(log_path, "wb")
    t0 = time.perf_counter()
    popen = subprocess.Popen([nginx, "-p", str(ndir), "-e", str(ndir / "nginx-error.log"),
                              "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log)
    log.close()
    pin(popen.pid, cpu)
    deadline = t0 + STARTUP_TIMEOUT
    while time.perf_counter() < deadline and popen.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.01)
    else:
        Proc("nginx", popen, port, 0.0, log_path).stop()
        raise RuntimeError("nginx did not start:\n%s\n%s" % (
            log_tail(log_path), log_tail(ndir / "nginx-error.log")))
    return Proc("nginx", popen, port, time.perf_counter() - t0, log_path)


def chat_once(port: int, stream: bool = False) -> tuple[int, bytes]:
    body = json.dumps({"model": ROUTE, "stream": stream,
                       "messages": [{"role": "user", "content": "hello"}]})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"content-type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def sim_config(port: int, **options) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/_sim/config", body=json.dumps(options),
                     headers={"content-type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError("simulator config %r: %d %r" % (options, resp.status, data))
        return json.loads(data)
    finally:
        conn.close()


def sanity_check(port: int) -> str | None:
    """None when a plain and a streamed chat request both come back whole."""
    try:
        status, body = chat_once(port)
        if status != 200 or "choices" not in json.loads(body):
            return "chat answered %d: %r" % (status, body[:200])
        status, body = chat_once(port, stream=True)
        if status != 200 or b"[DONE]" not in body:
            return "streamed chat answered %d: %r" % (status, body[:200])
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return "chat request failed: %s" % exc
    return None


# === measuring ===

def run_load(port: int, connections: int, stream: bool, seconds: float, warmup: float,
             body_size: int, cpu: int | None, tmp: Path, tag: str) -> dict:
    out = tmp / ("load-%s.json" % tag)
    cmd = [sys.executable, str(LOAD), "--url", "http://127.0.0.1:%d/v1/chat/completions" % port,
           "--model", ROUTE, "--connections", str(connections), "--duration", str(seconds),
           "--warmup", str(warmup), "--body-size", str(body_size), "--timeout", "10",
           "--json", str(out), "--quiet"]
    if stream:
        cmd.append("--stream")
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          timeout=seconds + warmup + 60)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError("load.py failed (%d): %s" % (proc.returncode, proc.stderr[-2000:]))
    data = json.loads(out.read_text())
    data.pop("histograms", None)
    return data


def machine_cpu() -> dict[str, float]:
    """Machine-wide CPU seconds since boot, from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = v + [0] * (8 - len(v))
    return {"busy": (user + nice + system + irq + softirq) / CLK_TCK,
            "irq": (irq + softirq) / CLK_TCK, "steal": steal / CLK_TCK}


def background_load(wait: float) -> tuple[float, float]:
    """Cores busy before the run (sampled over 0.5 s), waiting up to ``wait`` seconds for
    them to fall below NOISY_CORES. Returns (busy cores, seconds waited)."""
    start = time.perf_counter()
    while True:
        before, t0 = machine_cpu(), time.perf_counter()
        time.sleep(0.5)
        busy = (machine_cpu()["busy"] - before["busy"]) / (time.perf_counter() - t0)
        waited = time.perf_counter() - start
        if busy <= NOISY_CORES or waited >= wait:
            return busy, waited


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(target: Proc, sim: Proc, scenario: dict, args, cpus: dict, tmp: Path) -> dict:
    sim_cpu0 = sim.cpu_s()
    cpu0 = target.cpu_s()
    machine0, gen0 = machine_cpu(), children_cpu()
    t0 = time.perf_counter()
    result = run_load(target.port, scenario["connections"], scenario["stream"], args.seconds,
                      args.warmup, args.body_size, cpus["load"], tmp,
                      "%s-%s" % (target.name, scenario["name"]))
    wall = time.perf_counter() - t0
    cpu = target.cpu_s() - cpu0
    sim_cpu = sim.cpu_s() - sim_cpu0
    gen_cpu = children_cpu() - gen0
    machine1 = machine_cpu()
    ours = cpu + gen_cpu + (sim_cpu if target is not sim else 0.0)
    busy = machine1["busy"] - machine0["busy"]
    irq = machine1["irq"] - machine0["irq"]
    # What else ran meanwhile (other processes on this machine): it skews every number.
    result["machine"] = {
        "busy_cores": round(busy / wall, 3),
        "irq_cores": round(irq / wall, 3),
        "steal_cores": round((machine1["steal"] - machine0["steal"]) / wall, 3),
        "other_processes_cores": round(max(0.0, busy - irq - ours) / wall, 3),
    }
    completed = result["totals"]["completed"] or 1
    result["target_cpu_s"] = round(cpu, 3)
    result["target_cpu_us_per_request"] = round(cpu * 1e6 / completed, 1)
    result["target_cpu_util"] = round(cpu / wall, 3)
    result["simulator_cpu_us_per_request"] = round(sim_cpu * 1e6 / completed, 1)
    result["simulator_cpu_util"] = round(sim_cpu / wall, 3)
    return result


SCENARIOS = (
    {"name": "c1", "connections": 1, "stream": False},
    {"name": "c64", "connections": 64, "stream": False},
    {"name": "stream_c1", "connections": 1, "stream": True},
    {"name": "stream_paced", "connections": 1, "stream": True, "paced": True},
)


# === facts about the run ===

def git_sha() -> dict:
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    sha = git("rev-parse", "HEAD")
    return {"sha": sha or None, "dirty": bool(git("status", "--porcelain")) if sha else None}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fastpath_implementation() -> str:
    code = "import _fastpath; print(_fastpath.IMPLEMENTATION)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown (%s)" % proc.stderr.strip()[-200:]


def version_of(module: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:
        return None


def nginx_version(nginx: str) -> str:
    proc = subprocess.run([nginx, "-v"], capture_output=True, text=True)
    return (proc.stderr or proc.stdout).strip().rpartition("/")[2]


def meta(args, cpus: dict, nginx: str | None) -> dict:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "git": git_sha(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "loop": "uvloop %s" % version_of("uvloop") if version_of("uvloop") else "asyncio",
        "httptools": version_of("httptools"),
        "fastpath": fastpath_implementation(),
        "llmedge": version_of("llmedge"),
        "nginx": nginx_version(nginx) if nginx else None,
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "pinning": cpus,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "body_size": args.body_size,
        "paced_tokens_per_s": None if args.quick else args.paced_tokens_per_s,
    }


# === report ===

def pct(result: dict | None, key: str, p: str) -> float | None:
    if not result or "error" in result:
        return None
    s = result.get(key)
    return None if not s or not s.get("count") else s[p]


def diff(a, b):
    return None if a is None or b is None else a - b


def summarise(targets: dict) -> dict:
    """One row of headline numbers per target."""
    direct = targets.get("direct", {}).get("scenarios", {})
    rows = {}
    for name, t in targets.items():
        if "skipped" in t or "error" in t and not t.get("scenarios"):
            continue
        sc = t.get("scenarios", {})
        c1, c64 = sc.get("c1"), sc.get("c64")
        s1, paced = sc.get("stream_c1"), sc.get("stream_paced")
        row = {
            "c1_p50_us": pct(c1, "latency_us", "p50"),
            "c1_p99_us": pct(c1, "latency_us", "p99"),
            "c64_rps": c64.get("achieved_rps") if c64 and "error" not in c64 else None,
            "c64_p50_us": pct(c64, "latency_us", "p50"),
            "c64_p99_us": pct(c64, "latency_us", "p99"),
            "c64_cpu_us_per_request": c64.get("target_cpu_us_per_request")
            if c64 and "error" not in c64 else None,
            "c64_target_cpu_util": c64.get("target_cpu_util")
            if c64 and "error" not in c64 else None,
            "c64_load_core_util": round(c64["generator"]["cpu_util"]
                                        + c64["simulator_cpu_util"], 3)
            if c64 and "error" not in c64 else None,
            "stream_ttfb_p50_us": pct(s1, "ttfb_us", "p50"),
            "stream_ttfb_p99_us": pct(s1, "ttfb_us", "p99"),
            "stream_total_p50_us": pct(s1, "latency_us", "p50"),
            "paced_inter_chunk_p50_us": pct(paced, "inter_chunk_us", "p50"),
            "paced_inter_chunk_p99_us": pct(paced, "inter_chunk_us", "p99"),
            "paced_chunks_per_response": (paced.get("chunks_per_response") or {}).get("mean")
            if paced and "error" not in paced else None,
            "errors": sum((r.get("error_count") or 0) for r in sc.values() if "error" not in r),
            "max_other_processes_cores": max(
                (r["machine"]["other_processes_cores"] for r in sc.values() if "machine" in r),
                default=None),
            "rss_idle_mb": t.get("rss_idle_mb"),
            "rss_after_mb": t.get("rss_after_mb"),
            "rss_peak_mb": t.get("rss_peak_mb"),
            "startup_s": t.get("startup_s"),
        }
        if name != "direct":
            row["added_c1_p50_us"] = diff(row["c1_p50_us"], pct(direct.get("c1"), "latency_us",
                                                                "p50"))
            row["added_c1_p99_us"] = diff(row["c1_p99_us"], pct(direct.get("c1"), "latency_us",
                                                                "p99"))
            row["added_stream_ttfb_p50_us"] = diff(row["stream_ttfb_p50_us"], pct(
                direct.get("stream_c1"), "ttfb_us", "p50"))
            row["added_stream_ttfb_p99_us"] = diff(row["stream_ttfb_p99_us"], pct(
                direct.get("stream_c1"), "ttfb_us", "p99"))
        rows[name] = row
    return rows


def budget(rows: dict) -> list[dict]:
    """The performance budget of issue 3, line by line (relative lines need nginx)."""
    le, ng = rows.get("llmedge"), rows.get("nginx")
    lines = []

    def line(what, limit, value, ok, note=""):
        lines.append({"budget": what, "limit": limit, "measured": value,
                      "status": "n/a" if ok is None else ("met" if ok else "missed"),
                      "note": note})

    if le is None:
        return lines
    cpu, ncpu = le["c64_cpu_us_per_request"], ng and ng["c64_cpu_us_per_request"]
    if cpu is not None and ncpu:
        line("CPU per request at 64 connections <= 3x nginx", "%.1f µs" % (3 * ncpu),
             "%.1f µs (%.2fx nginx)" % (cpu, cpu / ncpu), cpu <= 3 * ncpu)
    else:
        line("CPU per request at 64 connections <= 3x nginx", "-",
             "%s µs" % cpu, None, "nginx not measured")
    a50, n50 = le.get("added_c1_p50_us"), ng and ng.get("added_c1_p50_us")
    if a50 is not None and n50 is not None:
        line("added p50 at 1 connection <= nginx's + 60 µs", "%d µs" % (n50 + 60),
             "%d µs (nginx %d µs)" % (a50, n50), a50 <= n50 + 60)
    else:
        line("added p50 at 1 connection <= nginx's + 60 µs", "-", a50, None,
             "nginx not measured")
    a99, n99 = le.get("added_c1_p99_us"), ng and ng.get("added_c1_p99_us")
    if a99 is not None and n99 is not None:
        limit = 3 * max(n99, 0)
        line("added p99 at 1 connection <= 3x nginx's", "%d µs" % limit,
             "%d µs (nginx %d µs)" % (a99, n99), a99 <= limit,
             "percentile differences are noisy at this scale; rerun before concluding")
    else:
        line("added p99 at 1 connection <= 3x nginx's", "-", a99, None, "nginx not measured")
    t = le.get("added_stream_ttfb_p50_us")
    line("streaming: added time to first byte <= 200 µs (p50)", "200 µs",
         None if t is None else "%d µs" % t, None if t is None else t <= 200)
    r = le.get("rss_idle_mb")
    line("RSS idle <= 60 MB", "60 MB", r and "%.1f MB" % r, None if r is None else r <= 60)
    r = le.get("rss_peak_mb")
    line("RSS after the run <= 100 MB (peak, VmHWM)", "100 MB", r and "%.1f MB" % r,
         None if r is None else r <= 100)
    s = le.get("startup_s")
    line("start-up to ready <= 0.5 s", "0.5 s", s and "%.3f s" % s,
         None if s is None else s <= 0.5, "process start to LISTENING, interpreter included")
    line("--workers 2 keeps CPU per request within 10%", "-", None, None,
         "not measured by compare.py")
    return lines


def _n(v, fmt="%d"):
    return "-" if v is None else fmt % v


def markdown(report: dict) -> str:
    m = report["meta"]
    rows = report["summary"]
    out = ["## llmedge vs direct%s" % (" vs nginx" if "nginx" in rows else ""), ""]
    git = m["git"]
    out.append("- machine: %s, nproc %s, Linux %s" % (m["cpu_model"], m["nproc"], m["kernel"]))
    out.append("- Python %s, %s, httptools %s, _fastpath %s, nginx %s, git %s%s" % (
        m["python"], m["loop"], m["httptools"], m["fastpath"], m["nginx"] or "not installed",
        (git["sha"] or "?")[:12], " (dirty)" if git["dirty"] else ""))
    p = m["pinning"]
    out.append("- pinning: %s" % (
        "proxies on CPU %s; simulator and load generator on CPU %s" % (p["proxy"], p["load"])
        if p["proxy"] is not None else "none (%s)" % p.get("why", "--no-pin")))
    out.append("- each measurement: closed loop, %gs after %gs warm-up, %d-byte bodies; "
               "llmedge: 1 worker, route `%s` (ordered, 2 deployments); simulator unpaced"
               % (m["seconds"], m["warmup"], m["body_size"], ROUTE))
    out.append("- command: `%s`" % m["command"])
    out.append("")
    out.append("| target | c1 p50 µs | c1 p99 µs | added p50 µs | added p99 µs | c64 req/s "
               "| c64 CPU µs/req | stream TTFB p50 µs | added TTFB p50 µs | RSS idle MB "
               "| peak RSS MB | start s | errors |")
    out.append("|---|" + "---:|" * 12)
    for name, r in rows.items():
        label = "direct (simulator)" if name == "direct" else name
        cpu = r["c64_cpu_us_per_request"]
        out.append("| %s | %s | %s | %s | %s | %s | %s%s | %s | %s | %s | %s | %s | %s |" % (
            label, _n(r["c1_p50_us"]), _n(r["c1_p99_us"]), _n(r.get("added_c1_p50_us")),
            _n(r.get("added_c1_p99_us")), _n(r["c64_rps"], "%.0f"), _n(cpu, "%.1f"),
            " (sim)" if name == "direct" and cpu is not None else "",
            _n(r["stream_ttfb_p50_us"]), _n(r.get("added_stream_ttfb_p50_us")),
            _n(r["rss_idle_mb"], "%.1f"), _n(r["rss_peak_mb"], "%.1f"),
            _n(r["startup_s"], "%.2f"), r["errors"]))
    if any(r["paced_inter_chunk_p50_us"] is not None for r in rows.values()):
        out += ["", "Streaming with the simulator pacing chunks at %g tokens/s (1 connection):"
                % m["paced_tokens_per_s"], "",
                "| target | between chunks p50 µs | p99 µs | chunks per response |",
                "|---|---:|---:|---:|"]
        for name, r in rows.items():
            out.append("| %s | %s | %s | %s |" % (
                name, _n(r["paced_inter_chunk_p50_us"]), _n(r["paced_inter_chunk_p99_us"]),
                _n(r["paced_chunks_per_response"], "%.1f")))
        out += ["", "(Chunks are counted as received. A proxy writes what one read gave it as one "
                "chunk, so events that arrived together merge: fewer chunks with the same "
                "spacing is not a batching delay.)"]
    out += ["", "At 64 connections (share of one core used; the load core runs the simulator "
            "and the generator):", "", "| target | proxy core | load core | c64 p50 µs "
            "| c64 p99 µs |", "|---|---:|---:|---:|---:|"]
    for name, r in rows.items():
        out.append("| %s | %s | %s | %s | %s |" % (
            name, "-" if name == "direct" else _n(r["c64_target_cpu_util"] and
                                                   100 * r["c64_target_cpu_util"], "%.0f%%"),
            _n(r["c64_load_core_util"] and 100 * r["c64_load_core_util"], "%.0f%%"),
            _n(r["c64_p50_us"]), _n(r["c64_p99_us"])))
    le, ng = rows.get("llmedge"), rows.get("nginx")
    if le and ng and le["c64_cpu_us_per_request"] and ng["c64_cpu_us_per_request"]:
        out += ["", "llmedge / nginx: CPU per request %.2fx, requests/s %.2fx" % (
            le["c64_cpu_us_per_request"] / ng["c64_cpu_us_per_request"],
            (le["c64_rps"] or 0) / (ng["c64_rps"] or 1))]
    if report["budget"]:
        out += ["", "| budget (issue 3) | limit | measured | status |", "|---|---|---|---|"]
        for b in report["budget"]:
            out.append("| %s | %s | %s | %s%s |" % (
                b["budget"], b["limit"], "-" if b["measured"] is None else b["measured"],
                b["status"], " (%s)" % b["note"] if b["note"] else ""))
    bg = m.get("background_cores")
    noisy = [(n, r["max_other_processes_cores"]) for n, r in rows.items()
             if (r["max_other_processes_cores"] or 0) > NOISY_CORES]
    if noisy or (bg or 0) > NOISY_CORES:
        out += ["", "**warning: other processes were using the CPUs** (%s): these numbers are "
                "skewed; rerun on a quiet machine." % ", ".join(
                    (["before the run: %.2f cores" % bg] if (bg or 0) > NOISY_CORES else [])
                    + ["during %s: up to %.2f cores" % nv for nv in noisy])]
    for name, t in report["targets"].items():
        if "skipped" in t:
            out += ["", "%s: skipped (%s)" % (name, t["skipped"])]
        for sname, res in t.get("scenarios", {}).items():
            if "error" in res:
                out += ["", "%s %s: failed: %s" % (name, sname, res["error"])]
    for name, peer in report["peers"].items():
        out += ["", "peer %s: %s" % (name, peer["status"])]
    return "\n".join(out) + "\n"


# === main ===

def choose_cpus(no_pin: bool) -> dict:
    if no_pin or not hasattr(os, "sched_getaffinity"):
        return {"proxy": None, "load": None, "why": "--no-pin" if no_pin else "unsupported"}
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {"proxy": None, "load": None, "why": "only one CPU available"}
    return {"proxy": cpus[0], "load": cpus[1]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/compare.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per load")
    p.add_argument("--warmup", type=float, default=None,
                   help="warm-up seconds per load (default: 1, or 0.2 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="a fast smoke run: 0.5 s loads, no paced streaming")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help="comma-separated subset of %s" % ",".join(TARGETS))
    p.add_argument("--body-size", type=int, default=256)
    p.add_argument("--paced-tokens-per-s", type=float, default=500.0,
                   help="simulator pacing of the stream_paced measurement")
    p.add_argument("--peers", default="", help="litellm,portkey: not implemented yet")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="on a shared machine, wait up to this long for other processes to "
                        "go quiet before measuring")
    p.add_argument("--profile", default=None, metavar="PATH",
                   help="run llmedge under cProfile and write its stats here "
                        "(its numbers are then not comparable)")
    p.add_argument("--json", default=None, help="write the whole report as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick and "--seconds" not in (argv if argv is not None else sys.argv):
        args.seconds = 0.5
    if args.warmup is None:
        args.warmup = 0.2 if args.quick else 1.0
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        parser.error("unknown --targets %s (known: %s)" % (",".join(unknown), ",".join(TARGETS)))
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    bad = [p for p in peers if p not in KNOWN_PEERS]
    if bad:
        parser.error("unknown --peers %s (known: %s)" % (",".join(bad), ",".join(KNOWN_PEERS)))
    if not args.seconds > 0:
        parser.error("--seconds must be > 0")

    cpus = choose_cpus(args.no_pin)
    background, waited = background_load(args.wait_quiet)
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
    report: dict = {"meta": meta(args, cpus, nginx), "targets": {}, "peers": {}}
    report["meta"]["background_cores"] = round(background, 3)
    report["meta"]["waited_for_quiet_s"] = round(waited, 1)
    if background > NOISY_CORES:
        print("compare: warning: the machine is busy before the run (%.2f cores in use)"
              % background, file=sys.stderr)
    for peer in peers:
        report["peers"][peer] = {"status": "not implemented yet: compare.py does not install "
                                           "or start %s; no numbers measured" % peer}
        print("compare: peer %s is not implemented yet; skipping it" % peer, file=sys.stderr)
    scenarios = [s for s in SCENARIOS if not (s.get("paced") and args.quick)]

    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="llmedge-compare-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            sim = start_listening("simulator", [sys.executable, "-m", "proxy.simulator",
                                                "--port", "0"], cpus["load"], tmp)
            procs.append(sim)
            live: dict[str, Proc] = {}
            if "direct" in targets:
                live["direct"] = sim
            if "nginx" in targets:
                if nginx is None:
                    report["targets"]["nginx"] = {"skipped": "nginx is not on PATH"}
                else:
                    try:
                        ng = start_nginx(nginx, sim.port, cpus["proxy"], tmp)
                        procs.append(ng)
                        live["nginx"] = ng
                    except RuntimeError as exc:
                        report["targets"]["nginx"] = {"skipped": str(exc)}
            if "llmedge" in targets:
                cfg = tmp / "llmedge.yaml"
                cfg.write_text(LLMEDGE_CONFIG.format(port=sim.port, route=ROUTE))
                prefix = [sys.executable]
                if args.profile:
                    prefix += ["-m", "cProfile", "-o", os.path.abspath(args.profile)]
                    prefix += ["-m", "proxy"]
                else:
                    prefix += ["-m", "proxy"]
                le = start_listening("llmedge", prefix + ["--log-level", "warning", "serve",
                                                          "-c", str(cfg)], cpus["proxy"], tmp)
                procs.append(le)
                live["llmedge"] = le
            # Idle RSS, before any request.
            time.sleep(0.2)
            for name, proc in live.items():
                entry = report["targets"].setdefault(name, {})
                entry.update({"pid": proc.pid, "port": proc.port,
                              "startup_s": round(proc.startup_s, 3),
                              "rss_idle_mb": round((proc.status_kb("VmRSS") or 0) / 1024, 1)})
                problem = sanity_check(proc.port)
                if problem:
                    entry["error"] = "sanity check failed: %s" % problem
                    print("compare: %s: %s" % (name, entry["error"]), file=sys.stderr)
            live = {n: p for n, p in live.items() if "error" not in report["targets"][n]}

            for scenario in scenarios:
                if scenario.get("paced"):
                    sim_config(sim.port, tokens_per_s=args.paced_tokens_per_s)
                try:
                    for name, proc in live.items():
                        print("compare: %s %s ..." % (name, scenario["name"]), file=sys.stderr,
                              flush=True)
                        try:
                            res = measure(proc, sim, scenario, args, cpus, tmp)
                        except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
                            res = {"error": str(exc)}
                        if not proc.alive():
                            res = {"error": "%s exited with %s:\n%s" % (
                                name, proc.popen.returncode, log_tail(proc.log_path))}
                        report["targets"][name].setdefault("scenarios", {})[
                            scenario["name"]] = res
                finally:
                    if scenario.get("paced"):
                        sim_config(sim.port, tokens_per_s=None)

            for name, proc in live.items():
                entry = report["targets"][name]
                entry["rss_after_mb"] = round((proc.status_kb("VmRSS") or 0) / 1024, 1)
                entry["rss_peak_mb"] = round((proc.status_kb("VmHWM") or 0) / 1024, 1)
        finally:
            for proc in reversed(procs):
                proc.stop()

    report["summary"] = summarise(report["targets"])
    report["budget"] = budget(report["summary"])
    if args.profile:
        report["meta"]["profile"] = os.path.abspath(args.profile)
    text = markdown(report)
    sys.stdout.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    failed = [n for n, t in report["targets"].items() if "error" in t]
    return 1 if failed or not report["summary"] else 0


if __name__ == "__main__":
    sys.exit(main())
