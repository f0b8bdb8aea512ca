"""Draws the small data samples the tests read from the larger development data.

    python bench/make_test_samples.py --source DIR

For maintainers only: the tests read the files this writes and never run it, so a bare clone
needs nothing beside it. Every draw is seeded and rows are copied byte for byte, so the same
source files give the same samples (after a run, ``git diff tests/data`` is empty); README.md
here says what each file is and where it came from.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections.abc import Callable, Hashable
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "tests" / "data"
SEED = 13
HWU64_TRAIN_PER_LABEL = 12   # the tests draw 8 and 10 per label: leave those draws a choice
HWU64_TEST_ROWS = 400
GSM8K_ROWS = 600


def _lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines(keepends=True) if line.strip()]


def _stratified(lines: list[bytes], key: Callable[[dict], Hashable], n: int,
                rng: random.Random) -> list[bytes]:
    """``n`` lines with each ``key`` value's share of the source (largest remainder), in a
    shuffled order, so that any prefix of the sample is a fair draw too."""
    groups: dict[Hashable, list[bytes]] = {}
    for line in lines:
        groups.setdefault(key(json.loads(line)), []).append(line)
    order = sorted(groups, key=repr)
    exact = {g: n * len(groups[g]) / len(lines) for g in order}
    counts = {g: int(exact[g]) for g in order}
    for g in sorted(order, key=lambda g: counts[g] - exact[g])[:n - sum(counts.values())]:
        counts[g] += 1
    out = [line for g in order for line in rng.sample(groups[g], counts[g])]
    rng.shuffle(out)
    return out


def hwu64_train(lines: list[bytes], rng: random.Random) -> list[bytes]:
    """The same number of rows for every intent, in the source's order (grouped by label)."""
    by_label: dict[str, list[int]] = {}
    for i, line in enumerate(lines):
        by_label.setdefault(json.loads(line)["label"], []).append(i)
    chosen = sorted(i for label in sorted(by_label)
                    for i in rng.sample(by_label[label], HWU64_TRAIN_PER_LABEL))
    return [lines[i] for i in chosen]


def hwu64_test(lines: list[bytes], rng: random.Random) -> list[bytes]:
    # The source is sorted by label: a prefix of it would cover a third of the intents.
    return _stratified(lines, lambda row: row["label"], HWU64_TEST_ROWS, rng)


def gsm8k(lines: list[bytes], rng: random.Random) -> list[bytes]:
    # Routing is scored on the prompts where the two models differ: keep their share exact.
    return _stratified(lines, lambda row: (row["weak_correct"], row["strong_correct"]),
                       GSM8K_ROWS, rng)


SAMPLES = [("hwu64/train.jsonl", hwu64_train), ("hwu64/test.jsonl", hwu64_test),
           ("routing-outcomes/gsm8k.jsonl", gsm8k)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=HERE.parents[1].parent / "shared" / "data",
                        help="the development data (default: ../shared/data beside the repository)")
    args = parser.parse_args()
    for name, draw in SAMPLES:
        source = args.source / name
        lines = _lines(source)
        # One generator per file: changing one sample's draw leaves the others as they are.
        sample = draw(lines, random.Random(f"{SEED}:{name}"))
        out = HERE / name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"".join(sample))
        print("%s: %d of %d rows, %d bytes (source sha256 %s)" % (
            name, len(sample), len(lines), out.stat().st_size,
            hashlib.sha256(source.read_bytes()).hexdigest()))


if __name__ == "__main__":
    main()
