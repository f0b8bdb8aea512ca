"""Hot reload (SIGHUP and POST /admin/reload) and SIGTERM, through a real llmedge process:
the new file swaps in atomically, unchanged endpoints keep their statistics and circuits, a
bad file is rejected with its reason while the old configuration keeps serving, and no
request accepted under load is lost."""

from __future__ import annotations

import signal

from procs import ChatLoad, wait_for

MESSAGES = [{"role": "user", "content": "reload"}]


def _config(sims, route_deployments: str, extra_deployment: str = "",
            breaker: str = "{consecutive_failures: 2, open_s: 30, max_open_s: 60, jitter: 0}") -> str:
    return f"""\
server:
  http: 127.0.0.1:0
  drain_timeout_s: 10
upstream:
  breaker: {breaker}
deployments:
  - name: alpha
    base_url: {sims.alpha.url}
  - name: beta
    base_url: {sims.beta.url}
{extra_deployment}
routes:
  - name: auto
    deployments: {route_deployments}
"""


def ask(edge, model="auto"):
    return edge.call("POST", "/v1/chat/completions", {"model": model, "messages": MESSAGES})


def upstreams(edge) -> dict[str, dict]:
    resp = edge.call("GET", "/admin/upstreams")
    assert resp.status == 200, resp
    return {row["deployment"]: row for row in resp.json()["endpoints"]}


def test_admin_reload_swaps_routes_and_keeps_unchanged_endpoint_state(start_edge, sims):
    edge = start_edge(_config(sims, "[alpha]\n    fallbacks: [beta]"))
    # Give alpha a history: two failures open its circuit (open for 30 s).
    sims.alpha.configure(status=500)
    for _ in range(2):
        assert ask(edge).headers["x-llmedge-upstream"] == "beta"
    before = upstreams(edge)
    assert before["alpha"]["circuit"] == "open"
    assert before["alpha"]["error_rate"] > 0

    gamma = f"""\
  - name: gamma
    base_url: {sims.gamma.url}
"""
    edge.config_path.write_text(_config(sims, "[gamma, alpha]\n    fallbacks: [beta]", gamma))
    resp = edge.call("POST", "/admin/reload")
    assert resp.status == 200, resp
    summary = resp.json()
    assert summary["status"] == "reloaded"
    assert summary["deployments"] == ["alpha", "beta", "gamma"]
    assert (summary["endpoints_kept"], summary["endpoints_added"],
            summary["endpoints_removed"]) == (2, 1, 0)
    after = upstreams(edge)
    # The same row: the open circuit, its reason and the error history survived.
    assert after["alpha"]["circuit"] == "open"
    assert after["alpha"]["reason"] == before["alpha"]["reason"]
    assert after["alpha"]["error_rate"] > 0
    assert after["gamma"]["circuit"] == "closed"
    # The new route is in use, and /v1/models lists the new deployment.
    assert ask(edge).headers["x-llmedge-upstream"] == "gamma"
    models = {m["id"] for m in edge.call("GET", "/v1/models").json()["data"]}
    assert models == {"auto", "alpha", "beta", "gamma"}


def test_removed_endpoint_starts_fresh_when_it_comes_back(start_edge, sims):
    edge = start_edge(_config(sims, "[alpha]\n    fallbacks: [beta]"))
    sims.alpha.configure(status=500)
    for _ in range(2):
        ask(edge)
    assert upstreams(edge)["alpha"]["circuit"] == "open"
    text = edge.config_path.read_text()
    # alpha's URL changes: a different endpoint, so no inherited circuit.
    edge.config_path.write_text(text.replace(sims.alpha.url, sims.gamma.url))
    summary = edge.call("POST", "/admin/reload").json()
    assert (summary["endpoints_kept"], summary["endpoints_added"],
            summary["endpoints_removed"]) == (1, 1, 1)
    row = upstreams(edge)["alpha"]
    assert row["url"] == sims.gamma.url and row["circuit"] == "closed"
    assert ask(edge).headers["x-llmedge-upstream"] == "alpha"
    assert sims.gamma.stats()["chat"] == 1


def test_bad_file_is_rejected_and_the_old_config_keeps_serving(start_edge, sims):
    edge = start_edge(_config(sims, "[alpha]"))
    good = edge.config_path.read_text()
    edge.config_path.write_text(good.replace("deployments: [alpha]", "deployments: [alhpa]"))
    resp = edge.call("POST", "/admin/reload")
    assert resp.status == 400, resp
    error = resp.json()["error"]
    assert error["code"] == "invalid_config"
    assert any("alhpa" in p for p in error["problems"]), error
    assert "alhpa" in edge.stderr()   # the reason is logged too
    assert ask(edge).headers["x-llmedge-upstream"] == "alpha"

    edge.config_path.write_text("deployments: [ {name: x, base_url: ")  # not even YAML
    assert edge.call("POST", "/admin/reload").status == 400
    edge.send_signal(signal.SIGHUP)
    wait_for(lambda: edge.stderr().count("reload rejected") >= 3,
             message="the SIGHUP reload to be rejected and logged")
    assert edge.running
    assert ask(edge).status == 200


def test_reload_needs_post_and_the_admin_token(start_edge, sims):
    config = _config(sims, "[alpha]").replace(
        "  drain_timeout_s: 10", "  drain_timeout_s: 10\n  admin_token_env: LLMEDGE_TEST_ADMIN")
    edge = start_edge(config, env={"LLMEDGE_TEST_ADMIN": "s3cret"})
    assert edge.call("GET", "/admin/reload").status == 405
    assert edge.call("POST", "/admin/reload").status == 401
    resp = edge.call("POST", "/admin/reload", headers={"authorization": "Bearer s3cret"})
    assert resp.status == 200, resp
    # Listener settings cannot move under a running process: reported, not applied.
    edge.config_path.write_text(config.replace("drain_timeout_s: 10", "drain_timeout_s: 11"))
    resp = edge.call("POST", "/admin/reload", headers={"authorization": "Bearer s3cret"})
    assert resp.json()["needs_restart"] == ["server.drain_timeout_s"]


def test_sighup_under_load_loses_nothing(start_edge, sims):
    edge = start_edge(_config(sims, "[alpha]"))
    configs = [_config(sims, "[beta]"), _config(sims, "[alpha]")]
    with ChatLoad(edge.port) as load:
        wait_for(lambda: load.answered >= 50, message="load to get going")
        for i in range(6):
            edge.config_path.write_text(configs[i % 2])
            edge.send_signal(signal.SIGHUP)
            wait_for(lambda: edge.stderr().count("reloaded ") >= i + 1,
                     message="reload %d" % (i + 1))
            seen = load.answered
            wait_for(lambda: load.answered >= seen + 20, message="load after reload")
    assert load.failures == []
    assert set(load.statuses) == {200}, load.statuses
    # Both configurations served.
    assert load.upstreams.get("alpha", 0) > 0 and load.upstreams.get("beta", 0) > 0
    assert edge.running


def test_sigterm_under_load_answers_every_accepted_request(start_edge, sims):
    edge = start_edge(_config(sims, "[alpha]"))
    sims.alpha.configure(ttft_ms=50)   # requests are in flight when the signal lands
    before = sims.alpha.stats()["chat"]
    with ChatLoad(edge.port, threads=6) as load:
        wait_for(lambda: load.answered >= 30, message="load to get going")
        edge.send_signal(signal.SIGTERM)
        code = edge.wait()
    assert code == 0, edge.stderr()
    assert set(load.statuses) == {200}, load.statuses
    # Every request that reached the upstream was answered to its client: none was dropped
    # between llmedge and the client during the drain.
    assert sims.alpha.stats()["chat"] - before == load.answered
    # What failed, failed to connect or found its idle keep-alive connection closed: it was
    # never accepted as a request.
    assert set(load.failures) <= {"ConnectionRefusedError", "ConnectionResetError",
                                  "RemoteDisconnected", "BrokenPipeError"}, load.failures


def test_sigterm_turns_readyz_unready_while_still_serving_during_the_delay(start_edge, sims):
    config = _config(sims, "[alpha]").replace("drain_timeout_s: 10",
                                              "drain_timeout_s: 10\n  drain_delay_s: 30")
    edge = start_edge(config)
    assert edge.call("GET", "/readyz").status == 200
    edge.send_signal(signal.SIGTERM)
    resp = wait_for(lambda: (lambda r: r if r.status == 503 else None)(
        edge.call("GET", "/readyz")), message="/readyz to turn unready")
    assert resp.json()["reasons"][0] == "draining"
    assert ask(edge).status == 200          # still answering during the delay
    assert edge.call("GET", "/healthz").status == 200
    # A second signal cuts the delay short.
    edge.send_signal(signal.SIGTERM)
    assert edge.wait() == 0


def test_every_reload_is_compared_with_the_configuration_serving(start_edge, sims):
    edge = start_edge(_config(sims, "[alpha, beta]"))
    moved = _config(sims, "[alpha, beta]").replace(sims.beta.url, sims.gamma.url)
    edge.config_path.write_text(moved)
    first = edge.call("POST", "/admin/reload").json()
    assert (first["endpoints_kept"], first["endpoints_added"],
            first["endpoints_removed"]) == (1, 1, 1)
    # The same file again: nothing changed since the last reload, so everything is kept.
    for _ in range(2):
        again = edge.call("POST", "/admin/reload").json()
        assert (again["endpoints_kept"], again["endpoints_added"],
                again["endpoints_removed"]) == (2, 0, 0), again
    # Metrics describe the table in use: beta's endpoint is the one it moved to.
    text = edge.metrics()
    assert sims.gamma.url in text and sims.beta.url not in text
    assert upstreams(edge)["beta"]["url"] == sims.gamma.url
