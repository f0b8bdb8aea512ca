"""The cut on P(strong) that sends a chosen share of live traffic to the strong model.

A complexity route's ``strong_share`` is a budget: "about 30% of requests may go to the strong
model". A cut fixed on the training prompts keeps that promise only while traffic looks like
them, so the cut follows the scores of the most recent requests instead: the score ranked at
``share`` from the top of the last ``window`` decisions. Until ``warmup`` requests have been
seen, the training prompts' cut applies.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from collections.abc import Sequence

WINDOW = 1000     # recent decisions the cut is taken from
WARMUP = 100      # decisions before the live cut replaces the training prompts' cut


def top_share_cut(scores: Sequence[float], share: float) -> float:
    """The lowest score among the top ``share`` of ``scores``: ``score >= cut`` selects
    them. Above every score when the share rounds to none."""
    n = round(share * len(scores))
    if n <= 0:
        return float("inf")
    return sorted(scores, reverse=True)[n - 1]


class ShareCut:
    def __init__(self, share: float, training_scores: Sequence[float],
                 window: int = WINDOW, warmup: int = WARMUP) -> None:
        self.share = share
        self.window = window
        self.warmup = min(warmup, window)
        self.training_cut = top_share_cut(training_scores, share)
        self._recent: deque[float] = deque()
        self._sorted: list[float] = []

    def cut(self) -> tuple[float, int]:
        """(cut, how many recent requests it comes from; 0: the training prompts)."""
        ranked = self._sorted
        if len(ranked) < self.warmup:
            return self.training_cut, 0
        n = round(self.share * len(ranked))
        return (ranked[len(ranked) - n] if n > 0 else float("inf")), len(ranked)

    def observe(self, score: float) -> tuple[float, int]:
        """``cut()`` for a request scoring ``score``, from the requests before it; then
        ``score`` joins the window."""
        cut = self.cut()
        if score != score:   # NaN would never leave the sorted window
            return cut
        if len(self._recent) >= self.window:
            old = self._recent.popleft()
            del self._sorted[bisect_left(self._sorted, old)]
        self._recent.append(score)
        insort(self._sorted, score)
        return cut

    def describe(self, cut: tuple[float, int]) -> dict:
        value, seen = cut
        return {"share": self.share, "cut": value if value != float("inf") else None,
                "from": "the last %d requests" % seen if seen else "the training prompts"}
