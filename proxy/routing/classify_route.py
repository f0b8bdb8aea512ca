"""The ``classify`` policy: the prompt's class picks where a request goes.

A classify route holds a trained classifier and, per class, either a small plan over that
class's deployments (ordered by the class's policy, with the route's fallbacks after them)
or another route (hierarchical: a broad category first, a specialist route within it). A
decision below the class's threshold goes to the route's ``default``. Every decision carries
an explanation: the class probabilities, the path through routes, and the reason.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from ..config import Config, Route
from ..evaluate import OUTCOME_OPTIONS, outcome_rows, strong_needed
from .audit import AuditLog
from .classifier import TextClassifier, labelled, read_jsonl
from .policies import POLICIES, Ordered, Policy
from .router import Decision, RoutePlan
from .signals import Ensemble, RequestView, read_request

TOP_K = 5               # probabilities shown in an explanation
SESSION_TTL_S = 1800.0  # a session's class is forgotten after this long without a request
MAX_SESSIONS = 10_000   # remembered at once; the least recently seen go first


class SessionClasses:
    """The class each recent session was routed to, bounded in count and age."""

    def __init__(self, ttl_s: float = SESSION_TTL_S, max_sessions: int = MAX_SESSIONS,
                 clock=time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.clock = clock
        self._items: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, session: str) -> str | None:
        item = self._items.get(session)
        if item is None:
            return None
        if self.clock() - item[1] > self.ttl_s:
            del self._items[session]
            return None
        return item[0]

    def put(self, session: str, label: str) -> None:
        self._items[session] = (label, self.clock())
        self._items.move_to_end(session)
        while len(self._items) > self.max_sessions:
            self._items.popitem(last=False)


def user_turns(body: bytes) -> list[str]:
    """The conversation's user turns that inform the class: earlier ones, then the last."""
    return read_request(body).turns


class _Classify(Policy):
    name = "classify"


class ClassifyPlan(RoutePlan):
    """A route whose first decision is the prompt's class."""

    __slots__ = ("classifier", "classes", "thresholds", "default", "audit", "strong_cut",
                 "hysteresis", "sessions", "ensemble")

    def __init__(self, route: Route, targets, fallbacks, classifier: TextClassifier,
                 classes: dict[str, RoutePlan], default: RoutePlan | None,
                 audit: AuditLog | None, strong_cut: float | None) -> None:
        super().__init__(route.name, targets, fallbacks, _Classify(), route)
        self.classifier = classifier
        self.classes = classes
        self.thresholds = {label: spec.threshold for label, spec in route.classes.items()}
        self.default = default
        self.audit = audit
        self.strong_cut = strong_cut
        self.hysteresis = route.hysteresis
        self.sessions = SessionClasses() if route.hysteresis > 0 else None
        self.ensemble = (Ensemble(classifier.labels, route.signals)
                         if route.signals is not None else None)

    def classify(self, request: RequestView) -> tuple[str, float, list[float], list[dict]]:
        clf = self.classifier
        probs = clf.proba(request.turns)
        votes: list[dict] = []
        if self.ensemble is not None:
            probs, votes = self.ensemble.combine(probs, request)
        if self.strong_cut is not None:
            # Complexity routing: the knob moves the cut on P(strong), not the argmax.
            p = probs[clf.labels.index("strong")]
            return (("strong", p, probs, votes) if p >= self.strong_cut
                    else ("weak", 1.0 - p, probs, votes))
        best = max(range(len(probs)), key=probs.__getitem__)
        return clf.labels[best], probs[best], probs, votes

    def decide(self, table, rnd, request_tags, session, body: bytes = b"") -> Decision:
        request = read_request(body)
        turns = request.turns
        label, confidence, probs, votes = self.classify(request)
        kept = None
        if self.sessions is not None and session is not None and turns:
            label, confidence, kept = self._hysteresis(session, label, confidence, probs)
        plan = self.classes.get(label)
        threshold = self.thresholds.get(label, 0.0)
        unsure = not turns or plan is None or confidence < threshold
        if unsure and self.default is not None:
            plan = self.default
            why = ("no user text" if not turns else
                   "%s %.2f below threshold %.2f" % (label, confidence, threshold))
        else:
            why = "%s %.2f" % (label, confidence)
            if kept is not None:
                why += " (session kept its class over %s)" % kept
        if plan is None:  # a trained label the config does not route, and no default
            plan = next(iter(self.classes.values()))
            why += "; unrouted class, first class used"
        inner = plan.decide(table, rnd, request_tags, session, body)
        ordered = list(inner.targets)
        for fallback in self._eligible(self.fallbacks, self.require_tags | request_tags, []):
            if fallback not in ordered:
                ordered.append(fallback)
        labels = self.classifier.labels
        top = sorted(range(len(probs)), key=lambda i: -probs[i])[:TOP_K]
        inner_explain = inner.explain or {"path": [plan.name]}
        explain = {"route": self.name, "class": label, "confidence": confidence,
                   "threshold": threshold, "used_default": plan is self.default,
                   "probabilities": {labels[i]: probs[i] for i in top},
                   "path": [self.name, *inner_explain["path"]]}
        if self.sessions is not None and session is not None:
            explain["session_kept_over"] = kept
        if self.ensemble is not None:
            explain["votes"] = votes
        if inner.explain:
            explain["next"] = inner.explain
        decision = Decision(ordered, "classify(%s): %s -> %s" % (self.name, why, inner.reason),
                            inner.session)
        decision.explain = explain
        if self.audit is not None and confidence < self.audit.below:
            self.audit.write(self.name, label, confidence, explain["probabilities"],
                             [t.name for t in ordered], turns[-1] if turns else "")
        return decision

    def _hysteresis(self, session: str, label: str, confidence: float,
                    probs: list[float]) -> tuple[str, float, str | None]:
        """Keep the session's previous class unless the new best beats it by the margin;
        returns (label, its probability, the class it was kept over or None)."""
        sessions = self.sessions
        assert sessions is not None
        previous = sessions.get(session)
        kept = None
        labels = self.classifier.labels
        if previous is not None and previous != label and previous in labels:
            p_prev = probs[labels.index(previous)]
            if confidence - p_prev <= self.hysteresis:
                kept, label, confidence = label, previous, p_prev
        sessions.put(session, label)
        return label, confidence, kept

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()


# === building ===

def _train(route: Route) -> TextClassifier:
    if route.model_file is not None:
        return TextClassifier.load(route.model_file)
    texts: list[str] = []
    labels: list[str] = []
    if route.examples_file is not None:
        texts, labels = labelled(read_jsonl(route.examples_file), route.examples_file)
    elif route.outcomes_file is not None:
        prompts, weak, strong = outcome_rows(read_jsonl(route.outcomes_file),
                                             route.outcomes_file)
        texts, labels = prompts, strong_needed(weak, strong)
    for label, spec in route.classes.items():
        texts += spec.examples
        labels += [label] * len(spec.examples)
    return TextClassifier.fit(texts, labels,
                              OUTCOME_OPTIONS if route.outcomes_file is not None else None)


def _strong_cut(route: Route, clf: TextClassifier) -> float | None:
    """The P(strong) above which a request goes to 'strong' so that about ``strong_share``
    of the training prompts would (the training prompts stand in for traffic)."""
    if route.strong_share is None:
        return None
    if route.outcomes_file is not None:
        prompts = [r["prompt"] for r in read_jsonl(route.outcomes_file)]
    else:
        prompts = route.classes["strong"].examples + [
            t for label, spec in route.classes.items() if label != "strong"
            for t in spec.examples]
    k = clf.labels.index("strong")
    scores = sorted((clf.proba([p])[k] for p in prompts), reverse=True)
    n = round(route.strong_share * len(scores))
    if n <= 0:
        return 1.0 + 1e-9
    return scores[n - 1]


def build_classify_plans(router, config: Config) -> list[str]:
    """Add a ClassifyPlan to ``router.routes`` for every classify route; return problems."""
    problems: list[str] = []
    routes = {r.name: (i, r) for i, r in enumerate(config.routes) if r.policy == "classify"}
    building: set[str] = set()

    def build(name: str) -> RoutePlan | None:
        if name in router.routes:
            return router.routes[name]
        if name in router.targets:
            return router._direct[name]
        if name not in routes or name in building:
            return None
        building.add(name)
        i, route = routes[name]
        where = "routes[%d]" % i
        try:
            clf = _train(route)
        except (OSError, ValueError) as exc:
            problems.append("%s: cannot build the classifier: %s" % (where, exc))
            return None
        missing = sorted(set(route.classes) - set(clf.labels))
        if missing:
            problems.append("%s.classes: no training examples for %s"
                            % (where, ", ".join(missing)))
            return None
        fallbacks = [router.targets[n] for n in route.fallbacks]
        classes: dict[str, RoutePlan] = {}
        targets = []
        for label, spec in route.classes.items():
            if spec.route is not None:
                sub = build(spec.route)
                if sub is None:
                    problems.append("%s.classes.%s.route: %r could not be built"
                                    % (where, label, spec.route))
                    return None
            else:
                policy = POLICIES[spec.policy](
                    Route(name=route.name, deployments=spec.deployments, policy=spec.policy,
                          objective=spec.objective)) if spec.policy != "ordered" \
                    else Ordered(route)
                sub_targets = [router.targets[n] for n in spec.deployments]
                sub = RoutePlan("%s/%s" % (route.name, label), sub_targets, fallbacks,
                                policy, route)
            classes[label] = sub
            targets += [t for t in sub.targets if t not in targets]
        default = None
        if route.default is not None:
            default = build(route.default)
            if default is None:
                problems.append("%s.default: %r could not be built" % (where, route.default))
                return None
            targets += [t for t in default.targets if t not in targets]
        audit = None
        if route.audit is not None:
            audit = AuditLog(route.audit.file, route.audit.below, route.audit.include_text)
        plan = ClassifyPlan(route, targets, fallbacks, clf, classes, default, audit,
                            _strong_cut(route, clf))
        router.routes[name] = plan
        return plan

    for name in routes:
        build(name)
    return problems
