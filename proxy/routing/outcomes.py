"""Outcome data as serving needs it: rows read and checked, turned into a complexity router's
training examples, and the classifier options that router trains with.

Outcome data is ``{"prompt", "weak_correct", "strong_correct"}`` per line; the reports that
measure a router on it (the cost/quality curve, APGR) are in ``proxy/evaluate.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

from .classifier import Options, TextClassifier


def outcome_rows(rows: Sequence[dict], where: str = "data") -> tuple[list[str], list[bool],
                                                                        list[bool]]:
    prompts, weak, strong = [], [], []
    for i, row in enumerate(rows):
        p, w, s = row.get("prompt"), row.get("weak_correct"), row.get("strong_correct")
        if not isinstance(p, str) or not isinstance(w, bool) or not isinstance(s, bool):
            raise ValueError("%s[%d]: needs 'prompt' (string), 'weak_correct' and "
                             "'strong_correct' (booleans)" % (where, i))
        prompts.append(p)
        weak.append(w)
        strong.append(s)
    return prompts, weak, strong


def outcome_examples(prompts: Sequence[str], weak: Sequence[bool],
                     strong: Sequence[bool]) -> tuple[list[str], list[str], list[float]]:
    """Training examples for a complexity router: (texts, labels, weights).

    The target for P(strong) is ``(1 + gain) / 2`` with ``gain = strong_correct -
    weak_correct``: 1 where only the strong model answered correctly, 0 where only the weak
    one did, and one half where they agree (the prompt is listed under both labels at weight
    1/2). So P(strong) - 1/2 estimates half the expected quality gained by paying for the
    strong model, and prompts both models fail teach nothing about which to pick. (A hard
    label, strong only where it alone was right, ranked prompts worse.)"""
    texts, labels, weights = [], [], []
    for prompt, w, s in zip(prompts, weak, strong):
        if w == s:
            texts += [prompt, prompt]
            labels += ["strong", "weak"]
            weights += [0.5, 0.5]
        else:
            texts.append(prompt)
            labels.append("strong" if s else "weak")
            weights.append(1.0)
    return texts, labels, weights


# Complexity routing: the last turn's log-length is a feature too (how hard a prompt is tracks
# its length, which normalised n-gram counts cannot see), with stronger regularisation than
# intent classification needs, as outcome labels are noisy. length_weight and l2 were chosen
# by cross-validated APGR on one half of the GSM8K outcomes and measured on the other half
# (bench/classify_eval.py).
OUTCOME_OPTIONS = Options(length_weight=0.5, l2=3e-3, epochs=60)


def fit_outcomes(prompts: Sequence[str], weak: Sequence[bool], strong: Sequence[bool],
                 options: Options | None = None) -> TextClassifier:
    """A complexity classifier (classes ``strong`` and ``weak``) from outcome data."""
    texts, labels, weights = outcome_examples(prompts, weak, strong)
    return TextClassifier.fit(texts, labels, options or OUTCOME_OPTIONS, weights)
