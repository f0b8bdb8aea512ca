"""``--workers 2`` answers as one server: every scrape of ``/metrics`` adds up both workers,
``/admin/upstreams`` lists both workers' tables, ``POST /admin/reload`` reloads both and
``DELETE /admin/cache`` empties both memory caches, whichever worker the kernel hands the
call to. A worker that is stuck, gone or restarted costs an answer its share, never the
answer.

Which worker answered a request shows in its ``x-request-id``: each worker numbers ids with
a random prefix of its own. Every call goes on a connection of its own, so the kernel's
SO_REUSEPORT hash spreads them over both workers.
"""

from __future__ import annotations

import os
import signal
import stat
import tempfile
import threading
from collections import Counter
from pathlib import Path

import pytest
from procs import (children_of, free_port, http_call, metric_value, process_exists,
                   wait_for)

MESSAGES = [{"role": "user", "content": "Two workers, one server."}]
CHAT = "/v1/chat/completions"
MAX_CALLS = 400   # to see both workers answer; 2**-40 odds of needing more than 40

pytestmark = pytest.mark.usefixtures("sims")


def _config(sims, port: int, route: str = "[gamma]") -> str:
    return f"""\
server:
  http: 127.0.0.1:{port}
  drain_timeout_s: 5
deployments:
  - name: beta
    base_url: {sims.beta.url}
  - name: gamma
    base_url: {sims.gamma.url}
routes:
  - name: pick
    deployments: {route}
  - name: faq
    deployments: [gamma]
    cache: {{ttl_s: 600}}
"""


@pytest.fixture
def workers(start_edge, sims):
    """``start(route=...)``: llmedge with two workers on a fixed port."""
    def start(route: str = "[gamma]"):
        port = free_port()
        edge = start_edge(_config(sims, port, route), args=["--workers", "2"], ready_lines=2)
        wait_for(lambda: len(children_of(edge.pid)) == 2, message="two worker processes")
        return edge
    return start


def worker_of(resp) -> str:
    return resp.headers["x-request-id"].rsplit("-", 1)[0]


def chat(edge, model="pick", **extra):
    resp = http_call(edge.port, "POST", CHAT, {"model": model, "messages": MESSAGES, **extra})
    assert resp.status == 200, resp
    return resp


def until_both_answered(call, at_least: int = 1) -> list:
    """Responses of ``call()`` until both workers have answered (and ``at_least`` calls)."""
    answers = []
    while len({worker_of(r) for r in answers}) < 2 or len(answers) < at_least:
        assert len(answers) < MAX_CALLS, Counter(worker_of(r) for r in answers)
        answers.append(call())
    return answers


def control_dir(edge) -> Path:
    found = list(Path(tempfile.gettempdir()).glob("llmedge-%d-*" % edge.pid))
    assert len(found) == 1, found
    return found[0]


def test_every_scrape_adds_up_every_worker(workers):
    edge = workers()
    answers = until_both_answered(lambda: chat(edge), at_least=40)
    n = len(answers)
    per_worker = Counter(worker_of(r) for r in answers)
    assert len(per_worker) == 2 and min(per_worker.values()) > 0, per_worker

    def total(text: str) -> float:
        return metric_value(text, "llmedge_requests_total", route="pick", deployment="gamma",
                            status="200")

    # The counts land just after each answer is written: wait until they are all there, then
    # every scrape, whichever worker takes it, must show all of them.
    wait_for(lambda: total(edge.metrics()) == n, message="a scrape showing %d requests" % n)
    for _ in range(10):
        text = edge.metrics()
        assert total(text) == n, text
        assert metric_value(text, "llmedge_request_duration_seconds_count", route="pick",
                            deployment="gamma") == n
        assert metric_value(text, "llmedge_workers", state="answered") == 2
        assert metric_value(text, "llmedge_workers", state="missing") == 0
        # Each worker sees the endpoint healthy: the state gauge counts workers.
        assert metric_value(text, "llmedge_endpoint_state", deployment="gamma",
                            state="healthy") == 2


def test_control_sockets_are_private_and_removed_at_exit(workers):
    edge = workers()
    directory = control_dir(edge)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == ["0.sock", "1.sock"]
    edge.send_signal(signal.SIGTERM)
    assert edge.wait() == 0, edge.stderr()
    assert not directory.exists()


def test_admin_upstreams_lists_every_workers_table(workers):
    edge = workers()
    resp = edge.call("GET", "/admin/upstreams")
    assert resp.status == 200, resp
    body = resp.json()
    assert sorted((row["worker"], row["deployment"]) for row in body["endpoints"]) == [
        (0, "beta"), (0, "gamma"), (1, "beta"), (1, "gamma")]
    assert all(row["state"] == "healthy" and "circuit" in row for row in body["endpoints"])
    assert body["workers"] == [{"worker": 0, "status": "answered"},
                               {"worker": 1, "status": "answered"}]


def test_admin_reload_reloads_every_worker(workers, sims):
    edge = workers()
    assert {r.headers["x-llmedge-upstream"] for r in until_both_answered(
        lambda: chat(edge))} == {"gamma"}
    edge.config_path.write_text(_config(sims, edge.port, route="[beta]"))
    resp = edge.call("POST", "/admin/reload")
    assert resp.status == 200, resp
    summary = resp.json()
    assert summary["status"] == "reloaded" and summary["reloads"] == 1
    after = until_both_answered(lambda: chat(edge), at_least=20)
    assert {r.headers["x-llmedge-upstream"] for r in after} == {"beta"}, [
        (worker_of(r), r.headers["x-llmedge-upstream"]) for r in after]
    assert summary["workers"] == [{"worker": 0, "status": "reloaded", "reloads": 1},
                                  {"worker": 1, "status": "reloaded", "reloads": 1}]


def test_a_rejected_reload_says_how_each_worker_did(workers, sims):
    edge = workers()
    edge.config_path.write_text(_config(sims, edge.port, route="[nowhere]"))
    resp = edge.call("POST", "/admin/reload")
    assert resp.status == 400, resp
    body = resp.json()
    assert body["error"]["code"] == "invalid_config"
    assert [(w["worker"], w["status"]) for w in body["workers"]] == [(0, "rejected"),
                                                                     (1, "rejected")]
    assert all("nowhere" in w["reason"] for w in body["workers"])
    assert {r.headers["x-llmedge-upstream"] for r in until_both_answered(
        lambda: chat(edge))} == {"gamma"}


def test_admin_cache_empties_every_workers_memory_cache(workers, sims):
    edge = workers()

    def ask():
        return chat(edge, model="faq", temperature=0)

    # Each worker keeps its own cache: go on until both have answered from theirs.
    hits: set[str] = set()
    for _ in range(MAX_CALLS):
        resp = ask()
        if resp.headers["x-llmedge-cache"] == "hit":
            hits.add(worker_of(resp))
        if len(hits) == 2:
            break
    assert len(hits) == 2, hits
    resp = edge.call("DELETE", "/admin/cache")
    assert resp.status == 200, resp
    body = resp.json()
    assert body["route"] is None
    # After the delete, each worker's first answer must come from upstream again.
    first: dict[str, str] = {}
    for resp in until_both_answered(ask):
        first.setdefault(worker_of(resp), resp.headers["x-llmedge-cache"])
    assert first == {w: "miss" for w in first}, first
    assert body["deleted"] == 2
    assert body["workers"] == [{"worker": 0, "status": "cleared", "deleted": 1},
                               {"worker": 1, "status": "cleared", "deleted": 1}]


def test_a_stuck_worker_costs_its_share_not_the_scrape(workers):
    edge = workers()
    stuck = children_of(edge.pid)[1]
    os.kill(stuck, signal.SIGSTOP)
    results: list = []
    lock = threading.Lock()

    def scrape():
        resp = http_call(edge.port, "GET", "/metrics")
        with lock:
            results.append(resp)

    # Scrapes the kernel hands to the stuck worker wait in its backlog; the others must come
    # back without it.
    threads = [threading.Thread(target=scrape, daemon=True) for _ in range(16)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: results, message="a scrape answered by the live worker")
        with lock:
            text = results[0].body.decode()
        assert results[0].status == 200, results[0]
        assert metric_value(text, "llmedge_workers", state="answered") == 1
        assert metric_value(text, "llmedge_workers", state="missing") == 1
    finally:
        os.kill(stuck, signal.SIGCONT)
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 16 and all(r.status == 200 for r in results), results


def test_a_stopped_worker_is_missing_at_once(workers):
    edge = workers()
    gone = children_of(edge.pid)[1]
    os.kill(gone, signal.SIGTERM)   # drains and exits 0: the parent lets it go
    wait_for(lambda: not process_exists(gone), message="the worker to exit")
    text = edge.metrics()
    assert metric_value(text, "llmedge_workers", state="answered") == 1
    assert metric_value(text, "llmedge_workers", state="missing") == 1
    body = edge.call("GET", "/admin/upstreams").json()
    assert len(body["endpoints"]) == 2
    assert sorted(w["status"] for w in body["workers"]) == ["answered", "missing"]


def test_a_restarted_worker_takes_its_socket_back(workers):
    edge = workers()
    before = children_of(edge.pid)
    os.kill(before[1], signal.SIGKILL)   # no clean-up: its socket file stays behind
    wait_for(lambda: (lambda kids: len(kids) == 2 and before[1] not in kids)(
        children_of(edge.pid)), message="the parent to restart the worker")
    edge.wait_output(r"LISTENING ", count=3)

    def all_answered() -> bool:
        return all(metric_value(edge.metrics(), "llmedge_workers", state="answered") == 2
                   for _ in range(10))

    wait_for(all_answered, message="ten scrapes in a row with both workers")
