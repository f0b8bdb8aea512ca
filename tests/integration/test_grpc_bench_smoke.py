"""Smoke test of bench/grpc_load.py: it runs both front ends and the bare grpc.aio floor
(alone and asking the simulator once per call), and writes a well-formed report.

Nothing here is about timing; only the report's shape and that calls were answered.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("stream", [False, True])
def test_grpc_load_reports_both_front_ends(tmp_path, stream):
    out = tmp_path / "report.json"
    cmd = [sys.executable, str(REPO / "bench" / "grpc_load.py"), "--connections", "2",
           "--duration", "0.5", "--warmup", "0.2", "--rounds", "1", "--floor", "--floor-upstream",
           "--json", str(out)]
    if stream:
        cmd.append("--stream")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    for front in ("http", "grpc", "floor", "floor_upstream"):
        row = report[front]
        assert row["errors"] == 0
        assert row["achieved_rps"] > 0
        assert row["edge_cpu_us_per_request"] > 0
        assert set(row["latency_us"]) == {"p50", "p90", "p99"}
        assert ("ttft_us" in row) == stream
    keys = {"latency_p50", "latency_p99", "edge_cpu_per_request"} | (
        {"ttft_p50"} if stream else set())
    assert set(report["overhead"]) == keys
    # The bare grpc.aio server's CPU is the floor llmedge's gRPC front end is held to.
    for key in ("against_floor", "against_floor_upstream"):
        against = report[key]
        assert set(against) == {"edge_cpu_us_per_request", "edge_cpu_us_per_message"}
        assert all(row["floor_us"] > 0 and row["ratio"] > 0 for row in against.values())
    assert "| grpc |" in proc.stdout and "| grpc.aio floor |" in proc.stdout
    assert "| grpc.aio floor + upstream call |" in proc.stdout
    # The floor that asks the simulator really did, once per call (streams: per stream).
    run, = report["runs"]["floor_upstream"]
    assert run["upstream_calls"] >= run["completed_all"] > 0


def test_load_py_drives_the_grpc_front_end(start_edge, sims, dead_port, tmp_path):
    from conftest import edge_config

    edge = start_edge(edge_config(sims, dead_port, server="  grpc: 127.0.0.1:0"))
    out = tmp_path / "grpc.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "load.py"), "--grpc",
         "127.0.0.1:%d" % edge.grpc_port, "-c", "2", "-d", "0.5", "-w", "0.2",
         "--model", "auto", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["errors"] == {} and report["requests"] > 0, report
    assert set(report["latency_us"]) >= {"p50", "p99"}
