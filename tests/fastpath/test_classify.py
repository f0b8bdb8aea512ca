"""The compiled classifier against its pure-Python twin, and properties both keep."""

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import _fastpath
from _fastpath import classify_py

IMPLS = [pytest.param(classify_py, id="py")]
if not _fastpath.NO_EXTENSIONS:
    from _fastpath import classify

    IMPLS.append(pytest.param(classify, id="c", marks=pytest.mark.compiled))

needs_c = pytest.mark.skipif(_fastpath.NO_EXTENSIONS, reason="compiled twin not built")

turn_st = st.one_of(st.text(max_size=60), st.binary(max_size=60),
                    st.text(alphabet="ab cD,.9é", max_size=40))
turns_st = st.lists(turn_st, max_size=4)
options_st = st.fixed_dictionaries({
    "dim": st.sampled_from([2, 64, 1 << 12]),
    "char_lo": st.integers(1, 3),
    "char_hi": st.integers(3, 6),
    "context_weight": st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    "max_bytes": st.integers(1, 80),
})


def _model(impl, dim=1 << 12, n_classes=3, seed=0, **opts):
    import random
    rng = random.Random(seed)
    buckets = sorted(rng.sample(range(dim), min(dim, 200)))
    idf = [rng.uniform(1, 4) for _ in buckets]
    weights = [rng.uniform(-2, 2) for _ in range(len(buckets) * n_classes)]
    bias = [rng.uniform(-0.5, 0.5) for _ in range(n_classes)]
    return impl.LinearModel(dim, n_classes, buckets, idf, weights, bias, 3.5, **opts)


def test_selection_matches_environment():
    expected = classify_py.LinearModel if _fastpath.NO_EXTENSIONS else classify.LinearModel
    assert _fastpath.LinearModel is expected


@needs_c
@settings(max_examples=300, deadline=None)
@given(turns=turns_st, opts=options_st)
@example(turns=["Wake me up at 7 AM"], opts={"dim": 64, "char_lo": 3, "char_hi": 5,
                                               "context_weight": 0.5, "max_bytes": 80})
@example(turns=["\ud800 lone", b"\xff\xfe", ""], opts={"dim": 2, "char_lo": 1, "char_hi": 6,
                                                       "context_weight": 0.0, "max_bytes": 3})
def test_features_c_matches_py(turns, opts):
    c = classify.features(turns, **opts)
    py = classify_py.features(turns, **opts)
    assert list(c.items()) == list(py.items())


length_st = st.one_of(st.just({}), st.fixed_dictionaries({
    "length_coef": st.lists(st.floats(-3, 3, allow_nan=False), min_size=3, max_size=3),
    "length_scale": st.floats(-2, 2, allow_nan=False),
    "length_offset": st.floats(-10, 10, allow_nan=False),
    "max_bytes": st.integers(1, 80),
}))


@needs_c
@settings(max_examples=200, deadline=None)
@given(turns=turns_st, seed=st.integers(0, 5), temperature=st.sampled_from([0.5, 1.0, 3.0]),
       length=length_st)
def test_model_c_matches_py(turns, seed, temperature, length):
    c = _model(classify, seed=seed, **length)
    py = _model(classify_py, seed=seed, **length)
    assert c.length_coef == py.length_coef
    vc, vp = c.vector(turns), py.vector(turns)
    assert [b for b, _ in vc] == [b for b, _ in vp]
    assert [v for _, v in vc] == pytest.approx([v for _, v in vp], rel=1e-12, abs=1e-15)
    assert c.logits(turns) == pytest.approx(py.logits(turns), rel=1e-5, abs=1e-5)
    assert c.proba(turns, temperature) == pytest.approx(py.proba(turns, temperature),
                                                        rel=1e-5, abs=1e-6)


@needs_c
@settings(max_examples=60, deadline=None)
@given(data=st.lists(st.tuples(st.lists(st.tuples(st.integers(0, 19),
                                                   st.floats(-3, 3, allow_nan=False)),
                                         max_size=6),
                               st.integers(0, 3)), max_size=12),
       epochs=st.integers(0, 4), l2=st.sampled_from([0.0, 1e-4, 0.1]),
       seed=st.integers(0, 2**70), weighted=st.booleans())
def test_training_c_matches_py(data, epochs, l2, seed, weighted):
    rows = [r for r, _ in data]
    ys = [y for _, y in data]
    weights = [(i % 3) / 2 for i in range(len(ys))] if weighted else None
    c = classify.train_softmax(rows, ys, 20, 4, epochs, l2, 0.5, seed, weights)
    py = classify_py.train_softmax(rows, ys, 20, 4, epochs, l2, 0.5, seed, weights)
    # Same operations in the same order on IEEE doubles: identical, not merely close.
    assert c == py


@needs_c
@pytest.mark.parametrize("call, message", [
    (lambda m: m.features("one text", 64), "turns must be a sequence of texts"),
    (lambda m: m.features([1], 64), "turns must be str or bytes, not 'int'"),
    (lambda m: m.features(["x"], 63), "dim must be a power of two"),
    (lambda m: m.features(["x"], 64, 4, 3), "need 1 <= char_lo <= char_hi <= 7"),
    (lambda m: m.features(["x"], 64, 3, 5, 1.5), "context_weight must be between 0 and 1"),
    (lambda m: m.features(["x"], 64, 3, 5, 0.5, 0), "max_bytes must be >= 1"),
    (lambda m: m.log_length(["x"], 0), "max_bytes must be >= 1"),
    (lambda m: m.log_length([3]), "turns must be str or bytes, not 'int'"),
    (lambda m: m.LinearModel(8, 2, [], [], [], [0, 0], length_coef=[1.0]),
     "length_coef needs one value per class"),
    (lambda m: m.LinearModel(8, 2, [], [], [], [0, 0], length_coef=[0.0, math.nan]),
     "length_coef must be finite"),
    (lambda m: m.LinearModel(8, 2, [], [], [], [0, 0], length_scale=math.inf),
     "length_scale and length_offset must be finite"),
    (lambda m: m.train_softmax([[(0, 1.0)]], [0], 5, 2, weights=[1.0, 2.0]),
     "need one weight per example"),
    (lambda m: m.train_softmax([[(0, 1.0)]], [0], 5, 2, weights=[-1.0]),
     "example weights must be numbers >= 0"),
    (lambda m: m.softmax([1.0], 0.0), "temperature must be > 0"),
    (lambda m: m.LinearModel(64, 2, [1], [1.0], [1.0], [0.0, 0.0]), "weights needs"),
    (lambda m: m.LinearModel(64, 1, [64], [1.0], [1.0], [0.0]), "bucket 64 is outside"),
    (lambda m: m.LinearModel(64, 1, [3, 3], [1.0, 1.0], [1.0, 1.0], [0.0]), "listed twice"),
    (lambda m: m.train_softmax([[(5, 1.0)]], [0], 5, 2), "row 5 is outside"),
    (lambda m: m.train_softmax([[(0, 1.0)]], [2], 5, 2), "label 2 is outside"),
    (lambda m: m.train_softmax([[]], [0, 1], 5, 2), "need one label per example"),
])
def test_errors_match(call, message):
    errors = []
    for impl in (classify, classify_py):
        with pytest.raises((TypeError, ValueError)) as info:
            call(impl)
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1]
    assert message in errors[0][1]


# === properties of each twin ===

@pytest.mark.parametrize("impl", IMPLS)
def test_vector_is_unit_length_and_empty_text_is_bias(impl):
    m = _model(impl)
    v = m.vector(["Book a table for two at eight"])
    assert math.isclose(sum(x * x for _, x in v), 1.0, rel_tol=1e-9)
    assert m.vector([""]) == []
    assert m.logits([]) == pytest.approx(m.logits(["", ""]))
    assert sum(m.proba(["anything at all"])) == pytest.approx(1.0)


@pytest.mark.parametrize("impl", IMPLS)
def test_earlier_turns_weigh_less(impl):
    f = impl.features(["alpha", "beta"], 1 << 16, context_weight=0.25)
    g = impl.features(["beta"], 1 << 16)
    only_alpha = set(f) - set(g)
    assert only_alpha and all(f[b] == 0.25 for b in only_alpha)
    assert impl.features(["alpha", "beta"], 1 << 16, context_weight=0.0) == g


@pytest.mark.parametrize("impl", IMPLS)
def test_length_term_moves_logits_with_the_last_turn_length(impl):
    assert impl.log_length(["abc"]) == 2.0  # log2(1 + 3)
    assert impl.log_length(["a" * 500, "abc"]) == 2.0  # the last turn only
    assert impl.log_length(["é" * 100], max_bytes=7) == 3.0  # bytes, after the cut
    assert impl.log_length([]) == 0.0
    plain = impl.LinearModel(8, 2, [], [], [], [0.1, -0.1])
    longer = impl.LinearModel(8, 2, [], [], [], [0.1, -0.1], length_coef=[0.0, 1.0],
                              length_scale=0.5, length_offset=-1.0)
    assert plain.length_coef == [] and longer.length_coef == [0.0, 1.0]
    # x = 0.5 * log2(1 + n) - 1: 0 at 3 bytes, 2.5 at 127 bytes; added even with no known
    # bucket, outside the tf-idf norm.
    assert longer.logits(["abc"]) == pytest.approx([0.1, -0.1])
    assert longer.logits(["a" * 127]) == pytest.approx([0.1, -0.1 + 2.5])
    assert plain.logits(["a" * 127]) == pytest.approx([0.1, -0.1])


@pytest.mark.parametrize("impl", IMPLS)
def test_init_again_forgets_the_length_term(impl):
    m = impl.LinearModel(8, 2, [], [], [], [0.0, 0.0], length_coef=[0.0, 1.0])
    m.__init__(8, 2, [], [], [], [0.0, 0.0])
    assert m.length_coef == [] and m.logits(["a" * 100]) == [0.0, 0.0]


@pytest.mark.parametrize("impl", IMPLS)
def test_example_weights_scale_each_loss(impl):
    rows = [[(0, 1.0)], [(0, 1.0)]]
    # Weight 0 leaves an example out; two half-weight opposite labels learn nothing.
    assert impl.train_softmax(rows, [0, 1], 1, 2, 5, 0.0, 0.5, 1, [1.0, 0.0]) == \
        impl.train_softmax(rows[:1], [0], 1, 2, 5, 0.0, 0.5, 1)
    w, b = impl.train_softmax([[(0, 1.0)]] * 2, [0, 1], 1, 2, 5, 0.0, 0.5, 1, [0.5, 0.5])
    assert impl.softmax([w[0] + b[0], w[1] + b[1]]) == pytest.approx([0.5, 0.5], abs=0.05)


@pytest.mark.parametrize("impl", IMPLS)
def test_case_and_punctuation_do_not_matter(impl):
    assert impl.features(["Hello,   World!!"], 1 << 12) == impl.features(["hello world"], 1 << 12)


@pytest.mark.parametrize("impl", IMPLS)
def test_training_separates_two_classes(impl):
    # Two disjoint vocabularies: a trained model must put each text in its own class.
    rows = [[(0, 1.0)], [(1, 1.0)]] * 5
    ys = [0, 1] * 5
    w, b = impl.train_softmax(rows, ys, 2, 2, epochs=20, l2=1e-4, lr=0.5)
    assert impl.LinearModel(8, 2, [], [], [], b).proba(["x"]) == pytest.approx(
        impl.softmax(b))  # no known bucket: the bias alone
    for row, label in ((0, 0), (1, 1)):
        # Give the bucket "x" hashes to the weights of one row: that row's class must win.
        bucket = next(iter(impl.features(["x"], 8, 1, 1)))
        m = impl.LinearModel(8, 2, [bucket], [1.0], w[2 * row:2 * row + 2], b, char_lo=1,
                             char_hi=1)
        p = m.proba(["x"])
        assert p[label] > 0.8
