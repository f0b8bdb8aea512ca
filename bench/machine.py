"""Process and machine helpers shared by the bench scripts (compare.py, soak.py).

What is here: facts about the machine and the run (CPU model, git commit, package
versions), readers of /proc/PID/stat and /proc/PID/status, stopping a started process,
CPU pinning (choosing the proxy and load CPUs, pinning a started process or a child before
exec) and the tail of a log file for error messages. Linux only where /proc or
sched_setaffinity is involved.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
STOP_TIMEOUT = 15.0


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


# === CPU pinning ===

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
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


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
