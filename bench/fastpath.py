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
    """(name, compiled, twin) for each operation; each is a statement and its namespace, so
    the timing holds the call itself and no wrapper around it."""
    for n in (2, 16, 256):
        rows = list(range(n))
        yield ("pick, %d replicas" % n,
               ("t.pick(rows, rnd)", {"t": _table(scoring, n), "rows": rows, "rnd": _rnd()}),
               ("t.pick(rows, rnd)", {"t": _table(scoring_py, n), "rows": rows, "rnd": _rnd()}))
    for n in (4, 32):
        space = {"groups": [[i] for i in range(n)], "weights": (0.5, 0.2, 0.3, 0.1),
                 "policy": POLICY_SCORE}
        yield ("score decision, %d deployments" % n,
               ("t.rank(groups, policy, weights)", {**space, "t": _table(scoring, n)}),
               ("t.rank(groups, policy, weights)", {**space, "t": _table(scoring_py, n)}))
    # start() and record() together: every finished attempt costs both.
    stmt = "t.start(3); t.record(3, 2.0, 25000.0, 4000.0, False)"
    yield ("start() + record()", (stmt, {"t": _table(scoring, 16)}),
           (stmt, {"t": _table(scoring_py, 16)}))
    nodes = ["http://10.0.0.%d:8000/v1" % i for i in range(16)]
    rc, rp = hashing.HashRing(nodes), hashing_py.HashRing(nodes)
    yield ("hash lookup, 16 replicas", ('r.lookup("session-4711")', {"r": rc}),
           ('r.lookup("session-4711")', {"r": rp}))
    stmt = 'r.lookup_bounded("session-4711", loads, 0.25)'
    yield ("bounded hash lookup, 16 replicas", (stmt, {"r": rc, "loads": [3] * 16}),
           (stmt, {"r": rp, "loads": [3] * 16}))
    for size, label in ((1024, "1 KB"), (32768, "32 KB")):
        stmt = 'key("auto", request, "tenant")'
        request = _request(size)
        yield ("cache key, %s request" % label,
               (stmt, {"key": cachekey.cache_key, "request": request}),
               (stmt, {"key": cachekey_py.cache_key, "request": request}))


def best_ns(case, repeat: int) -> float:
    stmt, space = case
    timer = timeit.Timer(stmt, globals=space)
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
