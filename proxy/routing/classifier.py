"""The prompt classifier: training, prediction, and the model file.

Features and the linear model live in ``_fastpath`` (``classify``); this module adds labels,
tf-idf weights from the training set, temperature, and a compact file format. A classifier is
one *signal*: anything with ``labels`` and ``proba(turns) -> list[float]`` can stand in for it
(a later embedding tier plugs in the same way).
"""

from __future__ import annotations

import base64
import math
import random
from array import array
from collections.abc import Iterable, Sequence
from typing import Protocol

import msgspec

from _fastpath import LinearModel, log_length, train_softmax

FORMAT = "llmedge-classifier/2"
# Version 1 files had a hashed length bucket; without a length feature they read the same.
_FORMAT_1 = "llmedge-classifier/1"


class Signal(Protocol):
    labels: list[str]

    def proba(self, turns: Sequence[str]) -> list[float]: ...


class Options(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Feature and training settings; the defaults were chosen on a validation split of
    HWU64's training set (see bench/README.md), never on its test set."""

    dim: int = 1 << 16
    char_lo: int = 3
    char_hi: int = 3
    context_weight: float = 0.5     # earlier turns count this much of the last one
    max_bytes: int = 4096           # of each turn
    length_weight: float = 0.0      # > 0: the last turn's log-length, standardised on the
                                    # training set and scaled by this, is a feature too
    epochs: int = 30
    l2: float = 1e-4
    lr: float = 0.5
    seed: int = 0
    temperature: float = 1.0        # logits are divided by this
    calibrate: bool = True          # fit temperature by cross-validation when training


def check_options(o: Options) -> None:
    """ValueError naming the first setting out of range (the feature settings are checked
    by the model itself)."""
    if not (o.length_weight >= 0.0 and math.isfinite(o.length_weight)):
        raise ValueError("length_weight must be a number >= 0")
    if not (o.temperature > 0.0 and math.isfinite(o.temperature)):
        raise ValueError("temperature must be a number > 0")
    if not (o.l2 >= 0.0 and math.isfinite(o.l2)) or not (o.lr > 0.0 and math.isfinite(o.lr)):
        raise ValueError("need l2 >= 0 and lr > 0")
    if o.epochs < 0:
        raise ValueError("epochs must be >= 0")


class _ModelFile(msgspec.Struct, forbid_unknown_fields=True):
    format: str
    labels: list[str]
    options: Options
    default_idf: float
    buckets: str                    # base64 of little-endian uint32
    idf: str                        # base64 of little-endian float32
    weights: str                    # base64 of little-endian float32, row-major
    bias: list[float]
    examples: int = 0
    length_coef: list[float] = []
    length_scale: float = 1.0
    length_offset: float = 0.0


def _b64(values: array) -> str:
    if array("H", [1]).tobytes() != b"\x01\x00":
        values = array(values.typecode, values)
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode("ascii")


def _unb64(text: str, typecode: str) -> array:
    values = array(typecode)
    values.frombytes(base64.b64decode(text, validate=True))
    if array("H", [1]).tobytes() != b"\x01\x00":
        values.byteswap()
    return values


def _as_turns(text: str | Sequence[str]) -> list[str]:
    return [text] if isinstance(text, str) else list(text)


class TextClassifier:
    """Labels over a trained ``_fastpath.LinearModel``."""

    def __init__(self, labels: list[str], model: LinearModel, options: Options,
                 parts: dict, examples: int = 0) -> None:
        self.labels = labels
        self.model = model
        self.options = options
        self.temperature = options.temperature
        self.examples = examples
        self._parts = parts

    # === training ===

    @classmethod
    def fit(cls, texts: Sequence[str | Sequence[str]], labels: Sequence[str],
            options: Options | None = None,
            weights: Sequence[float] | None = None) -> TextClassifier:
        """Train from examples (a text, or a conversation as a list of turns) and labels;
        ``weights`` scales each example's say (a text listed under two labels with weights
        summing to 1 teaches a soft target)."""
        options = options or Options()
        check_options(options)
        if len(texts) != len(labels):
            raise ValueError("need one label per example")
        if weights is not None and len(weights) != len(labels):
            raise ValueError("need one weight per example")
        if not texts:
            raise ValueError("no training examples")
        if options.calibrate:
            temperature = fit_temperature(texts, labels, options, weights)
            options = msgspec.structs.replace(options, temperature=temperature)
        names = sorted(set(labels))
        index = {name: i for i, name in enumerate(names)}
        o = options
        probe = LinearModel(o.dim, 1, [], [], [], [0.0], 1.0, o.char_lo, o.char_hi,
                            o.context_weight, o.max_bytes)
        turns = [_as_turns(t) for t in texts]
        # Document statistics count each distinct text once: a text listed under two labels
        # (a soft target) is still one document.
        distinct = list({tuple(t): t for t in turns}.values())
        df: dict[int, int] = {}
        for feats in map(probe.features, distinct):
            for bucket in feats:
                df[bucket] = df.get(bucket, 0) + 1
        n = len(distinct)
        buckets = sorted(df)
        # Smoothed idf, as in the usual tf-idf: a bucket seen nowhere weighs the most.
        idf = [math.log((1 + n) / (1 + df[b])) + 1.0 for b in buckets]
        default_idf = math.log(1 + n) + 1.0
        nc = len(names)
        zero = LinearModel(o.dim, nc, buckets, idf, [0.0] * (len(buckets) * nc), [0.0] * nc,
                           default_idf, o.char_lo, o.char_hi, o.context_weight, o.max_bytes)
        row = {b: i for i, b in enumerate(buckets)}
        rows = [[(row[b], v) for b, v in zero.vector(t)] for t in turns]
        n_rows = len(buckets)
        length = {"length_coef": [], "length_scale": 1.0, "length_offset": 0.0}
        if o.length_weight > 0.0:
            # One more row: the log-length, standardised so that length_weight means the
            # same on any data, and kept outside the tf-idf norm.
            log_of = {tuple(t): log_length(t, o.max_bytes) for t in distinct}
            mean = sum(log_of.values()) / n
            sd = math.sqrt(sum((x - mean) ** 2 for x in log_of.values()) / n)
            logs = [log_of[tuple(t)] for t in turns]
            scale = o.length_weight / sd if sd > 0.0 else 0.0
            length.update(length_scale=scale, length_offset=-mean * scale)
            for r, x in zip(rows, logs):
                r.append((n_rows, scale * x - mean * scale))
            n_rows += 1
        ys = [index[label] for label in labels]
        fitted, bias = train_softmax(rows, ys, n_rows, nc, o.epochs, o.l2, o.lr, o.seed,
                                     weights)
        if o.length_weight > 0.0:
            length["length_coef"] = fitted[len(buckets) * nc:]
            fitted = fitted[:len(buckets) * nc]
        parts = {"buckets": buckets, "idf": idf, "weights": fitted, "bias": bias,
                 "default_idf": default_idf, **length}
        return cls(names, cls._model(o, nc, parts), options, parts, n)

    @staticmethod
    def _model(o: Options, n_classes: int, parts: dict) -> LinearModel:
        return LinearModel(o.dim, n_classes, parts["buckets"], parts["idf"], parts["weights"],
                           parts["bias"], parts["default_idf"], o.char_lo, o.char_hi,
                           o.context_weight, o.max_bytes, parts["length_coef"],
                           parts["length_scale"], parts["length_offset"])

    # === prediction ===

    def proba(self, turns: Sequence[str]) -> list[float]:
        return self.model.proba(turns, self.temperature)

    def predict(self, turns: Sequence[str]) -> tuple[str, float]:
        probs = self.proba(turns)
        best = max(range(len(probs)), key=probs.__getitem__)
        return self.labels[best], probs[best]

    # === file ===

    def dumps(self) -> bytes:
        p = self._parts
        return msgspec.json.encode(_ModelFile(
            format=FORMAT, labels=self.labels, options=self.options,
            default_idf=p["default_idf"], buckets=_b64(array("I", p["buckets"])),
            idf=_b64(array("f", p["idf"])), weights=_b64(array("f", p["weights"])),
            bias=list(p["bias"]), examples=self.examples, length_coef=list(p["length_coef"]),
            length_scale=p["length_scale"], length_offset=p["length_offset"]))

    def save(self, path: str) -> None:
        with open(path, "wb") as f:
            f.write(self.dumps())

    @classmethod
    def loads(cls, data: bytes) -> TextClassifier:
        try:
            doc = msgspec.json.decode(data, type=_ModelFile)
        except msgspec.MsgspecError as exc:
            raise ValueError("not a classifier model file: %s" % exc) from None
        if doc.format == _FORMAT_1 and doc.options.length_weight > 0.0:
            raise ValueError("model format %r with a length feature is no longer read; "
                             "train the model again" % _FORMAT_1)
        if doc.format not in (FORMAT, _FORMAT_1):
            raise ValueError("unknown model format %r (expected %r)" % (doc.format, FORMAT))
        check_options(doc.options)
        try:
            buckets = list(_unb64(doc.buckets, "I"))
            idf = list(_unb64(doc.idf, "f"))
            weights = list(_unb64(doc.weights, "f"))
        except ValueError as exc:
            raise ValueError("corrupt model file: %s" % exc) from None
        parts = {"buckets": buckets, "idf": idf, "weights": weights, "bias": doc.bias,
                 "default_idf": doc.default_idf, "length_coef": doc.length_coef,
                 "length_scale": doc.length_scale, "length_offset": doc.length_offset}
        model = cls._model(doc.options, len(doc.labels), parts)
        return cls(doc.labels, model, doc.options, parts, doc.examples)

    @classmethod
    def load(cls, path: str) -> TextClassifier:
        with open(path, "rb") as f:
            return cls.loads(f.read())


# === calibration ===

CALIBRATION_FOLDS = 5
# Past this many texts one held-out fold is plenty, and at most this many of its
# predictions are scored: calibration stays a fraction of the training time.
CALIBRATION_ONE_FOLD = 1000
CALIBRATION_MAX_HELD = 2000
# Held-out texts needed to fit a temperature: a dozen examples that all land on the right
# side would drive it to zero and every probability to 1.
MIN_CALIBRATION_TEXTS = 50
_BETA_RANGE = (0.25, 4.0)   # 1 / temperature


def fit_temperature(texts: Sequence[str | Sequence[str]], labels: Sequence[str],
                    options: Options, weights: Sequence[float] | None = None) -> float:
    """The temperature that minimises the log-loss of held-out predictions.

    Each example is predicted by a model trained on the other folds (stratified by label; a
    text listed more than once stays in one fold), and the weighted negative log-likelihood
    of those logits is minimised over 1/temperature (where it is convex), within 1/4..4.
    Returns 1.0 when the data is too small to say (fewer than MIN_CALIBRATION_TEXTS texts,
    or no label with two)."""
    weights = [1.0] * len(texts) if weights is None else list(weights)
    groups: dict[object, list[int]] = {}
    for i, text in enumerate(texts):
        groups.setdefault(text if isinstance(text, str) else tuple(text), []).append(i)
    counts: dict[str, int] = {}
    for members in groups.values():
        counts[labels[members[0]]] = counts.get(labels[members[0]], 0) + 1
    if len(counts) < 2 or max(counts.values()) < 2 or len(groups) < MIN_CALIBRATION_TEXTS:
        return 1.0
    folds = min(CALIBRATION_FOLDS, max(counts.values()))
    fold_of: list[int] = [0] * len(texts)
    seen: dict[str, int] = {}
    for members in sorted(groups.values(), key=lambda m: (labels[m[0]], m[0])):
        label = labels[members[0]]
        fold = seen.get(label, 0) % folds
        seen[label] = seen.get(label, 0) + 1
        for i in members:
            fold_of[i] = fold
    plain = msgspec.structs.replace(options, calibrate=False, temperature=1.0)
    held: list[tuple[list[float], int, float]] = []   # (logits - max, true class, weight)
    for fold in range(1 if len(groups) >= CALIBRATION_ONE_FOLD else folds):
        train = [i for i in range(len(texts)) if fold_of[i] != fold]
        # Every copy of a text or none: a soft target's labels are scored together.
        held_groups = [m for m in groups.values() if fold_of[m[0]] == fold]
        test = [i for m in held_groups[::-(-len(held_groups) // CALIBRATION_MAX_HELD)]
                for i in m]
        if not test or len({labels[i] for i in train}) < 2:
            continue
        model = TextClassifier.fit([texts[i] for i in train], [labels[i] for i in train],
                                   plain, [weights[i] for i in train])
        index = {label: k for k, label in enumerate(model.labels)}
        for i in test:
            k = index.get(labels[i])
            if k is not None and weights[i] > 0.0:
                logits = model.model.logits(_as_turns(texts[i]))
                top = max(logits)
                held.append(([z - top for z in logits], k, weights[i]))
    if not held:
        return 1.0
    return 1.0 / _minimise_convex(lambda beta: _log_loss(held, beta), *_BETA_RANGE)


def _log_loss(held: list[tuple[list[float], int, float]], beta: float) -> float:
    total = weight = 0.0
    exp = math.exp
    for shifted, k, w in held:
        log_sum = math.log(sum([exp(beta * z) for z in shifted]))
        total -= w * (beta * shifted[k] - log_sum)
        weight += w
    return total / weight


def _minimise_convex(f, lo: float, hi: float, steps: int = 24) -> float:
    """Golden-section search: a convex function's minimum on [lo, hi]."""
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(steps):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return (a + b) / 2.0


# === data ===

def read_jsonl(path: str) -> list[dict]:
    """One JSON object per non-blank line; ValueError naming the line otherwise."""
    rows = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = msgspec.json.decode(line)
            except msgspec.DecodeError as exc:
                raise ValueError("%s:%d: not JSON: %s" % (path, number, exc)) from None
            if not isinstance(row, dict):
                raise ValueError("%s:%d: expected a JSON object" % (path, number))
            rows.append(row)
    return rows


def labelled(rows: Iterable[dict], where: str = "data") -> tuple[list[str], list[str]]:
    """``{"text", "label"}`` rows -> (texts, labels)."""
    texts, labels = [], []
    for i, row in enumerate(rows):
        text, label = row.get("text"), row.get("label")
        if not isinstance(text, str) or not isinstance(label, str) or not label:
            raise ValueError("%s[%d]: needs a string 'text' and a non-empty string 'label'"
                             % (where, i))
        texts.append(text)
        labels.append(label)
    return texts, labels


def few_shot(texts: Sequence[str], labels: Sequence[str], k: int,
             seed: int) -> tuple[list[str], list[str]]:
    """``k`` examples per label (all of a label's when it has fewer), drawn with ``seed``."""
    by_label: dict[str, list[str]] = {}
    for text, label in zip(texts, labels):
        by_label.setdefault(label, []).append(text)
    rng = random.Random(seed)
    out_t, out_l = [], []
    for label in sorted(by_label):
        pool = by_label[label]
        for text in rng.sample(pool, min(k, len(pool))):
            out_t.append(text)
            out_l.append(label)
    return out_t, out_l
