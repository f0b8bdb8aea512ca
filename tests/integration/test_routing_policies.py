"""Score-based policies, compliance tags, replica balancing and session affinity, through
real requests against the simulators."""

from __future__ import annotations

import math

import pytest

from procs import RawConn, request_bytes

CHAT = {"messages": [{"role": "user", "content": "hello"}]}


def _config(sims, routes: str, alpha_extra: str = "", beta_extra: str = "",
            gamma_extra: str = "") -> str:
    return f"""\
server:
  http: 127.0.0.1:0
deployments:
  - name: alpha
    base_url: {sims.alpha.url}
    price: {{input: 5.0, output: 15.0}}
    quality: 0.9
    tags: [region=us]
{alpha_extra}
  - name: beta
    base_url: {sims.beta.url}
    price: {{input: 0.1, output: 0.2}}
    quality: 0.5
    tags: [region=eu, self-hosted]
{beta_extra}
  - name: gamma
    base_url: {sims.gamma.url}
    price: {{input: 1.0, output: 2.0}}
    quality: 0.7
    tags: [region=eu]
{gamma_extra}
routes:
{routes}
"""


def _ask(edge, model: str, headers: dict[str, str] | None = None, body: dict | None = None):
    resp = edge.call("POST", "/v1/chat/completions", {"model": model, **CHAT, **(body or {})},
                     headers)
    return resp


def test_cost_policy_picks_the_cheapest_and_explains(start_edge, sims):
    edge = start_edge(_config(sims, """\
  - name: cheap
    deployments: [alpha, gamma, beta]
    policy: cost
"""))
    resp = _ask(edge, "cheap")
    assert resp.status == 200, resp
    assert resp.headers["x-llmedge-upstream"] == "beta"
    assert resp.headers["x-llmedge-decision"].startswith("cost: beta then gamma,alpha")


def test_cost_policy_respects_constraints(start_edge, sims):
    edge = start_edge(_config(sims, """\
  - name: good-enough
    deployments: [alpha, gamma, beta]
    policy: cost
    min_quality: 0.6
"""))
    resp = _ask(edge, "good-enough")
    assert resp.headers["x-llmedge-upstream"] == "gamma"
    assert "beta (quality 0.5 < 0.6)" in resp.headers["x-llmedge-decision"]
    # The excluded deployment is not even a fallback: gamma and alpha fail, beta stays idle.
    sims.gamma.configure(status=500)
    sims.alpha.configure(status=500)
    resp = _ask(edge, "good-enough")
    assert resp.status == 500
    assert resp.headers["x-llmedge-attempts"] == "4"   # each tried twice, beta never
    assert sims.beta.stats()["chat"] == 0


def test_score_policy_follows_its_objective(start_edge, sims):
    edge = start_edge(_config(sims, """\
  - name: best
    deployments: [beta, gamma, alpha]
    policy: score
    objective: {quality: 1.0, cost: 0.2}
  - name: thrifty
    deployments: [alpha, gamma, beta]
    policy: score
    objective: {quality: 0.2, cost: 1.0}
"""))
    assert _ask(edge, "best").headers["x-llmedge-upstream"] == "alpha"
    assert _ask(edge, "thrifty").headers["x-llmedge-upstream"] == "beta"


def test_latency_policy_learns_the_faster_deployment(start_edge, sims):
    sims.alpha.configure(ttft_ms=150)
    edge = start_edge(_config(sims, """\
  - name: fast
    deployments: [alpha, gamma]
    policy: latency
"""))
    answered_by = [_ask(edge, "fast").headers["x-llmedge-upstream"] for _ in range(12)]
    # Both start equal (no samples): alpha, first listed, is tried and found slow.
    assert answered_by[0] == "alpha"
    assert answered_by[-6:] == ["gamma"] * 6


def test_route_tags_filter_before_any_scoring(start_edge, sims):
    edge = start_edge(_config(sims, """\
  - name: eu-only
    deployments: [alpha, beta, gamma]
    policy: score
    objective: {quality: 1.0}
    require_tags: [region=eu]
"""))
    resp = _ask(edge, "eu-only")
    assert resp.headers["x-llmedge-upstream"] == "gamma"  # alpha is better but not in the EU
    assert "alpha (lacks region=eu)" in resp.headers["x-llmedge-decision"]


def test_request_tags_narrow_the_choice_and_fallbacks(start_edge, sims):
    edge = start_edge(_config(sims, """\
  - name: auto
    deployments: [alpha, gamma]
    policy: ordered
    fallbacks: [beta]
"""))
    assert _ask(edge, "auto").headers["x-llmedge-upstream"] == "alpha"
    tagged = {"x-llmedge-tags": "region=eu, self-hosted"}
    resp = _ask(edge, "auto", tagged)
    assert resp.headers["x-llmedge-upstream"] == "beta"
    # When the only compliant deployment fails, nothing non-compliant is tried instead.
    sims.beta.configure(status=503)
    resp = _ask(edge, "auto", tagged)
    assert resp.status == 503
    assert resp.headers["x-llmedge-attempts"] == "2"   # beta, and beta once more
    assert sims.alpha.stats()["chat"] == 1 and sims.gamma.stats()["chat"] == 0


def test_unmet_tags_are_a_clear_4xx(start_edge, sims):
    edge = start_edge(_config(sims, """\
  - name: auto
    deployments: [alpha, gamma]
"""))
    before = sum(s.stats()["chat"] for s in sims)
    resp = _ask(edge, "auto", {"x-llmedge-tags": "region=apac"})
    assert resp.status == 400, resp
    error = resp.json()["error"]
    assert error["code"] == "unsatisfiable_tags"
    assert "region=apac" in error["message"] and "alpha lacks region=apac" in error["message"]
    direct = _ask(edge, "beta", {"x-llmedge-tags": "region=us"})
    assert direct.status == 400 and "region=us" in direct.json()["error"]["message"]
    assert sum(s.stats()["chat"] for s in sims) == before


def _replicas_config(sims, route_extra: str = "") -> str:
    return f"""\
server:
  http: 127.0.0.1:0
deployments:
  - name: pool
    model: pool-model
    endpoints: [{sims.alpha.url}, {sims.beta.url}, {sims.gamma.url}]
routes:
  - name: chat
    deployments: [pool]
{route_extra}
"""


def _replica(resp) -> str:
    return resp.json()["system_fingerprint"].removeprefix("fp_sim_")


def test_replicas_balance_away_from_a_slow_one(start_edge, sims):
    sims.alpha.configure(ttft_ms=120)
    edge = start_edge(_replicas_config(sims))
    served = [_replica(_ask(edge, "chat")) for _ in range(40)]
    assert set(served) >= {"beta", "gamma"}
    # Peak-EWMA remembers alpha as slow: after it has been tried it is rarely chosen again.
    assert served[10:].count("alpha") <= 3


def test_session_affinity_keeps_a_session_on_one_replica(start_edge, sims):
    edge = start_edge(_replicas_config(sims, "    affinity: session\n"))
    for session in ("s-1", "s-2", "s-3", "s-4", "s-5", "s-6"):
        served = {_replica(_ask(edge, "chat", {"x-llmedge-session": session}))
                  for _ in range(5)}
        assert len(served) == 1, (session, served)
    # The body's "user" is the session when no header names one.
    by_user = {_replica(_ask(edge, "chat", body={"user": "u-42"})) for _ in range(5)}
    assert len(by_user) == 1
    spread = {_replica(_ask(edge, "chat", {"x-llmedge-session": "k-%d" % i}))
              for i in range(30)}
    assert len(spread) >= 2


def test_session_affinity_is_bounded_by_load(start_edge, sims):
    """Concurrent requests of one session spill over once their replica reaches the bound
    ceil((1 + epsilon) x mean load); without the bound all would land on one replica."""
    for sim in sims:
        sim.configure(stall_after=1)
    edge = start_edge(_replicas_config(sims, "    affinity: session\n"
                                             "    affinity_epsilon: 0.25\n"))
    body = {"model": "chat", "stream": True, **CHAT}
    streams = 6
    conns = [RawConn(edge.port) for _ in range(streams)]
    try:
        for conn in conns:
            conn.send(request_bytes("POST", "/v1/chat/completions", body,
                                    ["x-llmedge-session: one-session"]))
            assert conn.read_head()[0] == 200  # open (and stalled) before the next starts
        counts = [s.stats()["streams_started"] for s in sims]
        assert sum(counts) == streams
        assert max(counts) <= math.ceil(1.25 * streams / 3), counts
        assert sum(1 for c in counts if c) >= 2, counts
    finally:
        for conn in conns:
            conn.close()
