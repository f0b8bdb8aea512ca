"""Active health probes through real processes: a dead upstream is ejected by its probes
alone and never picked, comes back once a simulator answers on its port again; probes are
``GET /v1/models`` with the deployment's key (never a completion); ``enabled: false`` sends
nothing."""

from __future__ import annotations

import socket
import subprocess

import pytest

from conftest import KEYS
from procs import PYTHON, REPO, Simulator, wait_for

MESSAGES = [{"role": "user", "content": "health"}]
# Fast probes so a test sees several within a fraction of a second; the waits below are
# deadlines (procs.POLL_TIMEOUT), never sleeps tuned to this interval.
FAST = "{interval_s: 0.2, timeout_s: 1, jitter: 0.1, unhealthy_after: 2, healthy_after: 2}"


def _config(deployments: str, health: str = FAST, route: str = "") -> str:
    return f"""\
server:
  http: 127.0.0.1:0
upstream:
  health: {health}
deployments:
{deployments}
{route}"""


def ask(edge, model: str):
    resp = edge.call("POST", "/v1/chat/completions", {"model": model, "messages": MESSAGES})
    assert resp.status == 200, resp
    return resp


def endpoint_row(edge, deployment: str) -> dict:
    rows = edge.call("GET", "/admin/upstreams").json()["endpoints"]
    return next(r for r in rows if r["deployment"] == deployment)


@pytest.fixture
def spare(tmp_path):
    """A simulator of this test's own, to be stopped and started again on the same port."""
    started: list[Simulator] = []

    def start(*args: str) -> Simulator:
        sim = Simulator(tmp_path, "spare-%d" % len(started), *args)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


def test_dead_endpoint_is_ejected_by_probes_and_restored(start_edge, sims, spare):
    first = spare()
    port = first.port
    edge = start_edge(_config(f"""\
  - name: spare
    base_url: {first.url}
    api_key_env: LLMEDGE_TEST_ALPHA_KEY
  - name: beta
    base_url: {sims.beta.url}""", route="""\
routes:
  - name: auto
    deployments: [spare, beta]"""))
    # Probes arrive as GET /v1/models with the deployment's key, and are never billed.
    stats = first.wait_stat("models", 2)
    assert stats["chat"] == stats["embeddings"] == 0
    assert stats["last_headers"]["authorization"] == "Bearer " + KEYS["LLMEDGE_TEST_ALPHA_KEY"]
    assert stats["last_headers"]["user-agent"] == "llmedge-health"
    assert ask(edge, "auto").headers["x-llmedge-upstream"] == "spare"

    # Dead: no request is sent meanwhile, so only the probes can find out.
    first.stop()
    row = wait_for(lambda: (r := endpoint_row(edge, "spare"))["state"] == "ejected" and r,
                   message="the probes to eject the dead endpoint")
    assert row["probe_ok"] is False
    assert "health probes failed" in row["reason"], row
    for _ in range(5):
        resp = ask(edge, "auto")
        # Straight to beta: the ejected endpoint is not even tried.
        assert resp.headers["x-llmedge-upstream"] == "beta"
        assert resp.headers["x-llmedge-attempts"] == "1"
    assert endpoint_row(edge, "spare")["consecutive_failures"] == 0  # no request failed there

    # Back on the same port: passing probes restore it and traffic returns.
    second = spare("--port", str(port))
    assert second.port == port
    wait_for(lambda: endpoint_row(edge, "spare")["state"] == "healthy",
             message="the probes to restore the endpoint")
    resp = ask(edge, "auto")
    assert resp.headers["x-llmedge-upstream"] == "spare"
    assert resp.headers["x-llmedge-attempts"] == "1"
    stats = second.stats()
    assert stats["models"] >= 2 and stats["chat"] == 1
    log = edge.stderr()
    assert "ejected after 2 failed probes" in log and "restored after 2 passing probes" in log
    assert edge.stop() == 0


def test_silent_endpoint_times_out_and_is_ejected(start_edge, sims):
    # The kernel completes the handshake of a socket that listens but never accepts: the
    # probe connects and then hears nothing, which only its timeout can catch.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        edge = start_edge(_config(f"""\
  - name: silent
    base_url: http://127.0.0.1:{port}/v1
  - name: beta
    base_url: {sims.beta.url}""", health=FAST.replace("timeout_s: 1", "timeout_s: 0.3"),
                                  route="""\
routes:
  - name: auto
    deployments: [silent, beta]"""))
        row = wait_for(lambda: (r := endpoint_row(edge, "silent"))["state"] == "ejected" and r,
                       message="the probes to time out and eject the endpoint")
        assert "no answer within 0.3s" in row["reason"], row
        resp = ask(edge, "auto")
        assert resp.headers["x-llmedge-upstream"] == "beta"
        assert resp.headers["x-llmedge-attempts"] == "1"
        # Stopping while a probe may hang on the silent socket: drain cancels it, exit 0.
        assert edge.stop() == 0


def test_disabled_deployment_is_never_probed(start_edge, sims):
    start_edge(_config(f"""\
  - name: alpha
    base_url: {sims.alpha.url}
    health: {{enabled: false}}
  - name: beta
    base_url: {sims.beta.url}"""))
    # beta's probes are the clock: by the time it has seen several, alpha would have too.
    sims.beta.wait_stat("models", 3)
    assert sims.alpha.stats()["requests"] == 0
    assert sims.beta.stats()["chat"] == 0


def test_override_inherits_the_unset_fields(start_edge, sims):
    # Probing is off globally and turned on for beta alone, which keeps the global 0.2s
    # interval: at the 10s default it could not see 3 probes within the deadline.
    start_edge(_config(f"""\
  - name: alpha
    base_url: {sims.alpha.url}
  - name: beta
    base_url: {sims.beta.url}
    health: {{enabled: true}}""", health="{enabled: false, interval_s: 0.2}"))
    sims.beta.wait_stat("models", 3, timeout=8)
    assert sims.alpha.stats()["requests"] == 0


def test_probe_path_the_server_lacks_counts_as_up(start_edge, sims):
    # 404 means the server is up but has no such path: logged once, endpoint kept in service.
    edge = start_edge(_config(f"""\
  - name: alpha
    base_url: {sims.alpha.url}
    health: {{path: /no-such-path}}"""))
    sims.alpha.wait_stat("requests", 4)
    assert sims.alpha.stats()["models"] == 0
    row = endpoint_row(edge, "alpha")
    assert row["state"] == "healthy" and row["probe_ok"] is True
    assert edge.stderr().count("answered 404") == 1
    assert ask(edge, "alpha").headers["x-llmedge-upstream"] == "alpha"


def test_check_rejects_bad_health_config(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("""\
upstream:
  health: {interval_s: 0, jitter: 1.5, unhealthy_after: 0, unhealthy_interval_s: .inf}
deployments:
  - name: small
    base_url: http://127.0.0.1:9001/v1
    health: {path: "models list", timeout_s: -1, unhealthy_interval_s: 0}
""")
    proc = subprocess.run([PYTHON, "-m", "proxy", "check", "-c", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    for problem in ("upstream.health.interval_s", "upstream.health.jitter",
                    "upstream.health.unhealthy_after", "upstream.health.unhealthy_interval_s",
                    "deployments[0].health.path", "deployments[0].health.timeout_s",
                    "deployments[0].health.unhealthy_interval_s"):
        assert problem in proc.stderr, (problem, proc.stderr)
