"""Hashed n-gram features and a linear softmax model: the reference implementation.

This is the spec for ``classify.pyx``; both must give the same features, the same trained
weights and the same probabilities (up to float rounding in the last digits), and reject bad
input with the same exception type and message.

Text -> features, exactly:

1. Each turn is UTF-8 (``str`` is encoded with ``errors="replace"``, so lone surrogates become
   ``?``) and cut to its first ``max_bytes`` bytes.
2. ASCII letters are lower-cased. Word bytes are ``a-z``, ``0-9`` and every byte >= 0x80 (so
   UTF-8 letters of any script stay inside words); every run of other bytes is one separator.
   The normalised stream is the words joined by one space, with a space before and after.
3. Features, in this order per turn: for each word, its unigram and then (from the second word
   on) the bigram with the word before it; then the character n-grams of the normalised stream
   for n = ``char_lo``..``char_hi``, by position and then by n.
4. A word hashes by 32-bit FNV-1a (basis ``0x811C9DC5``) and the murmur3 32-bit finaliser; a
   bigram finalises ``h_prev * 0x9E3779B1 + h_cur + 1`` (unfinalised word hashes). An n-gram
   of ``n`` bytes (n <= 7) is its bytes as a little-endian integer plus ``n << 56``, xor
   ``0x5851F42D4C957F2D``, through the murmur3 64-bit finaliser: no per-byte chain, so the
   compiled twin hashes a position's n-grams from one load, in parallel. The bucket is the
   finalised hash masked to ``dim`` (a power of two).
5. A feature's count is the sum of its turn weights: 1 for the last turn, ``context_weight``
   for every earlier one (0 leaves earlier turns out).
6. Length is not a hashed feature. ``log_length`` is ``log2(1 + n)`` for the last turn's
   ``n`` bytes after the cut (0.0 without turns); a model with ``length_coef`` adds
   ``length_coef[c] * (length_scale * log_length + length_offset)`` to class ``c``'s logit,
   outside the tf-idf norm. How hard a prompt is tracks its length, which normalised n-gram
   counts cannot see, and a continuous term extrapolates where a length bucket could not.

The model keeps rows only for buckets seen in training, each with an idf; other buckets weigh
``default_idf`` and add to the vector's norm but not to any logit. Logits are
``bias + (sum of count * idf * weight row) / norm`` (plus the length term), summed in
first-occurrence order.
Weights and idf are stored as float32; everything else is float64.
"""

from __future__ import annotations

import math
import operator
from array import array
from collections.abc import Sequence

__all__ = ("LinearModel", "features", "log_length", "softmax", "train_softmax")

_M32 = 0xFFFFFFFF
_PRIME = 0x01000193
_WORD_BASIS = 0x811C9DC5
_CHAR_SEED = 0x5851F42D4C957F2D
_M64 = 0xFFFFFFFFFFFFFFFF
_GOLDEN = 0x9E3779B1
_MAX_DIM = 1 << 24

# Byte -> 1 when it belongs to a word (after lower-casing).
_WORD = bytes(1 if (0x61 <= b <= 0x7A or 0x30 <= b <= 0x39 or b >= 0x80) else 0
              for b in range(256))
_LOWER = bytes(b + 32 if 0x41 <= b <= 0x5A else b for b in range(256))


def _fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def _fmix64(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M64
    return k ^ (k >> 33)


def _turn_bytes(turn: object, max_bytes: int) -> bytes:
    if isinstance(turn, str):
        data = str.encode(turn, "utf-8", "replace")
    elif isinstance(turn, bytes):
        data = bytes(turn)
    else:
        raise TypeError("turns must be str or bytes, not %r" % type(turn).__name__)
    return data[:max_bytes]


def _normalise(data: bytes) -> bytes:
    out = bytearray(b" ")
    for b in data.translate(_LOWER):
        if _WORD[b]:
            out.append(b)
        elif out[-1] != 0x20:
            out.append(0x20)
    if out[-1] != 0x20:
        out.append(0x20)
    return bytes(out)


def _check_options(dim: int, char_lo: int, char_hi: int, context_weight: float,
                   max_bytes: int) -> None:
    if dim < 2 or dim > _MAX_DIM or dim & (dim - 1):
        raise ValueError("dim must be a power of two between 2 and %d" % _MAX_DIM)
    if char_lo < 1 or char_hi < char_lo or char_hi > 7:
        raise ValueError("need 1 <= char_lo <= char_hi <= 7")
    if not 0.0 <= context_weight <= 1.0:
        raise ValueError("context_weight must be between 0 and 1")
    if max_bytes < 1:
        raise ValueError("max_bytes must be >= 1")


def _turn_list(turns: object) -> list:
    if isinstance(turns, (str, bytes)):
        raise TypeError("turns must be a sequence of texts, not a single text")
    return list(turns)  # type: ignore[call-overload]


def features(turns: Sequence[str | bytes], dim: int = 1 << 18, char_lo: int = 3,
             char_hi: int = 5, context_weight: float = 0.5,
             max_bytes: int = 4096) -> dict[int, float]:
    """Bucket -> weighted count, in first-occurrence order."""
    dim = operator.index(dim)
    char_lo = operator.index(char_lo)
    char_hi = operator.index(char_hi)
    max_bytes = operator.index(max_bytes)
    context_weight = float(context_weight)
    _check_options(dim, char_lo, char_hi, context_weight, max_bytes)
    turns = _turn_list(turns)
    mask = dim - 1
    acc: dict[int, float] = {}
    last = len(turns) - 1
    for t, turn in enumerate(turns):
        data = _turn_bytes(turn, max_bytes)
        weight = 1.0 if t == last else context_weight
        if weight == 0.0:
            continue
        stream = _normalise(data)
        prev = -1
        for word in stream.split(b" "):
            if not word:
                continue
            h = _WORD_BASIS
            for b in word:
                h = ((h ^ b) * _PRIME) & _M32
            k = _fmix32(h) & mask
            acc[k] = acc.get(k, 0.0) + weight
            if prev >= 0:
                k = _fmix32((prev * _GOLDEN + h + 1) & _M32) & mask
                acc[k] = acc.get(k, 0.0) + weight
            prev = h
        n = len(stream)
        for i in range(n - char_lo + 1):
            for m in range(char_lo, min(char_hi, n - i) + 1):
                key = int.from_bytes(stream[i:i + m], "little") | (m << 56)
                k = _fmix64(key ^ _CHAR_SEED) & mask
                acc[k] = acc.get(k, 0.0) + weight
    return acc


def log_length(turns: Sequence[str | bytes], max_bytes: int = 4096) -> float:
    """log2(1 + bytes of the last turn, after the cut); 0.0 without turns."""
    max_bytes = operator.index(max_bytes)
    if max_bytes < 1:
        raise ValueError("max_bytes must be >= 1")
    turns = _turn_list(turns)
    if not turns:
        return 0.0
    return math.log2(1.0 + len(_turn_bytes(turns[-1], max_bytes)))


def softmax(logits: Sequence[float], temperature: float = 1.0) -> list[float]:
    """Probabilities from logits divided by ``temperature`` (> 0)."""
    if not temperature > 0.0:
        raise ValueError("temperature must be > 0")
    if not logits:
        return []
    scaled = [float(z) / temperature for z in logits]
    top = max(scaled)
    exps = [math.exp(z - top) for z in scaled]
    total = 0.0
    for e in exps:
        total += e
    return [e / total for e in exps]


class LinearModel:
    """A multinomial logistic-regression model over hashed features.

    ``buckets`` lists the buckets that have rows (each once); ``idf`` and ``weights`` follow
    that order, ``weights`` row-major with ``n_classes`` values per row.
    """

    __slots__ = ("dim", "n_classes", "char_lo", "char_hi", "context_weight", "max_bytes",
                 "length_coef", "length_scale", "length_offset",
                 "default_idf", "_rows", "_idf", "_weights", "_bias")

    def __init__(self, dim: int, n_classes: int, buckets: Sequence[int], idf: Sequence[float],
                 weights: Sequence[float], bias: Sequence[float], default_idf: float = 1.0,
                 char_lo: int = 3, char_hi: int = 5, context_weight: float = 0.5,
                 max_bytes: int = 4096, length_coef: Sequence[float] = (),
                 length_scale: float = 1.0, length_offset: float = 0.0) -> None:
        dim = operator.index(dim)
        n_classes = operator.index(n_classes)
        char_lo = operator.index(char_lo)
        char_hi = operator.index(char_hi)
        max_bytes = operator.index(max_bytes)
        context_weight = float(context_weight)
        length_scale = float(length_scale)
        length_offset = float(length_offset)
        _check_options(dim, char_lo, char_hi, context_weight, max_bytes)
        if n_classes < 1:
            raise ValueError("n_classes must be >= 1")
        coef = [float(c) for c in length_coef]
        if coef and len(coef) != n_classes:
            raise ValueError("length_coef needs one value per class, or none")
        if not all(math.isfinite(c) for c in coef):
            raise ValueError("length_coef must be finite")
        if not (math.isfinite(length_scale) and math.isfinite(length_offset)):
            raise ValueError("length_scale and length_offset must be finite")
        buckets = [operator.index(b) for b in buckets]
        if len(idf) != len(buckets):
            raise ValueError("idf needs one value per bucket")
        if len(weights) != len(buckets) * n_classes:
            raise ValueError("weights needs n_classes values per bucket")
        if len(bias) != n_classes:
            raise ValueError("bias needs one value per class")
        rows: dict[int, int] = {}
        for row, bucket in enumerate(buckets):
            if not 0 <= bucket < dim:
                raise ValueError("bucket %d is outside 0..dim-1" % bucket)
            if bucket in rows:
                raise ValueError("bucket %d is listed twice" % bucket)
            rows[bucket] = row
        self.dim = dim
        self.n_classes = n_classes
        self.char_lo = char_lo
        self.char_hi = char_hi
        self.context_weight = context_weight
        self.max_bytes = max_bytes
        self.length_coef = coef
        self.length_scale = length_scale
        self.length_offset = length_offset
        self.default_idf = float(array("f", [default_idf])[0])
        self._rows = rows
        self._idf = array("f", idf)
        self._weights = array("f", weights)
        self._bias = [float(b) for b in bias]

    def features(self, turns: Sequence[str | bytes]) -> dict[int, float]:
        return features(turns, self.dim, self.char_lo, self.char_hi, self.context_weight,
                        self.max_bytes)

    def _weighted(self, turns: Sequence[str | bytes]) -> list[tuple[int, int, float]]:
        out = []
        rows = self._rows
        for bucket, count in self.features(turns).items():
            row = rows.get(bucket, -1)
            out.append((bucket, row, count * (self._idf[row] if row >= 0 else self.default_idf)))
        return out

    def vector(self, turns: Sequence[str | bytes]) -> list[tuple[int, float]]:
        """The L2-normalised tf-idf vector: (bucket, value) in first-occurrence order."""
        weighted = self._weighted(turns)
        norm2 = 0.0
        for _, _, v in weighted:
            norm2 += v * v
        if norm2 == 0.0:
            return []
        norm = math.sqrt(norm2)
        return [(bucket, v / norm) for bucket, _, v in weighted]

    def logits(self, turns: Sequence[str | bytes]) -> list[float]:
        nc = self.n_classes
        z = [0.0] * nc
        norm2 = 0.0
        w = self._weights
        for _, row, v in self._weighted(turns):
            norm2 += v * v
            if row >= 0:
                base = row * nc
                for c in range(nc):
                    z[c] += v * w[base + c]
        if norm2 == 0.0:
            out = list(self._bias)
        else:
            norm = math.sqrt(norm2)
            out = [self._bias[c] + z[c] / norm for c in range(nc)]
        if self.length_coef:
            x = self.length_scale * log_length(turns, self.max_bytes) + self.length_offset
            out = [out[c] + self.length_coef[c] * x for c in range(nc)]
        return out

    def proba(self, turns: Sequence[str | bytes], temperature: float = 1.0) -> list[float]:
        """Class probabilities: softmax of the logits divided by ``temperature``."""
        return softmax(self.logits(turns), temperature)


def _rng(seed: int):
    state = (seed * 0x9E3779B97F4A7C15 + 1) & 0xFFFFFFFFFFFFFFFF or 1

    def draw(bound: int) -> int:
        # xorshift64*, reduced modulo the bound: the tiny modulo bias does not matter here.
        nonlocal state
        x = state
        x ^= x >> 12
        x ^= (x << 25) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 27
        state = x
        return ((x * 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF) % bound

    return draw


def _check_training(rows: Sequence, labels: Sequence[int], n_rows: int, n_classes: int,
                    epochs: int, l2: float, lr: float,
                    weights: list[float]) -> list[list[tuple[int, float]]]:
    if n_classes < 1 or n_rows < 0:
        raise ValueError("n_classes must be >= 1 and n_rows >= 0")
    if len(rows) != len(labels):
        raise ValueError("need one label per example")
    if len(weights) != len(labels):
        raise ValueError("need one weight per example")
    for w in weights:
        if not (w >= 0.0 and math.isfinite(w)):
            raise ValueError("example weights must be numbers >= 0")
    if epochs < 0:
        raise ValueError("epochs must be >= 0")
    if not (l2 >= 0.0 and math.isfinite(l2)) or not (lr > 0.0 and math.isfinite(lr)):
        raise ValueError("need l2 >= 0 and lr > 0")
    checked = []
    for example, label in zip(rows, labels):
        if not 0 <= label < n_classes:
            raise ValueError("label %d is outside 0..n_classes-1" % label)
        pairs = []
        for row, value in example:
            row = operator.index(row)
            if not 0 <= row < n_rows:
                raise ValueError("row %d is outside 0..n_rows-1" % row)
            pairs.append((row, float(value)))
        checked.append(pairs)
    return checked


def train_softmax(rows: Sequence[Sequence[tuple[int, float]]], labels: Sequence[int],
                  n_rows: int, n_classes: int, epochs: int = 30, l2: float = 1e-4,
                  lr: float = 0.5, seed: int = 0,
                  weights: Sequence[float] | None = None) -> tuple[list[float], list[float]]:
    """Fit a multinomial logistic regression by SGD; return (weights, bias).

    Examples are sparse ``(row, value)`` lists; ``weights`` (default all 1) scales each
    example's loss, so one text listed under two labels with weights summing to 1 is a soft
    target. Each epoch visits them in an order shuffled
    by a seeded xorshift64* (Fisher-Yates from the end), so training is deterministic. The
    step size follows ``lr / (1 + lr * l2 * t)`` (Bottou); L2 decay applies to the weights
    through one shared scale factor, which keeps every update sparse. The bias is not decayed.
    """
    n_rows = operator.index(n_rows)
    n_classes = operator.index(n_classes)
    epochs = operator.index(epochs)
    labels = [operator.index(y) for y in labels]
    l2 = float(l2)
    lr = float(lr)
    example_weights = ([1.0] * len(labels) if weights is None
                       else [float(w) for w in weights])
    data = _check_training(rows, labels, n_rows, n_classes, epochs, l2, lr, example_weights)
    nc = n_classes
    # One weight list per class and each example split into its rows and values: the same
    # arithmetic in the same order as the C twin, with far less index work per step, which
    # is what makes start-up training bearable without the compiled module.
    columns = [[0.0] * n_rows for _ in range(nc)]
    examples = [([row for row, _ in pairs], [x for _, x in pairs]) for pairs in data]
    # Two classes (the complexity router's strong-or-weak) get both columns in one pass.
    binary = nc == 2
    first, second = columns[0], columns[-1]
    bias = [0.0] * nc
    scale = 1.0
    t = 0
    draw = _rng(operator.index(seed))
    order = list(range(len(data)))
    for _ in range(epochs):
        for i in range(len(order) - 1, 0, -1):
            j = draw(i + 1)
            order[i], order[j] = order[j], order[i]
        for index in order:
            eta = lr / (1.0 + lr * l2 * t)
            t += 1
            example_rows, values = examples[index]
            if binary:
                acc0 = acc1 = 0.0
                for row, x in zip(example_rows, values):
                    acc0 += x * first[row]
                    acc1 += x * second[row]
                z = [acc0 * scale + bias[0], acc1 * scale + bias[1]]
            else:
                z = []
                for c in range(nc):
                    column = columns[c]
                    acc = 0.0
                    for row, x in zip(example_rows, values):
                        acc += x * column[row]
                    z.append(acc * scale + bias[c])
            p = softmax(z)
            p[labels[index]] -= 1.0
            we = example_weights[index]
            scale *= 1.0 - eta * l2
            step = eta / scale
            if binary:
                p0 = p[0] * we
                p1 = p[1] * we
                for row, x in zip(example_rows, values):
                    g = step * x
                    first[row] -= g * p0
                    second[row] -= g * p1
                bias[0] -= eta * p0
                bias[1] -= eta * p1
            else:
                steps = [step * x for x in values]
                for c in range(nc):
                    pc = p[c] * we
                    column = columns[c]
                    for row, g in zip(example_rows, steps):
                        column[row] -= g * pc
                    bias[c] -= eta * pc
            if scale < 1e-9:
                for column in columns:
                    for row in range(n_rows):
                        column[row] *= scale
                scale = 1.0
    return [columns[c][row] * scale for row in range(n_rows) for c in range(nc)], bias
