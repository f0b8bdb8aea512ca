"""The routing table: what a request's ``model`` names, and in what order to try upstreams."""

from __future__ import annotations

import os
import random
import ssl
from collections.abc import Callable

import orjson

from ..config import Config, Deployment, Timeouts
from ..errors import ConfigError, NotFound
from ..upstream.pool import Endpoint
from .policies import POLICIES, Direct


class Target:
    """A deployment as the dispatcher sees it: endpoints, credentials, timeouts."""

    __slots__ = ("name", "upstream_model", "endpoints", "auth_header", "unusable",
                 "timeouts", "_next", "name_bytes")

    def __init__(self, dep: Deployment, defaults: Timeouts, max_idle: int,
                 ssl_context: ssl.SSLContext | None) -> None:
        self.name = dep.name
        self.name_bytes = dep.name.encode()
        self.upstream_model = dep.upstream_model
        self.endpoints = [Endpoint(url, max_idle, ssl_context) for url in dep.urls]
        self.timeouts = dep.timeouts or defaults
        self.unusable: str | None = None
        self.auth_header = b""
        if dep.api_key_env:
            key = os.environ.get(dep.api_key_env)
            if key:
                self.auth_header = b"authorization: Bearer %s\r\n" % key.encode("latin-1")
            else:
                self.unusable = "environment variable %s is not set" % dep.api_key_env
        self._next = 0

    def endpoint(self) -> Endpoint:
        # Round robin over replicas; load-aware picking arrives with the endpoint table.
        endpoints = self.endpoints
        i = self._next
        self._next = (i + 1) % len(endpoints)
        return endpoints[i]

    def close(self) -> None:
        for endpoint in self.endpoints:
            endpoint.close()


class RoutePlan:
    __slots__ = ("name", "name_bytes", "targets", "fallbacks", "policy")

    def __init__(self, name: str, targets: list[Target], fallbacks: list[Target],
                 policy: object) -> None:
        self.name = name
        self.name_bytes = name.encode()
        self.targets = targets
        self.fallbacks = fallbacks
        self.policy = policy

    def candidates(self, rnd: Callable[[], float]) -> list[Target]:
        targets = self.targets
        ordered = [targets[i] for i in self.policy.order(rnd)]  # type: ignore[attr-defined]
        for fallback in self.fallbacks:
            if fallback not in ordered:
                ordered.append(fallback)
        return ordered


class Router:
    def __init__(self, config: Config, ssl_context: ssl.SSLContext | None,
                 rnd: Callable[[], float] = random.random) -> None:
        self.rnd = rnd
        defaults = config.upstream.timeouts
        self.targets = {d.name: Target(d, defaults, config.upstream.pool_max_idle, ssl_context)
                        for d in config.deployments}
        self.routes: dict[str, RoutePlan] = {}
        problems = []
        for i, route in enumerate(config.routes):
            try:
                policy = POLICIES[route.policy](route)
            except ValueError as exc:
                problems.append("routes[%d]: %s" % (i, exc))
                continue
            self.routes[route.name] = RoutePlan(
                route.name, [self.targets[n] for n in route.deployments],
                [self.targets[n] for n in route.fallbacks], policy)
        if problems:
            raise ConfigError(problems)
        self._direct = {name: RoutePlan(name, [t], [], Direct())
                        for name, t in self.targets.items()}
        self.models_body = orjson.dumps({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0,
             "owned_by": "llmedge-route" if name in self.routes else "llmedge-deployment"}
            for name in [*self.routes, *self.targets]]})

    def plan(self, model: str) -> RoutePlan:
        plan = self.routes.get(model) or self._direct.get(model)
        if plan is None:
            raise NotFound("The model %r does not exist: it names no route or deployment"
                           % model, param="model")
        return plan

    def unready(self) -> list[str]:
        """Why some route has no usable deployment (empty when every route can serve)."""
        reasons = []
        for plan in self.routes.values():
            if all(t.unusable for t in plan.targets + plan.fallbacks):
                reasons.append("route %s: no usable deployment (%s)" % (
                    plan.name, "; ".join("%s: %s" % (t.name, t.unusable) for t in plan.targets)))
        return reasons

    def close(self) -> None:
        for target in self.targets.values():
            target.close()
