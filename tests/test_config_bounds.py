"""Numeric bounds live on the config Structs as msgspec constraints, and a file breaking
several of them (or mixing wrong types in) hears about every one in one pass."""

from __future__ import annotations

import copy
import typing

import msgspec
import pytest

from proxy.config import Config, decode, parse
from proxy.errors import ConfigError

DEPLOYMENT = '{name: a, base_url: "http://127.0.0.1:1/v1"}'


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value.problems


def test_wrong_types_and_broken_bounds_are_all_reported_at_once():
    problems = problems_of("""\
server: {workers: "two", request_timeout_s: .inf, drain_delay_s: .nan}
upstream: {timeouts: {connect_s: 0}, breaker: {jitter: 1}}
deployments: [{name: a, base_url: "http://127.0.0.1:1/v1", quality: 1.5, context_window: 0}]
routes: [{name: r, deployments: [a], cache: {ttl_s: -1}, hysteresis: 2}]
""")
    assert problems == [
        "server.workers: Expected `int`, got `str`",
        "server.request_timeout_s: must be at most 1e+09",
        "server.drain_delay_s: must be >= 0 seconds",
        "upstream.timeouts.connect_s: must be a positive number of seconds",
        "upstream.breaker.jitter: must be in [0, 1)",
        "deployments[0].quality: must be between 0 and 1",
        "deployments[0].context_window: must be a number of tokens >= 1",
        "routes[0].cache.ttl_s: must be > 0",
        "routes[0].hysteresis: must be between 0 and 1",
    ]


def test_checks_across_fields_still_run_beside_broken_bounds():
    problems = problems_of("""\
upstream: {retry: {backoff_s: 2, max_backoff_s: 1}, outlier: {min_requests: 0}}
deployments: [%s]
routes: [{name: r, deployments: [a, nope]}]
""" % DEPLOYMENT)
    assert problems == [
        "upstream.outlier.min_requests: must be >= 1",
        "upstream.retry.max_backoff_s: must be >= backoff_s",
        "routes[0].deployments[1]: unknown deployment 'nope'",
    ]


def test_a_bad_value_in_a_mapping_is_named_by_its_key():
    problems = problems_of("""\
deployments: [%s, {name: b, base_url: "http://127.0.0.1:2/v1"}]
routes: [{name: r, deployments: [a, b], policy: weighted, weights: {a: 2, b: -1}}]
""" % DEPLOYMENT)
    assert problems == ["routes[0].weights.b: must be >= 0"]


def test_a_bad_required_field_ends_the_search_without_inventing_problems():
    problems = problems_of("""\
deployments: [{name: 5, base_url: "http://127.0.0.1:1/v1"}]
""")
    assert problems == ["deployments[0].name: Expected `str`, got `int`"]


def test_the_callers_document_is_left_as_it_was():
    doc = {"deployments": [{"name": "a", "base_url": "http://127.0.0.1:1/v1",
                            "quality": 7, "max_inflight": -1}]}
    before = copy.deepcopy(doc)
    decoded, problems = decode.convert(doc, Config)
    assert problems == ["deployments[0].quality: must be between 0 and 1",
                        "deployments[0].max_inflight: must be >= 0 (0: no limit)"]
    assert decoded is not None and decoded.deployments[0].quality == 0.5   # the default
    assert doc == before


def test_the_json_schema_carries_the_bounds():
    schema = msgspec.json.schema(Config)["$defs"]
    connect = schema["Timeouts"]["properties"]["connect_s"]
    assert connect["exclusiveMinimum"] == 0
    assert connect["description"] == "a positive number of seconds"
    assert schema["Deployment"]["properties"]["quality"]["maximum"] == 1


def _structs(root: type) -> set[type]:
    seen: set[type] = set()
    stack = [root]
    while stack:
        tp = stack.pop()
        stripped, _ = decode._strip(tp)
        args = typing.get_args(stripped)
        if args:
            stack.extend(args)
        elif isinstance(stripped, type) and issubclass(stripped, msgspec.Struct) \
                and stripped not in seen:
            seen.add(stripped)
            stack.extend(f.type for f in msgspec.structs.fields(stripped))
    return seen


def test_every_number_in_the_configuration_has_a_bound():
    unbounded = []
    for struct in _structs(Config):
        for field in msgspec.structs.fields(struct):
            tp = field.type
            if typing.get_origin(tp) is dict:
                tp = typing.get_args(tp)[1]
            inner, metas = decode._strip(tp)
            if inner in (int, float) and not metas:
                unbounded.append("%s.%s" % (struct.__name__, field.name))
    assert len(_structs(Config)) > 20
    assert unbounded == []


def test_no_problem_is_reported_about_a_default_standing_in_for_a_bad_value():
    problems = problems_of("""\
upstream: {retry: {backoff_s: -1, max_backoff_s: 0.01}}
deployments: [%s]
routes: [{name: r, deployments: [a, nope], policy: 5, weights: {a: 1}}]
""" % DEPLOYMENT)
    # Not "max_backoff_s: must be >= backoff_s" (the default 0.05 is not the file's), nor
    # "weights: only used by policy 'weighted'"; the unknown deployment is the file's own.
    assert problems == [
        "upstream.retry.backoff_s: must be >= 0 seconds",
        "routes[0].policy: Expected `str`, got `int`",
        "routes[0].deployments[1]: unknown deployment 'nope'",
    ]


def test_past_the_sanity_limit_the_limit_is_named():
    problems = problems_of("""\
server: {request_timeout_s: 1.0e+12}
deployments: [{name: a, base_url: "http://127.0.0.1:1/v1", price: {input: .inf}}]
""")
    assert problems == ["server.request_timeout_s: must be at most 1e+09",
                        "deployments[0].price.input: must be at most 1e+18"]
