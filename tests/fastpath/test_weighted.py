"""The compiled WeightedOrder against its pure-Python twin, and the properties both keep."""

import math
import random

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import _fastpath
from _fastpath import weighted_py

IMPLS = [pytest.param(weighted_py, id="py")]
if not _fastpath.NO_EXTENSIONS:
    from _fastpath import weighted

    IMPLS.append(pytest.param(weighted, id="c", marks=pytest.mark.compiled))

weights_st = st.lists(st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=1e6)),
                      min_size=1, max_size=12)
draws_st = st.lists(st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
                    min_size=12, max_size=12)


def test_selection_matches_environment():
    # Guards the "all or nothing" rule: the package exports one implementation.
    expected = weighted_py.WeightedOrder if _fastpath.NO_EXTENSIONS else weighted.WeightedOrder
    assert _fastpath.WeightedOrder is expected
    assert _fastpath.IMPLEMENTATION == ("py" if _fastpath.NO_EXTENSIONS else "c")


@pytest.mark.compiled
@pytest.mark.skipif(_fastpath.NO_EXTENSIONS, reason="compiled twin not built")
@given(weights=weights_st, draws=draws_st)
@example(weights=[1.0, 1.0], draws=[0.9999999999999999] * 12)
@example(weights=[0.0, 0.0, 3.0], draws=[0.0] * 12)
@example(weights=[1e-300, 1e300], draws=[0.5] * 12)
def test_c_matches_py(weights, draws):
    c, py = weighted.WeightedOrder(weights), weighted_py.WeightedOrder(weights)
    assert [c.pick(r) for r in draws] == [py.pick(r) for r in draws]
    assert c.order(iter(draws).__next__) == py.order(iter(draws).__next__)
    assert len(c) == len(py) == len(weights)


@pytest.mark.compiled
@pytest.mark.skipif(_fastpath.NO_EXTENSIONS, reason="compiled twin not built")
@pytest.mark.parametrize("bad", [[], [-1.0], [math.nan], [math.inf], [1.0, -0.5]])
def test_c_and_py_reject_alike(bad):
    messages = []
    for impl in (weighted, weighted_py):
        with pytest.raises(ValueError) as info:
            impl.WeightedOrder(bad)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("impl", IMPLS)
@given(weights=weights_st, draws=draws_st)
def test_order_is_a_permutation_with_zero_weights_last(impl, weights, draws):
    order = impl.WeightedOrder(weights).order(iter(draws).__next__)
    assert sorted(order) == list(range(len(weights)))
    zero = [i for i, w in enumerate(weights) if w == 0.0]
    positive = len(weights) - len(zero)
    if positive:  # the first choice always carries weight; zero-weight ones are fallbacks
        assert weights[order[0]] > 0.0
        assert order[positive:] == zero


@pytest.mark.parametrize("impl", IMPLS)
def test_pick_follows_weights(impl):
    chooser = impl.WeightedOrder([3.0, 1.0, 0.0])
    rng = random.Random(7)
    counts = [0, 0, 0]
    for _ in range(20000):
        counts[chooser.pick(rng.random())] += 1
    assert counts[2] == 0
    assert 0.72 < counts[0] / 20000 < 0.78


@pytest.mark.parametrize("impl", IMPLS)
def test_pick_boundaries(impl):
    chooser = impl.WeightedOrder([1.0, 0.0, 1.0])
    assert chooser.pick(0.0) == 0
    assert chooser.pick(0.49) == 0
    assert chooser.pick(0.5) == 2
    assert chooser.pick(0.9999999999999999) == 2

