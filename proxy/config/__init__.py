"""Configuration: one YAML file decoded into msgspec Structs, then checked as a whole.

Every problem is reported with its path (``routes[1].fallbacks[0]: unknown deployment
'larg'``) and all of them at once, so a bad file is fixed in one pass.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

import msgspec
import yaml

from ..errors import ConfigError
from ..providers import PROVIDERS
from . import decode
from .bounds import (AtLeastOne, Count, HeaderBytes, Jitter, NonNegative, Percent, Positive,
                     Rate, Seconds, SecondsOrZero, Share, Tokens, ZeroIsNoLimit)
from .classify import check_classify, writable_file_problem

POLICIES = ("ordered", "weighted", "cost", "latency", "score", "classify")
AFFINITIES = ("session",)
CONTINUATIONS = ("none", "prefill")


class Timeouts(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    connect_s: Seconds = 5.0        # TCP (and TLS) connect
    first_byte_s: Seconds = 120.0   # request sent -> response head; LLMs think before answering
    idle_s: Seconds = 60.0          # between two chunks of a streamed body
    first_token_s: Seconds = 15.0   # streams: request sent -> the first content token


class Price(msgspec.Struct, forbid_unknown_fields=True):
    input: NonNegative = 0.0        # USD per 1M prompt tokens
    output: NonNegative = 0.0       # USD per 1M completion tokens


class GrpcLimits(msgspec.Struct, forbid_unknown_fields=True):
    """``server.grpc_limits``: message sizes, HTTP/2 streams and keepalive of the gRPC front."""

    max_receive_message_bytes: AtLeastOne = 8 * 1024 * 1024  # one request message
    max_send_message_bytes: AtLeastOne = 64 * 1024 * 1024    # one answer, as large as upstream's
    max_concurrent_streams: AtLeastOne = 256        # calls at once on one client connection
    max_concurrent_rpcs: AtLeastOne | None = None   # calls at once in all; then RESOURCE_EXHAUSTED
    keepalive_time_s: Seconds = 60.0        # ping a connection after this long without data
    keepalive_timeout_s: Seconds = 20.0     # ... and close it when the ping is not answered
    permit_keepalive_without_calls: bool = True   # clients may ping connections with no call
    min_ping_interval_s: Seconds = 10.0     # client pings more often count as strikes
    max_ping_strikes: ZeroIsNoLimit = 2     # ... and past this many the connection is closed
    max_connection_idle_s: Seconds | None = None  # close connections idle this long
    max_connection_age_s: Seconds | None = None   # ask clients to reconnect after this long
    max_connection_age_grace_s: Seconds | None = None


class ServerSection(msgspec.Struct, forbid_unknown_fields=True):
    http: str | None = "127.0.0.1:8080"
    grpc: str | None = None
    workers: AtLeastOne = 1
    max_body_bytes: AtLeastOne = 8 * 1024 * 1024
    max_header_bytes: HeaderBytes = 64 * 1024
    max_headers: AtLeastOne = 100
    request_timeout_s: Seconds = 30.0    # to receive one request's head and body
    keepalive_timeout_s: Seconds = 75.0  # idle connection between requests
    drain_timeout_s: Seconds = 30.0
    drain_delay_s: SecondsOrZero = 0.0   # after SIGTERM: unready but serving, then close
    max_pipelined: AtLeastOne = 32       # requests queued on one connection before reading pauses
    admin_token_env: str | None = None   # when set, /admin/* needs "Authorization: Bearer <it>"
    max_inflight: AtLeastOne = 4096      # proxied requests at once; past it, 503 at once
    grpc_limits: GrpcLimits = msgspec.field(default_factory=GrpcLimits)
    access_log: str | None = None        # "-" (stderr), "stdout" or a file: JSON lines


class BreakerConfig(msgspec.Struct, forbid_unknown_fields=True):
    consecutive_failures: AtLeastOne = 5  # open after this many failures in a row
    failure_rate: Rate = 0.5           # ... or this share of failures in the window
    min_requests: AtLeastOne = 20      # ... once the window holds at least this many
    window_s: Seconds = 10.0
    # First backoff, doubling with each re-opening up to max_open_s. Short, because the cap
    # is how long a recovered endpoint that probes cannot vouch for (or with probes off) may
    # wait for its next trial; a trial costs one failed attempt, answered by a fallback.
    open_s: Seconds = 2.0
    max_open_s: Seconds = 10.0
    jitter: Jitter = 0.1               # +- share of the backoff, so replicas do not sync
    cooldown_429_s: Seconds = 5.0      # a 429 without Retry-After keeps the circuit open this long


class HealthConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Active health probes of every endpoint (``upstream.health``)."""

    enabled: bool = True
    path: str = "/models"              # appended to the endpoint's base path; GET, never billed
    interval_s: Seconds = 10.0         # between the end of one probe and the next
    # ... instead, while the endpoint is in doubt (last probe failed, ejected, or its circuit
    # open): a recovery is noticed within about this long, not a whole interval later.
    unhealthy_interval_s: Seconds = 1.0
    timeout_s: Seconds = 2.0           # connect + response head of one probe
    jitter: Jitter = 0.1               # +- share of the interval, so endpoints do not sync
    unhealthy_after: AtLeastOne = 3    # consecutive failed probes that eject an endpoint
    healthy_after: AtLeastOne = 2      # consecutive passed probes that restore it


class HealthOverride(msgspec.Struct, forbid_unknown_fields=True):
    """``deployments[].health``: the fields given replace ``upstream.health``'s, the rest
    are inherited (a whole struct with defaults would silently reset them)."""

    enabled: bool | None = None
    path: str | None = None
    interval_s: Seconds | None = None
    unhealthy_interval_s: Seconds | None = None
    timeout_s: Seconds | None = None
    jitter: Jitter | None = None
    unhealthy_after: AtLeastOne | None = None
    healthy_after: AtLeastOne | None = None

    def apply(self, base: HealthConfig) -> HealthConfig:
        changes = {f: getattr(self, f) for f in self.__struct_fields__
                   if getattr(self, f) is not None}
        return msgspec.structs.replace(base, **changes) if changes else base


class RetryBudgetConfig(msgspec.Struct, forbid_unknown_fields=True):
    ratio: NonNegative = 0.2           # retries and fallbacks: at most this share of requests
    min_per_s: NonNegative = 10.0      # ... plus this many per second, so a quiet proxy retries
    window_s: Seconds = 10.0           # over this much recent time


class RetryConfig(msgspec.Struct, forbid_unknown_fields=True):
    """What is tried again on the same deployment before its fallbacks (see
    proxy/retry_rules.py): a 5xx, a reset or a bad answer ``same_deployment`` times after a
    full-jitter backoff; a 429 once when its Retry-After is at most ``max_retry_after_s``;
    a timeout never."""

    same_deployment: Count = 1         # extra attempts after a 5xx, reset or bad answer
    backoff_s: SecondsOrZero = 0.05    # first backoff; doubles per retry, full jitter
    max_backoff_s: SecondsOrZero = 1.0
    max_retry_after_s: SecondsOrZero = 2.0  # a 429 asking to wait this long or less is waited out


class OutlierConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Passive outlier detection among a deployment's replicas, from real traffic."""

    enabled: bool = True
    interval_s: Seconds = 10.0
    min_requests: AtLeastOne = 20      # per replica and interval before it is judged
    success_rate_gap: Rate = 0.3       # ejected when this far below its peers' success rate
    eject_s: Seconds = 30.0            # first ejection; each further one lasts this much longer
    max_eject_s: Seconds = 300.0
    max_ejection_percent: Percent = 50.0  # of a deployment's replicas; one always stays


class UpstreamSection(msgspec.Struct, forbid_unknown_fields=True):
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    # From a request's arrival to an upstream's response head, across every attempt and
    # fallback (None: only the per-attempt timeouts bound it).
    deadline_s: Seconds | None = None
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    outlier: OutlierConfig = msgspec.field(default_factory=OutlierConfig)
    pool_max_idle: Count = 64            # idle keep-alive connections kept per endpoint
    ca_file: str | None = None           # PEM bundle trusted for https upstreams (default: system)
    breaker: BreakerConfig = msgspec.field(default_factory=BreakerConfig)
    retry_budget: RetryBudgetConfig = msgspec.field(default_factory=RetryBudgetConfig)
    health: HealthConfig = msgspec.field(default_factory=HealthConfig)


class Deployment(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    base_url: str | None = None
    provider: str = "openai"
    endpoints: list[str] = []
    model: str | None = None            # name sent upstream; defaults to the deployment name
    api_key_env: str | None = None
    # azure: the api-version query parameter; anthropic: the anthropic-version header.
    api_version: str | None = None
    region: str | None = None           # bedrock: the AWS region (and its default base_url)
    # The server also speaks the OpenAI Responses API: /v1/responses requests pass to it
    # untranslated (provider openai only).
    responses: bool = False
    price: Price = msgspec.field(default_factory=Price)
    quality: Share = 0.5
    tags: list[str] = []
    timeouts: Timeouts | None = None
    health: HealthOverride | None = None
    max_inflight: ZeroIsNoLimit = 0     # requests at once; past it, the next candidate (0: none)
    # Tokens the model takes in one request (prompt and answer); known, it lets a prompt too
    # long for a smaller model go to a larger one.
    context_window: Tokens | None = None
    # Whether the deployment can continue a prefilled assistant turn (vLLM's
    # continue_final_message), so a stream cut elsewhere can be finished by it.
    continuation: str = "none"          # none | prefill

    @property
    def upstream_model(self) -> str:
        return self.model or self.name

    @property
    def urls(self) -> list[str]:
        if self.endpoints:
            return self.endpoints
        if self.base_url:
            return [self.base_url]
        if self.provider == "bedrock" and self.region:
            return ["https://bedrock-runtime.%s.amazonaws.com" % self.region]
        return []


class RouteCache(msgspec.Struct, forbid_unknown_fields=True):
    ttl_s: Positive = 600.0
    when: str = "repeatable"    # repeatable (temperature 0 or a seed) | always
    shared: bool = False        # True: one cache for every client credential (tenant)


CACHE_BACKENDS = ("memory", "redis")


class CacheBreakerConfig(msgspec.Struct, forbid_unknown_fields=True):
    failures: AtLeastOne = 3           # backend errors in a row that open the breaker
    open_s: Positive = 1.0             # no backend calls for this long; doubles while failing
    max_open_s: Positive = 30.0


class CacheSection(msgspec.Struct, forbid_unknown_fields=True):
    max_entries: AtLeastOne = 10_000     # memory backend: LRU bounds
    max_bytes: AtLeastOne = 64 * 1024 * 1024
    backend: str = "memory"              # memory (this process) | redis (shared by instances)
    url: str = "redis://127.0.0.1:6379/0"
    cluster: bool = False                # url names one node of a Redis Cluster
    timeout_ms: Positive = 50.0          # per cache operation; slower = a miss, not an error
    pool_size: AtLeastOne = 16           # Redis connections per process
    key_prefix: str = "llmedge:"
    max_entry_bytes: AtLeastOne = 1024 * 1024  # larger answers (and streams) are not stored
    tenant_header: str | None = None     # namespace by this header instead of Authorization
    wait_s: Positive = 30.0              # single-flight: how long an identical miss waits
    lock: bool = False                   # redis: single-flight across instances (SET NX PX)
    lock_ttl_s: Positive = 30.0          # the cross-instance lock expires on its own after this
    breaker: CacheBreakerConfig = msgspec.field(default_factory=CacheBreakerConfig)


class Objective(msgspec.Struct, forbid_unknown_fields=True):
    """Weights of the ``score`` policy over features normalised across candidates."""

    cost: NonNegative = 0.0
    latency: NonNegative = 0.0
    quality: NonNegative = 0.0
    load: NonNegative = 0.0


class ClassSpec(msgspec.Struct, forbid_unknown_fields=True):
    """One class of a ``classify`` route: where its requests go, and what it looks like."""

    deployments: list[str] = []         # ordered by ``policy`` ...
    route: str | None = None            # ... or handed to another route (hierarchical)
    policy: str = "ordered"             # among deployments: ordered | cost | latency | score
    objective: Objective | None = None  # score policy
    threshold: Share = 0.0              # below this probability the route's default applies
    examples: list[str] = []
    description: str = ""


class RuleSignal(msgspec.Struct, forbid_unknown_fields=True):
    pattern: str                        # regex searched in the last user turn, any case
    class_: str = msgspec.field(name="class")
    weight: Positive = 1.0


class FeatureSignal(msgspec.Struct, forbid_unknown_fields=True):
    when: str                           # code_block | tools | images | long
    class_: str = msgspec.field(name="class")
    weight: Positive = 1.0
    min_chars: AtLeastOne = 4000        # long: the last user turn has at least this many


class SignalsConfig(msgspec.Struct, forbid_unknown_fields=True):
    """A classify route's weighted vote (see proxy/routing/signals.py)."""

    classifier: NonNegative = 1.0       # weight of the compiled classifier's probabilities
    rules: list[RuleSignal] = []
    features: list[FeatureSignal] = []
    combine: str = "vote"               # vote: weights add up | confidence: the surest decides


class LlmTier(msgspec.Struct, forbid_unknown_fields=True):
    """A classify route's LLM-as-router tier (see proxy/routing/llm_router.py)."""

    deployment: str                     # the (cheap) model asked for the class
    mode: str = "cascade"               # cascade: only below ``below`` | always | vote
    below: Share = 0.6                  # cascade: asked when the classifier is less sure
    weight: Positive = 1.0              # vote: the answer's weight beside the classifier
    timeout_s: Seconds = 1.0            # then the compiled classifier decides
    cache_size: Count = 10_000          # answers kept, by prompt hash


class AuditConfig(msgspec.Struct, forbid_unknown_fields=True):
    file: str                           # JSONL, appended
    below: Share = 0.5                  # decisions less confident than this are written
    include_text: bool = False          # the prompt's last turn, only when allowed


class Route(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    deployments: list[str] = []
    policy: str = "ordered"
    weights: dict[str, NonNegative] = {}  # weighted policy; a deployment left out weighs 1
    fallbacks: list[str] = []
    cache: RouteCache | None = None
    objective: Objective | None = None  # score policy
    require_tags: list[str] = []        # every deployment used must carry all of these
    min_quality: Share | None = None    # constraints: deployments outside them are not used
    max_price: NonNegative | None = None  # USD per 1M tokens, input + output
    affinity: str | None = None         # "session": one session sticks to one replica
    affinity_epsilon: Positive = 0.25   # bounded load: no replica above (1 + e) x the mean
    classes: dict[str, ClassSpec] = {}  # classify policy (see proxy/routing/classify_route.py)
    default: str | None = None          # classify: deployment or route when unsure
    examples_file: str | None = None    # classify: JSONL {"text", "label"} to train from
    outcomes_file: str | None = None    # classify: JSONL {"prompt", "weak_correct", ...}
    model_file: str | None = None       # classify: a model from ``llmedge train``
    strong_share: Share | None = None   # classify on outcomes: share of traffic to "strong"
    audit: AuditConfig | None = None    # classify: log unsure decisions
    signals: SignalsConfig | None = None  # classify: rules and request features vote too
    llm: LlmTier | None = None          # classify: ask a model for the class
    hysteresis: Share = 0.0             # classify: a session keeps its class unless another
                                        # beats it by more than this probability


class Config(msgspec.Struct, forbid_unknown_fields=True):
    deployments: list[Deployment]
    routes: list[Route] = []
    server: ServerSection = msgspec.field(default_factory=ServerSection)
    upstream: UpstreamSection = msgspec.field(default_factory=UpstreamSection)
    cache: CacheSection = msgspec.field(default_factory=CacheSection)


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML's safe loader, refusing a key given twice in one mapping: YAML keeps the last
    one, and a second ``routes:`` would silently replace the first."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue   # "<<:" merges are meant to be overridden
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:
                    continue   # an unhashable key: the constructor reports it
                if first != key_node.start_mark.line + 1:
                    raise yaml.constructor.ConstructorError(
                        None, None, "key %r is given twice (first on line %d)" % (key, first),
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def parse(text: str | bytes) -> Config:
    """Decode and check a YAML document; raise ConfigError listing every problem."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigError(["(file): not UTF-8 text (byte %d)" % exc.start]) from None
    try:
        doc = yaml.load(text, _Loader)
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(["(yaml): %s" % exc]) from None
    config, problems = decode.convert(doc, Config)
    if config is not None:
        problems += [p for p in check(config) if not decode.stood_in(p, problems)]
    if problems:
        raise ConfigError(problems)
    return config


def load(path: str) -> Config:
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(["%s: cannot read: %s" % (path, exc.strerror)]) from None
    return parse(text)


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> (host, port); ValueError when malformed."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected host:port, got %r" % value)
    return host.strip("[]"), int(port)


def _check_url(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return "expected an http:// or https:// URL, got %r" % url
    if parts.username is not None or parts.password is not None:
        # It would be shown wherever the URL is (metrics labels, /admin/upstreams) and
        # never sent: keys come from api_key_env.
        return "URL %r must not carry credentials; use api_key_env" % (
            urlsplit(url)._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl())
    if not parts.hostname:
        return "URL %r has no host" % url
    try:
        port = parts.port
    except ValueError:
        return "URL %r has a bad port" % url
    if port == 0:
        return "URL %r has port 0" % url
    if parts.query or parts.fragment:
        return "URL %r must not have a query or fragment" % url
    return None


def health_of(config: Config, dep: Deployment) -> HealthConfig:
    """The health-probe settings of one deployment: its override over ``upstream.health``."""
    base = config.upstream.health
    return dep.health.apply(base) if dep.health is not None else base


# Printable ASCII without space: the path goes into a request line as it is.
_PROBE_PATH = re.compile(r"^/[!-~]*$")


def _check_health(where: str, health: HealthConfig, problems: list[str]) -> None:
    if not _PROBE_PATH.match(health.path):
        problems.append("%s.path: must start with / and hold printable ASCII without spaces, "
                        "got %r" % (where, health.path))


def check(config: Config) -> list[str]:
    """Every semantic problem of a decoded config, each prefixed with its path."""
    problems: list[str] = []
    _check_server(config.server, problems)
    _check_upstream(config.upstream, problems)
    _check_cache(config.cache, problems)
    names: dict[str, str] = {}   # deployments and routes share one namespace
    _check_deployments(config.deployments, names, problems)
    _check_routes(config.routes, {d.name for d in config.deployments}, names, problems)
    return problems


def _check_server(server: ServerSection, problems: list[str]) -> None:
    for field in ("http", "grpc"):
        value = getattr(server, field)
        if value is not None:
            try:
                parse_address(value)
            except ValueError as exc:
                problems.append("server.%s: %s" % (field, exc))
    if server.http is None and server.grpc is None:
        problems.append("server: at least one of http and grpc must be set")
    if server.access_log is not None and server.access_log not in ("-", "stderr", "stdout"):
        problem = writable_file_problem(server.access_log)
        if problem:
            problems.append("server.access_log: %s" % problem)


def _check_upstream(upstream: UpstreamSection, problems: list[str]) -> None:
    retry, outlier = upstream.retry, upstream.outlier
    if retry.max_backoff_s < retry.backoff_s:
        problems.append("upstream.retry.max_backoff_s: must be >= backoff_s")
    if outlier.max_eject_s < outlier.eject_s:
        problems.append("upstream.outlier.max_eject_s: must be >= eject_s")
    _check_health("upstream.health", upstream.health, problems)
    ca_file = upstream.ca_file
    if ca_file is not None and not os.path.isfile(ca_file):
        problems.append("upstream.ca_file: no such file %r" % ca_file)


def _check_bedrock(where: str, dep: Deployment, problems: list[str]) -> None:
    try:
        import botocore  # noqa: F401 (an optional extra; its signer signs every request)
    except ImportError:
        problems.append("%s.provider: bedrock needs botocore: pip install 'llmedge[bedrock]'"
                        % where)
    if dep.api_key_env is not None:
        problems.append("%s.api_key_env: bedrock signs with AWS credentials (the AWS_* "
                        "environment variables or a profile), not a key" % where)
    if not dep.urls:
        problems.append("%s: bedrock needs a region (or base_url)" % where)


def _check_deployments(deployments: list[Deployment], names: dict[str, str],
                       problems: list[str]) -> None:
    if not deployments:
        problems.append("deployments: at least one deployment is needed")
    for i, dep in enumerate(deployments):
        where = "deployments[%d]" % i
        _check_name(where, dep.name, names, problems)
        if dep.provider not in PROVIDERS:
            problems.append("%s.provider: unknown provider %r (known: %s)"
                            % (where, dep.provider, ", ".join(PROVIDERS)))
        if dep.provider == "bedrock":
            _check_bedrock(where, dep, problems)
        elif dep.region is not None:
            problems.append("%s.region: only provider bedrock takes a region" % where)
        if dep.responses and dep.provider != "openai":
            problems.append("%s.responses: only provider openai takes Responses requests "
                            "untranslated" % where)
        if not dep.urls:
            problems.append("%s: needs base_url or endpoints" % where)
        if dep.base_url is not None:
            _url_problem("%s.base_url" % where, dep.base_url, problems)
        for j, url in enumerate(dep.endpoints):
            _url_problem("%s.endpoints[%d]" % (where, j), url, problems)
            if url in dep.endpoints[:j]:
                problems.append("%s.endpoints[%d]: %r is listed twice" % (where, j, url))
        if dep.continuation not in CONTINUATIONS:
            problems.append("%s.continuation: unknown value %r (known: %s)"
                            % (where, dep.continuation, ", ".join(CONTINUATIONS)))
        if dep.api_key_env is not None and not dep.api_key_env:
            problems.append("%s.api_key_env: must name an environment variable" % where)
        if dep.health is not None:
            # Checked merged, but only for what the override sets: a bad inherited value
            # is reported once, under upstream.health.
            merged = dep.health.apply(HealthConfig())
            _check_health("%s.health" % where, merged, problems)



def _check_routes(routes: list[Route], deployments: set[str], names: dict[str, str],
                  problems: list[str]) -> None:
    for i, route in enumerate(routes):
        where = "routes[%d]" % i
        _check_name(where, route.name, names, problems)
        if route.policy not in POLICIES:
            problems.append("%s.policy: unknown policy %r (known: %s)"
                            % (where, route.policy, ", ".join(POLICIES)))
        if not route.deployments and route.policy != "classify":
            problems.append("%s.deployments: at least one deployment is needed" % where)
        for field in ("deployments", "fallbacks"):
            seen = set()
            for j, name in enumerate(getattr(route, field)):
                if name not in deployments:
                    problems.append("%s.%s[%d]: unknown deployment %r" % (where, field, j, name))
                elif name in seen:
                    problems.append("%s.%s[%d]: %r is listed twice" % (where, field, j, name))
                seen.add(name)
        for name in route.weights:
            if name not in route.deployments:
                problems.append("%s.weights.%s: not one of the route's deployments" % (where, name))
        if route.weights and route.policy != "weighted":
            problems.append("%s.weights: only used by policy 'weighted'" % where)
        if route.policy == "score":
            objective = route.objective
            values = [] if objective is None else [
                getattr(objective, f) for f in objective.__struct_fields__]
            if not any(values):
                problems.append("%s.objective: policy 'score' needs at least one weight > 0 "
                                "(cost, latency, quality, load)" % where)
        elif route.objective is not None:
            problems.append("%s.objective: only used by policy 'score'" % where)
        for j, tag in enumerate(route.require_tags):
            if not tag or "," in tag or tag != tag.strip():
                problems.append("%s.require_tags[%d]: %r is not a usable tag" % (where, j, tag))
        if route.affinity is not None and route.affinity not in AFFINITIES:
            problems.append("%s.affinity: unknown affinity %r (known: %s)"
                            % (where, route.affinity, ", ".join(AFFINITIES)))
        check_classify(where, route, deployments, routes, problems)
        if route.cache is not None and route.cache.when not in ("repeatable", "always"):
            problems.append("%s.cache.when: must be 'repeatable' or 'always'" % where)


def _check_cache(cache: CacheSection, problems: list[str]) -> None:
    if cache.backend not in CACHE_BACKENDS:
        problems.append("cache.backend: unknown backend %r (known: %s)"
                        % (cache.backend, ", ".join(CACHE_BACKENDS)))
    if cache.backend == "redis" and urlsplit(cache.url).scheme not in ("redis", "rediss", "unix"):
        problems.append("cache.url: expected a redis://, rediss:// or unix:// URL, got %r"
                        % cache.url)
    if cache.cluster and cache.url.startswith("unix:"):
        problems.append("cache.cluster: a Redis Cluster is reached over TCP, not %r" % cache.url)
    if cache.tenant_header is not None and not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+",
                                                            cache.tenant_header):
        problems.append("cache.tenant_header: %r is not a header name" % cache.tenant_header)


def _check_name(where: str, name: str, names: dict[str, str], problems: list[str]) -> None:
    if (not name or name != name.strip() or "," in name
            or any(ord(c) < 32 or ord(c) == 127 for c in name)):
        problems.append("%s.name: %r is not a usable name" % (where, name))
    elif name in names:
        problems.append("%s.name: %r is already used by %s" % (where, name, names[name]))
    else:
        names[name] = where


def _url_problem(where: str, url: str, problems: list[str]) -> None:
    problem = _check_url(url)
    if problem:
        problems.append("%s: %s" % (where, problem))


def missing_keys(config: Config) -> dict[str, str]:
    """Deployments whose ``api_key_env`` names an unset variable -> that variable."""
    return {d.name: d.api_key_env for d in config.deployments
            if d.api_key_env and not os.environ.get(d.api_key_env)}
