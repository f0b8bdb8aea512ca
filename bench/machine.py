"""Process and machine helpers shared by the bench scripts.

What is here: facts about the machine and the run (CPU model, git commit, package
versions), readers of /proc/PID/stat and /proc/PID/status, the one way the bench scripts
start processes (``spawn``) and servers (``start_listening`` waits for the LISTENING line
llmedge, the simulator and the floor print; ``start_server`` for servers that print
nothing machine-readable: nginx, redis, the peer gateways), ``Proc`` for a started server,
stopping a started process, CPU pinning (choosing the proxy and load CPUs, pinning a
started process or a child before exec) and the tail of a log file for error messages.
Linux only where /proc, prctl or sched_setaffinity is involved.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import platform
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
STOP_TIMEOUT = 15.0
STARTUP_TIMEOUT = 30.0
HOST = "127.0.0.1"          # every server a bench script starts listens here only
PR_SET_PDEATHSIG = 1
try:
    # Loaded here, not in the child between fork and exec: a parent with threads (a
    # watchdog timer) could hold the loader's lock at the fork.
    _LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None


# === /proc readers ===

def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state is [0], ppid [1])."""
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rpartition(")")[2].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(proc_stat(int(entry))[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree = [pid]
    for p in tree:
        tree.extend(children.get(p, ()))
    return tree


def pid_cpu_s(pid: int, reaped_children: bool = False) -> float:
    """utime + stime of one process (all its threads); with ``reaped_children`` also the CPU
    of the children it has waited for, so a child that exits between two samples of a tree
    still counts once. Raises OSError (and IndexError/ValueError) as proc_stat does."""
    fields = proc_stat(pid)
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def pid_status_kb(pid: int, key: str) -> int | None:
    """A /proc/PID/status figure in kB (VmRSS, VmHWM, ...), or None if unreadable."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


# === processes ===

def stop_popen(popen: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> int | None:
    """SIGTERM, wait, then SIGKILL; the exit code (negative when killed by a signal). Closes
    the process's stdout pipe, if any."""
    if popen.poll() is None:
        try:
            popen.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        code = popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        code = popen.wait()
    if popen.stdout is not None:
        popen.stdout.close()
    return code


def spawn(cmd: list[str], *, cwd: Path = REPO, env: dict | None = None,
          stdin=subprocess.DEVNULL,
          stdout=None, stderr=None, affinity: set[int] | None = None,
          own_session: bool = False) -> subprocess.Popen:
    """Start ``cmd``, pinned to ``affinity`` before exec. ``own_session``: in a session of
    its own, so a Ctrl-C at the terminal reaches the bench script alone (which then stops
    its children in order), and sent SIGTERM should the script die without stopping it."""
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr,
                            text=True, start_new_session=own_session,
                            preexec_fn=_at_exec(affinity, own_session))


def _at_exec(affinity: set[int] | None, die_with_parent: bool):
    if not affinity and not die_with_parent:
        return None

    def setup() -> None:
        if die_with_parent and _LIBC is not None:
            try:
                _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            except AttributeError:
                pass    # not Linux: the script's own clean-up still stops it
        if affinity:
            os.sched_setaffinity(0, affinity)
    return setup


# === CPU pinning ===

class Proc:
    """A started server process and what /proc says about it.

    With ``tree`` (peers, llmedge --workers) CPU and memory are summed over the process and
    all its descendants, since the work may happen in any of them."""

    def __init__(self, name: str, popen: subprocess.Popen, port: int, startup_s: float,
                 log_path: Path, tree: bool = False, headers: list[str] | None = None) -> None:
        self.name = name
        self.popen = popen
        self.pid = popen.pid
        self.port = port
        self.startup_s = startup_s
        self.log_path = log_path
        self.tree = tree
        self.headers = headers or []
        self.lines: list[str] = []      # the LISTENING lines it printed
        self.url = ""                   # a simulator's API base URL

    def pids(self) -> list[int]:
        return process_tree(self.pid) if self.tree else [self.pid]

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process (all its threads), or of its tree."""
        if not self.tree:
            return pid_cpu_s(self.pid)
        total = 0.0
        for pid in self.pids():
            try:
                total += pid_cpu_s(pid, reaped_children=True)
            except (OSError, IndexError, ValueError):
                pass        # exited meanwhile: its parent's reaped-children time has it
        return total

    def status_kb(self, key: str) -> int | None:
        """A /proc/PID/status figure in kB; for a tree, the sum over its processes (for VmHWM
        an upper bound: the processes need not peak at the same moment)."""
        values = [v for v in (pid_status_kb(p, key) for p in self.pids()) if v is not None]
        return sum(values) if values else None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> int | None:
        pids = self.pids() if self.tree and self.alive() else []
        code = stop_popen(self.popen)
        for pid in pids[1:]:
            # A descendant that outlived its parent would keep the port and a core busy.
            try:
                if proc_stat(pid)[0] != "Z":
                    os.kill(pid, signal.SIGKILL)
            except (OSError, IndexError):
                pass
        return code


def start_listening(name: str, cmd: list[str], cpu: int | None, tmp: Path,
                    env: dict | None = None, count: int = 1,
                    affinity: set[int] | None = None, cwd: Path = REPO,
                    tree: bool | None = None, own_session: bool = False,
                    started: list | None = None, proc_type: type[Proc] = Proc,
                    best_effort_pin: bool = False) -> Proc:
    """Start a process that prints ``LISTENING host:port`` when ready (llmedge, the
    simulator, the gRPC floor). ``count`` such lines for ``llmedge --workers`` (one per
    worker) or for llmedge with both front ends (``LISTENING-GRPC`` first); they are in
    ``Proc.lines``, and ``Proc.port`` is the HTTP one. ``tree`` (default: several lines)
    counts CPU and memory over the process's descendants too. ``started`` receives the
    Popen at once, so a caller's clean-up stops it whatever happens next; ``own_session``
    as for ``spawn``."""
    log_path = tmp / ("%s.log" % name)
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        popen = spawn(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=log,
                      affinity=affinity, own_session=own_session)
    if started is not None:
        started.append(popen)
    pin(popen.pid, cpu, best_effort=best_effort_pin)
    # Raw reads, not readline(): workers write their lines at about the same time, and a
    # line left in a file object's buffer is invisible to select().
    fd = popen.stdout.fileno()
    out = b""
    deadline = t0 + STARTUP_TIMEOUT
    while out.count(b"\n") < count and time.perf_counter() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            out += chunk
        elif popen.poll() is not None:
            break
    startup = time.perf_counter() - t0
    lines = [ln.strip() for ln in out.decode(errors="replace").splitlines()[:count]]
    if len(lines) < count or not all(ln.startswith("LISTENING") for ln in lines):
        Proc(name, popen, 0, startup, log_path).stop()
        raise RuntimeError("%s did not start (got %r):\n%s" % (name, out.decode(
            errors="replace"), log_tail(log_path)))
    away = [ln for ln in lines if ln.split()[-1].rpartition(":")[0] != HOST]
    if away:
        Proc(name, popen, 0, startup, log_path).stop()
        raise RuntimeError("%s listens beyond %s: %r" % (name, HOST, away))
    http = next((ln for ln in lines if ln.startswith("LISTENING ")), lines[0])
    proc = proc_type(name, popen, int(http.rsplit(":", 1)[1]), startup, log_path,
                     tree=count > 1 if tree is None else tree)
    proc.lines = lines
    return proc


def start_server(name: str, cmd: list[str], port: int, cpu: int | None, tmp: Path,
                 ready: Callable[[], bool] | None = None, env: dict | None = None,
                 cwd: Path = REPO, tree: bool = False, headers: list[str] | None = None,
                 timeout: float = STARTUP_TIMEOUT, started: list | None = None) -> Proc:
    """Start a server that says nothing machine-readable (nginx, redis, the peer gateways),
    its output in ``<tmp>/<name>.log``; ready once ``ready()`` (default: ``port`` accepts a
    connection) is true. Raises RuntimeError, with the log's tail, if it exits or is not
    ready within ``timeout`` seconds."""
    log_path = tmp / ("%s.log" % name)
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        popen = spawn(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                      affinity=None if cpu is None else {cpu})
    if started is not None:
        started.append(popen)
    proc = Proc(name, popen, port, 0.0, log_path, tree=tree, headers=headers)
    is_ready = ready or (lambda: accepting(port))
    while not is_ready():
        if popen.poll() is not None or time.perf_counter() - t0 > timeout:
            why = ("exited with %s" % popen.returncode if popen.poll() is not None
                   else "not ready after %.0f s" % timeout)
            proc.stop()
            raise RuntimeError("%s did not start (%s):\n%s" % (name, why, log_tail(log_path)))
        time.sleep(0.02)
    proc.startup_s = time.perf_counter() - t0
    return proc


def start_simulator(name: str, tmp: Path, *args: str, cpu: int | None = None) -> Proc:
    """``python -m proxy.sim`` on an ephemeral port; ``Proc.url`` is its API base URL."""
    proc = start_listening("sim-%s" % name, [sys.executable, "-m", "proxy.sim", "--port", "0",
                                             "--name", name, *args], cpu, tmp)
    proc.url = "http://%s:%d/v1" % (HOST, proc.port)
    return proc


def start_llmedge(config_text: str, tmp: Path, name: str = "llmedge", tree: Path = REPO,
                  cpu: int | None = None, args: tuple[str, ...] = ()) -> Proc:
    """``python -m proxy serve`` with this configuration; ``tree``: the llmedge of another
    checkout (its _fastpath built), for benches comparing two versions in one run."""
    config_path = tmp / ("%s.yaml" % name)
    config_path.write_text(config_text)
    env = dict(os.environ)
    if tree != REPO:
        env["PYTHONPATH"] = str(tree)
    return start_listening(name, [sys.executable, "-m", "proxy", "serve", "-c",
                                  str(config_path), *args], cpu, tmp, env=env, cwd=tree)


def http_call(port: int, method: str, path: str, body: object = None,
              timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
    """One request on a connection of its own: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data,
                     headers={"content-type": "application/json"} if data else {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def sim_control(sim: Proc, method: str, path: str, body: object = None) -> dict:
    """A call to the simulator's control API (``/_sim/stats``, ``/_sim/config``)."""
    status, _, data = http_call(sim.port, method, path, body)
    if status != 200:
        raise RuntimeError("%s %s on %s: %d %r" % (method, path, sim.name, status, data[:200]))
    return json.loads(data)


def accepting(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def choose_cpus(no_pin: bool) -> dict:
    """The CPU for the proxy and the CPU for the load (simulators, generators), or Nones
    and why not."""
    if no_pin or not hasattr(os, "sched_getaffinity"):
        return {"proxy": None, "load": None, "why": "--no-pin" if no_pin else "unsupported"}
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {"proxy": None, "load": None, "why": "only one CPU available"}
    return {"proxy": cpus[0], "load": cpus[1]}


def pin(pid: int, cpu: int | None, best_effort: bool = False) -> None:
    """Pin ``pid`` (0: this process) to ``cpu``; nothing if ``cpu`` is None. With
    ``best_effort`` a failure (the process gone, the CPU not allowed) is ignored, else it
    raises OSError."""
    if cpu is not None:
        try:
            os.sched_setaffinity(pid, {cpu})
        except OSError:
            if not best_effort:
                raise


def pin_at_exec(cpus: set[int] | None):
    """A Popen preexec_fn that pins before exec: node and the ASGI servers start threads
    (and workers fork) right away, and threads that exist before a later
    sched_setaffinity(pid) would keep their old mask."""
    return _at_exec(cpus, False)


# === logs ===

def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file, or "" if it cannot be read."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# === facts about the run ===

def _git(*args: str) -> str:
    """Output of a read-only git command in the repository, "" if git fails."""
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_sha() -> str | None:
    """The commit checked out, or None."""
    return _git("rev-parse", "HEAD") or None


def git_state() -> dict:
    """``{"sha": commit or None, "dirty": uncommitted changes? (None without a commit)}``."""
    sha = git_sha()
    return {"sha": sha, "dirty": bool(_git("status", "--porcelain")) if sha else None}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version_of(module: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:
        return None
