"""Few-shot accuracy and decision time of the classifier against a TF-IDF + logistic
regression baseline, and APGR of complexity routing on outcome data.

    python bench/classify_eval.py [--data ../shared/data] [--draws 5] [--shots 5,10]
    python bench/classify_eval.py --validate      # tune on a split of train, never test

HWU64: for each draw, k examples per intent from train.jsonl train both the llmedge classifier
and the baseline (scikit-learn ``TfidfVectorizer`` on words 1-2 + ``char_wb`` 2-5 grams,
``LogisticRegression``; a dev extra), scored on test.jsonl. Decision time is per single
prompt, as a router sees them: ``TextClassifier.predict`` against the baseline pipeline's
``predict_proba`` on a one-item list. ``--validate`` holds out 20 examples per intent from
train.jsonl as the test set instead. GSM8K outcomes: 5-fold cross-validated scores (each
fold's model never saw the fold), then APGR and CPT(50%); the complexity options are chosen
on one half of the prompts and measured on the other.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _fastpath import IMPLEMENTATION  # noqa: E402
import msgspec  # noqa: E402

from proxy.evaluate import (calibration_error, cost_quality_curve,  # noqa: E402
                            cross_validated_scores)
from proxy.routing.classifier import (Options, TextClassifier, few_shot,  # noqa: E402
                                      labelled, read_jsonl)
from proxy.routing.outcomes import OUTCOME_OPTIONS, outcome_rows  # noqa: E402


def _baseline(texts, labels):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                          TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5),
                                          sublinear_tf=True))
    model = make_pipeline(features, LogisticRegression(C=10.0, max_iter=2000))
    model.fit(texts, labels)
    return model


def _per_call_us(fn, items, limit=300):
    items = items[:limit]
    start = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - start) / len(items) * 1e6


def _validation_split(texts, labels, per_label=20, seed=99):
    by = {}
    for t, lab in zip(texts, labels):
        by.setdefault(lab, []).append(t)
    rng = random.Random(seed)
    tr_t, tr_l, va_t, va_l = [], [], [], []
    for lab in sorted(by):
        pool = by[lab][:]
        rng.shuffle(pool)
        va_t += pool[:per_label]
        va_l += [lab] * len(pool[:per_label])
        tr_t += pool[per_label:]
        tr_l += [lab] * len(pool[per_label:])
    return tr_t, tr_l, va_t, va_l


def hwu64(args, options: Options) -> list[dict]:
    train_t, train_l = labelled(read_jsonl(os.path.join(args.data, "hwu64", "train.jsonl")))
    if args.validate:
        train_t, train_l, test_t, test_l = _validation_split(train_t, train_l)
    else:
        test_t, test_l = labelled(read_jsonl(os.path.join(args.data, "hwu64", "test.jsonl")))
    if args.limit_test:
        test_t, test_l = test_t[:args.limit_test], test_l[:args.limit_test]
    results = []
    for k in args.shots:
        ours, base, ours_us, base_us, train_s = [], [], [], [], []
        ece, ece_t1, temps = [], [], []
        for draw in range(args.draws):
            texts, labels = few_shot(train_t, train_l, k, seed=1000 * k + draw)
            t0 = time.perf_counter()
            clf = TextClassifier.fit(texts, labels, options)
            train_s.append(time.perf_counter() - t0)
            decided = [clf.predict([t]) for t in test_t]
            pred = [label for label, _ in decided]
            ours.append(sum(p == y for p, y in zip(pred, test_l)) / len(test_l))
            correct = [p == y for p, y in zip(pred, test_l)]
            ece.append(calibration_error([p for _, p in decided], correct))
            ece_t1.append(calibration_error([max(clf.model.proba([t], 1.0)) for t in test_t],
                                            correct))
            temps.append(clf.temperature)
            ours_us.append(_per_call_us(lambda t: clf.predict([t]), test_t))
            if not args.no_baseline:
                model = _baseline(texts, labels)
                pred = model.predict(test_t)
                base.append(sum(p == y for p, y in zip(pred, test_l)) / len(test_l))
                base_us.append(_per_call_us(lambda t: model.predict_proba([t]), test_t))
        row = {"shots": k, "draws": args.draws, "llmedge_accuracy": statistics.mean(ours),
               "llmedge_accuracy_sd": statistics.pstdev(ours),
               "llmedge_us": statistics.median(ours_us), "train_s": statistics.mean(train_s),
               "temperature": statistics.mean(temps), "ece": statistics.mean(ece),
               "ece_temperature_1": statistics.mean(ece_t1)}
        if base:
            row.update(baseline_accuracy=statistics.mean(base),
                       baseline_accuracy_sd=statistics.pstdev(base),
                       baseline_us=statistics.median(base_us))
        results.append(row)
    return results


# The grid searched on the tuning half; OUTCOME_OPTIONS holds the choice.
_GRID = [{"length_weight": lw, "l2": l2} for lw in (0.0, 0.5, 1.0) for l2 in (1e-3, 3e-3, 1e-2)]
_CV_SEEDS = (0, 1, 2)


def gsm8k(args) -> dict:
    """APGR of the complexity router, cross-validated (mean over three fold shuffles), and how
    its options were chosen: by CV on one half of the prompts, then measured on the other."""
    rows = read_jsonl(os.path.join(args.data, "routing-outcomes", "gsm8k.jsonl"))
    prompts, weak, strong = outcome_rows(rows)
    order = list(range(len(prompts)))
    random.Random(5).shuffle(order)
    halves = (order[:len(order) // 2], order[len(order) // 2:])

    def apgr(idx, options):
        p, w, s = ([xs[i] for i in idx] for xs in (prompts, weak, strong))
        return statistics.mean(
            cost_quality_curve(cross_validated_scores(p, w, s, 5, seed, options), w, s)["apgr"]
            for seed in _CV_SEEDS)

    def options(cell):
        return msgspec.structs.replace(OUTCOME_OPTIONS, **cell)

    tuning = [(cell, apgr(halves[0], options(cell))) for cell in _GRID]
    chosen, _ = max(tuning, key=lambda item: item[1])
    full = [cost_quality_curve(cross_validated_scores(prompts, weak, strong, 5, seed), weak,
                               strong) for seed in _CV_SEEDS]
    return {"apgr": statistics.mean(c["apgr"] for c in full),
            "apgr_by_seed": [c["apgr"] for c in full],
            "cpt50": statistics.mean(c["cpt50"] for c in full), "n": full[0]["n"],
            "options": {"length_weight": OUTCOME_OPTIONS.length_weight,
                        "l2": OUTCOME_OPTIONS.l2, "epochs": OUTCOME_OPTIONS.epochs},
            "tuning_half": [{**cell, "apgr": a} for cell, a in tuning], "chosen": chosen,
            "held_out_half_apgr": apgr(halves[1], options(chosen)),
            "held_out_half_apgr_text_only": apgr(halves[1],
                                                 options({**chosen, "length_weight": 0.0})),
            "length_only_apgr": cost_quality_curve([len(p) for p in prompts], weak,
                                                   strong)["apgr"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--shots", type=lambda s: [int(x) for x in s.split(",")],
                        default=[5, 10])
    parser.add_argument("--validate", action="store_true",
                        help="score on a held-out part of train.jsonl, not on test.jsonl")
    parser.add_argument("--limit-test", type=int, default=0)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--no-gsm8k", action="store_true")
    parser.add_argument("--options", default="{}",
                        help="JSON of classifier Options to try, e.g. '{\"l2\": 1e-3}'")
    parser.add_argument("--json")
    args = parser.parse_args()
    options = msgspec.convert(json.loads(args.options), Options)
    out = {"implementation": IMPLEMENTATION, "options": msgspec.to_builtins(options),
           "split": "validation" if args.validate else "test",
           "hwu64": hwu64(args, options)}
    print("HWU64 (%s split), mean over %d draws, implementation %s" % (
        out["split"], args.draws, IMPLEMENTATION))
    print("| shots | llmedge acc | baseline acc | llmedge µs/decision | baseline µs/decision "
          "| speed-up | llmedge train s (with calibration) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in out["hwu64"]:
        base = r.get("baseline_accuracy")
        print("| %d | %.3f ± %.3f | %s | %.1f | %s | %s | %.2f |" % (
            r["shots"], r["llmedge_accuracy"], r["llmedge_accuracy_sd"],
            "-" if base is None else "%.3f ± %.3f" % (base, r["baseline_accuracy_sd"]),
            r["llmedge_us"], "-" if base is None else "%.0f" % r["baseline_us"],
            "-" if base is None else "%.0fx" % (r["baseline_us"] / r["llmedge_us"]),
            r["train_s"]))
    for r in out["hwu64"]:
        print("%d-shot calibration: fitted temperature %.2f, ECE %.3f (temperature 1: %.3f)"
              % (r["shots"], r["temperature"], r["ece"], r["ece_temperature_1"]))
    if not args.no_gsm8k:
        g = out["gsm8k"] = gsm8k(args)
        print("GSM8K outcomes, 5-fold cross-validated (mean of %d shuffles), options %s: "
              "APGR %.4f (%s), CPT(50%%) %.1f%%" % (
                  len(_CV_SEEDS), g["options"], g["apgr"],
                  " ".join("%.4f" % a for a in g["apgr_by_seed"]), 100 * g["cpt50"]))
        print("  tuning half: %s" % ", ".join(
            "lw %g l2 %g: %.4f" % (t["length_weight"], t["l2"], t["apgr"])
            for t in g["tuning_half"]))
        print("  chosen %s; on the other half: APGR %.4f (text only: %.4f); prompt length "
              "alone, no training: %.4f" % (g["chosen"], g["held_out_half_apgr"],
                                            g["held_out_half_apgr_text_only"],
                                            g["length_only_apgr"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
