"""Measuring routers: classification metrics, and the cost/quality curve of outcome data.

Outcome data is ``{"prompt", "weak_correct", "strong_correct"}`` per line. A router that scores
each prompt (higher: more in need of the strong model) sends the top share of prompts to the
strong model; the quality it keeps at that share, as a fraction of the gap between the weak and
the strong model, is the PGR (performance gap recovered). APGR is the mean PGR over shares
0..100% in 1% steps (the area under the curve); CPT(50%) is the smallest share of strong calls
that recovers half the gap. Random routing has APGR 0.5 in expectation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import msgspec

from .routing.classifier import Options
from .routing.outcomes import OUTCOME_OPTIONS, fit_outcomes

# === labelled data ===


def classification_report(truth: Sequence[str], predicted: Sequence[str],
                          confidences: Sequence[float] | None = None) -> dict:
    """Accuracy, macro-F1 and the confusion matrix (rows: truth, columns: prediction); with
    the predicted class's probabilities, the expected calibration error too."""
    labels = sorted(set(truth) | set(predicted))
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for t, p in zip(truth, predicted):
        matrix[index[t]][index[p]] += 1
    f1s = []
    for i in range(len(labels)):
        tp = matrix[i][i]
        fp = sum(matrix[r][i] for r in range(len(labels))) - tp
        fn = sum(matrix[i]) - tp
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    truth_labels = sorted(set(truth))
    macro = sum(f1s[index[label]] for label in truth_labels) / max(1, len(truth_labels))
    correct = sum(1 for t, p in zip(truth, predicted) if t == p)
    report = {"n": len(truth), "accuracy": correct / max(1, len(truth)), "macro_f1": macro,
              "labels": labels, "confusion": matrix}
    if confidences is not None:
        report["calibration_error"] = calibration_error(
            confidences, [t == p for t, p in zip(truth, predicted)])
    return report


def calibration_error(confidences: Sequence[float], correct: Sequence[bool],
                      bins: int = 10) -> float:
    """Expected calibration error: over equal-width confidence bins, the gap between mean
    confidence and accuracy, weighted by the bin's share of predictions."""
    if len(confidences) != len(correct):
        raise ValueError("need one confidence per prediction")
    sums = [[0, 0.0, 0] for _ in range(bins)]
    for p, ok in zip(confidences, correct):
        if not math.isfinite(p):
            raise ValueError("confidence %r is not a probability" % p)
        b = sums[min(bins - 1, max(0, int(p * bins)))]
        b[0] += 1
        b[1] += p
        b[2] += ok
    n = max(1, len(confidences))
    return sum(abs(b[1] - b[2]) for b in sums) / n


def format_report(report: dict, max_labels: int = 12) -> str:
    lines = ["examples: %d" % report["n"], "accuracy: %.4f" % report["accuracy"],
             "macro-F1: %.4f" % report["macro_f1"]]
    if "calibration_error" in report:
        lines.append("calibration error (ECE, 10 bins): %.4f" % report["calibration_error"])
    labels = report["labels"]
    if len(labels) <= max_labels:
        width = max(len(label) for label in labels)
        lines.append("confusion (rows: truth, columns: predicted):")
        lines.append(" " * (width + 2) + " ".join("%5d" % i for i in range(len(labels))))
        for i, (label, row) in enumerate(zip(labels, report["confusion"])):
            lines.append("%-*s %2d " % (width, label, i) + " ".join("%5d" % v for v in row))
    else:
        worst = sorted(((row[i] / max(1, sum(row)), label)
                        for i, (label, row) in enumerate(zip(labels, report["confusion"]))
                        if sum(row)))[:max_labels]
        lines.append("confusion: %d labels (matrix in --json); lowest recall:" % len(labels))
        lines.extend("  %-32s %.2f" % (label, recall) for recall, label in worst)
    return "\n".join(lines)


# === outcome data ===


def cost_quality_curve(scores: Sequence[float], weak: Sequence[bool],
                       strong: Sequence[bool], steps: int = 100) -> dict:
    """PGR at each share of strong calls (0..1 in ``steps``), APGR and CPT(50%)."""
    n = len(scores)
    q_weak = sum(weak) / n
    q_strong = sum(strong) / n
    gap = q_strong - q_weak
    # Highest score first; ties broken by position so the curve is deterministic.
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    gain = [int(strong[i]) - int(weak[i]) for i in order]
    prefix = [0]
    for g in gain:
        prefix.append(prefix[-1] + g)
    shares, pgrs = [], []
    for step in range(steps + 1):
        share = step / steps
        k = round(share * n)
        quality = q_weak + prefix[k] / n
        shares.append(share)
        pgrs.append((quality - q_weak) / gap if gap else 0.0)
    apgr = sum((pgrs[i] + pgrs[i + 1]) / 2 for i in range(steps)) / steps
    cpt50 = next((s for s, p in zip(shares, pgrs) if p >= 0.5), 1.0)
    return {"n": n, "weak_quality": q_weak, "strong_quality": q_strong, "shares": shares,
            "pgr": pgrs, "apgr": apgr, "cpt50": cpt50}


def cross_validated_scores(prompts: Sequence[str], weak: Sequence[bool],
                           strong: Sequence[bool], folds: int = 5, seed: int = 0,
                           options: Options | None = None) -> list[float]:
    """P(strong) for every prompt from a complexity classifier trained on the other folds."""
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    scores = [0.0] * len(prompts)
    for fold in range(folds):
        held = set(order[fold::folds])
        train = [i for i in order if i not in held]
        # Only the order of the scores counts here, which the temperature does not change.
        clf = fit_outcomes([prompts[i] for i in train], [weak[i] for i in train],
                           [strong[i] for i in train],
                           msgspec.structs.replace(options or OUTCOME_OPTIONS, calibrate=False))
        if "strong" not in clf.labels:
            continue   # no training prompt needed the strong model: no signal, score 0
        k = clf.labels.index("strong")
        for i in held:
            scores[i] = clf.proba([prompts[i]])[k]
    return scores


def format_curve(curve: dict) -> str:
    lines = ["prompts: %d; weak model %.3f correct, strong model %.3f" % (
        curve["n"], curve["weak_quality"], curve["strong_quality"]),
        "APGR: %.4f (random: 0.5)" % curve["apgr"],
        "CPT(50%%): %.1f%% strong calls" % (100 * curve["cpt50"]),
        "strong share | PGR", "---:|---:"]
    for share, pgr in zip(curve["shares"], curve["pgr"]):
        if round(share * 100) % 10 == 0:
            lines.append("%3.0f%% | %.3f" % (100 * share, pgr))
    return "\n".join(lines)


def plot_curve(curve: dict, path: str) -> bool:
    """A PNG of PGR against strong share; False when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([100 * s for s in curve["shares"]], curve["pgr"],
            label="router (APGR %.3f)" % curve["apgr"])
    ax.plot([0, 100], [0, 1], linestyle="--", color="grey", label="random (APGR 0.5)")
    ax.set_xlabel("strong model calls (%)")
    ax.set_ylabel("performance gap recovered")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
