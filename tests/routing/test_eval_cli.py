"""``llmedge train`` and ``llmedge eval`` on the data samples in tests/data."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"


def _llmedge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_train_and_eval_on_hwu64_sample(tmp_path):
    rows = [json.loads(line)
            for line in (DATA / "hwu64" / "train.jsonl").read_text().splitlines()]
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    rng = random.Random(3)
    sample = [r for label in sorted(by_label) for r in rng.sample(by_label[label], 10)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in sample))
    test = tmp_path / "test.jsonl"
    test.write_text("\n".join((DATA / "hwu64" / "test.jsonl").read_text().splitlines()[:300]))
    model = tmp_path / "model.json"
    done = _llmedge("train", "--data", str(train), "-o", str(model), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "640 examples, 64 classes" in done.stdout
    done = _llmedge("eval", "--data", str(test), "--model", str(model), "--json",
                    str(tmp_path / "report.json"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["n"] == 300
    # 64 intents: chance is under 2%; ten examples each get well past half.
    assert report["accuracy"] > 0.5 and 0.3 < report["macro_f1"] <= 1.0
    assert sum(map(sum, report["confusion"])) == 300
    assert "lowest recall" in done.stdout   # too many labels for a printed matrix


def test_eval_outcomes_with_a_trained_model_and_a_plot(tmp_path):
    lines = (DATA / "routing-outcomes" / "gsm8k.jsonl").read_text().splitlines()
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(lines[:400]) + "\n")
    test = tmp_path / "test.jsonl"
    test.write_text("\n".join(lines[400:600]) + "\n")
    model = tmp_path / "complexity.json"
    done = _llmedge("train", "--outcomes", "--data", str(train), "-o", str(model),
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "400 prompts, 2 classes (strong, weak)" in done.stdout
    plot = tmp_path / "curve.png"
    done = _llmedge("eval", "--outcomes", "--data", str(test), "--model", str(model),
                    "--plot", str(plot), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "scores: model" in done.stdout and "CPT(50%)" in done.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hi", "label": "a"}\nnot json\n')
    done = _llmedge("train", "--data", str(bad), "-o", str(tmp_path / "m.json"), cwd=tmp_path)
    assert done.returncode == 1 and "bad.jsonl:2: not JSON" in done.stderr
    done = _llmedge("eval", "--data", str(bad), "--model", str(tmp_path / "missing.json"),
                    cwd=tmp_path)
    assert done.returncode == 1 and "llmedge eval:" in done.stderr
