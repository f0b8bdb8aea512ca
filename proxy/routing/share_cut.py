"""The cut on P(strong) that sends a chosen share of live traffic to the strong model.

A complexity route's ``strong_share`` is a budget: "about 30% of requests may go to the strong
model". A cut fixed on the training prompts keeps that promise only while traffic looks like
them, so the cut follows the scores of the most recent requests instead: the score ranked at
``share`` from the top of the last ``window`` decisions. Until ``warmup`` requests have been
seen, the training prompts' scores stand in. A score equal to the cut goes to the strong model
with the probability that fills the share exactly, so a burst of identical prompts (retries,
templated agents) cannot take every request past the budget.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Callable, Sequence

WINDOW = 1000     # recent decisions the cut is taken from
WARMUP = 100      # decisions before the live cut replaces the training prompts' cut


def _cut(ranked: list[float], share: float) -> tuple[float, float]:
    """(cut, probability that a score equal to it is selected) over ascending ``ranked``."""
    n = round(share * len(ranked))
    if n <= 0:
        return float("inf"), 0.0
    cut = ranked[len(ranked) - n]
    above = len(ranked) - bisect_right(ranked, cut)
    equal = len(ranked) - above - bisect_left(ranked, cut)
    return cut, (n - above) / equal


class ShareCut:
    def __init__(self, share: float, training_scores: Sequence[float],
                 window: int = WINDOW, warmup: int = WARMUP) -> None:
        self.share = share
        self.window = window
        self.warmup = min(warmup, window)
        self._training = sorted(s for s in training_scores if s == s)
        self._recent: deque[float] = deque()
        self._sorted: list[float] = []

    def cut(self) -> tuple[float, float, int]:
        """(cut, chance for a tie, how many recent requests it comes from; 0: the training
        prompts)."""
        ranked = self._sorted
        if len(ranked) < self.warmup:
            return (*_cut(self._training, self.share), 0)
        return (*_cut(ranked, self.share), len(ranked))

    def decide(self, score: float, rnd: Callable[[], float]) -> tuple[bool, tuple]:
        """Whether a request scoring ``score`` goes to the strong model, by the cut of the
        requests before it (returned too, for the explanation); then ``score`` joins the
        window."""
        cut = self.cut()
        value, tie_chance, _ = cut
        strong = score > value or (score == value and rnd() < tie_chance)
        if score == score:   # NaN would never leave the sorted window
            if len(self._recent) >= self.window:
                old = self._recent.popleft()
                del self._sorted[bisect_left(self._sorted, old)]
            self._recent.append(score)
            insort(self._sorted, score)
        return strong, cut

    def describe(self, cut: tuple) -> dict:
        value, _, seen = cut
        return {"share": self.share, "cut": value if value != float("inf") else None,
                "from": "the last %d requests" % seen if seen else "the training prompts"}
