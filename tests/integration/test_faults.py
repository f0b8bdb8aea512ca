"""Network faults between llmedge and an upstream, injected by a TCP proxy: connections
reset on accept (a crashed or firewalled server) and a black hole that accepts and never
answers. Requests keep succeeding through the fallback; the circuit opens, half-opens and
closes as the path flaps."""

from __future__ import annotations

import pytest
from faultproxy import BLACKHOLE, PASS, RESET, FaultProxy
from procs import ChatLoad, Simulator, metric_value, wait_for

MESSAGES = [{"role": "user", "content": "faults"}]


@pytest.fixture
def fault(sims):
    with FaultProxy(sims.alpha.port) as proxy:
        yield proxy


def _config(sims, fault) -> str:
    return f"""\
server:
  http: 127.0.0.1:0
upstream:
  breaker: {{consecutive_failures: 2, open_s: 1, max_open_s: 2, jitter: 0}}
  outlier: {{enabled: false}}
deployments:
  - name: alpha
    base_url: {fault.url}
    timeouts: {{connect_s: 2, first_byte_s: 0.3, idle_s: 1}}
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
    return resp.headers["x-llmedge-upstream"]


def circuit(edge) -> str:
    rows = edge.call("GET", "/admin/upstreams").json()["endpoints"]
    return next(r["circuit"] for r in rows if r["deployment"] == "alpha")


def test_flapping_network_path_opens_half_opens_and_closes(start_edge, sims, fault):
    edge = start_edge(_config(sims, fault))
    assert ask(edge) == "alpha"
    for cycle in range(2):
        fault.set(RESET)
        # Pooled connections from before the fault still work: drop them by failing until
        # new ones are needed. Every request is answered, by beta when alpha fails.
        wait_for(lambda: ask(edge) == "beta" and circuit(edge) == "open",
                 message="the circuit to open (cycle %d)" % cycle)
        accepted = fault.accepted
        assert all(ask(edge) == "beta" for _ in range(5))
        # Open: alpha is not connected to, except by at most one half-open trial (the
        # backoff is 1 s and doubles; five local requests take a fraction of that).
        assert fault.accepted - accepted <= 1
        fault.set(PASS)
        wait_for(lambda: ask(edge) == "alpha", message="the circuit to close (cycle %d)" % cycle)
        assert circuit(edge) == "closed"
    text = edge.metrics()
    assert metric_value(text, "llmedge_upstream_errors_total", deployment="alpha") >= 4


def test_black_hole_times_out_and_falls_back(start_edge, sims, fault):
    edge = start_edge(_config(sims, fault))
    fault.set(BLACKHOLE)
    assert ask(edge) == "beta"
    text = edge.metrics()
    assert metric_value(text, "llmedge_upstream_errors_total", deployment="alpha",
                        kind="timeout") == 1
    assert sims.alpha.stats()["chat"] == 0   # nothing got through the hole


def test_upstream_killed_under_load_loses_no_request(start_edge, sims, tmp_path):
    victim = Simulator(tmp_path, "victim")
    try:
        edge = start_edge(f"""\
server:
  http: 127.0.0.1:0
deployments:
  - name: victim
    base_url: {victim.url}
  - name: beta
    base_url: {sims.beta.url}
routes:
  - name: auto
    deployments: [victim]
    fallbacks: [beta]
""")
        with ChatLoad(edge.port, threads=4) as load:
            wait_for(lambda: load.answered >= 100, message="load on the victim")
            victim.proc.kill()   # SIGKILL: connections die with requests on them
            seen = load.answered
            wait_for(lambda: load.answered >= seen + 200, message="load after the kill")
    finally:
        victim.stop()
    assert load.failures == [] and set(load.statuses) == {200}, (load.failures, load.statuses)
    assert load.upstreams["victim"] >= 100 and load.upstreams["beta"] >= 200
