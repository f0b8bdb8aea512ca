"""Checks of a ``classify`` route's configuration, each problem named by its path."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import Route, SignalsConfig

# Request features a signal may vote on (routing/signals.py reads them from the body).
FEATURES = ("code_block", "tools", "images", "long")
COMBINE = ("vote", "confidence")

CLASS_POLICIES = ("ordered", "cost", "latency", "score")
_CLASSIFY_ONLY = ("classes", "default", "examples_file", "outcomes_file", "model_file",
                  "strong_share", "audit", "hysteresis", "signals", "llm")


def check_classify(where: str, route: Route, deployments: set[str], routes: list[Route],
                   problems: list[str]) -> None:
    if route.policy != "classify":
        for field in _CLASSIFY_ONLY:
            value = getattr(route, field)
            if value:
                problems.append("%s.%s: only used by policy 'classify'" % (where, field))
        return
    route_names = {r.name for r in routes}
    sources = [f for f in ("examples_file", "outcomes_file", "model_file")
               if getattr(route, f) is not None]
    if len(sources) > 1:
        problems.append("%s: give at most one of examples_file, outcomes_file, model_file"
                        % where)
    for field in sources:
        path = getattr(route, field)
        if not os.path.isfile(path):
            problems.append("%s.%s: no such file %r" % (where, field, path))
    if not route.classes:
        problems.append("%s.classes: policy 'classify' needs at least one class" % where)
    inline = any(spec.examples for spec in route.classes.values())
    if not sources and not inline:
        problems.append("%s: policy 'classify' needs examples (classes.*.examples, "
                        "examples_file or outcomes_file) or a model_file" % where)
    if route.outcomes_file is not None and set(route.classes) != {"strong", "weak"}:
        problems.append("%s.classes: outcomes_file trains the classes 'strong' and 'weak'; "
                        "configure exactly those" % where)
    if route.strong_share is not None:
        if route.outcomes_file is None and "strong" not in route.classes:
            problems.append("%s.strong_share: needs a class 'strong'" % where)
    for label, spec in route.classes.items():
        at = "%s.classes.%s" % (where, label)
        if not label or label != label.strip():
            problems.append("%s: %r is not a usable class name" % (at, label))
        if bool(spec.deployments) == (spec.route is not None):
            problems.append("%s: give either deployments or route" % at)
        seen: set[str] = set()
        for j, name in enumerate(spec.deployments):
            if name not in deployments:
                problems.append("%s.deployments[%d]: unknown deployment %r" % (at, j, name))
            elif name in seen:
                problems.append("%s.deployments[%d]: %r is listed twice" % (at, j, name))
            seen.add(name)
        if spec.route is not None:
            if spec.route not in route_names:
                problems.append("%s.route: unknown route %r" % (at, spec.route))
            elif _cycle(route.name, spec.route, routes):
                problems.append("%s.route: %r leads back to %r" % (at, spec.route, route.name))
        if spec.policy not in CLASS_POLICIES:
            problems.append("%s.policy: unknown policy %r (known: %s)"
                            % (at, spec.policy, ", ".join(CLASS_POLICIES)))
        if spec.policy == "score" and spec.objective is None:
            problems.append("%s.objective: policy 'score' needs an objective" % at)
        for j, text in enumerate(spec.examples):
            if not text.strip():
                problems.append("%s.examples[%d]: empty example" % (at, j))
    if route.default is not None and route.default not in deployments \
            and route.default not in route_names:
        problems.append("%s.default: %r names no deployment or route" % (where, route.default))
    elif route.default is not None and route.default in route_names \
            and _cycle(route.name, route.default, routes):
        problems.append("%s.default: %r leads back to %r" % (where, route.default, route.name))
    if route.signals is not None:
        check_signals("%s.signals" % where, route.signals, set(route.classes), problems)
        if route.strong_share is not None:
            problems.append("%s.signals: strong_share sets its cut on the classifier alone; "
                            "use a threshold on 'strong' with signals" % where)
        if route.signals.combine == "confidence" and route.llm is not None \
                and route.llm.mode == "vote":
            problems.append("%s.llm.mode: a vote has no confidence to compare; with combine: "
                            "confidence use mode cascade or always" % where)
    llm = route.llm
    if llm is not None:
        if llm.deployment not in deployments:
            problems.append("%s.llm.deployment: unknown deployment %r" % (where, llm.deployment))
        if llm.mode not in ("cascade", "always", "vote"):
            problems.append("%s.llm.mode: unknown mode %r (known: cascade, always, vote)"
                            % (where, llm.mode))
        if llm.mode == "vote" and route.strong_share is not None:
            problems.append("%s.llm.mode: strong_share sets its cut on the classifier alone; "
                            "an LLM vote would move every score past it" % where)
    if route.audit is not None:
        problem = writable_file_problem(route.audit.file)
        if problem:
            problems.append("%s.audit.file: %s" % (where, problem))


def writable_file_problem(path: str) -> str | None:
    """Why lines cannot be appended to ``path`` (None: they can), without creating it."""
    if os.path.isdir(path):
        return "%r is a directory" % path
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else "%r is not writable" % path
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return "no such directory %r" % folder
    return None if os.access(folder, os.W_OK | os.X_OK) else \
        "cannot create a file in %r" % folder


def _cycle(start: str, target: str, routes: list[Route]) -> bool:
    """True when following classes and defaults from ``target`` reaches ``start``."""
    by_name = {r.name: r for r in routes}
    stack, seen = [target], set()
    while stack:
        name = stack.pop()
        if name == start:
            return True
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        r = by_name[name]
        stack.extend(spec.route for spec in r.classes.values() if spec.route)
        if r.default:
            stack.append(r.default)
    return False


def check_signals(where: str, signals: SignalsConfig, classes: set[str],
                  problems: list[str]) -> None:
    confidence = signals.combine == "confidence"
    if signals.combine not in COMBINE:
        problems.append("%s.combine: unknown way %r (known: %s)"
                        % (where, signals.combine, ", ".join(COMBINE)))
    elif confidence and signals.classifier > 1:
        problems.append("%s.classifier: a confidence, at most 1 with combine: confidence"
                        % where)
    for j, rule in enumerate(signals.rules):
        at = "%s.rules[%d]" % (where, j)
        try:
            re.compile(rule.pattern)
        except re.error as exc:
            problems.append("%s.pattern: not a regular expression: %s" % (at, exc))
        if rule.class_ not in classes:
            problems.append("%s.class: %r is not one of the route's classes" % (at, rule.class_))
        _check_weight(at, rule.weight, confidence, problems)
    for j, feature in enumerate(signals.features):
        at = "%s.features[%d]" % (where, j)
        if feature.when not in FEATURES:
            problems.append("%s.when: unknown feature %r (known: %s)"
                            % (at, feature.when, ", ".join(FEATURES)))
        if feature.class_ not in classes:
            problems.append("%s.class: %r is not one of the route's classes"
                            % (at, feature.class_))
        _check_weight(at, feature.weight, confidence, problems)


def _check_weight(at: str, weight: float, confidence: bool, problems: list[str]) -> None:
    if confidence and weight > 1:
        problems.append("%s.weight: a confidence, at most 1 with combine: confidence" % at)
