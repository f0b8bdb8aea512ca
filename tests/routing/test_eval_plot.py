"""``llmedge eval --plot`` fails loudly when it cannot draw, before evaluating anything."""

from __future__ import annotations

import json
import subprocess
import sys

from procs import REPO

# As if matplotlib were not installed, whatever this environment has.
WITHOUT_MATPLOTLIB = ("import sys; sys.modules['matplotlib'] = None; "
                      "from proxy.cli import main; sys.exit(main(sys.argv[1:]))")


def outcomes(tmp_path) -> str:
    rows = [{"prompt": "what is %d plus %d" % (i, i), "weak_correct": i % 3 != 0,
             "strong_correct": True} for i in range(30)]
    path = tmp_path / "outcomes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_MATPLOTLIB, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_plot_without_matplotlib_is_an_error(tmp_path):
    plot = tmp_path / "curve.png"
    done = run(tmp_path, "eval", "--outcomes", "--data", outcomes(tmp_path), "--folds", "2",
               "--plot", str(plot))
    assert done.returncode != 0, done.stdout
    assert "--plot needs matplotlib" in done.stderr
    assert not plot.exists()
    assert "APGR" not in done.stdout   # refused before the evaluation, not after


def test_plot_of_labelled_data_is_an_error(tmp_path):
    done = run(tmp_path, "eval", "--data", outcomes(tmp_path), "--plot",
               str(tmp_path / "x.png"))
    assert done.returncode != 0
    assert "--outcomes" in done.stderr
