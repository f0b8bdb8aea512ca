"""Smoke test of bench/soak.py: a short soak runs, stops by itself and writes a sound report.

Nothing here is about timing or about the sizes measured: only that the script works end to
end (simulators, llmedge, load generators, fault injection, client disconnects, sampling),
that llmedge answered requests while faults were injected and observed, and that the report
has the shape the README documents.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOAK = REPO / "bench" / "soak.py"
SAMPLE_KEYS = ("t", "phase", "rss_kb", "fds", "requests", "alive", "probe_ok")
VERDICT_KEYS = ("ok", "problems", "rss", "fds", "alive", "answering", "settled",
                "fd_accounting", "clean_exit", "samples_judged")


@pytest.mark.timeout(240)
def test_soak_quick(tmp_path):
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(SOAK), "--quick", "--duration", "10", "--warmup", "3",
         "--json", str(out), "--workdir", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.exists(), "no JSON written (exit %d):\n%s\n%s" % (
        proc.returncode, proc.stdout, proc.stderr)
    report = json.loads(out.read_text())
    assert proc.returncode == 0, "soak failed (%d): %s\n%s\n%s" % (
        proc.returncode, report.get("verdict", {}).get("problems"), proc.stdout, proc.stderr)

    samples = report["samples"]
    assert isinstance(samples, list) and len(samples) >= 4, samples
    for sample in samples:
        for key in SAMPLE_KEYS:
            assert key in sample, (key, sample)
    load_samples = [s for s in samples if s["phase"] == "load"]
    assert load_samples and all(s["alive"] and s["probe_ok"] for s in load_samples)
    assert all(s["rss_kb"] > 0 and s["fds"] > 0 for s in load_samples)
    assert samples[-1]["phase"] == "after"

    verdict = report["verdict"]
    for key in VERDICT_KEYS:
        assert key in verdict, key
    assert verdict["ok"] is True and verdict["problems"] == []
    assert verdict["rss"]["flat"] is True and verdict["fds"]["flat"] is True
    for key in ("first_quarter_median_mb", "last_quarter_median_mb", "growth_mb",
                "growth_pct"):
        assert key in verdict["rss"], key
    for key in ("first_quarter_median", "last_quarter_median", "growth"):
        assert key in verdict["fds"], key
    assert verdict["clean_exit"] is True and verdict["settled"] is True

    # Requests were answered, through both generators.
    assert report["requests_answered"] > 0
    for kind in ("non_streaming", "streaming"):
        assert report["load"][kind]["requests_ok"] > 0, report["load"][kind]
    assert samples[-1]["requests"] > 0

    # Faults were injected by the simulators and seen by llmedge, and clients went away.
    faults = report["faults"]
    assert faults["injected_total"] > 0, faults
    assert faults["upstream_errors_total"] > 0, faults
    assert faults["observed_total"] > 0, faults
    assert faults["client_disconnects"] > 0, faults
    assert faults["simulators"]["flaky"]["errors_injected"] > 0, faults

    # The markdown report went to stdout.
    assert "| t s | phase | RSS MB | fds |" in proc.stdout
    assert "### verdict:" in proc.stdout
