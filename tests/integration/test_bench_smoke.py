"""Smoke test of the benchmark scripts: they run and write well-formed JSON.

No assertion here is about timing: numbers measured on a shared CI machine mean nothing
to a test. Only the shape of the output, and that requests were answered, is checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import procs
import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
PERCENTILE_KEYS = ("count", "min", "mean", "max", "p50", "p90", "p99", "p99.9")


@pytest.fixture(scope="module")
def simulator(tmp_path_factory):
    proc = procs.Simulator(tmp_path_factory.mktemp("sim"), "bench")
    yield proc.port
    proc.stop()


def check_summary(summary: dict) -> None:
    assert set(PERCENTILE_KEYS) <= set(summary), summary
    assert summary["count"] > 0


def run_load(port: int, tmp_path: Path, *args: str) -> tuple[dict, str]:
    out = tmp_path / "load.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "load.py"),
         "--url", "http://127.0.0.1:%d/v1/chat/completions" % port, "--model", "smoke",
         "--duration", "0.3", "--warmup", "0.1", "--timeout", "10", "--json", str(out), *args],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()), proc.stdout


def test_load_closed_loop(simulator, tmp_path):
    data, stdout = run_load(simulator, tmp_path, "--connections", "4")
    assert data["mode"] == "closed"
    assert data["requests"] > 0 and data["error_count"] == 0, data["errors"]
    check_summary(data["latency_us"])
    assert data["ttfb_us"] is None and data["service_us"] is None
    for key in ("achieved_rps", "totals", "generator", "histograms", "options", "loop"):
        assert key in data
    assert data["totals"]["connections_opened"] >= 4
    assert "| latency |" in stdout and "achieved req/s" in stdout


def test_load_open_loop_streaming(simulator, tmp_path):
    data, _ = run_load(simulator, tmp_path, "--rate", "200", "--arrival", "poisson", "--stream")
    assert data["mode"] == "open" and data["target_rps"] == 200
    assert data["requests"] > 0 and data["error_count"] == 0, data["errors"]
    for key in ("latency_us", "service_us", "send_lag_us", "ttfb_us", "ttft_us",
                "inter_chunk_us", "chunks_per_response"):
        check_summary(data[key])
    assert data["chunks_per_response"]["min"] >= 2


def test_load_counts_connect_errors(tmp_path):
    import socket
    with socket.socket() as s:          # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data, _ = run_load(port, tmp_path, "--connections", "2", "--quiet")
    assert data["requests"] == 0
    assert data["errors"].get("connect", 0) > 0, data["errors"]


def test_compare_quick(tmp_path):
    out = tmp_path / "compare.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "compare.py"), "--quick", "--seconds", "0.3",
         "--warmup", "0.1", "--peers", "litellm,portkey", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())

    meta = report["meta"]
    for key in ("git", "python", "loop", "cpu_model", "fastpath", "nproc", "pinning"):
        assert key in meta, key
    assert meta["fastpath"] in ("c", "py")

    targets = report["targets"]
    assert {"direct", "nginx", "llmedge"} <= set(targets)
    measured = [n for n, t in targets.items() if "skipped" not in t]
    assert {"direct", "llmedge"} <= set(measured)
    for name in measured:
        t = targets[name]
        assert "error" not in t, t["error"]
        for key in ("startup_s", "rss_idle_mb", "rss_after_mb", "rss_peak_mb"):
            assert key in t, (name, key)
        assert set(t["scenarios"]) == {"c1", "c64", "stream_c1"}
        for scenario, res in t["scenarios"].items():
            assert "error" not in res, (name, scenario, res["error"])
            assert res["requests"] > 0 and res["error_count"] == 0, (name, scenario, res)
            check_summary(res["latency_us"])
            assert "target_cpu_us_per_request" in res and "machine" in res
        check_summary(t["scenarios"]["stream_c1"]["ttfb_us"])

    summary = report["summary"]
    for key in ("c1_p50_us", "c1_p99_us", "added_c1_p50_us", "added_c1_p99_us", "c64_rps",
                "c64_cpu_us_per_request", "stream_ttfb_p50_us", "added_stream_ttfb_p50_us",
                "rss_idle_mb", "rss_peak_mb", "startup_s"):
        assert key in summary["llmedge"], key
    assert isinstance(report["budget"], list) and report["budget"]
    assert all(b["status"] in ("met", "missed", "n/a") for b in report["budget"])
    for peer in ("litellm", "portkey"):
        # --quick never installs a peer: one not installed yet is reported, never invented.
        status = report["peers"][peer]["status"]
        assert status == "measured" or status.startswith("not available: "), status
    assert "| llmedge |" in proc.stdout and "| direct (simulator) |" in proc.stdout


def test_compare_against_a_baseline_checkout(tmp_path):
    # The repository itself serves as the other checkout: what is checked is that a second
    # llmedge is started from the tree given, measured alike and set against llmedge.
    out = tmp_path / "compare.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "compare.py"), "--quick", "--seconds", "0.3",
         "--warmup", "0.1", "--targets", "llmedge", "--baseline", str(REPO),
         "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["meta"]["baseline"]["tree"] == str(REPO)
    for name in ("llmedge", "baseline"):
        scenarios = report["targets"][name]["scenarios"]
        assert scenarios["c64"]["requests"] > 0 and scenarios["c64"]["error_count"] == 0
    assert report["targets"]["baseline"]["pid"] != report["targets"]["llmedge"]["pid"]
    assert "| baseline |" in proc.stdout
    assert "- c64 CPU µs per request: " in proc.stdout


def test_faults_bench_reports_each_fault(tmp_path):
    out = tmp_path / "faults.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "faults.py"), "--only",
         "500-once,content-filter,cut-mid-stream", "--recovery-down-s", "0",
         "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    (after,) = report["trees"]
    runs = {name: case["runs"][after] for name, case in report["cases"].items()}
    assert set(runs) == {"500-once", "content-filter", "cut-mid-stream"}
    assert runs["500-once"]["saw"] == "200, primary's answer"
    assert runs["500-once"]["attempts"] == {"primary": 2, "fallback": 0}
    assert runs["content-filter"]["saw"] == "400 content_filter"
    assert runs["content-filter"]["attempts"] == {"primary": 1, "fallback": 0}
    assert runs["cut-mid-stream"]["saw"].startswith(
        "stream: the whole answer, continued on fallback at char ")
    assert "| 500 once (500-once) | 200, primary's answer |" in proc.stdout


def test_translate_cost_measures_each_pair_against_chat(tmp_path):
    out = tmp_path / "translate.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "translate_cost.py"), "-c", "2", "-d", "0.3", "-w", "0.1",
         "--rounds", "1", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    rows = {(r["api"], r["provider"], r["stream"]): r for r in report["summary"]}
    pairs = [(api, provider) for api in ("chat", "messages", "responses")
             for provider in ("openai", "anthropic")] + [
        ("chat", "azure"), ("chat", "gemini"), ("messages", "gemini"), ("chat", "bedrock"),
        ("messages", "bedrock"), ("responses", "responses")]
    assert set(rows) == {(api, provider, stream) for api, provider in pairs
                         for stream in (False, True)}
    for row in rows.values():
        assert row["errors"] == 0 and row["cpu_us_per_request"] > 0
    assert rows[("chat", "openai", False)]["ratio_to_chat"] == 1.0
    # Every request of every API was answered: the load counted the streams complete.
    assert all(r["requests"] > 0 for r in report["runs"])
