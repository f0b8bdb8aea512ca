"""``llmedge route``, ``llmedge train`` and ``llmedge eval``."""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys

import orjson

from ..errors import ConfigError, ProxyError

OK = 0
FAILED = 1
CONFIG_ERROR = 2


def cmd_route(args: argparse.Namespace) -> int:
    from ..config import load
    from ..upstream.pool import ssl_context
    from .explain import explain_body
    from .router import Router, parse_tags

    try:
        config = load(args.config)
        router = Router(config, ssl_context(config) if args.llm else None)
    except ConfigError as exc:
        print("llmedge: %s is not a valid configuration:" % args.config, file=sys.stderr)
        for problem in exc.problems:
            print("  " + problem, file=sys.stderr)
        return CONFIG_ERROR
    except (OSError, ssl.SSLError) as exc:   # upstream.ca_file, needed by --llm
        print("llmedge: cannot set up TLS for the upstreams: %s" % exc, file=sys.stderr)
        return FAILED
    try:
        model = args.model or next(iter(router.routes), None)
        if model is None:
            print("llmedge: the configuration has no routes; name a deployment with --model",
                  file=sys.stderr)
            return FAILED
        body = orjson.dumps({"model": model, "messages": [
            *({"role": "user", "content": t} for t in args.earlier),
            {"role": "user", "content": args.prompt}]})
        try:
            plan = router.plan(model)
            decide_args = (router.table, router.rnd,
                           parse_tags(args.tags.encode()) if args.tags else frozenset(),
                           args.session, body)
            if args.llm and plan.asynchronous:
                decision = _decide_asking(router, plan, decide_args)
            else:
                decision = plan.decide(*decide_args)
        except ProxyError as exc:
            print("llmedge: %s" % exc.message, file=sys.stderr)
            return FAILED
        print(json.dumps(json.loads(explain_body(router, plan, decision)), indent=2))
        if not args.llm and _llm_not_asked(decision.explain):
            print("llmedge route: the LLM router tier was not asked; --llm asks it (a real "
                  "call to the router deployment)", file=sys.stderr)
        return OK
    finally:
        router.close()
        for plan in router.routes.values():
            audit = getattr(plan, "audit", None)
            if audit is not None:
                audit.join(5.0)  # the process ends next: let the last lines reach the file


def _decide_asking(router, plan, decide_args):
    """The decision ``POST /v1/route`` gives: the LLM tier really asks its deployment, within
    its timeout, and a failure or a useless answer leaves the decision to the classifier."""
    from ..loops import loop_factory

    async def decide():
        try:
            return await plan.decide_async(*decide_args)
        finally:
            # Connections and breaker timers belong to this loop: closed while it runs.
            for target in router.targets.values():
                target.close()
            router.breakers.aclose()

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(decide())


def _llm_not_asked(explain: dict | None) -> bool:
    """Whether some classify route on the decision's path would have asked its LLM tier."""
    from .classify_route import LLM_NOT_ASKED

    while explain:
        if explain.get("llm", {}).get("status") == LLM_NOT_ASKED:
            return True
        explain = explain.get("next")
    return False


def cmd_train(args: argparse.Namespace) -> int:
    import msgspec

    from .outcomes import OUTCOME_OPTIONS, outcome_examples, outcome_rows
    from .classifier import Options, TextClassifier, labelled, read_jsonl

    try:
        rows = read_jsonl(args.data)
        options = Options()
        weights = None
        if args.outcomes:
            texts, labels, weights = outcome_examples(*outcome_rows(rows, args.data))
            options = OUTCOME_OPTIONS
        else:
            texts, labels = labelled(rows, args.data)
        if args.temperature is not None:
            if not args.temperature > 0.0:
                raise ValueError("--temperature must be > 0")
            options = msgspec.structs.replace(options, temperature=args.temperature,
                                              calibrate=False)
        clf = TextClassifier.fit(texts, labels, options, weights)
        clf.save(args.output)
    except (OSError, ValueError) as exc:
        print("llmedge train: %s" % exc, file=sys.stderr)
        return FAILED
    # Outcome prompts the two models agree on are listed once per class at half weight.
    count = "%d prompts" % len(set(texts)) if args.outcomes else "%d examples" % len(texts)
    print("%s: %s, %d classes (%s), temperature %.3g" % (
        args.output, count, len(clf.labels),
        ", ".join(clf.labels[:8]) + (", ..." if len(clf.labels) > 8 else ""),
        clf.temperature))
    return OK


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluate import (classification_report, cost_quality_curve,
                            cross_validated_scores, format_curve, format_report, plot_curve)
    from .outcomes import outcome_rows
    from .classifier import TextClassifier, labelled, read_jsonl

    if args.plot:
        if not args.outcomes:
            print("llmedge eval: --plot draws the cost/quality curve of --outcomes data",
                  file=sys.stderr)
            return FAILED
        try:
            import matplotlib  # noqa: F401  (asked first: no plot, no evaluation)
        except ImportError:
            print("llmedge eval: --plot needs matplotlib (pip install 'llmedge[bench]')",
                  file=sys.stderr)
            return FAILED
    try:
        rows = read_jsonl(args.data)
        if args.limit:
            rows = rows[:args.limit]
        if args.outcomes:
            prompts, weak, strong = outcome_rows(rows, args.data)
            if args.model:
                clf = TextClassifier.load(args.model)
                k = clf.labels.index("strong")
                scores = [clf.proba([p])[k] for p in prompts]
                how = "model %s" % args.model
            else:
                scores = cross_validated_scores(prompts, weak, strong, folds=args.folds)
                how = "%d-fold cross-validation (each prompt scored by a model that never " \
                      "saw it)" % args.folds
            report = cost_quality_curve(scores, weak, strong)
            print("scores: " + how)
            print(format_curve(report))
            if args.plot:
                plot_curve(report, args.plot)
                print("plot: %s" % args.plot)
        else:
            if not args.model:
                print("llmedge eval: labelled data needs --model (from llmedge train)",
                      file=sys.stderr)
                return FAILED
            clf = TextClassifier.load(args.model)
            texts, labels = labelled(rows, args.data)
            decided = [clf.predict([t]) for t in texts]
            report = classification_report(labels, [label for label, _ in decided],
                                           [p for _, p in decided])
            print(format_report(report))
    except (OSError, ValueError) as exc:
        print("llmedge eval: %s" % exc, file=sys.stderr)
        return FAILED
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f)
    return OK


def add_commands(sub) -> None:
    route = sub.add_parser("route", help="explain the routing decision for a prompt")
    route.add_argument("-c", "--config", required=True)
    route.add_argument("prompt")
    route.add_argument("--model", help="route or deployment (default: the first route)")
    route.add_argument("--earlier", action="append", default=[],
                       help="an earlier user turn (repeatable, oldest first)")
    route.add_argument("--session")
    route.add_argument("--tags", help="k=v,k=v as in x-llmedge-tags")
    route.add_argument("--llm", action="store_true",
                       help="ask the route's LLM router tier (a real call to its deployment, "
                            "within its timeout) as a request would; without it the tier is "
                            "not asked and nothing calls an upstream")
    route.set_defaults(func=cmd_route)

    train = sub.add_parser("train", help="train a prompt classifier from JSONL")
    train.add_argument("--data", required=True,
                       help='JSONL: {"text", "label"} (or outcomes with --outcomes)')
    train.add_argument("-o", "--output", required=True)
    train.add_argument("--outcomes", action="store_true",
                       help='data is {"prompt", "weak_correct", "strong_correct"}: '
                            "learn whether the strong model is needed")
    train.add_argument("--temperature", type=float,
                       help="divide logits by this instead of fitting it by cross-validation")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a classifier or a complexity router")
    ev.add_argument("--data", required=True)
    ev.add_argument("--model", help="a model from llmedge train")
    ev.add_argument("--outcomes", action="store_true",
                    help="data is outcome data: report the cost/quality curve")
    ev.add_argument("--folds", type=int, default=5)
    ev.add_argument("--limit", type=int, default=0, help="use only the first N rows")
    ev.add_argument("--plot", help="PNG of the cost/quality curve (needs matplotlib)")
    ev.add_argument("--json")
    ev.set_defaults(func=cmd_eval)
