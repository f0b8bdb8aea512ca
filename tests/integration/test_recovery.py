"""A primary that goes down and comes back, through real processes: the fault proxy of
tests/faultproxy.py resets every connection to it (probes included), then passes them again.

Health probes notice the recovery and half-open its circuit at once instead of leaving it to
the breaker's backoff; while an endpoint is in doubt it is probed every
``unhealthy_interval_s`` (1 s) instead of ``interval_s`` (10 s); a probe that passes while
completions fail does not send doomed trials; every request is answered meanwhile."""

from __future__ import annotations

import pytest
from faultproxy import PASS, RESET, FaultProxy
from procs import wait_for

MESSAGES = [{"role": "user", "content": "recovery"}]


@pytest.fixture
def fault(sims):
    with FaultProxy(sims.alpha.port) as proxy:
        yield proxy


def _config(sims, fault, upstream: str = "") -> str:
    return f"""\
server:
  http: 127.0.0.1:0
{upstream}deployments:
  - name: alpha
    base_url: {fault.url}
  - name: beta
    base_url: {sims.beta.url}
routes:
  - name: auto
    deployments: [alpha]
    fallbacks: [beta]
"""


def ask(edge):
    resp = edge.call("POST", "/v1/chat/completions", {"model": "auto", "messages": MESSAGES})
    assert resp.status == 200, resp
    return resp


def served_by(edge) -> str:
    return ask(edge).headers["x-llmedge-upstream"]


def alpha_row(edge) -> dict:
    rows = edge.call("GET", "/admin/upstreams").json()["endpoints"]
    return next(r for r in rows if r["deployment"] == "alpha")


def open_the_circuit(edge, fault) -> None:
    assert served_by(edge) == "alpha"
    fault.set(RESET)
    # Every request is answered, by beta once alpha fails, until the circuit opens.
    wait_for(lambda: served_by(edge) == "beta" and alpha_row(edge)["circuit"] == "open",
             message="alpha's circuit to open")


def test_default_settings_primary_down_then_back(start_edge, sims, fault):
    # Nothing configured: the defaults must find the outage and the recovery on their own.
    edge = start_edge(_config(sims, fault))
    open_the_circuit(edge, fault)
    # Probed every second while in doubt: three failures eject it well within the wait
    # (at the 10 s interval the third would come after it).
    wait_for(lambda: served_by(edge) == "beta" and alpha_row(edge)["state"] == "ejected",
             message="the probes to eject alpha")

    # Back. No request is sent until the probes have let it in again, so the state they
    # leave is what the admin page shows.
    fault.set(PASS)
    row = wait_for(lambda: (r := alpha_row(edge))["state"] != "ejected" and r,
                   message="the probes to restore alpha")
    assert row["state"] == row["circuit"] == "half-open", row
    assert "probe" in row["reason"] and "trial request" in row["reason"], row
    resp = ask(edge)
    assert resp.headers["x-llmedge-upstream"] == "alpha"
    assert resp.headers["x-llmedge-attempts"] == "1"
    row = alpha_row(edge)
    assert row["state"] == "healthy" and row["circuit"] == "closed", row
    assert row["reason"] == "trial request succeeded", row
    assert all(served_by(edge) == "alpha" for _ in range(5))
    log = edge.stderr()
    assert "ejected after 3 failed probes" in log and "restored after 2 passing probes" in log


def test_a_probe_ends_the_backoff_of_a_recovered_primary(start_edge, sims, fault):
    # A backoff and a probe interval far beyond the test's waits: alpha can only come back
    # through a probe that the opening itself brought forward.
    edge = start_edge(_config(sims, fault, upstream="""\
upstream:
  breaker: {open_s: 600, max_open_s: 600}
  health: {interval_s: 3600}
"""))
    open_the_circuit(edge, fault)
    # While the circuit is open no request reaches alpha: connections now are probes.
    probes = fault.accepted
    wait_for(lambda: fault.accepted > probes, message="a probe while the circuit is open")

    fault.set(PASS)
    row = wait_for(lambda: (r := alpha_row(edge))["state"] == "half-open" and r,
                   message="a passing probe to half-open the circuit")
    assert row["circuit"] == "half-open"
    assert "health probe" in row["reason"] and "trial request" in row["reason"], row
    resp = ask(edge)
    assert resp.headers["x-llmedge-upstream"] == "alpha"
    assert resp.headers["x-llmedge-attempts"] == "1"
    assert alpha_row(edge)["circuit"] == "closed"


def test_passing_probes_do_not_send_trials_while_completions_fail(start_edge, sims):
    # /models answers while every completion fails: probes cannot vouch for alpha, so the
    # circuit waits out its backoff instead of sending a trial after each probe.
    edge = start_edge(f"""\
server:
  http: 127.0.0.1:0
upstream:
  breaker: {{open_s: 600, max_open_s: 600}}
  health: {{interval_s: 3600}}
deployments:
  - name: alpha
    base_url: {sims.alpha.url}
  - name: beta
    base_url: {sims.beta.url}
routes:
  - name: auto
    deployments: [alpha]
    fallbacks: [beta]
""")
    sims.alpha.configure(status=503)
    wait_for(lambda: served_by(edge) == "beta" and alpha_row(edge)["circuit"] == "open",
             message="alpha's circuit to open")
    chats = sims.alpha.stats()["chat"]
    # In doubt, so probed every second even with interval_s at an hour.
    models = sims.alpha.stats()["models"]
    sims.alpha.wait_stat("models", models + 3)
    for _ in range(5):
        resp = ask(edge)
        assert resp.headers["x-llmedge-upstream"] == "beta"
        assert resp.headers["x-llmedge-attempts"] == "1"
    assert sims.alpha.stats()["chat"] == chats
    assert alpha_row(edge)["circuit"] == "open"


def test_a_rate_limit_outlasts_passing_probes(start_edge, sims, fault):
    # A 429's Retry-After stands even when probes see alpha fail and pass again.
    edge = start_edge(_config(sims, fault, upstream="""\
upstream:
  health: {interval_s: 0.2, healthy_after: 1}
"""))
    sims.alpha.configure(status=429, retry_after=600)
    assert served_by(edge) == "beta"
    assert alpha_row(edge)["circuit"] == "open"
    fault.set(RESET)
    wait_for(lambda: alpha_row(edge)["state"] == "ejected", message="the probes to fail")
    fault.set(PASS)
    wait_for(lambda: alpha_row(edge)["probe_ok"], message="the probes to pass again")
    row = alpha_row(edge)
    assert row["state"] == row["circuit"] == "open" and row["open_for_s"] > 60, row
    for _ in range(3):
        assert ask(edge).headers["x-llmedge-attempts"] == "1"
    assert sims.alpha.stats()["chat"] == 1
