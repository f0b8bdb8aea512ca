"""Time one classifier decision, compiled against the pure-Python twin.

    python bench/classify_bench.py [--data ../shared/data] [--bytes 2048] [--json out.json]

Trains a 10-shot HWU64 model (64 classes) and a 4-class model (the HWU64 domains alarm,
calendar, music, weather, as a typical routing table) with each twin, then times
``proba`` on a prompt of ``--bytes`` bytes of HWU64 test text (best of 5
``timeit.autorange`` runs). The goal (issue 6) is <= 20 µs compiled; it is printed, not
asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _fastpath import NO_EXTENSIONS, classify_py  # noqa: E402
from proxy.routing.classifier import (TextClassifier, few_shot, labelled,  # noqa: E402
                                      read_jsonl)

if NO_EXTENSIONS:
    sys.exit("bench/classify_bench.py: the compiled modules are not in use")
from _fastpath import classify  # noqa: E402

GOAL_US = 20.0


def _prompt(texts: list[str], size: int) -> str:
    out = ""
    for text in texts:
        out += text + ". "
        if len(out.encode()) >= size:
            break
    return out.encode()[:size].decode("utf-8", "ignore")


def _time_us(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        n, t = timeit.Timer(fn).autorange()
        best = min(best, t / n)
    return best * 1e6


def _twin(clf: TextClassifier, impl):
    p = clf._parts
    o = clf.options
    return impl.LinearModel(o.dim, len(clf.labels), p["buckets"], p["idf"], p["weights"],
                            p["bias"], p["default_idf"], o.char_lo, o.char_hi,
                            o.context_weight, o.max_bytes, p["length_coef"],
                            p["length_scale"], p["length_offset"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--bytes", type=int, default=2048)
    parser.add_argument("--json")
    args = parser.parse_args()
    train_t, train_l = labelled(read_jsonl(os.path.join(args.data, "hwu64", "train.jsonl")))
    test_t, _ = labelled(read_jsonl(os.path.join(args.data, "hwu64", "test.jsonl")))
    prompt = _prompt(test_t, args.bytes)
    results = []
    domains = ("alarm", "calendar", "music", "weather")
    four = [(t, lab.split("_")[0]) for t, lab in zip(train_t, train_l)
            if lab.split("_")[0] in domains]
    for name, (texts, labels) in (
            ("64 classes (HWU64 10-shot)", few_shot(train_t, train_l, 10, 0)),
            ("4 classes (10 per class)", few_shot([t for t, _ in four],
                                                  [lab for _, lab in four], 10, 0))):
        clf = TextClassifier.fit(texts, labels)
        compiled = _twin(clf, classify)
        python = _twin(clf, classify_py)
        row = {"model": name, "prompt_bytes": len(prompt.encode()),
               "compiled_us": _time_us(lambda: compiled.proba([prompt])),
               "python_us": _time_us(lambda: python.proba([prompt]), repeat=2),
               "short_prompt_compiled_us": _time_us(lambda: compiled.proba([test_t[0]])),
               "buckets": len(clf._parts["buckets"])}
        results.append(row)
    print("| model | prompt bytes | compiled µs | python µs | speed-up | compiled µs, "
          "short prompt |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print("| %s | %d | %.1f | %.0f | %.0fx | %.2f |" % (
            r["model"], r["prompt_bytes"], r["compiled_us"], r["python_us"],
            r["python_us"] / r["compiled_us"], r["short_prompt_compiled_us"]))
    print("goal: <= %.0f µs compiled on a 2 KB prompt" % GOAL_US)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
