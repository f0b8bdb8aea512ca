"""Circuit breakers through real requests: a flapping upstream's circuit opens, half-opens
and closes; a 429 storm is honoured without a retry storm; all circuits open -> fast 503."""

from __future__ import annotations

from procs import wait_for

MESSAGES = [{"role": "user", "content": "breaker"}]


def _config(sims, route: str = "deployments: [alpha]\n    fallbacks: [beta]") -> str:
    return f"""\
server:
  http: 127.0.0.1:0
upstream:
  breaker: {{consecutive_failures: 3, open_s: 0.5, max_open_s: 2, jitter: 0}}
  retry: {{same_deployment: 0}}   # one attempt per request: the counts below are the breaker's
deployments:
  - name: alpha
    base_url: {sims.alpha.url}
  - name: beta
    base_url: {sims.beta.url}
routes:
  - name: auto
    {route}
"""


def ask(edge, model="auto"):
    return edge.call("POST", "/v1/chat/completions", {"model": model, "messages": MESSAGES})


def test_flapping_upstream_opens_half_opens_and_closes(start_edge, sims):
    edge = start_edge(_config(sims))
    sims.alpha.configure(status=500)
    for _ in range(3):
        resp = ask(edge)
        assert resp.headers["x-llmedge-upstream"] == "beta"
        assert resp.headers["x-llmedge-attempts"] == "2"
    # Open: alpha is skipped without being asked.
    for _ in range(5):
        resp = ask(edge)
        assert resp.status == 200 and resp.headers["x-llmedge-attempts"] == "1"
        assert resp.headers["x-llmedge-upstream"] == "beta"
    assert sims.alpha.stats()["chat"] == 3
    # After the backoff one trial request goes through; alpha still fails, so it opens again
    # (for longer) and the next request skips it once more.
    def trial_reached_alpha() -> bool:
        ask(edge)
        return sims.alpha.stats()["chat"] >= 4

    wait_for(trial_reached_alpha, message="a half-open trial request")
    assert sims.alpha.stats()["chat"] == 4
    assert ask(edge).headers["x-llmedge-attempts"] == "1"
    # Healthy again: the next trial closes the circuit and traffic returns to alpha.
    sims.alpha.configure(status=None)
    wait_for(lambda: ask(edge).headers["x-llmedge-upstream"] == "alpha",
             message="the circuit to close")
    assert all(ask(edge).headers["x-llmedge-upstream"] == "alpha" for _ in range(5))


def test_429_storm_is_honoured_without_a_retry_storm(start_edge, sims):
    edge = start_edge(_config(sims))
    sims.alpha.configure(status=429, retry_after=30)
    answers = [ask(edge) for _ in range(20)]
    assert all(a.status == 200 and a.headers["x-llmedge-upstream"] == "beta" for a in answers)
    # One request found out about the limit; the other 19 never reached alpha.
    assert sims.alpha.stats()["chat"] == 1


def test_request_errors_do_not_open_the_circuit(start_edge, sims):
    edge = start_edge(_config(sims))
    sims.alpha.configure(status=400)
    for _ in range(6):
        assert ask(edge).status == 400
    sims.alpha.configure(status=None)
    assert ask(edge).headers["x-llmedge-upstream"] == "alpha"


def test_all_circuits_open_fail_fast_then_recover(start_edge, sims):
    edge = start_edge(_config(sims, "deployments: [alpha, beta]"))
    sims.alpha.configure(status=503)
    sims.beta.configure(status=503)
    for _ in range(3):
        assert ask(edge).status == 503
    asked = sims.alpha.stats()["chat"] + sims.beta.stats()["chat"]
    fast = ask(edge)
    assert fast.status == 503, fast
    assert fast.json()["error"]["code"] == "upstream_unavailable"
    assert fast.headers["x-llmedge-attempts"] == "0"
    assert 1 <= int(fast.headers["retry-after"]) <= 2
    assert sims.alpha.stats()["chat"] + sims.beta.stats()["chat"] == asked
    sims.beta.configure(status=None)
    wait_for(lambda: ask(edge).status == 200, message="recovery once beta answers")


def test_admin_upstreams_shows_states_and_reasons(start_edge, sims):
    edge = start_edge(_config(sims))
    sims.alpha.configure(status=500)
    for _ in range(3):
        ask(edge)
    table = {e["deployment"]: e for e in edge.call("GET", "/admin/upstreams").json()["endpoints"]}
    assert table["alpha"]["state"] == "open" and table["alpha"]["circuit"] == "open"
    assert "3 consecutive failures" in table["alpha"]["reason"]
    assert table["beta"]["state"] == "healthy" and table["beta"]["inflight"] == 0
    assert table["beta"]["url"] == sims.beta.url


def test_admin_token_protects_admin_endpoints(start_edge, sims):
    config = _config(sims).replace("server:\n", "server:\n  admin_token_env: LLMEDGE_TEST_ADMIN\n")
    edge = start_edge(config, env={"LLMEDGE_TEST_ADMIN": "s3cret"})
    assert edge.call("GET", "/admin/upstreams").status == 401
    ok = edge.call("GET", "/admin/upstreams", headers={"authorization": "Bearer s3cret"})
    assert ok.status == 200 and len(ok.json()["endpoints"]) == 2
