"""The classifier's model file and the complexity classifier trained from outcome data."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from proxy.evaluate import calibration_error, cost_quality_curve, cross_validated_scores
from proxy.routing.classifier import FORMAT, Options, TextClassifier, few_shot, labelled
from proxy.routing.outcomes import OUTCOME_OPTIONS, fit_outcomes, outcome_examples, outcome_rows

DATA = Path(__file__).resolve().parents[1] / "data"

TEXTS = ["book a table for two", "reserve a table tonight", "what's the weather tomorrow",
         "will it rain in paris", "play some jazz", "turn the music up please, it is quiet"]
LABELS = ["restaurant", "restaurant", "weather", "weather", "music", "music"]


@pytest.mark.parametrize("length_weight", [0.0, 0.5])
def test_model_file_round_trip_keeps_every_probability(tmp_path, length_weight):
    clf = TextClassifier.fit(TEXTS, LABELS, Options(length_weight=length_weight))
    assert bool(clf.model.length_coef) == (length_weight > 0)
    path = tmp_path / "model.json"
    clf.save(str(path))
    again = TextClassifier.load(str(path))
    assert again.labels == clf.labels
    for probe in (["a table for four"], ["hi", "some music " * 40], [""]):
        assert again.proba(probe) == pytest.approx(clf.proba(probe), rel=1e-6)


def test_length_term_extrapolates_to_longer_prompts():
    texts = ["fix the bug", "fix the typo", "fix the test", "fix the doc"]
    texts += [t + " " + " ".join(["and then the next one"] * k)
              for t, k in zip(texts, (8, 9, 10, 11))]
    labels = ["weak"] * 4 + ["strong"] * 4
    clf = TextClassifier.fit(texts, labels, Options(l2=1e-3, length_weight=1.0))
    k = clf.labels.index("strong")
    # Longer than any training prompt, in words never seen: the length term still counts.
    p_short = clf.proba(["refactor parser"])[k]
    p_long = clf.proba(["refactor parser " + "lexer grammar " * 200])[k]
    assert p_long > 0.5 > p_short


def test_a_stored_version_1_file_gives_the_probabilities_it_gave_then():
    # Written by the version-1 code (no length feature) from TEXTS and LABELS, dim 1024; the
    # probabilities below are what that code computed.
    old = TextClassifier.load(str(Path(__file__).with_name("model_v1.json")))
    assert old.labels == ["music", "restaurant", "weather"] and old.temperature == 1.0
    assert old.proba(["a table for four"]) == pytest.approx(
        [0.07135230699973173, 0.8371800790281166, 0.09146761397215167], rel=1e-6)
    assert old.proba(["will it rain"]) == pytest.approx(
        [0.057030480228918684, 0.041829233480913296, 0.901140286290168], rel=1e-6)


def test_version_1_files_load_unless_they_had_a_length_bucket(tmp_path):
    clf = TextClassifier.fit(TEXTS, LABELS)
    doc = msgspec.json.decode(clf.dumps())
    assert doc["format"] == FORMAT
    for key in ("length_coef", "length_scale", "length_offset"):
        doc.pop(key, None)
    doc["format"] = "llmedge-classifier/1"
    old = TextClassifier.loads(json.dumps(doc).encode())
    assert old.proba(["a table please"]) == pytest.approx(clf.proba(["a table please"]))
    doc["options"]["length_weight"] = 8.0
    with pytest.raises(ValueError, match="train the model again"):
        TextClassifier.loads(json.dumps(doc).encode())
    doc["format"] = "llmedge-classifier/9"
    with pytest.raises(ValueError, match="unknown model format"):
        TextClassifier.loads(json.dumps(doc).encode())


def test_fitted_temperature_calibrates_few_shot_probabilities():
    rows = [json.loads(line) for line in
            (DATA / "hwu64" / "train.jsonl").read_text().splitlines()]
    texts, labels = labelled(rows)
    train_t, train_l = few_shot(texts, labels, 8, seed=3)
    test = [json.loads(line) for line in
            (DATA / "hwu64" / "test.jsonl").read_text().splitlines()][:400]
    fitted = TextClassifier.fit(train_t, train_l)
    fixed = TextClassifier.fit(train_t, train_l, Options(calibrate=False))
    assert fixed.temperature == 1.0 and fitted.temperature != 1.0

    def error(clf):
        decided = [clf.predict([row["text"]]) for row in test]
        return calibration_error([p for _, p in decided],
                                 [label == row["label"] for (label, _), row in
                                  zip(decided, test)])

    # Softmax over 64 barely trained classes is far too unsure; the fitted temperature
    # brings confidence close to accuracy (the bench has the figures).
    assert error(fitted) < 0.1 < 0.25 < error(fixed)
    # The same model otherwise: the temperature never changes the predicted class.
    assert [fitted.predict([r["text"]])[0] for r in test[:50]] == \
        [fixed.predict([r["text"]])[0] for r in test[:50]]
    assert TextClassifier.fit(["a", "b"], ["x", "y"]).temperature == 1.0  # nothing to hold out


@pytest.mark.parametrize("bad, message", [
    ({"length_weight": -1.0}, "length_weight must be a number >= 0"),
    ({"length_weight": float("nan")}, "length_weight must be a number >= 0"),
    ({"temperature": 0.0, "calibrate": False}, "temperature must be a number > 0"),
    ({"l2": -1.0}, "need l2 >= 0 and lr > 0"),
])
def test_bad_options_are_refused_when_training_and_loading(bad, message):
    with pytest.raises(ValueError, match=message):
        TextClassifier.fit(TEXTS, LABELS, Options(**bad))
    doc = msgspec.json.decode(TextClassifier.fit(TEXTS, LABELS).dumps())
    doc["options"].update(bad)
    # JSON has no NaN: such a file is refused as not a model file at all.
    with pytest.raises(ValueError, match=message + "|not a classifier model file"):
        TextClassifier.loads(json.dumps(doc).encode())


def test_calibration_error_refuses_what_is_no_probability():
    assert calibration_error([0.9, 0.9, 0.1], [True, False, False]) == pytest.approx(
        (abs(1.8 - 1) + abs(0.1 - 0)) / 3)
    with pytest.raises(ValueError, match="not a probability"):
        calibration_error([float("nan")], [True])
    with pytest.raises(ValueError, match="one confidence per prediction"):
        calibration_error([0.5], [True, False])


def test_outcome_examples_teach_the_expected_gain():
    texts, labels, weights = outcome_examples(
        ["only strong", "only weak", "both", "neither"],
        [False, True, True, False], [True, False, True, False])
    assert list(zip(texts, labels, weights)) == [
        ("only strong", "strong", 1.0), ("only weak", "weak", 1.0),
        ("both", "strong", 0.5), ("both", "weak", 0.5),
        ("neither", "strong", 0.5), ("neither", "weak", 0.5)]


def test_complexity_classifier_beats_random_routing_on_unseen_prompts():
    rows = [json.loads(line) for line in
            (DATA / "routing-outcomes" / "gsm8k.jsonl").read_text().splitlines()]
    prompts, weak, strong = outcome_rows(rows)
    clf = fit_outcomes(prompts[:100], weak[:100], strong[:100])   # calibrating takes a while
    assert clf.labels == ["strong", "weak"]
    assert msgspec.structs.replace(clf.options, temperature=1.0) == OUTCOME_OPTIONS
    # Every prompt scored by a model trained on the other folds: on a held-out part of 600
    # prompts alone, random routing would spread too widely to tell a model from it.
    scores = cross_validated_scores(prompts, weak, strong, folds=5)
    curve = cost_quality_curve(scores, weak, strong)
    # Random routing is 0.5 in expectation (sd 0.03 on these 600 prompts; 0.56 is above
    # 97% of random orders); the figure on all the data is in bench/README.md.
    assert curve["apgr"] > 0.56
    reversed_curve = cost_quality_curve([-s for s in scores], weak, strong)
    assert reversed_curve["apgr"] < 0.5
