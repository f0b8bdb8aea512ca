"""Helpers for tests that run llmedge and the upstream simulator as real subprocesses.

Not a test module. Everything here waits with deadlines (events, polling), never with sleeps
tuned to one machine, and every process or socket it makes can be closed by the caller.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# On the pure-Python twins (LLMEDGE_NO_EXTENSIONS) start-up and reload work such as training a
# complexity model runs 15-40x slower than compiled; the deadlines that wait on it grow with
# it, so a slow but correct run is not failed.
SLOWDOWN = 4.0 if os.environ.get("LLMEDGE_NO_EXTENSIONS") else 1.0
STARTUP_TIMEOUT = 30.0 * SLOWDOWN   # a loaded CI machine may take a while to import everything
STOP_TIMEOUT = 20.0
POLL_TIMEOUT = 20.0
IO_TIMEOUT = 30.0 * SLOWDOWN

T = TypeVar("T")


# === waiting ===

def wait_for(condition: Callable[[], T], timeout: float = POLL_TIMEOUT, interval: float = 0.02,
             message: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy (returned) or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s (last value: %r)"
                                 % (timeout, message, value))
        time.sleep(interval)


def free_port() -> int:
    """A port nothing listens on (bound then released: nobody else grabs it in practice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# === plain HTTP ===

class Response:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return "<Response %d %r>" % (self.status, self.body[:300])


def http_call(port: int, method: str, path: str, body: Any = None,
              headers: dict[str, str] | None = None, timeout: float = IO_TIMEOUT) -> Response:
    """One request on its own connection; ``body`` may be bytes or anything JSON-encodable."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        hdrs = {"content-type": "application/json"} if body is not None else {}
        hdrs.update(headers or {})
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


class RawConn:
    """A client socket with just enough HTTP/1.1 parsing to check framing and ordering."""

    def __init__(self, port: int, timeout: float = IO_TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            if not self._fill():
                raise EOFError(self.buf)
        head, _, self.buf = self.buf.partition(marker)
        return head + marker

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError(self.buf)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_head(self) -> tuple[int, dict[str, str]]:
        lines = self.read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        parts = lines[0].split()
        assert parts[0] == "HTTP/1.1", lines[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    def read_chunk(self) -> bytes:
        """One piece of a chunked body; b"" for the last (zero-size) chunk."""
        size = int(self.read_until(b"\r\n")[:-2].split(b";")[0], 16)
        data = self.read_exact(size)
        assert self.read_exact(2) == b"\r\n"
        return data

    def read_response(self) -> Response:
        status, headers = self.read_head()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                piece = self.read_chunk()
                if not piece:
                    break
                body += piece
        else:
            body = self.read_exact(int(headers.get("content-length", 0)))
        return Response(status, headers, body)

    def read_to_eof(self) -> bytes:
        while self._fill():
            pass
        data, self.buf = self.buf, b""
        return data

    def at_eof(self) -> bool:
        """True when the peer has closed (a reset counts as closed)."""
        if self.buf:
            return False
        try:
            return not self._fill()
        except ConnectionResetError:
            return True


def request_bytes(method: str, path: str, body: Any = None, headers: Iterable[str] = (),
                  host: str = "llmedge") -> bytes:
    """A serialized HTTP/1.1 request with a Content-Length (when there is a body)."""
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    head = ["%s %s HTTP/1.1" % (method, path), "host: %s" % host, *headers]
    if body is not None:
        head += ["content-type: application/json", "content-length: %d" % len(body)]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")


def parse_sse(body: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    events = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [line[5:].strip() for line in block.split(b"\n") if line.startswith(b"data:")]
        if data:
            events.append(b"\n".join(data).decode())
    return events


class ChatLoad:
    """Client threads sending chat requests on keep-alive connections until stopped."""

    def __init__(self, port: int, threads: int = 4, model: str = "auto") -> None:
        self.port = port
        self.model = model
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.statuses: dict[int, int] = {}
        self.upstreams: dict[str, int] = {}
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> ChatLoad:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=IO_TIMEOUT)

    @property
    def answered(self) -> int:
        with self.lock:
            return sum(self.statuses.values())

    def _run(self) -> None:
        body = json.dumps({"model": self.model,
                           "messages": [{"role": "user", "content": "load"}]})
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=IO_TIMEOUT)
                conn.request("POST", "/v1/chat/completions", body,
                             {"content-type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                with self.lock:
                    self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
                    name = resp.getheader("x-llmedge-upstream", "-")
                    self.upstreams[name] = self.upstreams.get(name, 0) + 1
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.failures.append(type(exc).__name__)
                if conn is not None:
                    conn.close()
                conn = None
                if isinstance(exc, ConnectionRefusedError):
                    return  # the listener is gone
        if conn is not None:
            conn.close()


# === subprocesses ===

class Proc:
    """A child process whose stdout lines are collected by a thread (the pipe never fills)
    and whose stderr goes to a file kept for diagnostics."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None,
                 label: str = "process", cwd: Path = REPO) -> None:
        self.label = label
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        try:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=self._log, text=True)
        except BaseException:
            self._log.close()
            raise
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, name="stdout-%s" % label,
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def stdout(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def wait_output(self, pattern: str, count: int = 1,
                    timeout: float = STARTUP_TIMEOUT) -> list[re.Match[str]]:
        """The first ``count`` matches of ``pattern`` in stdout (whole lines as they come in);
        the process is stopped and the test fails with its stderr if it exits or stays
        silent past the deadline."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                matches = list(regex.finditer("".join(self.lines)))
                if len(matches) >= count:
                    return matches[:count]
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    break
                self._cond.wait(remaining)
        code = self.proc.poll()
        self.stop()
        raise RuntimeError("%s did not print %d x %r within %.0fs (exit code %s)\n"
                           "stdout: %r\nstderr:\n%s" % (
                               self.label, count, pattern, timeout, code, self.stdout,
                               self.stderr()))

    def stderr(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Signal, wait, then kill; returns the exit code (negative when killed). Idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # Forked workers would outlive a killed parent: kill them too, by pid.
                orphans = children_of(self.pid)
                self.proc.kill()
                self.proc.wait()
                for pid in orphans:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        self._reader.join(timeout=5)
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


LISTENING = r"LISTENING ([0-9.]+|\[[0-9a-fA-F:]+\]):(\d+)"
# Printed just before LISTENING, in the same write, when server.grpc is set.
GRPC_LISTENING = r"LISTENING-GRPC ([0-9.]+|\[[0-9a-fA-F:]+\]):(\d+)"


class Simulator(Proc):
    """``python -m proxy.sim`` with its control API.

    Control calls share one keep-alive connection, so they do not show up in the
    simulator's connection counters: ``connections_opened``/``closed`` after a reset and
    changes of ``active_connections`` are llmedge's doing alone.
    """

    def __init__(self, workdir: Path, name: str, *args: str) -> None:
        super().__init__([PYTHON, "-m", "proxy.sim", "--port", "0", "--name", name, *args],
                         workdir / ("sim-%s.log" % name), label="simulator %s" % name)
        self.name = name
        self.port = int(self.wait_output(LISTENING)[0].group(2))
        self.url = "http://127.0.0.1:%d/v1" % self.port
        self._control: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: Any = None) -> Response:
        """A request on a connection of its own (e.g. the API, straight to the simulator)."""
        return http_call(self.port, method, path, body)

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):  # control calls are idempotent: one retry on a new connection
            if self._control is None:
                self._control = http.client.HTTPConnection("127.0.0.1", self.port,
                                                           timeout=IO_TIMEOUT)
            try:
                self._control.request(method, path, body=data,
                                      headers={"content-type": "application/json"})
                raw = self._control.getresponse()
                resp = Response(raw.status, {}, raw.read())
                break
            except (http.client.HTTPException, OSError):
                self._control.close()
                self._control = None
                if attempt == 2:
                    raise
        assert resp.status == 200, resp
        return resp.json()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        if self._control is not None:
            self._control.close()
            self._control = None
        return super().stop(sig, timeout)

    def stats(self) -> dict[str, Any]:
        return self._json("GET", "/_sim/stats")

    def configure(self, **options: Any) -> dict[str, Any]:
        return self._json("POST", "/_sim/config", options)

    def reset(self, config: bool = True) -> None:
        """Zero the counters; with ``config`` also restore the behaviour it started with."""
        self._json("POST", "/_sim/reset", {"config": config})

    def wait_stat(self, key: str, at_least: int, timeout: float = POLL_TIMEOUT) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            stats = self.stats()
            return stats if stats[key] >= at_least else None
        return wait_for(reached, timeout, message="%s: %s >= %d" % (self.name, key, at_least))


class Llmedge(Proc):
    """``python -m proxy serve -c CONFIG`` on an ephemeral port (or one given in the config);
    ``tree``: run the llmedge of another checkout (its ``_fastpath`` built), for benches
    that compare two versions in one run."""

    def __init__(self, workdir: Path, config_text: str, env: dict[str, str] | None = None,
                 args: Iterable[str] = (), name: str = "llmedge", ready_lines: int = 1,
                 tree: Path = REPO) -> None:
        config_path = workdir / ("%s.yaml" % name)
        config_path.write_text(config_text)
        self.config_path = config_path
        full_env = dict(os.environ)
        full_env.update(env or {})
        if tree != REPO:
            full_env["PYTHONPATH"] = str(tree)
        full_env = {k: v for k, v in full_env.items() if v is not None}
        super().__init__([PYTHON, "-m", "proxy", "serve", "-c", str(config_path), *args],
                         workdir / ("%s.log" % name), env=full_env, label=name, cwd=tree)
        # Workers print a line each: count announcements, whatever the line breaks.
        self.ready = self.wait_output(LISTENING, ready_lines)
        self.port = int(self.ready[0].group(2))
        self.root = "http://127.0.0.1:%d" % self.port
        self.base_url = self.root + "/v1"
        grpc_line = re.search(GRPC_LISTENING, self.stdout)
        self.grpc_port = int(grpc_line.group(2)) if grpc_line else None

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> Response:
        return http_call(self.port, method, path, body, headers)

    def metrics(self) -> str:
        resp = self.call("GET", "/metrics")
        assert resp.status == 200, resp
        return resp.body.decode()

    def client(self, **kw: Any):
        """An official OpenAI SDK client pointed at this llmedge (use it as a context manager)."""
        import openai

        kw.setdefault("api_key", "client-secret-never-forwarded")
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", IO_TIMEOUT)
        return openai.OpenAI(base_url=self.base_url, **kw)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric ``name`` in a Prometheus text exposition: (labels, value)."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == name:
            labels = dict(_LABEL.findall(match.group(2) or ""))
            samples.append((labels, float(match.group(3))))
    return samples


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(value for got, value in metric_samples(text, name)
               if all(got.get(k) == v for k, v in labels.items()))


def children_of(pid: int) -> list[int]:
    """Live child process ids of ``pid``, from /proc (each task's children, else every stat)."""
    kids: set[int] = set()
    task_dir = Path("/proc/%d/task" % pid)
    found_children_file = False
    try:
        for task in task_dir.iterdir():
            path = task / "children"
            if path.exists():
                found_children_file = True
                kids.update(int(p) for p in path.read_text().split())
    except FileNotFoundError:
        return []
    if not found_children_file:  # kernels without CONFIG_PROC_CHILDREN
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rpartition(")")[2].split()
            # fields[0] is the state, fields[1] the parent pid
            if int(fields[1]) == pid and fields[0] != "Z":
                kids.add(int(entry.name))
    return sorted(kids)


def process_exists(pid: int) -> bool:
    """True for a live (non-zombie) process."""
    try:
        stat = Path("/proc/%d/stat" % pid).read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
