"""Passive outlier detection through real traffic: a replica that fails far more often than
its peer is taken out of rotation before its breaker would open, and never the last one."""

from __future__ import annotations

from procs import metric_value, wait_for

MESSAGES = [{"role": "user", "content": "outlier"}]


def _config(sims, outlier: str) -> str:
    return f"""\
server:
  http: 127.0.0.1:0
upstream:
  # Breakers out of the way: this is about outlier detection alone.
  breaker: {{consecutive_failures: 1000, min_requests: 100000}}
  outlier: {outlier}
deployments:
  - name: pool
    endpoints: [{sims.alpha.url}, {sims.beta.url}]
"""


def ask(edge):
    return edge.call("POST", "/v1/chat/completions", {"model": "pool", "messages": MESSAGES})


def rows(edge) -> dict[str, dict]:
    return {r["url"]: r for r in edge.call("GET", "/admin/upstreams").json()["endpoints"]}


def test_failing_replica_is_ejected_then_traffic_avoids_it(start_edge, sims):
    # A whole second per sweep: a loaded machine still sends each replica min_requests in it.
    edge = start_edge(_config(sims, "{interval_s: 1, min_requests: 5, success_rate_gap: 0.3,"
                                    " eject_s: 60}"))
    sims.alpha.configure(error_rate=0.7)

    def ejected():
        for _ in range(10):
            ask(edge)
        return rows(edge)[sims.alpha.url]["outlier_ejected"]

    # Whether alpha gets min_requests in one sweep depends on the balancer steering away
    # from its errors; on a loaded machine (the pure-Python pass of CI) that took over 20 s
    # once. The same ejection is asserted, with a wider limit.
    wait_for(ejected, timeout=90.0, message="alpha to be ejected as an outlier")
    alpha = rows(edge)[sims.alpha.url]
    assert alpha["state"] == "ejected" and alpha["reason"].startswith("outlier:")
    assert rows(edge)[sims.beta.url]["state"] == "healthy"
    before = sims.alpha.stats()["chat"]
    assert all(ask(edge).status == 200 for _ in range(20))
    assert sims.alpha.stats()["chat"] == before
    assert metric_value(edge.metrics(), "llmedge_outlier_ejections_total",
                        deployment="pool") == 1


def test_replicas_failing_alike_are_not_outliers(start_edge, sims):
    edge = start_edge(_config(sims, "{interval_s: 0.1, min_requests: 5, success_rate_gap: 0.3}"))
    sims.alpha.configure(status=500)
    sims.beta.configure(status=500)

    def sweeps() -> float:
        return metric_value(edge.metrics(), "llmedge_outlier_sweeps_total")

    # Several sweeps, each after enough traffic from both: neither stands out.
    for _ in range(4):
        seen = sweeps()
        for _ in range(20):
            ask(edge)
        wait_for(lambda: sweeps() > seen, message="an outlier sweep")
    text = edge.metrics()
    assert metric_value(text, "llmedge_outlier_ejections_total") == 0
    assert all(not r["outlier_ejected"] for r in rows(edge).values())


def test_check_rejects_a_bad_outlier_section(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "bad.yaml"
    path.write_text("deployments: [{name: a, base_url: 'http://127.0.0.1:1/v1'}]\n"
                    "upstream: {outlier: {success_rate_gap: 2}}\n")
    out = subprocess.run([sys.executable, "-m", "proxy", "check", "-c", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "upstream.outlier" in out.stderr
