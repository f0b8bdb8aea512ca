"""How a classify route's signals combine with the classifier."""

from __future__ import annotations

import pytest

from proxy.config import FeatureSignal, RuleSignal, SignalsConfig
from proxy.config.classify import check_signals
from proxy.routing.signals import Ensemble, RequestView

LABELS = ["chat", "code", "math"]


def _ensemble(combine: str, classifier: float = 1.0) -> Ensemble:
    return Ensemble(LABELS, SignalsConfig(
        classifier=classifier, combine=combine,
        rules=[RuleSignal(pattern=r"\bselect\b", class_="code", weight=0.9),
               RuleSignal(pattern=r"\bsum\b", class_="math", weight=0.3)],
        features=[FeatureSignal(when="tools", class_="code", weight=0.5)]))


def _view(text: str, tools: bool = False) -> RequestView:
    return RequestView([text], tools, False)


def test_vote_adds_weights_and_normalises():
    probs, votes = _ensemble("vote").combine([0.6, 0.3, 0.1], _view("select the sum"))
    assert probs == pytest.approx([0.6 / 2.2, 1.2 / 2.2, 0.4 / 2.2])
    assert [v["signal"] for v in votes] == ["rule '\\\\bselect\\\\b'", "rule '\\\\bsum\\\\b'"]
    assert not any("decided" in v for v in votes)


def test_confidence_lets_the_surest_signal_decide():
    ensemble = _ensemble("confidence")
    # The rule (0.9) is surer than the classifier (0.6): code, with at least 0.9.
    probs, votes = ensemble.combine([0.6, 0.3, 0.1], _view("select the sum"))
    assert probs == pytest.approx([0.1 * 6 / 7, 0.9, 0.1 * 1 / 7])
    assert sum(probs) == pytest.approx(1.0)
    assert [v.get("decided", False) for v in votes] == [True, False]
    # The classifier (0.95) is surer than the tools feature (0.5): unchanged.
    probs, votes = ensemble.combine([0.95, 0.03, 0.02], _view("hello", tools=True))
    assert probs == [0.95, 0.03, 0.02] and "decided" not in votes[0]
    # A tie keeps the classifier; its weight scales its confidence.
    probs, _ = ensemble.combine([0.1, 0.0, 0.9], _view("select"))
    assert probs == [0.1, 0.0, 0.9]
    # The "sum" rule (0.3, math) against a classifier sure of chat (0.9).
    probs, _ = _ensemble("confidence", classifier=0.5).combine([0.9, 0.0, 0.1],
                                                              _view("sum"))
    assert probs == [0.9, 0.0, 0.1]   # 0.3 < 0.5 x 0.9: still the classifier
    probs, votes = _ensemble("confidence", classifier=0.2).combine([0.9, 0.0, 0.1],
                                                                  _view("sum"))
    # The rule (0.3) beats 0.2 x 0.9: math gets 0.3, chat and code share the rest. The route
    # takes the class from the deciding vote, not from the (here lower) arg-max.
    assert probs == pytest.approx([0.7, 0.0, 0.3]) and votes[0]["decided"] is True


def test_confidence_weights_are_checked():
    problems: list[str] = []
    check_signals("routes[0].signals", SignalsConfig(
        classifier=2.0, combine="confidence",
        rules=[RuleSignal(pattern="x", class_="code", weight=3.0)]), set(LABELS), problems)
    check_signals("routes[1].signals", SignalsConfig(combine="loudest"), set(LABELS), problems)
    assert problems == [
        "routes[0].signals.classifier: a confidence, at most 1 with combine: confidence",
        "routes[0].signals.rules[0].weight: a confidence, at most 1 with combine: confidence",
        "routes[1].signals.combine: unknown way 'loudest' (known: vote, confidence)"]
