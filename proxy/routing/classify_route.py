"""The ``classify`` policy: the prompt's class picks where a request goes.

A classify route holds a trained classifier and, per class, either a small plan over that
class's deployments (ordered by the class's policy, with the route's fallbacks after them)
or another route (hierarchical: a broad category first, a specialist route within it). A
decision below the class's threshold goes to the route's ``default``. Every decision carries
an explanation: the class probabilities, the path through routes, and the reason.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec

from ..config import Config, Route
from .outcomes import OUTCOME_OPTIONS, outcome_examples, outcome_rows
from .audit import AuditLog
from .classifier import TextClassifier, labelled, read_jsonl
from .policies import POLICIES, Ordered, Policy
from .router import Decision, RoutePlan
from .share_cut import ShareCut
from .llm_router import LlmRouter
from .signals import Ensemble, RequestView, read_request

TOP_K = 5               # probabilities shown in an explanation
SESSION_TTL_S = 1800.0  # a session's class is forgotten after this long without a request
MAX_SESSIONS = 10_000   # remembered at once; the least recently seen go first
# The LLM tier's status in an explanation decided without upstream calls.
LLM_NOT_ASKED = "not asked: decided without calling an upstream"


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

    __slots__ = ("classifier", "classes", "thresholds", "default", "audit", "share_cut",
                 "hysteresis", "sessions", "ensemble", "llm", "llm_mode", "llm_below",
                 "llm_weight", "asynchronous")

    def __init__(self, route: Route, targets, fallbacks, classifier: TextClassifier,
                 classes: dict[str, RoutePlan], default: RoutePlan | None,
                 audit: AuditLog | None, share_cut: ShareCut | None,
                 llm: LlmRouter | None = None) -> None:
        super().__init__(route.name, targets, fallbacks, _Classify(), route)
        self.classifier = classifier
        self.classes = classes
        self.thresholds = {label: spec.threshold for label, spec in route.classes.items()}
        self.default = default
        self.audit = audit
        self.share_cut = share_cut
        self.hysteresis = route.hysteresis
        self.sessions = SessionClasses() if route.hysteresis > 0 else None
        self.ensemble = (Ensemble(classifier.labels, route.signals)
                         if route.signals is not None else None)
        self.llm = llm
        spec = route.llm
        self.llm_mode = spec.mode if spec else "cascade"
        self.llm_below = spec.below if spec else 0.0
        self.llm_weight = spec.weight if spec else 0.0
        # Decided off the request path's synchronous part when an LLM may be asked, here or
        # in a route a class hands over to.
        self.asynchronous = llm is not None or any(
            p.asynchronous for p in [*classes.values(), default] if p is not None)

    def _pick(self, probs: list[float]) -> tuple[str, float]:
        labels = self.classifier.labels
        best = max(range(len(probs)), key=probs.__getitem__)
        return labels[best], probs[best]

    def classify(self, request: RequestView,
                 rnd: Callable[[], float]) -> tuple[str, float, list[float], list[dict]]:
        probs = self.classifier.proba(request.turns)
        votes: list[dict] = []
        if self.ensemble is not None:
            probs, votes = self.ensemble.combine(probs, request)
        if self.share_cut is not None:
            # Complexity routing: the knob moves the cut on P(strong), not the argmax.
            p = probs[self.classifier.labels.index("strong")]
            strong, cut = self.share_cut.decide(p, rnd)
            votes = [{"signal": "strong_share", **self.share_cut.describe(cut)}]
            label, confidence = ("strong", p) if strong else ("weak", 1.0 - p)
        else:
            decided = next((v["class"] for v in votes if v.get("decided")), None)
            if decided is not None:   # combine: confidence, and a signal was surest
                label, confidence = decided, probs[self.classifier.labels.index(decided)]
            else:
                label, confidence = self._pick(probs)
        return label, confidence, probs, votes

    def _asks_llm(self, request: RequestView, confidence: float) -> bool:
        return self.llm is not None and bool(request.turns) and (
            self.llm_mode != "cascade" or confidence < self.llm_below)

    def decide(self, table, rnd, request_tags, session, body: bytes = b"") -> Decision:
        """The decision without the LLM tier: nothing here calls an upstream (llmedge route
        without --llm); ``decide_async`` is what requests get."""
        request = read_request(body)
        label, confidence, probs, votes = self.classify(request, rnd)
        choice = self._choose(request, session, label, confidence, probs)
        inner = choice[0].decide(table, rnd, request_tags, session, body)
        decision = self._compose(request, session, request_tags, choice, label, confidence,
                                 probs, votes, inner, None)
        if self._asks_llm(request, confidence) and decision.explain is not None:
            # Unlike "not consulted" (the classifier was sure enough), a request would have
            # asked the tier here, and its answer might have changed the decision.
            decision.explain["llm"]["status"] = LLM_NOT_ASKED
        return decision

    async def decide_async(self, table, rnd, request_tags, session,
                           body: bytes = b"") -> Decision:
        """``decide``, consulting the LLM tier (and any asynchronous inner route)."""
        request = read_request(body)
        label, confidence, probs, votes = self.classify(request, rnd)
        llm_note = None
        llm = self.llm
        if llm is not None and self._asks_llm(request, confidence):
            answer, what = await llm.ask(request.turns)
            llm_note = {"mode": self.llm_mode, "class": answer, "status": what}
            if answer is not None:
                if self.llm_mode == "vote":
                    k = self.classifier.labels.index(answer)
                    scores = list(probs)
                    scores[k] += self.llm_weight
                    total = sum(scores)
                    probs = [x / total for x in scores]
                    votes = [*votes, {"signal": "llm", "class": answer,
                                      "weight": self.llm_weight}]
                    label, confidence = self._pick(probs)
                else:
                    label, confidence = answer, probs[self.classifier.labels.index(answer)]
        choice = self._choose(request, session, label, confidence, probs,
                              trusted=llm_note is not None and llm_note["class"] == label
                              and self.llm_mode != "vote")
        plan = choice[0]
        if plan.asynchronous:
            inner = await plan.decide_async(table, rnd, request_tags, session, body)
        else:
            inner = plan.decide(table, rnd, request_tags, session, body)
        return self._compose(request, session, request_tags, choice, label, confidence, probs,
                             votes, inner, llm_note)

    def _choose(self, request: RequestView, session, label: str, confidence: float,
                probs: list[float], trusted: bool = False):
        """(plan, why, kept, threshold) for the class decided."""
        turns = request.turns
        kept = None
        if self.sessions is not None and session is not None and turns:
            label, confidence, kept = self._hysteresis(session, label, confidence, probs)
        plan = self.classes.get(label)
        threshold = self.thresholds.get(label, 0.0)
        # The LLM tier's answer is a decision, not a probability: thresholds do not apply.
        unsure = not turns or plan is None or (confidence < threshold and not trusted)
        if unsure and self.default is not None:
            plan = self.default
            why = ("no user text" if not turns else
                   "%s %.2f below threshold %.2f" % (label, confidence, threshold))
        else:
            why = "%s %.2f" % (label, confidence)
            if trusted:
                why += " (LLM router)"
            if kept is not None:
                why += " (session kept its class over %s)" % kept
        if plan is None:  # a trained label the config does not route, and no default
            plan = next(iter(self.classes.values()))
            why += "; unrouted class, first class used"
        return plan, why, kept, threshold, label, confidence

    def _compose(self, request: RequestView, session, request_tags, choice, label, confidence,
                 probs, votes, inner: Decision, llm_note) -> Decision:
        plan, why, kept, threshold, label, confidence = choice
        turns = request.turns
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
        if self.share_cut is not None:
            explain["strong_share"] = votes[0]
        elif self.ensemble is not None or (llm_note and llm_note["mode"] == "vote"):
            explain["votes"] = votes
        if self.llm is not None:
            explain["llm"] = llm_note or {"mode": self.llm_mode, "class": None,
                                          "status": "not consulted"}
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

# Classifiers trained ahead of a Router, in an executor, by prepare(), each with its training
# prompts' P(strong) when the route has a strong_share; keyed by everything their training
# reads, so a Router built on the loop only trains (and scores) what it finds missing.
_Trained = tuple[TextClassifier, "list[float] | None"]
_prepared: dict[bytes, _Trained] = {}


def _train_key(route: Route) -> bytes:
    files = []
    for path in (route.model_file, route.examples_file, route.outcomes_file):
        try:
            st = os.stat(path) if path else None
        except OSError:
            st = None
        files.append([path, st.st_mtime_ns if st else None, st.st_size if st else None])
    return msgspec.json.encode([files, {k: v.examples for k, v in route.classes.items()},
                                route.strong_share is not None])


def prepare(config: Config) -> None:
    """Train or load every classify route's classifier; blocking, so call it in an executor
    before building a Router from ``config`` (start-up and reload)."""
    global _prepared
    ready = {}
    for route in config.routes:
        if route.policy == "classify":
            try:
                ready[_train_key(route)] = _train(route)
            except (OSError, ValueError):
                continue  # the Router reports it, with the route's path
    _prepared = ready


def _train(route: Route) -> _Trained:
    """The route's classifier and, with a strong_share, its training prompts' P(strong)
    (they stand in for traffic until the live window fills)."""
    ready = _prepared.get(_train_key(route))
    if ready is not None:
        return ready
    prompts: list[str] = []
    if route.model_file is not None:
        clf = TextClassifier.load(route.model_file)
    else:
        texts: list[str] = []
        labels: list[str] = []
        weights: list[float] = []
        if route.examples_file is not None:
            texts, labels = labelled(read_jsonl(route.examples_file), route.examples_file)
        elif route.outcomes_file is not None:
            prompts, weak, strong = outcome_rows(read_jsonl(route.outcomes_file),
                                                 route.outcomes_file)
            texts, labels, weights = outcome_examples(prompts, weak, strong)
        for label, spec in route.classes.items():
            texts += spec.examples
            labels += [label] * len(spec.examples)
        weights += [1.0] * (len(texts) - len(weights))
        clf = TextClassifier.fit(texts, labels,
                                 OUTCOME_OPTIONS if route.outcomes_file is not None else None,
                                 weights)
    if route.strong_share is None or "strong" not in clf.labels:
        return clf, None
    if route.outcomes_file is None:
        prompts = route.classes["strong"].examples + [
            t for label, spec in route.classes.items() if label != "strong"
            for t in spec.examples]
    k = clf.labels.index("strong")
    return clf, [clf.proba([p])[k] for p in prompts]


def build_classify_plans(router, config: Config, previous=None) -> list[str]:
    """Add a ClassifyPlan to ``router.routes`` for every classify route; return problems.
    A route whose classifier a reload kept (``previous``: the router being replaced) keeps
    what it learned from traffic too: the strong_share window and the sessions' classes."""
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
            clf, training_scores = _train(route)
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
        llm = None
        if route.llm is not None:
            llm = LlmRouter(router, router.targets[route.llm.deployment], clf.labels,
                            {label: spec.description for label, spec in route.classes.items()},
                            {label: spec.examples for label, spec in route.classes.items()},
                            route.llm.timeout_s, route.llm.cache_size, route.name)
        old = previous.routes.get(name) if previous is not None else None
        kept = isinstance(old, ClassifyPlan) and old.classifier is clf
        share_cut = None
        if kept and old.share_cut is not None and old.share_cut.share == route.strong_share:
            share_cut = old.share_cut
        elif training_scores is not None:
            share_cut = ShareCut(route.strong_share, training_scores)
        plan = ClassifyPlan(route, targets, fallbacks, clf, classes, default, audit,
                            share_cut, llm)
        if kept and plan.sessions is not None and old.sessions is not None:
            plan.sessions = old.sessions
        router.routes[name] = plan
        return plan

    for name in routes:
        build(name)
    return problems
