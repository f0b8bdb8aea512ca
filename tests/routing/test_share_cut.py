"""The live cut of a complexity route's strong_share."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.routing.share_cut import ShareCut

scores_st = st.lists(st.floats(0.0, 1.0), max_size=60)


def top_share_cut(scores: list[float], share: float) -> float:
    """The lowest score among the top ``share`` of ``scores`` (the plain definition the
    window's bisect-based cut must agree with); above every score when the share rounds to
    none."""
    n = round(share * len(scores))
    if n <= 0:
        return float("inf")
    return sorted(scores, reverse=True)[n - 1]


@settings(max_examples=200, deadline=None)
@given(training=scores_st, traffic=scores_st, share=st.floats(0.0, 1.0),
       window=st.integers(1, 20), warmup=st.integers(0, 25))
def test_cut_is_the_top_share_of_the_window_once_warm(training, traffic, share, window,
                                                      warmup):
    cut = ShareCut(share, training, window=window, warmup=warmup)
    seen: list[float] = []
    for score in traffic:
        strong, (value, _, source) = cut.decide(score, random.random)
        if len(seen) >= min(warmup, window):
            recent = seen[-window:]
            assert source == len(recent)
            assert value == top_share_cut(recent, share)
        else:
            assert (value, source) == (top_share_cut(training, share), 0)
        # Above the cut: always strong; below: never.
        if score > value:
            assert strong
        elif score < value:
            assert not strong
        seen.append(score)


def test_top_share_cut_selects_about_the_share():
    scores = [i / 100 for i in range(100)]
    assert sum(s >= top_share_cut(scores, 0.3) for s in scores) == 30
    assert sum(s >= top_share_cut(scores, 1.0) for s in scores) == 100
    assert top_share_cut(scores, 0.0) == math.inf and top_share_cut([], 0.5) == math.inf


def test_identical_scores_still_get_the_share():
    # A burst of one templated prompt: every score ties at the cut.
    cut = ShareCut(0.3, [0.5] * 10, window=200, warmup=10)
    rnd = random.Random(7).random
    decided = [cut.decide(0.8, rnd)[0] for _ in range(1000)]
    assert 240 <= sum(decided[200:]) <= 360   # 30% of 800, give or take
    # Ties with higher scores above them: only the rest of the share is drawn among them.
    cut = ShareCut(0.3, [], window=10, warmup=10)
    for score in (0.9, 0.9, 0.5, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1):
        cut.decide(score, rnd)
    value, tie_chance, seen = cut.cut()
    assert (value, seen) == (0.5, 10) and tie_chance == 0.25   # 3 of 10: 2 above, 1 of 4 ties


def test_a_shift_in_traffic_moves_the_cut_and_nan_is_ignored():
    cut = ShareCut(0.25, [0.1, 0.2, 0.3, 0.4], window=8, warmup=4)
    strong, first = cut.decide(0.9, random.random)
    assert strong and first == (0.4, 1.0, 0)
    for score in (0.8, 0.85, 0.95, math.nan):
        cut.decide(score, random.random)
    strong, used = cut.decide(0.7, random.random)
    assert not strong and used == (0.95, 1.0, 4)   # the top quarter of 0.8, 0.85, 0.9, 0.95
    assert cut.describe(used) == {"share": 0.25, "cut": 0.95, "from": "the last 4 requests"}
    assert cut.describe((math.inf, 0.0, 0))["cut"] is None
