"""llmedge against direct, nginx and optionally LiteLLM and Portkey, in one run.

Starts the upstream simulator (``python -m proxy.sim``), llmedge (one worker) in front of
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

``--peers litellm,portkey`` adds the two peers, measured exactly like nginx and llmedge (same
loads, same core). Each is installed on first use into ``bench/.peers/`` and reused after:

* ``litellm``: ``pip install 'litellm[proxy]'`` into ``bench/.peers/litellm-venv``; its proxy
  CLI runs one uvicorn worker with model ``auto`` = two ``openai/`` deployments on the
  simulator (``order`` 1 and 2, like llmedge's ordered route), a random master key, the local
  cost map, telemetry off and error-only logging.
* ``portkey``: ``npm install @portkey-ai/gateway`` into ``bench/.peers/portkey`` (with
  ``@hono/node-server`` pinned, see PORTKEY_PACKAGE_JSON); its node server runs headless, kept
  on 127.0.0.1 by ``bench/peers/portkey_loopback.cjs``, and every request carries an
  ``x-portkey-config`` with a fallback over two ``openai`` targets whose ``custom_host`` is
  the simulator.

A peer's CPU and RSS are summed over its whole process tree. Peers run one at a time after
the others, each started just before its own loads. ``--quick`` never installs a peer (it
measures those already installed, their c64 load for at least PEER_QUICK_C64); one that
cannot be installed or started is reported as ``not available: <reason>`` and the run goes
on.

The workers check (in every run but ``--quick``; ``--workers-check`` forces it, and
``--no-workers-check`` skips it) runs the c64 load against ``llmedge --workers 1`` and then
``--workers 2`` on a fixed port (SO_REUSEPORT), both allowed the same CPUs, and reports CPU µs
per request summed over the parent and its workers, each worker's CPU seconds and share and
its connections, and the 2-worker / 1-worker ratio. Two workers need two CPUs: on a 2-CPU
machine they share the load CPU with the simulator and the generator.

``--baseline TREE`` measures a second llmedge, from another checkout of the repository (its
``_fastpath`` built in place), as target ``baseline``: same config, same core, each load run
on it right after llmedge's, and the ratios llmedge / baseline printed. This is how a change's
cost is measured: both versions in one run, on the same machine's mood.

    python bench/compare.py                    # 5 s per measurement
    python bench/compare.py --quick --json out.json
    python bench/compare.py --peers litellm,portkey --json out.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import (CLK_TCK, Proc, choose_cpus, cpu_model, free_port,  # noqa: E402
                     git_state, log_tail, pid_cpu_s, start_listening, start_server,
                     version_of)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
LOAD = BENCH / "load.py"
TARGETS = ("direct", "nginx", "llmedge")
KNOWN_PEERS = ("litellm", "portkey")
ROUTE = "auto"
STARTUP_TIMEOUT = 30.0
PEER_STARTUP_TIMEOUT = 120.0   # LiteLLM imports for seconds, more on a first run (.pyc files)
INSTALL_TIMEOUT = 1800.0
PEERS_DIR = BENCH / ".peers"
PEER_HELPERS = BENCH / "peers"
WORKERS = 2
STARVED_SHARE = 0.5   # a worker below this fraction of its fair CPU share counts as starved
# A peer's c64 window under --quick: one round of 64 requests through LiteLLM takes about half
# a second, so a shorter window may hold no answered request at all.
PEER_QUICK_C64 = {"seconds": 1.5, "warmup": 0.5}
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

# Two deployments behind the route's name, tried in order as llmedge's ordered route does.
LITELLM_CONFIG = """\
model_list:
  - model_name: {route}
    litellm_params:
      model: openai/sim-model
      api_base: http://127.0.0.1:{port}/v1
      api_key: sk-bench
      order: 1
  - model_name: {route}
    litellm_params:
      model: openai/sim-model
      api_base: http://127.0.0.1:{port}/v1
      api_key: sk-bench
      order: 2
litellm_settings:
  telemetry: false
  set_verbose: false
  json_logs: false
general_settings:
  master_key: {master_key}
"""

LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",   # else it fetches the cost map at start-up
    "LITELLM_TELEMETRY": "False",
    "LITELLM_LOG": "ERROR",
    "LITELLM_MODE": "PRODUCTION",             # DEV mode would load a .env from the cwd
    "NO_DOCS": "True",
    "NO_REDOC": "True",
    "DISABLE_ADMIN_UI": "True",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

# @hono/node-server above 1.13 hands the gateway immutable response headers, and every
# streamed chat then fails with "TypeError: immutable" (Portkey gateway issues 1389 and
# 1550); 1.13.5 is what the gateway's own lock file resolved before.
PORTKEY_PACKAGE_JSON = {"private": True, "overrides": {"@hono/node-server": "1.13.5"}}


# === processes ===

def start_nginx(nginx: str, upstream_port: int, cpu: int | None, tmp: Path) -> Proc:
    ndir = tmp / "nginx"
    ndir.mkdir()
    port = free_port()
    conf = ndir / "nginx.conf"
    conf.write_text(NGINX_CONFIG.format(tmp=ndir, upstream=upstream_port, port=port))
    try:
        return start_server("nginx", [nginx, "-p", str(ndir), "-e",
                                      str(ndir / "nginx-error.log"), "-c", str(conf)],
                            port, cpu, ndir)
    except RuntimeError as exc:
        raise RuntimeError("%s\n%s" % (exc, log_tail(ndir / "nginx-error.log"))) from None


def header_dict(headers: list[str]) -> dict[str, str]:
    return dict((k.strip(), v.strip()) for k, _, v in (h.partition(":") for h in headers))


def chat_once(port: int, stream: bool = False,
              headers: list[str] | None = None) -> tuple[int, bytes]:
    body = json.dumps({"model": ROUTE, "stream": stream,
                       "messages": [{"role": "user", "content": "hello"}]})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"content-type": "application/json",
                              **header_dict(headers or [])})
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


def sanity_check(port: int, headers: list[str] | None = None) -> str | None:
    """None when a plain and a streamed chat request both come back whole."""
    try:
        status, body = chat_once(port, headers=headers)
        if status != 200 or "choices" not in json.loads(body):
            return "chat answered %d: %r" % (status, body[:200])
        status, body = chat_once(port, stream=True, headers=headers)
        if status != 200 or b"[DONE]" not in body:
            return "streamed chat answered %d: %r" % (status, body[:200])
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return "chat request failed: %s" % exc
    return None


# === measuring ===

def run_load(port: int, connections: int, stream: bool, seconds: float, warmup: float,
             body_size: int, cpu: int | None, tmp: Path, tag: str,
             headers: list[str] | None = None, during=None) -> dict:
    """One load.py run; ``during`` is called halfway through the measured window."""
    out = tmp / ("load-%s.json" % tag)
    cmd = [sys.executable, str(LOAD), "--url", "http://127.0.0.1:%d/v1/chat/completions" % port,
           "--model", ROUTE, "--connections", str(connections), "--duration", str(seconds),
           "--warmup", str(warmup), "--body-size", str(body_size), "--timeout", "10",
           "--json", str(out), "--quiet"]
    if stream:
        cmd.append("--stream")
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    for header in headers or ():
        cmd += ["--header", header]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        if during is not None:
            # load.py starts its clock after its own start-up (~0.1 s): close enough to
            # land inside the window.
            time.sleep(max(0.0, t0 + warmup + seconds / 2 - time.perf_counter()))
            if proc.poll() is None:
                during()
        _, stderr = proc.communicate(timeout=max(1.0, t0 + seconds + warmup + 60
                                                 - time.perf_counter()))
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError("load.py failed (%d): %s" % (proc.returncode, stderr[-2000:]))
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


def measure(target: Proc, sim: Proc, scenario: dict, args, cpus: dict, tmp: Path,
            during=None) -> dict:
    sim_cpu0 = sim.cpu_s()
    cpu0 = target.cpu_s()
    machine0, gen0 = machine_cpu(), children_cpu()
    t0 = time.perf_counter()
    result = run_load(target.port, scenario["connections"], scenario["stream"], args.seconds,
                      args.warmup, args.body_size, cpus["load"], tmp,
                      "%s-%s" % (target.name, scenario["name"]), target.headers, during)
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
C64 = SCENARIOS[1]


def run_scenarios(live: dict[str, Proc], sim: Proc, scenarios, args, cpus: dict, tmp: Path,
                  report: dict, c64_args=None) -> None:
    """Each scenario against each live target, into report["targets"][name]["scenarios"]
    (c64 with ``c64_args`` instead of ``args`` when given)."""
    for scenario in scenarios:
        if scenario.get("paced"):
            sim_config(sim.port, tokens_per_s=args.paced_tokens_per_s)
        try:
            for name, proc in live.items():
                print("compare: %s %s ..." % (name, scenario["name"]), file=sys.stderr,
                      flush=True)
                try:
                    res = measure(proc, sim, scenario,
                                  c64_args if c64_args and scenario is C64 else args, cpus, tmp)
                except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
                    res = {"error": str(exc)}
                if not proc.alive():
                    res = {"error": "%s exited with %s:\n%s" % (
                        name, proc.popen.returncode, log_tail(proc.log_path))}
                report["targets"][name].setdefault("scenarios", {})[scenario["name"]] = res
        finally:
            if scenario.get("paced"):
                sim_config(sim.port, tokens_per_s=None)


def idle_facts(proc: Proc) -> dict:
    return {"pid": proc.pid, "port": proc.port, "startup_s": round(proc.startup_s, 3),
            "rss_idle_mb": round((proc.status_kb("VmRSS") or 0) / 1024, 1)}


def after_facts(proc: Proc) -> dict:
    facts = {"rss_after_mb": round((proc.status_kb("VmRSS") or 0) / 1024, 1),
             "rss_peak_mb": round((proc.status_kb("VmHWM") or 0) / 1024, 1)}
    if proc.tree:
        facts["processes"] = len(proc.pids())
    return facts


# === peers: LiteLLM and Portkey, installed into bench/.peers on first use ===

class PeerUnavailable(Exception):
    """A peer that cannot be installed or started; the message goes into the report."""


def short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def run_install(name: str, label: str, cmd: list[str], log_path: Path) -> None:
    print("compare: %s: %s (log: %s)" % (name, " ".join(cmd), rel(log_path)), file=sys.stderr,
          flush=True)
    with open(log_path, "ab") as log:
        log.write(("\n$ %s\n" % " ".join(cmd)).encode())
        log.flush()
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise PeerUnavailable("`%s` took more than %d s" % (label, INSTALL_TIMEOUT))
        except OSError as exc:
            raise PeerUnavailable("cannot run %s: %s" % (cmd[0], exc))
    if proc.returncode != 0:
        lines = log_tail(log_path, 300).splitlines()
        # npm says what went wrong first (then a stack), pip last.
        errors = [ln for ln in lines if ln.lower().startswith(("error", "npm error", "npm err!"))
                  and " at " not in ln and "complete log" not in ln]
        picked = list(dict.fromkeys(errors[:4] + errors[-1:])) or lines[-2:]
        raise PeerUnavailable("`%s` failed (exit %d): %s (full log: %s)" % (
            label, proc.returncode, short(" | ".join(picked), 400), rel(log_path)))


def not_installed(where: Path) -> PeerUnavailable:
    return PeerUnavailable("not installed in %s, and --quick never installs a peer (a first "
                           "install takes minutes): run once without --quick" % rel(where))


def install_litellm(may_install: bool) -> dict:
    venv = PEERS_DIR / "litellm-venv"
    python, cli = venv / "bin" / "python", venv / "bin" / "litellm"
    # Written after a complete install: a venv left half-done by an interrupted pip is
    # installed again rather than trusted.
    marker = venv / ".llmedge-installed"
    installed_now = False
    if not (marker.exists() and cli.exists()):
        if not may_install:
            raise not_installed(venv)
        PEERS_DIR.mkdir(exist_ok=True)
        log = PEERS_DIR / "litellm-install.log"
        print("compare: installing LiteLLM into %s (first use; this takes a few minutes)"
              % rel(venv), file=sys.stderr, flush=True)
        if not python.exists():
            run_install("litellm", "python -m venv", [sys.executable, "-m", "venv", str(venv)],
                        log)
        run_install("litellm", "pip install 'litellm[proxy]'",
                    [str(python), "-m", "pip", "install", "--disable-pip-version-check",
                     "litellm[proxy]"], log)
        if not cli.exists():
            raise PeerUnavailable("pip installed litellm[proxy] but %s is missing" % rel(cli))
        marker.write_text("pip install 'litellm[proxy]'\n")
        installed_now = True
    code = ("import importlib.metadata as m, json, sys; v = lambda n: m.version(n); "
            "print(json.dumps({'litellm': v('litellm'), 'uvicorn': v('uvicorn'), "
            "'python': sys.version.split()[0]}))")
    try:
        versions = json.loads(subprocess.run([str(python), "-c", code], capture_output=True,
                                             text=True, timeout=60).stdout)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        raise PeerUnavailable("cannot read the versions in %s: %s" % (rel(venv), exc))
    return {"cli": str(cli), "dir": rel(venv), "installed_now": installed_now,
            "version": versions["litellm"], "uvicorn": versions["uvicorn"],
            "python": versions["python"],
            "describe": "LiteLLM %s (proxy CLI, uvicorn %s, 1 worker, Python %s)" % (
                versions["litellm"], versions["uvicorn"], versions["python"])}


def package_version(path: Path) -> str | None:
    try:
        return json.loads(path.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def install_portkey(may_install: bool) -> dict:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None:
        raise PeerUnavailable("node is not on PATH (the Portkey gateway is a Node.js server)")
    root = PEERS_DIR / "portkey"
    gateway = root / "node_modules" / "@portkey-ai" / "gateway"
    script = gateway / "build" / "start-server.js"
    marker = root / ".llmedge-installed"
    installed_now = False
    if not (marker.exists() and script.exists()):
        if not may_install:
            raise not_installed(root)
        if npm is None:
            raise PeerUnavailable("npm is not on PATH")
        root.mkdir(parents=True, exist_ok=True)
        package = root / "package.json"
        try:
            spec = json.loads(package.read_text())
        except (OSError, ValueError):
            spec = {}
        spec.update(PORTKEY_PACKAGE_JSON)
        package.write_text(json.dumps(spec, indent=1) + "\n")
        print("compare: installing the Portkey gateway into %s (first use)" % rel(root),
              file=sys.stderr, flush=True)
        run_install("portkey", "npm install @portkey-ai/gateway",
                    [npm, "install", "--prefix", str(root), "--no-audit", "--no-fund",
                     "@portkey-ai/gateway"], PEERS_DIR / "portkey-install.log")
        if not script.exists():
            raise PeerUnavailable("npm installed @portkey-ai/gateway but %s is missing"
                                  % rel(script))
        marker.write_text("npm install @portkey-ai/gateway\n")
        installed_now = True
    version = package_version(gateway / "package.json")
    # Node resolves the gateway's own nested copy first, if npm made one.
    hono = (package_version(gateway / "node_modules" / "@hono" / "node-server" / "package.json")
            or package_version(root / "node_modules" / "@hono" / "node-server" / "package.json"))
    node_version = subprocess.run([node, "--version"], capture_output=True,
                                  text=True).stdout.strip()
    return {"node": node, "script": str(script), "dir": rel(root),
            "installed_now": installed_now, "version": version, "node_version": node_version,
            "hono_node_server": hono,
            "describe": "@portkey-ai/gateway %s (node %s, @hono/node-server %s pinned)" % (
                version, node_version, hono)}


def http_status(port: int, path: str) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def start_http_server(name: str, cmd: list[str], port: int, ready_path: str, cpu: int | None,
                      tmp: Path, env: dict, headers: list[str]) -> Proc:
    """Start a peer gateway; ready when ``ready_path`` answers 200. Its working directory
    is the run's temporary folder, so whatever it writes there goes away with it."""
    try:
        return start_server(name, cmd, port, cpu, tmp, env=env, cwd=tmp, tree=True,
                            headers=headers, timeout=PEER_STARTUP_TIMEOUT,
                            ready=lambda: http_status(port, ready_path) == 200)
    except RuntimeError as exc:
        raise PeerUnavailable(short(str(exc))) from None


def start_litellm(info: dict, sim_port: int, cpu: int | None, tmp: Path) -> Proc:
    port = free_port()
    # LiteLLM refuses to start without a master key; a fresh one per run keeps the proxy
    # closed to anything but this benchmark.
    key = "sk-bench-" + secrets.token_hex(16)
    cfg = tmp / "litellm.yaml"
    cfg.write_text(LITELLM_CONFIG.format(route=ROUTE, port=sim_port, master_key=key))
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "DATABASE_URL", "LITELLM_MASTER_KEY",
                        "REDIS_HOST", "REDIS_URL")}
    env.update(LITELLM_ENV)
    cmd = [info["cli"], "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
           "--num_workers", "1"]
    return start_http_server("litellm", cmd, port, "/health/liveliness", cpu, tmp, env,
                             ["Authorization: Bearer %s" % key])


def start_portkey(info: dict, sim_port: int, cpu: int | None, tmp: Path) -> Proc:
    port = free_port()
    # The open-source gateway keeps no routes of its own: each request names its targets.
    # A fallback over two targets is the counterpart of llmedge's ordered two-deployment
    # route; custom_host points the openai provider at the simulator (127.0.0.1 is a
    # trusted custom host by default).
    target = {"provider": "openai", "api_key": "sk-bench",
              "custom_host": "http://127.0.0.1:%d/v1" % sim_port}
    config = {"strategy": {"mode": "fallback"}, "targets": [target, dict(target)]}
    env = dict(os.environ, NODE_ENV="production")
    cmd = [info["node"], "--require", str(PEER_HELPERS / "portkey_loopback.cjs"),
           info["script"], "--port=%d" % port, "--headless"]
    return start_http_server("portkey", cmd, port, "/", cpu, tmp, env,
                             ["x-portkey-config: %s" % json.dumps(config, separators=(",", ":"))])


PEER_INSTALL = {"litellm": install_litellm, "portkey": install_portkey}
PEER_START = {"litellm": start_litellm, "portkey": start_portkey}


def measure_peer(name: str, info: dict, sim: Proc, scenarios, args, cpus: dict, tmp: Path,
                 report: dict) -> None:
    """Start one peer, measure it like the others, stop it: peers run one at a time so an
    idle peer's housekeeping never lands on the proxy core during someone else's run."""
    peer = report["peers"][name]
    try:
        proc = PEER_START[name](info, sim.port, cpus["proxy"], tmp)
    except PeerUnavailable as exc:
        peer["status"] = "not available: %s" % exc
        report["targets"][name] = {"skipped": peer["status"]}
        return
    try:
        time.sleep(0.2)
        entry = report["targets"][name] = idle_facts(proc)
        entry["accounting"] = "process tree"
        problem = sanity_check(proc.port, proc.headers)
        if problem:
            peer["status"] = "not available: sanity check failed: %s" % problem
            report["targets"][name] = {"skipped": peer["status"]}
            return
        c64_args = None
        if args.quick:
            c64_args = argparse.Namespace(**vars(args))
            c64_args.seconds = max(args.seconds, PEER_QUICK_C64["seconds"])
            c64_args.warmup = max(args.warmup, PEER_QUICK_C64["warmup"])
            entry["c64_window"] = {"seconds": c64_args.seconds, "warmup": c64_args.warmup}
        run_scenarios({name: proc}, sim, scenarios, args, cpus, tmp, report, c64_args)
        if proc.alive():
            entry.update(after_facts(proc))
        peer["status"] = "measured"
        peer["processes"] = entry.get("processes")
    finally:
        proc.stop()


# === llmedge --workers: CPU per request and each worker's share ===

def worker_cpus(cpus: dict, n: int) -> tuple[set[int] | None, bool]:
    """The CPUs ``n`` workers may use, and whether the load CPU is one of them (it must be
    when the machine has no other n CPUs)."""
    if cpus["proxy"] is None:
        return None, False
    usable = sorted(os.sched_getaffinity(0))
    others = [c for c in usable if c != cpus["load"]]
    if len(others) >= n:
        return set(others[:n]), False
    return set(usable), True


def established_by_pid(pids: list[int], port: int) -> dict[int, int]:
    """Established connections on local ``port`` held by each process (clients of a
    worker), matched through the socket inodes in /proc/net/tcp*."""
    inodes: set[str] = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if (len(parts) > 9 and parts[3] == "01"
                            and int(parts[1].rsplit(":", 1)[1], 16) == port):
                        inodes.add(parts[9])
        except OSError:
            pass
    counts = {}
    for pid in pids:
        n = 0
        try:
            fds = os.listdir("/proc/%d/fd" % pid)
        except OSError:
            fds = []
        for fd in fds:
            try:
                link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                n += 1
        counts[pid] = n
    return counts


def workers_run(n: int, cfg: Path, affinity: set[int] | None, sim: Proc, args, cpus: dict,
                tmp: Path) -> dict:
    port = free_port()   # --workers needs a fixed port: each worker binds it (SO_REUSEPORT)
    cmd = [sys.executable, "-m", "proxy", "--log-level", "warning", "serve", "-c", str(cfg),
           "--workers", str(n), "--http", "127.0.0.1:%d" % port]
    try:
        proc = start_listening("llmedge-workers-%d" % n, cmd, None, tmp, count=n,
                               affinity=affinity)
    except RuntimeError as exc:
        return {"error": str(exc)}
    # The same accounting for 1 worker as for 2: the whole tree (for 1 it is one process).
    proc.tree = True
    try:
        workers = [p for p in proc.pids() if p != proc.pid] if n > 1 else [proc.pid]
        if len(workers) != n:
            return {"error": "expected %d worker processes, found %d" % (n, len(workers))}
        problem = sanity_check(port)
        if problem:
            return {"error": "sanity check failed: %s" % problem}
        before = {pid: pid_cpu_s(pid) for pid in workers}
        conns: dict[int, int] = {}
        try:
            res = measure(proc, sim, C64, args, cpus, tmp,
                          during=lambda: conns.update(established_by_pid(workers, port)))
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
            return {"error": str(exc)}
        if not proc.alive():
            return {"error": "llmedge --workers %d exited with %s:\n%s" % (
                n, proc.popen.returncode, log_tail(proc.log_path))}
        used = {}
        for pid in workers:
            try:
                used[pid] = pid_cpu_s(pid) - before[pid]
            except (OSError, IndexError, ValueError):
                return {"error": "worker %d exited during the run:\n%s" % (
                    pid, log_tail(proc.log_path))}
        total = sum(used.values()) or 1e-9
        res["workers"] = [{"pid": pid, "cpu_s": round(used[pid], 3),
                           "cpu_share": round(used[pid] / total, 3),
                           "connections": conns.get(pid)} for pid in workers]
        res["workers_cpu_s"] = round(sum(used.values()), 3)
        res["parent_cpu_s"] = round(res["target_cpu_s"] - sum(used.values()), 3) if n > 1 \
            else 0.0
        res["rss_peak_mb"] = round((proc.status_kb("VmHWM") or 0) / 1024, 1)
        return res
    finally:
        proc.stop()


def workers_check(cfg: Path, sim: Proc, args, cpus: dict, tmp: Path) -> dict:
    """c64 against llmedge --workers 1 and --workers WORKERS, both allowed the same CPUs."""
    affinity, shared = worker_cpus(cpus, WORKERS)
    out = {"workers": WORKERS, "cpus": sorted(affinity) if affinity else None,
           "shares_load_cpu": shared, "load_cpu": cpus["load"], "runs": {}}
    for n in (1, WORKERS):
        print("compare: llmedge --workers %d c64 ..." % n, file=sys.stderr, flush=True)
        out["runs"][str(n)] = workers_run(n, cfg, affinity, sim, args, cpus, tmp)
    one, many = out["runs"]["1"], out["runs"][str(WORKERS)]
    summary: dict = {"ok": "error" not in one and "error" not in many}
    if summary["ok"]:
        c1, cn = one["target_cpu_us_per_request"], many["target_cpu_us_per_request"]
        fair = 1.0 / WORKERS
        shares = [w["cpu_share"] for w in many["workers"]]
        summary.update({
            "cpu_us_per_request_1": c1, "cpu_us_per_request_%d" % WORKERS: cn,
            "ratio": round(cn / c1, 3) if c1 else None,
            "rps_1": one["achieved_rps"], "rps_%d" % WORKERS: many["achieved_rps"],
            "min_worker_share": min(shares),
            "starved_workers": [w["pid"] for w in many["workers"]
                                if w["cpu_share"] < STARVED_SHARE * fair],
            "errors": one["error_count"] + many["error_count"],
        })
    out["summary"] = summary
    return out


# === facts about the run ===

def fastpath_implementation() -> str:
    code = "import _fastpath; print(_fastpath.IMPLEMENTATION)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown (%s)" % proc.stderr.strip()[-200:]


def nginx_version(nginx: str) -> str:
    proc = subprocess.run([nginx, "-v"], capture_output=True, text=True)
    return (proc.stderr or proc.stdout).strip().rpartition("/")[2]


def meta(args, cpus: dict, nginx: str | None) -> dict:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "git": git_state(),
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
            "accounting": t.get("accounting", "process"),
            "processes": t.get("processes"),
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


def budget(rows: dict, workers: dict | None = None) -> list[dict]:
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
    what = "--workers %d keeps CPU per request within 10%% of 1 worker's, no worker starved" \
        % WORKERS
    ws = (workers or {}).get("summary")
    if not workers:
        line(what, "1.10x", None, None, "not measured in this run (--workers-check)")
    elif not ws["ok"] or ws["ratio"] is None:
        why = "; ".join("%s worker(s): %s" % (n, short(r["error"], 160))
                        for n, r in workers["runs"].items() if "error" in r)
        line(what, "1.10x", None, None, "failed: %s" % (why or "no requests"))
    else:
        starved = ws["starved_workers"]
        line(what, "1.10x", "%.2fx (%.1f vs %.1f µs/req); lowest worker CPU share %.0f%%" % (
            ws["ratio"], ws["cpu_us_per_request_%d" % WORKERS], ws["cpu_us_per_request_1"],
            100 * ws["min_worker_share"]),
            ws["ratio"] <= 1.10 and not starved and not ws["errors"],
            ("starved: %s; " % ", ".join(map(str, starved)) if starved else "")
            + ("errors during the runs; " if ws["errors"] else "")
            + "CPU summed over the whole process tree; the workers were allowed CPUs %s%s" % (
                ",".join(map(str, workers["cpus"])) if workers["cpus"] else "any",
                ", shared with the simulator and the load generator"
                if workers["shares_load_cpu"] else ""))
    return lines


def _n(v, fmt="%d"):
    return "-" if v is None else fmt % v


def markdown(report: dict) -> str:
    m = report["meta"]
    rows = report["summary"]
    out = ["## llmedge vs direct%s" % "".join(" vs %s" % n for n in ("nginx", *report["peers"])
                                              if n in rows), ""]
    git = m["git"]
    out.append("- machine: %s, nproc %s, Linux %s" % (m["cpu_model"], m["nproc"], m["kernel"]))
    out.append("- Python %s, %s, httptools %s, _fastpath %s, nginx %s, git %s%s" % (
        m["python"], m["loop"], m["httptools"], m["fastpath"], m["nginx"] or "not installed",
        (git["sha"] or "?")[:12], " (dirty)" if git["dirty"] else ""))
    p = m["pinning"]
    for name, describe in m.get("peers", {}).items():
        out.append("- peer %s: %s" % (name, describe))
    out.append("- pinning: %s" % (
        "proxies%s on CPU %s; simulator and load generator on CPU %s" % (
            " and peers" if m.get("peers") else "", p["proxy"], p["load"])
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
    for name, peer in report["peers"].items():
        if name not in rows:
            out.append("| %s | %s |%s" % (name, short(peer["status"], 240), " |" * 11))
    windows = [(n, t["c64_window"]) for n, t in report["targets"].items() if "c64_window" in t]
    if windows:
        out += ["", "Under --quick a peer's c64 load runs longer (%s): one round of 64 requests "
                "through LiteLLM takes about half a second." % ", ".join(
                    "%s: %gs after %gs warm-up" % (n, w["seconds"], w["warmup"])
                    for n, w in windows)]
    trees = [(n, r["processes"]) for n, r in rows.items() if r["accounting"] == "process tree"]
    if trees:
        out += ["", "%s: CPU and RSS summed over the whole process tree (%s at the end of the "
                "run); peak RSS is the sum of each process's own peak." % (
                    ", ".join(n for n, _ in trees),
                    ", ".join("%s: %s process%s" % (n, _n(c), "" if c == 1 else "es")
                              for n, c in trees))]
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
                "spacing is not a batching delay. 0 µs between chunks means they arrived "
                "together, all held back and then sent at once.)"]
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
    peer_rows = [(n, rows[n]) for n in report["peers"] if n in rows]
    if le and le["c64_cpu_us_per_request"] and peer_rows:
        out += ["", "Peers / llmedge at 64 connections: %s" % "; ".join(
            "%s CPU per request %s, requests/s %s" % (
                n, _n(r["c64_cpu_us_per_request"] and r["c64_cpu_us_per_request"]
                      / le["c64_cpu_us_per_request"], "%.1fx"),
                _n(r["c64_rps"] and r["c64_rps"] / (le["c64_rps"] or 1), "%.3fx"))
            for n, r in peer_rows)]
    out += baseline_markdown(report)
    out += workers_markdown(report.get("workers"), rows.get("llmedge"))
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
        if "skipped" in t and name not in report["peers"]:
            out += ["", "%s: skipped (%s)" % (name, t["skipped"])]
        for sname, res in t.get("scenarios", {}).items():
            if "error" in res:
                out += ["", "%s %s: failed: %s" % (name, sname, res["error"])]
    for name, peer in report["peers"].items():
        out += ["", "peer %s: %s" % (name, peer["status"])]
    return "\n".join(out) + "\n"


def workers_markdown(workers: dict | None, le: dict | None) -> list[str]:
    if not workers:
        return []
    n = workers["workers"]
    cpus = ",".join(map(str, workers["cpus"])) if workers["cpus"] else None
    out = ["", "### llmedge --workers %d against 1 worker (64 connections, non-streaming)" % n,
           "", "Both runs allowed CPUs %s%s. CPU is summed over the whole process tree (the "
           "parent that forks the workers, and the workers)." % (
               cpus or "any (no pinning)",
               ": a worker per core needs both cores, so the workers share CPU %s with the "
               "simulator and the load generator" % workers["load_cpu"]
               if workers["shares_load_cpu"] else ""), "",
           "| workers | req/s | CPU µs/req | c64 p50 µs | c64 p99 µs | errors | per worker: "
           "CPU s (share of the workers' CPU), connections |", "|---:|---:|---:|---:|---:|---:|---|"]
    for k, r in workers["runs"].items():
        if "error" in r:
            out.append("| %s | failed: %s | | | | | |" % (k, short(r["error"], 200)))
            continue
        out.append("| %s | %.0f | %.1f | %s | %s | %d | %s%s |" % (
            k, r["achieved_rps"], r["target_cpu_us_per_request"],
            _n(pct(r, "latency_us", "p50")), _n(pct(r, "latency_us", "p99")), r["error_count"],
            "; ".join("pid %d: %.2f s (%.0f%%), %s conn" % (
                w["pid"], w["cpu_s"], 100 * w["cpu_share"], _n(w["connections"]))
                for w in r["workers"]),
            "; parent %.2f s" % r["parent_cpu_s"] if k != "1" else ""))
    s = workers["summary"]
    if s["ok"] and s["ratio"] is not None:
        out += ["", "%d workers / 1 worker: CPU per request %.2fx (budget <= 1.10x), "
                "requests/s %.2fx; lowest worker CPU share %.0f%% (fair: %.0f%%; starved "
                "below %.0f%%)%s." % (
                    n, s["ratio"], s["rps_%d" % n] / (s["rps_1"] or 1),
                    100 * s["min_worker_share"], 100 / n, 100 * STARVED_SHARE / n,
                    "" if not le or not le["c64_cpu_us_per_request"] else
                    "; llmedge pinned to one core in the table above: %.1f µs/req" %
                    le["c64_cpu_us_per_request"])]
    return out


# === main ===

def git_state_of(tree: Path) -> dict:
    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(tree), *cmd], capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    return {"sha": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


ROUND_SCENARIOS = (C64, SCENARIOS[2])


def baseline_rounds(llmedge: Proc, baseline: Proc, sim: Proc, args, cpus: dict,
                    tmp: Path) -> dict:
    """CPU µs per request of llmedge and the baseline, ``args.rounds`` times each, the order
    swapped every round so drift in the machine's speed falls on both alike."""
    out: dict = {}
    for scenario in ROUND_SCENARIOS:
        pairs = []
        for i in range(args.rounds):
            order = (llmedge, baseline) if i % 2 == 0 else (baseline, llmedge)
            got = {}
            for proc in order:
                print("compare: round %d %s %s ..." % (i + 1, proc.name, scenario["name"]),
                      file=sys.stderr, flush=True)
                got[proc.name] = measure(proc, sim, scenario, args, cpus, tmp)[
                    "target_cpu_us_per_request"]
            pairs.append((got["llmedge"], got["baseline"]))
        ratios = sorted(a / b for a, b in pairs if b)
        out[scenario["name"]] = {
            "pairs_cpu_us_per_request": pairs,
            "ratio_median": round(ratios[len(ratios) // 2], 3) if ratios else None,
            "ratio_min": round(ratios[0], 3) if ratios else None,
            "ratio_max": round(ratios[-1], 3) if ratios else None,
        }
    return out


def baseline_markdown(report: dict) -> list[str]:
    """llmedge against the baseline checkout, as ratios of the same run."""
    rows, base = report["summary"], report["meta"].get("baseline")
    le, bl = rows.get("llmedge"), rows.get("baseline")
    if not base or not le or not bl:
        return []
    out = ["", "`baseline` is the llmedge of %s (git %s%s); llmedge / baseline, same run:" % (
        base["tree"], (base["git"]["sha"] or "?")[:12], " (dirty)" if base["git"]["dirty"]
        else ""), ""]
    for key, what in (("c64_cpu_us_per_request", "c64 CPU µs per request"),
                      ("c64_rps", "c64 requests/s"),
                      ("added_c1_p50_us", "added p50 at 1 connection"),
                      ("added_stream_ttfb_p50_us", "added stream TTFB p50")):
        a, b = le.get(key), bl.get(key)
        if a is not None and b:
            out.append("- %s: %s / %s = %.3f" % (what, _n(a, "%.1f"), _n(b, "%.1f"), a / b))
    for name, r in (report.get("rounds") or {}).items():
        out.append("- %s CPU µs per request over %d alternating rounds (llmedge / baseline): "
                   "median ratio %s (min %s, max %s); pairs %s" % (
                       name, len(r["pairs_cpu_us_per_request"]), r["ratio_median"],
                       r["ratio_min"], r["ratio_max"], ", ".join(
                           "%s/%s" % (_n(a, "%.1f"), _n(b, "%.1f"))
                           for a, b in r["pairs_cpu_us_per_request"])))
    return out


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
    p.add_argument("--peers", default="",
                   help="also measure these peers (litellm,portkey), installed on first use "
                        "into bench/.peers/")
    p.add_argument("--workers-check", action=argparse.BooleanOptionalAction, default=None,
                   help="measure llmedge --workers %d against 1 worker (default: on, except "
                        "with --quick)" % WORKERS)
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="on a shared machine, wait up to this long for other processes to "
                        "go quiet before measuring")
    p.add_argument("--profile", default=None, metavar="PATH",
                   help="run llmedge under cProfile and write its stats here "
                        "(its numbers are then not comparable)")
    p.add_argument("--baseline", default=None, metavar="TREE",
                   help="also measure the llmedge of this checkout (its _fastpath built in "
                        "place), as target 'baseline', right after llmedge in each load")
    p.add_argument("--rounds", type=int, default=0, metavar="N",
                   help="with --baseline: N more rounds of c64 and stream_c1 CPU per request "
                        "on llmedge and the baseline, their order swapped every round, and "
                        "the median of the per-round ratios")
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

    workers_check_on = (args.workers_check if args.workers_check is not None
                        else not args.quick)

    # Installs first: pip and npm must not count as background load, nor run during a
    # measurement.
    peer_info: dict[str, dict] = {}
    peer_status: dict[str, dict] = {}
    for peer in peers:
        t0 = time.perf_counter()
        try:
            info = peer_info[peer] = PEER_INSTALL[peer](not args.quick)
            peer_status[peer] = {"status": "installed", "version": info["version"],
                                 "details": {k: v for k, v in info.items()
                                             if k not in ("describe",)},
                                 "install_s": round(time.perf_counter() - t0, 1)
                                 if info["installed_now"] else None}
        except PeerUnavailable as exc:
            peer_status[peer] = {"status": "not available: %s" % exc, "version": None}
            print("compare: peer %s: %s" % (peer, peer_status[peer]["status"]),
                  file=sys.stderr)

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
    report["peers"] = peer_status
    for peer, status in peer_status.items():
        if peer not in peer_info:
            report["targets"][peer] = {"skipped": status["status"]}
    report["meta"]["peers"] = {n: i["describe"] for n, i in peer_info.items()}
    report["meta"]["workers_check"] = workers_check_on
    scenarios = [s for s in SCENARIOS if not (s.get("paced") and args.quick)]

    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="llmedge-compare-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            sim = start_listening("simulator", [sys.executable, "-m", "proxy.sim",
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
            cfg = tmp / "llmedge.yaml"
            cfg.write_text(LLMEDGE_CONFIG.format(port=sim.port, route=ROUTE))
            if "llmedge" in targets:
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
            if args.baseline:
                tree = Path(args.baseline).resolve()
                base = start_listening("baseline", [sys.executable, "-m", "proxy", "--log-level",
                                                    "warning", "serve", "-c", str(cfg)],
                                       cpus["proxy"], tmp, cwd=tree,
                                       env=dict(os.environ, PYTHONPATH=str(tree)))
                procs.append(base)
                live["baseline"] = base
                report["meta"]["baseline"] = {"tree": str(tree), "git": git_state_of(tree)}
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

            run_scenarios(live, sim, scenarios, args, cpus, tmp, report)
            if args.baseline and args.rounds > 0 and {"llmedge", "baseline"} <= set(live):
                report["rounds"] = baseline_rounds(live["llmedge"], live["baseline"], sim,
                                                   args, cpus, tmp)
            for name, proc in live.items():
                report["targets"][name].update(after_facts(proc))
            # From here on only the simulator is needed: an idle proxy left running would
            # share the proxy core with whatever is measured next.
            for proc in procs:
                if proc is not sim:
                    proc.stop()

            for peer, info in peer_info.items():
                measure_peer(peer, info, sim, scenarios, args, cpus, tmp, report)
            if workers_check_on:
                report["workers"] = workers_check(cfg, sim, args, cpus, tmp)
        finally:
            for proc in reversed(procs):
                proc.stop()

    report["summary"] = summarise(report["targets"])
    report["budget"] = budget(report["summary"], report.get("workers"))
    if args.profile:
        report["meta"]["profile"] = os.path.abspath(args.profile)
    text = markdown(report)
    sys.stdout.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    # A peer that is not available is reported, not a failure of the run.
    failed = [n for n, t in report["targets"].items() if "error" in t and n not in peers]
    return 1 if failed or not report["summary"] else 0


if __name__ == "__main__":
    sys.exit(main())
