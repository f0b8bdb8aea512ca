"""Micro-benchmarks of the compiled hot path against its pure-Python twins, side by side.

    python bench/fastpath.py [--json out.json] [--markdown]

Each operation is timed with ``timeit.Timer.autorange`` (best of ``--repeat``), compiled and
twin in the same run, and reported in ns per operation with the speed-up. The targets of the
compiled modules are checked and printed; they are not asserted (timing is not a test).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _fastpath import (NO_EXTENSIONS, POLICY_SCORE, cachekey_py, hashing_py,  # noqa: E402
                       scoring_py)

if NO_EXTENSIONS:
    sys.exit("bench/fastpath.py: the compiled modules are not in use (built? "
             "LLMEDGE_NO_EXTENSIONS set?)")
from _fastpath import cachekey, hashing, scoring  # noqa: E402

# Targets for the compiled modules, in ns per operation (issue 4).
TARGETS = {"pick, 2 replicas": 300, "pick, 16 replicas": 300, "pick, 256 replicas": 300,
           "score decision, 32 deployments": 3000, "hash lookup, 16 replicas": 200,
           "cache key, 32 KB request": 15000}


def _rnd(seed: int = 7):
    return random.Random(seed).random


def _table(mod, n: int):
    table = mod.EndpointTable(default_rtt_us=1000.0)
    rng = random.Random(n)
    for i in range(n):
        table.add(price=rng.uniform(0.1, 20.0), quality=rng.random())
        table.record(i, 1.0, rng.uniform(1e4, 1e6), rng.uniform(1e3, 1e5), rng.random() < 0.1)
    return table


def _request(size: int) -> dict:
    rng = random.Random(size)
    words = ["route", "model", "token", "latency", "edge", "proxy", "cache", "stream"]
    messages = []
    total = 0
    while total < size:
        text = " ".join(rng.choice(words) for _ in range(40))
        messages.append({"role": rng.choice(["user", "assistant"]), "content": text})
        total += len(text) + 30
    return {"model": "auto", "messages": messages, "temperature": 0, "max_tokens": 256,
            "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {
                "type": "object", "properties": {"q": {"type": "string"}}}}}]}


def cases():
    """(name, compiled callable, twin callable) for each operation."""
    for n in (2, 16, 256):
        rows = list(range(n))
        c, p = _table(scoring, n), _table(scoring_py, n)
        rc, rp = _rnd(), _rnd()
        yield ("pick, %d replicas" % n, lambda c=c, rows=rows, r=rc: c.pick(rows, r),
               lambda p=p, rows=rows, r=rp: p.pick(rows, r))
    for n in (4, 32):
        groups = [[i] for i in range(n)]
        weights = (0.5, 0.2, 0.3, 0.1)
        c, p = _table(scoring, n), _table(scoring_py, n)
        yield ("score decision, %d deployments" % n,
               lambda c=c, g=groups: c.rank(g, POLICY_SCORE, weights),
               lambda p=p, g=groups: p.rank(g, POLICY_SCORE, weights))
    c, p = _table(scoring, 16), _table(scoring_py, 16)

    def record(table):
        table.start(3)
        table.record(3, 2.0, 25000.0, 4000.0, False)

    yield "record()", lambda: record(c), lambda: record(p)
    nodes = ["http://10.0.0.%d:8000/v1" % i for i in range(16)]
    rc, rp = hashing.HashRing(nodes), hashing_py.HashRing(nodes)
    yield ("hash lookup, 16 replicas", lambda: rc.lookup("session-4711"),
           lambda: rp.lookup("session-4711"))
    loads = [3] * 16
    yield ("bounded hash lookup, 16 replicas",
           lambda: rc.lookup_bounded("session-4711", loads, 0.25),
           lambda: rp.lookup_bounded("session-4711", loads, 0.25))
    for size, label in ((1024, "1 KB"), (32768, "32 KB")):
        request = _request(size)
        yield ("cache key, %s request" % label,
               lambda r=request: cachekey.cache_key("auto", r, "tenant"),
               lambda r=request: cachekey_py.cache_key("auto", r, "tenant"))


def best_ns(fn, repeat: int) -> float:
    timer = timeit.Timer(fn)
    best = float("inf")
    for _ in range(repeat):
        number, seconds = timer.autorange()
        best = min(best, seconds / number)
    return best * 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    rows = []
    for name, compiled, twin in cases():
        c_ns, py_ns = best_ns(compiled, args.repeat), best_ns(twin, args.repeat)
        target = TARGETS.get(name)
        rows.append({"operation": name, "compiled_ns": round(c_ns, 1),
                     "python_ns": round(py_ns, 1), "speedup": round(py_ns / c_ns, 1),
                     "target_ns": target, "met": None if target is None else c_ns <= target})
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print("machine: %s, %d cores, Python %s" % (cpu, os.cpu_count(), platform.python_version()))
    print()
    print("| operation | compiled ns | twin ns | speed-up | target (compiled) |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        target = "-" if r["target_ns"] is None else "<= %d ns: %s" % (
            r["target_ns"], "met" if r["met"] else "MISSED")
        print("| %s | %.0f | %.0f | %.1fx | %s |" % (r["operation"], r["compiled_ns"],
                                                    r["python_ns"], r["speedup"], target))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": cpu, "cores": os.cpu_count(),
                                               "python": platform.python_version(),
                                               "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
