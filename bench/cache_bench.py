"""Latency of a response-cache hit through llmedge, in process and on Redis, against a miss.

One run starts the simulator (unpaced), a ``redis-server`` (persistence off; skipped with a
note when not installed) and two llmedge processes, one per cache backend, then sends
requests one at a time on one keep-alive connection per case and reports p50/p90/p99 and
the maximum per case. The cases take turns in ``--rounds`` slices, so a burst of outside
load on a shared machine falls on all of them alike:

* ``uncached``  a route without a cache: what llmedge costs with no cache at all
* ``miss``      a cached route, every request different (temperature 0): lookup, upstream
                call, store
* ``hit``       the same request again and again
* ``hit, stream`` the same, with ``stream: true``: the stored completion replayed as SSE

With two or more CPUs llmedge is pinned to the first, and the simulator, Redis and this
client to the second (``--no-pin`` leaves placement to the kernel). Latencies are measured by
this client from the write of a request to the read that completes its answer, so they
include the client's own wake-ups: compare the rows with each other.

    python bench/cache_bench.py                      # 5000 requests per case
    python bench/cache_bench.py --requests 20000 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httptools

sys.path.insert(0, str(Path(__file__).resolve().parent))

from histogram import Histogram  # noqa: E402
from load import new_loop  # noqa: E402
from machine import (REPO, Proc, choose_cpus, cpu_model, free_port, git_state,  # noqa: E402
                     pin, start_listening, start_server)

PYTHON = sys.executable
PROMPT = "What is the capital of France? Answer in one short sentence, please."


class OneConn(asyncio.Protocol):
    """One keep-alive connection, one request at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future | None = None
        self.status = 0
        self.headers: dict[bytes, bytes] = {}

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_message_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.done is not None and not self.done.done():
            self.done.set_result(time.perf_counter())

    def connection_lost(self, exc) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("connection lost: %r" % exc))

    async def ask(self, request: bytes) -> tuple[float, int, bytes]:
        self.done = asyncio.get_running_loop().create_future()
        self.headers = {}
        started = time.perf_counter()
        self.transport.write(request)
        ended = await self.done
        return (ended - started) * 1e6, self.status, self.headers.get(b"x-llmedge-cache", b"-")


def request(model: str, n: int | None, stream: bool = False) -> bytes:
    content = PROMPT if n is None else "%s (#%08d)" % (PROMPT, n)
    body = json.dumps({"model": model, "temperature": 0, "stream": stream,
                       "messages": [{"role": "user", "content": content}]}).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: "
            b"application/json\r\nauthorization: Bearer bench\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body))


class Case:
    """One row of the table: a backend's llmedge, what is asked, and what was measured."""

    def __init__(self, backend: str, name: str, port: int, offset: int) -> None:
        self.backend = backend
        self.name = name
        self.port = port
        self.next = offset          # misses: a new question each time
        self.hist = Histogram()
        self.states: dict[str, int] = {}
        self.errors = 0

    def request(self) -> bytes:
        if self.name in ("uncached", "miss"):
            self.next += 1
            return request("plain" if self.name == "uncached" else "faq", self.next)
        return request("faq", None, stream=self.name == "hit, stream")

    def row(self) -> dict:
        return {"backend": self.backend, "case": self.name, "count": self.hist.count,
                "errors": self.errors, "cache_states": self.states,
                **{k: self.hist.value_at(p) for k, p in (("p50", 50.0), ("p90", 90.0),
                                                         ("p99", 99.0))},
                "max": self.hist.max}


async def measure(case: Case, count: int, warmup: int) -> None:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(OneConn, "127.0.0.1", case.port)
    try:
        for i in range(warmup + count):
            us, status, state = await conn.ask(case.request())
            if i < warmup:
                continue
            if status != 200:
                case.errors += 1
                continue
            case.hist.record(us)
            case.states[state.decode()] = case.states.get(state.decode(), 0) + 1
    finally:
        conn.transport.close()


def scrape_errors(port: int) -> dict[str, float]:
    """llmedge's cache backend errors by kind, from its /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    errors: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("llmedge_cache_backend_errors_total{"):
            kind = line.partition('kind="')[2].partition('"')[0]
            errors[kind] = errors.get(kind, 0) + float(line.rsplit(" ", 1)[1])
    return errors


def edge_config(sim_port: int, cache: str) -> str:
    return f"""\
server:
  http: 127.0.0.1:0
cache: {cache}
deployments:
  - name: sim
    base_url: http://127.0.0.1:{sim_port}/v1
routes:
  - name: faq
    deployments: [sim]
    cache: {{ttl_s: 3600}}
  - name: plain
    deployments: [sim]
"""


def start_redis(port: int, cpu: int | None, tmp: Path) -> Proc | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    try:
        return start_server("redis", [binary, "--port", str(port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                            port, cpu, tmp)
    except RuntimeError as exc:
        # The memory rows are still worth having: say why the Redis ones are missing.
        print("redis-server did not start, no Redis rows: %s" % exc, file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="per case (default 5000)")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=20,
                        help="slices per case, run round robin across the cases")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    cpus = choose_cpus(args.no_pin)
    pin(0, cpus["load"])
    tmp = Path(tempfile.mkdtemp(prefix="llmedge-cache-bench-"))
    env = {**os.environ, "LLMEDGE_LOG_LEVEL": "warning"}
    started: list = []
    redis = None
    rows: list[dict] = []
    backend_errors: dict[str, dict[str, float]] = {}
    try:
        sim = start_listening("sim", [PYTHON, "-m", "proxy.sim", "--port", "0"],
                              cpus["load"], tmp, env)
        started.append(sim)
        backends = {"memory": "{backend: memory}"}
        redis_port = free_port()
        redis = start_redis(redis_port, cpus["load"], tmp)
        if redis is not None:
            backends["redis"] = "{backend: redis, url: 'redis://127.0.0.1:%d/0'}" % redis_port
        edges = {}
        for backend, cache in backends.items():
            cfg = tmp / ("llmedge-%s.yaml" % backend)
            cfg.write_text(edge_config(sim.port, cache))
            edges[backend] = start_listening("llmedge-%s" % backend,
                                             [PYTHON, "-m", "proxy", "serve", "-c", str(cfg)],
                                             cpus["proxy"], tmp, env)
            started.append(edges[backend])
        cases = [Case("-", "uncached", edges["memory"].port, 0)]
        for b, edge in edges.items():
            cases += [Case(b, name, edge.port, (len(cases) + i) * 10_000_000)
                      for i, name in enumerate(("miss", "hit", "hit, stream"))]
        # Round robin in slices: load from outside (another process, a noisy neighbour)
        # lands on every case alike instead of on whichever ran at that moment.
        per_round = max(1, args.requests // args.rounds)
        loop = new_loop("uvloop")
        try:
            for r in range(args.rounds):
                for case in cases:
                    loop.run_until_complete(measure(case, per_round,
                                                    args.warmup if r == 0 else 10))
        finally:
            loop.close()
        for case in cases:
            row = case.row()
            rows.append(row)
            print("%-7s %-12s p50 %6d µs  p99 %6d µs  %s" % (
                row["backend"], row["case"], row["p50"], row["p99"], row["cache_states"]),
                file=sys.stderr)
        for backend, edge in edges.items():
            backend_errors[backend] = scrape_errors(edge.port)
    finally:
        for proc in reversed(started):
            proc.stop()
        if redis is not None:
            redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    meta = {"cpu": cpu_model(), "nproc": os.cpu_count(), "python": platform.python_version(),
            "git": git_state(), "pinning": cpus, "requests_per_case": args.requests,
            "rounds": args.rounds,
            "redis": redis is not None, "command": " ".join(["python",
                                                                   "bench/cache_bench.py",
                                                                   *(argv or sys.argv[1:])])}
    import _fastpath
    meta["fastpath"] = _fastpath.IMPLEMENTATION
    meta["backend_errors"] = backend_errors
    print(markdown(rows, meta))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0 if all(r["errors"] == 0 for r in rows) else 1


def markdown(rows: list[dict], meta: dict) -> str:
    lines = ["- machine: %s, nproc %s; Python %s, _fastpath %s, git %s" % (
        meta["cpu"], meta["nproc"], meta["python"], meta["fastpath"],
        (meta["git"]["sha"] or "?")[:12]),
        "- %d requests per case on one keep-alive connection each, one at a time, the cases "
        "round robin in %d slices; command: `%s`"
        % (meta["requests_per_case"], meta["rounds"], meta["command"]), "",
        "| backend | case | p50 µs | p90 µs | p99 µs | max µs | x-llmedge-cache | errors |",
        "|---|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        states = ", ".join("%s %d" % kv for kv in sorted(r["cache_states"].items()))
        lines.append("| %s | %s | %d | %d | %d | %d | %s | %d |" % (
            r["backend"], r["case"], r["p50"], r["p90"], r["p99"], r["max"], states,
            r["errors"]))
    for backend, errors in meta["backend_errors"].items():
        if errors:
            lines.append("\n%s backend errors (llmedge_cache_backend_errors_total by kind; each "
                         "made a request a miss): %s" % (backend, ", ".join(
                             "%s %d" % kv for kv in sorted(errors.items()))))
    if not meta["redis"]:
        lines.append("\nredis-server is not installed: no Redis rows.")
    return "\n".join(lines)


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
