"""The routing table: what a request's ``model`` names, which deployments may serve it,
and in what order they are tried.

Per request the router filters a route's deployments by compliance tags (the route's and
the request's) and constraints, lets the route's policy order the rest, and appends the
fallbacks that pass the same filters. Endpoints (replicas) are chosen later, per attempt,
from the endpoint table.
"""

from __future__ import annotations

import functools
import os
import random
import ssl
from collections.abc import Callable, Iterator

from urllib.parse import quote

import orjson
import xxhash

from _fastpath import EP_EJECTED, EndpointTable

from ..breaker import Breakers
from ..config import Config, Deployment, Route, Timeouts
from ..endpoint_states import STATE_NAMES
from ..errors import (BadRequest, ConfigError, NoHealthyUpstream, NotFound, UpstreamError,
                      UpstreamStatus)
from ..providers import Adapter, adapter_for, auth_headers
from ..providers.aws_credentials import AwsCredentials, resolve as resolve_aws
from ..providers.responses import ResponsesView
from ..upstream.pool import Endpoint
from .affinity import SessionAffinity
from .policies import POLICIES, Direct, Policy


class SharedChanges:
    """What building a router changes in the state it shares with the router it replaces:
    new rows of the endpoint table and the settings of kept endpoints. Applied by ``adopt``,
    on the loop, so a reload builds its router in a thread while the previous one serves,
    and a router that is rejected has changed nothing."""

    def __init__(self, table: EndpointTable) -> None:
        self.table = table
        self._next_row = len(table)
        self._rows: list[tuple[int, float, float]] = []
        self._endpoints: list[tuple[Endpoint, int, ssl.SSLContext | None]] = []

    def new_row(self, price: float, quality: float) -> int:
        row, self._next_row = self._next_row, self._next_row + 1
        self._rows.append((row, price, quality))
        return row

    def keep_endpoint(self, endpoint: Endpoint, max_idle: int,
                      ssl_context: ssl.SSLContext | None) -> None:
        self._endpoints.append((endpoint, max_idle, ssl_context))

    def apply(self) -> None:
        rows, self._rows = self._rows, []
        for row, price, quality in rows:
            added = self.table.add(price=price, quality=quality)
            if added != row:
                # Reloads run one at a time and only a router's adoption adds rows: a
                # second router built on the same table and adopted out of order.
                raise RuntimeError("endpoint row %d reserved, %d added" % (row, added))
        endpoints, self._endpoints = self._endpoints, []
        for endpoint, max_idle, ssl_context in endpoints:
            endpoint.max_idle = max_idle
            if endpoint.ssl is not None:
                endpoint.ssl = ssl_context


class Target:
    """A deployment as the dispatcher sees it: endpoints with their table rows,
    credentials, timeouts and what routing filters on."""

    __slots__ = ("name", "name_bytes", "upstream_model", "endpoints", "rows", "auth_header",
                 "unusable", "timeouts", "tags", "price", "quality", "affinity", "inflight",
                 "max_inflight", "price_in", "price_out", "context_window", "continuation",
                 "adapter", "speaks")

    def __init__(self, dep: Deployment, defaults: Timeouts, max_idle: int,
                 ssl_context: ssl.SSLContext | None, changes: SharedChanges,
                 kept: dict[tuple, tuple[int, Endpoint]] | None = None,
                 aws_credentials: Callable[[], AwsCredentials] = resolve_aws) -> None:
        self.name = dep.name
        self.name_bytes = dep.name.encode()
        self.upstream_model = dep.upstream_model
        self.price = dep.price.input + dep.price.output
        self.price_in, self.price_out = dep.price.input, dep.price.output
        self.quality = dep.quality
        self.endpoints = []
        self.rows = []
        for url in dep.urls:
            # After a reload an endpoint that did not change keeps its table row (latency,
            # errors, circuit) and its pooled connections.
            old = kept.pop(endpoint_key(dep.name, url, self.price, self.quality), None) \
                if kept else None
            if old is None:
                row = changes.new_row(self.price, dep.quality)
                endpoint = Endpoint(url, max_idle, ssl_context)
            else:
                row, endpoint = old
                changes.keep_endpoint(endpoint, max_idle, ssl_context)
            self.rows.append(row)
            self.endpoints.append(endpoint)
        self.timeouts = dep.timeouts or defaults
        self.tags = frozenset(dep.tags)
        self.affinity: SessionAffinity | None = None
        self.inflight = 0
        self.max_inflight = dep.max_inflight
        self.context_window = dep.context_window
        self.continuation = dep.continuation == "prefill"
        self.unusable: str | None = None
        # None for OpenAI-compatible deployments: their requests go as they are.
        self.adapter = adapter_for(dep.provider, dep.upstream_model, dep.api_version,
                                   dep.region, aws_credentials)
        if self.adapter is not None and self.adapter.unusable:
            self.unusable = self.adapter.unusable
        # The front-end APIs whose requests this deployment takes untranslated, and how
        # the request path reads its answers to them.
        self.speaks: dict[str, Adapter] = {}
        if self.adapter is not None and self.adapter.native:
            self.speaks[self.adapter.name] = self.adapter
        if dep.responses:
            self.speaks["responses"] = ResponsesView()
        key = None
        if dep.api_key_env:
            key = os.environ.get(dep.api_key_env)
            if not key:
                self.unusable = "environment variable %s is not set" % dep.api_key_env
        self.auth_header = auth_headers(dep.provider, key, dep.api_version)

    def close(self) -> None:
        for endpoint in self.endpoints:
            endpoint.close()


def endpoint_key(deployment: str, url: str, price: float, quality: float) -> tuple:
    """What must be equal for a reloaded endpoint to count as unchanged: price and quality
    live in its table row, everything else is read from the deployment per request."""
    return (deployment, url, price, quality)


class Decision:
    """The deployments to try, best first, and why."""

    __slots__ = ("targets", "reason", "session", "explain")

    def __init__(self, targets: list[Target], reason: str, session: str | None) -> None:
        self.targets = targets
        self.reason = reason
        self.session = session
        self.explain: dict | None = None   # a classify route's probabilities and path


class SessionRandom:
    """A random stream seeded by a session key, so a session's weighted choice repeats."""

    __slots__ = ("_state",)

    def __init__(self, key: str) -> None:
        self._state = xxhash.xxh3_64_intdigest(key.encode("utf-8", "surrogatepass")) or 1

    def __call__(self) -> float:
        # xorshift64*: plenty for spreading sessions, and cheap.
        x = self._state
        x ^= x >> 12
        x ^= (x << 25) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 27
        self._state = x
        return ((x * 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF) / 18446744073709551616.0


class RoutePlan:
    asynchronous = False   # True: decide_async() must be awaited instead of decide()

    __slots__ = ("name", "name_bytes", "targets", "fallbacks", "policy", "require_tags",
                 "min_quality", "max_price", "affinity", "epsilon", "cache")

    def __init__(self, name: str, targets: list[Target], fallbacks: list[Target],
                 policy: Policy, route: Route | None = None) -> None:
        self.name = name
        self.name_bytes = name.encode()
        self.targets = targets
        self.fallbacks = fallbacks
        self.policy = policy
        self.require_tags = frozenset(route.require_tags) if route else frozenset()
        self.min_quality = route.min_quality if route else None
        self.max_price = route.max_price if route else None
        self.affinity = route.affinity if route else None
        self.epsilon = route.affinity_epsilon if route else 0.25
        self.cache = route.cache if route else None

    def decide(self, table: EndpointTable, rnd: Callable[[], float],
               request_tags: frozenset[str], session: str | None,
               body: bytes = b"") -> Decision:
        required = self.require_tags | request_tags if request_tags else self.require_tags
        notes: list[str] = []
        eligible = self._eligible(self.targets, required, notes)
        if not eligible and not any(required <= t.tags for t in self.fallbacks):
            self._refuse(required)
        if self.affinity is not None and session is not None:
            rnd = SessionRandom(session)
        else:
            session = None
        if eligible:
            order = self.policy.order(eligible, table, rnd)
            ordered = [eligible[i] for i in order]
        else:
            ordered = []
        for fallback in self._eligible(self.fallbacks, required, notes):
            if fallback not in ordered:
                ordered.append(fallback)
        if not ordered:
            raise NoHealthyUpstream("no deployment of %s %r meets its constraints (%s)"
                                    % ("route" if self.policy.name != "direct" else
                                       "deployment", self.name, "; ".join(notes)))
        reason = "%s: %s" % (self.policy.name, ordered[0].name)
        if len(ordered) > 1:
            reason += " then " + ",".join(t.name for t in ordered[1:])
        if notes:
            reason += "; skipped " + "; ".join(notes)
        return Decision(ordered, reason, session)

    def _eligible(self, targets: list[Target], required: frozenset[str],
                  notes: list[str]) -> list[Target]:
        eligible = []
        for t in targets:
            if not required <= t.tags:
                notes.append("%s (lacks %s)" % (t.name, ",".join(sorted(required - t.tags))))
            elif self.min_quality is not None and t.quality < self.min_quality:
                notes.append("%s (quality %g < %g)" % (t.name, t.quality, self.min_quality))
            elif self.max_price is not None and t.price > self.max_price:
                notes.append("%s (price %g > %g)" % (t.name, t.price, self.max_price))
            else:
                eligible.append(t)
        return eligible

    def close(self) -> None:
        pass

    def _refuse(self, required: frozenset[str]) -> None:
        lacking = []
        for t in self.targets + self.fallbacks:
            missing = sorted(required - t.tags)
            lacking.append("%s lacks %s" % (t.name, ",".join(missing)))
        raise BadRequest("no deployment of %r may serve this request: it requires tags %s (%s)"
                         % (self.name, ",".join(sorted(required)), "; ".join(lacking)),
                         code="unsatisfiable_tags", param="x-llmedge-tags")


def parse_tags(value: bytes) -> frozenset[str]:
    """``x-llmedge-tags: k=v,k=v`` -> the set of tags a deployment must carry."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("x-llmedge-tags: not UTF-8", param="x-llmedge-tags") from None
    tags = set()
    for item in text.split(","):
        tag = item.strip()
        if not tag:
            continue
        if "=" in tag:
            key, _, value = tag.partition("=")
            key, value = key.strip(), value.strip()
            if not key or not value or "=" in value:
                raise BadRequest("x-llmedge-tags: %r is not a tag (expected k=v or a name)"
                                 % tag, param="x-llmedge-tags")
            tag = key + "=" + value   # "region = eu" is the tag region=eu
        tags.add(tag)
    return frozenset(tags)


class Router:
    def __init__(self, config: Config, ssl_context: ssl.SSLContext | None,
                 rnd: Callable[[], float] = random.random,
                 previous: Router | None = None) -> None:
        """``previous``: the router this one replaces on a reload. The endpoint table and
        the breakers are shared with it, so requests still running on the old routes
        record into the same rows; nothing of ``previous`` changes until ``adopt``, so
        building one needs no loop and may run in a thread."""
        self.rnd = rnd
        # (route, result) -> how often a classify route's LLM tier ended so; shared with the
        # router this one replaces, like the table, so the exported counters never go back.
        self.llm_outcomes: dict[tuple[str, str], int] = (
            previous.llm_outcomes if previous is not None else {})
        kept: dict[tuple, tuple[int, Endpoint]] = {}
        if previous is None:
            # Unmeasured endpoints start optimistic (1 ms) so that they get tried and
            # measured; a pessimistic start would leave a new replica unused next to a
            # measured one.
            self.table = EndpointTable(default_rtt_us=1000.0)
            self.breakers = Breakers(self.table, config.upstream.breaker)
        else:
            self.table = previous.table
            self.breakers = previous.breakers
            for t in previous.targets.values():
                for row, endpoint in zip(t.rows, t.endpoints):
                    kept[endpoint_key(t.name, endpoint.url, t.price, t.quality)] = \
                        (row, endpoint)
        self._breaker_config = config.upstream.breaker
        defaults = config.upstream.timeouts
        self._changes = SharedChanges(self.table)
        # Resolved once for all bedrock deployments, and only if there is one.
        self._aws = functools.cache(resolve_aws)
        self.targets = {d.name: Target(d, defaults, config.upstream.pool_max_idle, ssl_context,
                                       self._changes, kept, self._aws)
                        for d in config.deployments}
        if previous is None:
            self._changes.apply()   # a table of its own: nobody else reads it yet
        # What the previous configuration had and this one does not.
        self.dropped = list(kept.values())
        reused = (sum(len(t.endpoints) for t in previous.targets.values()) - len(self.dropped)
                  if previous is not None else 0)
        # Endpoints kept from, added to and removed from the previous configuration.
        self.changes = (reused, sum(len(t.endpoints) for t in self.targets.values()) - reused,
                        len(self.dropped))
        self.routes: dict[str, RoutePlan] = {}
        problems = []
        for i, route in enumerate(config.routes):
            if route.policy == "classify":
                continue  # built below, once every route a class may point to exists
            try:
                policy = POLICIES[route.policy](route)
            except ValueError as exc:
                problems.append("routes[%d]: %s" % (i, exc))
                continue
            targets = [self.targets[n] for n in route.deployments]
            fallbacks = [self.targets[n] for n in route.fallbacks]
            self.routes[route.name] = RoutePlan(route.name, targets, fallbacks, policy, route)
            if route.affinity == "session":
                for target in targets + fallbacks:
                    if target.affinity is None:
                        target.affinity = SessionAffinity(target.endpoints, target.rows)
        self._direct = {name: RoutePlan(name, [t], [], Direct())
                        for name, t in self.targets.items()}
        if any(route.policy == "classify" for route in config.routes):
            from .classify_route import build_classify_plans
            problems += build_classify_plans(self, config, previous)
            # Keep the configured order: /v1/models lists routes as the file does.
            self.routes = {r.name: self.routes[r.name] for r in config.routes
                           if r.name in self.routes}
        if problems:
            for plan in self.routes.values():
                plan.close()  # their own side parts only: the table may be the previous one's
            raise ConfigError(problems)
        self._previous = previous
        models = [{"id": name, "object": "model", "created": 0,
                   "owned_by": "llmedge-route" if name in self.routes else "llmedge-deployment"}
                  for name in [*self.routes, *self.targets]]
        self.models_body = orjson.dumps({"object": "list", "data": models})
        # GET /v1/models/{id} (the SDKs' models.retrieve), by the id as it appears in a URL.
        self.model_bodies = {quote(m["id"], safe="").encode(): orjson.dumps(m) for m in models}

    def plan(self, model: str) -> RoutePlan:
        plan = self.routes.get(model) or self._direct.get(model)
        if plan is None:
            raise NotFound("The model %r does not exist: it names no route or deployment"
                           % model, param="model")
        return plan

    def pick_endpoint(self, target: Target, session: str | None,
                      epsilon: float) -> tuple[int, Endpoint] | None:
        """The replica for one attempt: by session affinity when the route asks for it,
        else power of two choices on load; None when every replica is out."""
        if session is not None and target.affinity is not None:
            k = target.affinity.lookup(session, self.table, epsilon)
        else:
            rows = target.rows
            if len(rows) == 1:
                k = 0 if self.table.available(rows[0]) else -1
            else:
                row = self.table.pick(rows, self.rnd)
                k = -1 if row < 0 else rows.index(row)
        if k < 0:
            return None
        return target.rows[k], target.endpoints[k]

    # === what one call to an endpoint teaches about it ===
    # Every call llmedge makes to an upstream goes through these (proxied requests and the
    # LLM router tier's questions alike), so the endpoint's load, latency, error rate,
    # circuit and outlier tally see all of its traffic. Times are time.monotonic().

    def attempt_started(self, row: int) -> None:
        self.table.start(row)

    def attempt_succeeded(self, row: int, started: float, now: float, head_at: float,
                          first_event_at: float = 0.0) -> None:
        """The endpoint answered (any status that is not a failure): latency is to the
        response head, time to first token to the first streamed event (0: none)."""
        self.table.record(row, now, (head_at - started) * 1e6,
                          (first_event_at - started) * 1e6 if first_event_at else -1.0, False)
        self.breakers.on_success(row)

    def attempt_failed(self, row: int, started: float, now: float,
                       exc: UpstreamError) -> None:
        self.table.record(row, now, (now - started) * 1e6, -1.0, True)
        self.breakers.on_failure(
            row, exc.kind, exc.retry_after,
            rate_limited=isinstance(exc, UpstreamStatus) and exc.upstream_status == 429)

    def attempt_dropped(self, row: int) -> None:
        """The call ended without teaching anything about the endpoint (the caller left, or
        its own deadline passed): only the in-flight count goes back."""
        self.table.cancel(row)

    def unready(self) -> list[str]:
        """Why some route has no usable deployment (empty when every route can serve)."""
        reasons = []
        for plan in self.routes.values():
            if all(t.unusable for t in plan.targets + plan.fallbacks):
                reasons.append("route %s: no usable deployment (%s)" % (
                    plan.name, "; ".join("%s: %s" % (t.name, t.unusable) for t in plan.targets)))
        return reasons

    def aws_credentials(self) -> list[AwsCredentials]:
        """What its bedrock deployments sign with (CredentialRenewal renews it)."""
        return [self._aws()] if self._aws.cache_info().currsize else []

    def adopt(self) -> None:
        """Take over from the router passed as ``previous``: the breakers follow the new
        configuration, and endpoints that left it stop being used."""
        self._changes.apply()
        self.breakers.config = self._breaker_config
        previous, self._previous = self._previous, None
        if previous is not None:
            for plan in previous.routes.values():
                plan.close()  # e.g. a classify route's audit log
        for row, endpoint in self.dropped:
            self.breakers.forget(row)
            self.table.set_state(row, EP_EJECTED)
            endpoint.retire()
        self.dropped = []

    def endpoint_stats(self) -> Iterator[tuple[Target, Endpoint, int, dict]]:
        """Every endpoint with its table row and statistics, the state by name."""
        table = self.table
        for target in self.targets.values():
            for row, endpoint in zip(target.rows, target.endpoints):
                stats = table.stats(row)
                stats["state"] = STATE_NAMES.get(stats["state"], stats["state"])
                yield target, endpoint, row, stats

    def close(self) -> None:
        for plan in self.routes.values():
            plan.close()
        self.breakers.aclose()
        for target in self.targets.values():
            target.close()
