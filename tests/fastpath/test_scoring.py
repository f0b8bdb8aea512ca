"""The compiled EndpointTable against its pure-Python twin, and the properties both keep.

The differential tests replay one generated sequence of operations on both tables (the same
random streams for pick) and require the same results bit for bit, the same exceptions with
the same messages, and the same rows afterwards.
"""

import math
import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import _fastpath
from _fastpath import scoring_py

IMPLS = [pytest.param(scoring_py, id="py")]
if not _fastpath.NO_EXTENSIONS:
    from _fastpath import scoring

    IMPLS.append(pytest.param(scoring, id="c", marks=pytest.mark.compiled))

NAN, INF = math.nan, math.inf
STATES = (scoring_py.EP_HEALTHY, scoring_py.EP_EJECTED, scoring_py.EP_OPEN,
          scoring_py.EP_HALF_OPEN)
POLICIES = (scoring_py.POLICY_COST, scoring_py.POLICY_LATENCY, scoring_py.POLICY_SCORE)
ERRORS = (ValueError, TypeError, IndexError, OverflowError)


# === helpers ===

def canon(x):
    """A value with its type and exact bits: float equality would miss -0.0, NaN and ints."""
    if isinstance(x, float):
        return ("float", x.hex())
    if isinstance(x, (bool, int)):
        return (type(x).__name__, x)
    if isinstance(x, dict):
        return [(k, canon(v)) for k, v in x.items()]
    if isinstance(x, (list, tuple)):
        return [canon(v) for v in x]
    return x


def outcome(fn, *args):
    try:
        return canon(fn(*args))
    except ERRORS as exc:
        return ("raised", type(exc).__name__, str(exc))


class Recorder:
    """rnd() from a list of draws (cycled) or a seeded stream; remembers what it gave."""

    def __init__(self, seed=0, draws=None):
        self._random = random.Random(seed).random
        self._draws = draws
        self.calls = []

    def __call__(self):
        if self._draws:
            value = self._draws[len(self.calls) % len(self._draws)]
        else:
            value = self._random()
        self.calls.append(value)
        return value


def snapshot(table):
    rows = range(len(table))
    return (len(table), [outcome(table.stats, i) for i in rows],
            [outcome(table.load, i) for i in rows], [outcome(table.available, i) for i in rows])


def make(impl, n, config=None):
    table = impl.EndpointTable(**(config or {}))
    for k in range(n):
        table.add(weight=1.0 + k % 3, price=0.5 * (k % 4), quality=0.1 * (k % 10))
    return table


# === strategies ===

# Strategies come in pairs: mostly valid values, sometimes bad ones (each with a weight of
# about one in five), so that long sequences keep a live table and still hit every error.
bad_index_st = st.sampled_from([-1, 10, True, False, 1.0, 2**70, -(2**70), None, "1"])
rtt_st = st.one_of(st.floats(min_value=0.0, max_value=1e7), st.floats(min_value=0.0, max_value=1e4),
                   st.integers(0, 10**6), st.floats(min_value=0.0, max_value=1e7),
                   st.sampled_from([0.0, -0.0, 1e-300, 1e308, -1.0, NAN, INF, "5"]))
ttft_st = st.one_of(st.just(-1.0), st.floats(min_value=0.0, max_value=1e7),
                    st.sampled_from([NAN, INF, -0.0]))
dt_st = st.one_of(st.floats(min_value=0.0, max_value=30.0), st.floats(min_value=0.0, max_value=0.5),
                  st.just(0.0), st.floats(min_value=0.0, max_value=120.0),
                  st.sampled_from([-5.0, -0.5, NAN]))
draw_st = st.one_of(st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
                    st.sampled_from([0.0, 0.9999999999999999, 1.0, 1.5, -0.1, -0.5, -1.0,
                                     -3.0, -1e300, 1e300, NAN, INF, -INF, -(2.0**63),
                                     -(2.0**63) - 4096.0]))
good_weight_st = st.floats(min_value=0.0, max_value=10.0)
weights_st = st.one_of(
    *[st.tuples(good_weight_st, good_weight_st, good_weight_st, good_weight_st)] * 4,
    st.lists(good_weight_st, min_size=4, max_size=4),
    st.sampled_from([(0.0, 0.0, 0.0, 0.0), (1e308, 1e308, 1e308, 1e308), (1, 2, 3, 4)]),
    st.sampled_from([(1.0, 1.0, 1.0), (1.0,) * 5, (0.0, -1.0, 0.0, 0.0), (NAN, 0, 0, 0),
                     (INF, 0, 0, 0)]))
add_st = st.tuples(
    st.just("add"),
    st.one_of(st.floats(min_value=0.01, max_value=10.0), st.sampled_from([1e-300, 0.0, -1.0, NAN])),
    st.one_of(st.sampled_from([0.0, 0.5, 1.5, 3.0]), st.sampled_from([-0.0, 1e308, -2.0, INF])),
    st.one_of(st.floats(min_value=0.0, max_value=1.0), st.sampled_from([0.0, 1.0, 1.5, NAN])))


@st.composite
def scenarios(draw):
    """A table size and operations on it: ("add", ...), ("record", i, dt, ...), etc."""
    n = draw(st.integers(min_value=1, max_value=10))
    valid = st.integers(min_value=0, max_value=n - 1)
    index = st.one_of(valid, valid, valid, valid, bad_index_st)
    state = st.one_of(*[st.sampled_from(STATES)] * 4, st.sampled_from([4, -1, None, "0"]))
    cands = st.one_of(st.lists(valid, min_size=2, max_size=12), st.tuples(valid, valid),
                      st.lists(valid, max_size=40), st.lists(index, max_size=5))
    good_group = st.one_of(st.lists(valid, min_size=1, max_size=4), st.tuples(valid))
    groups = st.one_of(*[st.lists(good_group, max_size=10)] * 5,
                       st.lists(st.one_of(good_group, st.lists(index, max_size=3)), max_size=4))
    policy = st.one_of(*[st.sampled_from(POLICIES)] * 6, st.sampled_from([3, -1, 2.0]))
    op = st.one_of(
        add_st,
        st.tuples(st.just("start"), index),
        st.tuples(st.just("start"), valid),
        st.tuples(st.just("record"), index, dt_st, rtt_st, ttft_st, st.booleans()),
        st.tuples(st.just("record"), valid, dt_st, rtt_st, ttft_st, st.booleans()),
        st.tuples(st.just("cancel"), index),
        st.tuples(st.just("set_state"), index, state),
        st.tuples(st.just("pick"), cands, st.integers(0, 2**32)),
        st.tuples(st.just("pick"), cands, st.integers(0, 2**32)),
        st.tuples(st.just("pick_draws"), cands, st.lists(draw_st, min_size=1, max_size=2)),
        st.tuples(st.just("rank"), groups, policy, weights_st),
        st.tuples(st.just("rank"), groups, policy, weights_st),
    )
    return n, draw(st.lists(op, min_size=1, max_size=80))


config_st = st.fixed_dictionaries({}, optional={
    "decay_s": st.floats(min_value=1e-3, max_value=100.0),
    "default_rtt_us": st.floats(min_value=0.0, max_value=1e7),
    "error_decay_s": st.floats(min_value=1e-3, max_value=100.0)})


def apply(table, op, now):
    """Runs one operation; returns (outcome, now after it, rnd calls made)."""
    kind, args = op[0], op[1:]
    if kind == "record":
        i, dt, rtt, ttft, failed = args
        now = now + dt
        return outcome(table.record, i, now, rtt, ttft, failed), now, None
    if kind == "pick":
        rnd = Recorder(seed=args[1])
        return outcome(table.pick, args[0], rnd), now, rnd.calls
    if kind == "pick_draws":
        rnd = Recorder(draws=args[1])
        return outcome(table.pick, args[0], rnd), now, rnd.calls
    return outcome(getattr(table, kind), *args), now, None


# === the twins agree ===

def test_selection_matches_environment():
    expected = scoring_py if _fastpath.NO_EXTENSIONS else scoring
    assert _fastpath.EndpointTable is expected.EndpointTable
    for name in scoring_py.__all__:
        if name != "EndpointTable":
            assert getattr(_fastpath, name) is getattr(expected, name)


@pytest.mark.parametrize("impl", IMPLS)
def test_constants_are_plain_ints(impl):
    for name in scoring_py.__all__:
        if name.startswith(("EP_", "POLICY_")):
            value = getattr(impl, name)
            assert type(value) is int and value == getattr(scoring_py, name)
    assert impl.__all__ == scoring_py.__all__


@pytest.mark.compiled
@pytest.mark.skipif(_fastpath.NO_EXTENSIONS, reason="compiled twin not built")
@settings(max_examples=300, deadline=None)
@given(config=config_st, scenario=scenarios())
@example(config={}, scenario=(3, [("record", 0, 1.0, 500.0, -1.0, False),
                                  ("record", 0, 1.0, 100.0, 50.0, True),
                                  ("pick", [0, 1, 2], 1),
                                  ("rank", [[0], [1, 2]], 2, (1, 1, 1, 1))]))
@example(config={}, scenario=(2, [("set_state", 1, 3), ("start", 1), ("pick", [0, 1], 0),
                                  ("pick_draws", [0, 1, 1, 0], [-1e300]),
                                  ("pick_draws", [0, 1, 0], [NAN])]))
@example(config={}, scenario=(0, [("pick", [], 0), ("rank", [], 2, (1, 1, 1, 1)),
                                  ("start", 0), ("add", 1.0, 0.0, 0.5), ("pick", [0], 0)]))
@example(config={}, scenario=(3, [("record", 0, NAN, 10.0, INF, False),
                                  ("record", 0, 1.0, 5.0, 2.0, False),
                                  ("rank", [[0], [1], [2]], 0, (0, 0, 0, 0))]))
def test_c_matches_py(config, scenario):
    n, ops = scenario
    tables = [make(impl, n, config) for impl in (scoring, scoring_py)]
    now = [0.0, 0.0]
    for op in ops:
        got = []
        for k, table in enumerate(tables):
            result, now[k], calls = apply(table, op, now[k])
            got.append((result, canon(calls)))
        assert got[0] == got[1], op
        assert snapshot(tables[0]) == snapshot(tables[1]), op


@pytest.mark.compiled
@pytest.mark.skipif(_fastpath.NO_EXTENSIONS, reason="compiled twin not built")
@settings(max_examples=60, deadline=None)
@given(n=st.integers(min_value=200, max_value=400), seed=st.integers(0, 2**32),
       ngroups=st.integers(min_value=33, max_value=90))
def test_c_matches_py_large(n, seed, ngroups):
    # Past the C stack buffers (pick: 256 rows; rank: 64 groups) and insertion sort (32).
    rng = random.Random(seed)
    tables = [make(impl, n) for impl in (scoring, scoring_py)]
    for step in range(3 * n):
        i, rtt, failed = rng.randrange(n), rng.uniform(10, 1e5), rng.random() < 0.1
        state = rng.choice(STATES) if rng.random() < 0.05 else None
        finished = rng.random() < 0.9
        for table in tables:
            table.start(i)
            if state is not None:
                table.set_state(i, state)
            if finished:
                table.record(i, step * 0.05, rtt, rtt / 3, failed)
    cands = [rng.randrange(n) for _ in range(rng.randrange(n, 2 * n))]
    groups = [rng.sample(range(n), rng.randrange(1, 4)) for _ in range(ngroups)]
    weights = tuple(rng.uniform(0, 2) for _ in range(4))
    for table_c, table_py in [tables]:
        for s in range(5):
            assert table_c.pick(cands, Recorder(s)) == table_py.pick(cands, Recorder(s))
            assert table_c.pick(tuple(cands), Recorder(s)) == table_py.pick(cands, Recorder(s))
        for policy in POLICIES:
            assert table_c.rank(groups, policy, weights) == table_py.rank(groups, policy, weights)
        assert snapshot(table_c) == snapshot(table_py)


BAD_CALLS = [
    ("init", {"decay_s": 0.0}), ("init", {"decay_s": NAN}), ("init", {"default_rtt_us": -1.0}),
    ("init", {"error_decay_s": INF}), ("init", {"decay_s": "fast"}), ("init", {"decay_s": None}),
    ("add", (0.0,)), ("add", (-1.0,)), ("add", (NAN,)), ("add", (1.0, -0.5)),
    ("add", (1.0, INF)), ("add", (1.0, 0.0, 1.5)), ("add", (1.0, 0.0, NAN)), ("add", ("x",)),
    ("start", (3,)), ("start", (-1,)), ("start", (2**64,)), ("start", (1.0,)), ("start", ("0",)),
    ("start", (None,)), ("cancel", (7,)), ("state", (-1,)), ("available", (9,)),
    ("load", (3,)), ("stats", (1.5,)), ("stats", (NAN,)),
    ("record", (5, 0.0, 1.0, 1.0, False)), ("record", (0, 0.0, -1.0, 1.0, False)),
    ("record", (0, 0.0, NAN, 1.0, False)), ("record", (0, 0.0, INF, 1.0, False)),
    ("record", (1.0, 0.0, -1.0, 1.0, False)), ("record", (1.0, 0.0, 5.0, 1.0, False)),
    ("record", (0, 0.0, 5.0, None, False)), ("record", (0, 0.0, 5.0, "1", False)),
    ("set_state", (0, 4)), ("set_state", (0, -1)), ("set_state", (0, None)),
    ("set_state", (9, 0)), ("set_state", (1.0, 9)), ("set_state", (1.0, 0)),
    ("pick", ([0, 3], random.random)), ("pick", ([0, -1], random.random)),
    ("pick", ([0, 1.0], random.random)), ("pick", ([0, "a"], random.random)),
    ("pick", ([0, 1], lambda: NAN)), ("pick", ([0, 1], lambda: INF)),
    ("pick", ([0, 1], lambda: -5.0)), ("pick", ([0, 1], lambda: -1e300)),
    ("pick", (None, random.random)), ("pick", (5, random.random)),
    ("rank", ([[0]], 3)), ("rank", ([[0]], -1)), ("rank", ([[0]], None)),
    ("rank", ([[0]], 0, (1.0, 1.0))), ("rank", ([[0]], 0, (1, 1, 1, 1, 1))),
    ("rank", ([[0]], 2, (0, 0, -1, 0))), ("rank", ([[0]], 2, (0, NAN, 0, 0))),
    ("rank", lambda: ([[0]], 2, (x for x in (0, 0, 0, 0)))), ("rank", ([[0], []], 0)),
    ("rank", ([[0], [2]], 0)), ("rank", ([[0], [1.0]], 0)), ("rank", ([[0], {1}], 0)),
    ("rank", lambda: ([[0], iter([1])], 0)), ("rank", ([0], 0)), ("rank", ([1], 0)),
    ("rank", (None, 0)), ("rank", ([[0], [1]], 0, None)),
]


@pytest.mark.compiled
@pytest.mark.skipif(_fastpath.NO_EXTENSIONS, reason="compiled twin not built")
@pytest.mark.parametrize("name, args", BAD_CALLS, ids=[str(i) for i in range(len(BAD_CALLS))])
def test_c_and_py_reject_alike(name, args):
    results = []
    make_args = args if callable(args) else lambda: args     # fresh iterators for each
    for impl in (scoring, scoring_py):
        args = make_args()
        if name == "init":
            results.append((outcome(lambda: impl.EndpointTable(**args)), None))
            continue
        table = make(impl, 2)
        table.record(0, 1.0, 100.0, 10.0, False)
        results.append((outcome(getattr(table, name), *args), snapshot(table)))
    assert results[0] == results[1]
    assert results[1][0][0] == "raised"


@pytest.mark.compiled
@pytest.mark.skipif(_fastpath.NO_EXTENSIONS, reason="compiled twin not built")
def test_c_and_py_fail_half_way_alike():
    # record() raising after it changed part of a row leaves the same part changed in both
    # (its `failed` is read after the latency and the sample time were stored).
    class Ambiguous:
        def __bool__(self):
            raise ValueError("truth value is ambiguous")

    results = []
    for impl in (scoring, scoring_py):
        table = make(impl, 1)
        table.start(0)
        table.record(0, 1.0, 100.0, 10.0, True)
        results.append(outcome(table.record, 0, 5.0, 50.0, 20.0, Ambiguous()))
        results.append(snapshot(table))
        table.record(0, 9.0, 70.0, -1.0, False)
        results.append(snapshot(table))
    assert results[:3] == results[3:]
    assert results[0] == ("raised", "ValueError", "truth value is ambiguous")


@pytest.mark.compiled
@pytest.mark.skipif(_fastpath.NO_EXTENSIONS, reason="compiled twin not built")
def test_c_survives_python_code_in_the_loop():
    # Indexes whose comparisons empty or grow the list being read, and an rnd that grows the
    # table (reallocating every array) under pick() and rank(): the same answers and errors
    # as the twin's, and no crash.
    class Shrinking(int):
        def __lt__(self, other):
            victim.clear()
            return int(self) < other

    class Growing(int):
        def __lt__(self, other):
            if len(victim) < 50:
                victim.extend([[1], [2]] * 40 if isinstance(victim[0], list) else [1, 2] * 200)
            return int(self) < other

    results = []
    for impl in (scoring, scoring_py):
        table = make(impl, 4)
        for case in ([[0], [Shrinking(1)], [2]], [[0], [Growing(1)], [2]]):
            victim = case
            results.append(outcome(table.rank, case, 1))
        for case in ([Shrinking(2), 1], [1, Shrinking(2)], [Growing(2), 1]):
            victim = case
            results.append(outcome(table.rank, [[0], case], 0))
        for case in ([0, Shrinking(1), 2, 3], [0, Growing(1), 2], [3, Shrinking(1)]):
            victim = case
            results.append(outcome(table.pick, case, Recorder(1)))

        def growing():
            for _ in range(100):
                table.add()
            return 0.5

        results.append(outcome(table.pick, [0, 1, 2, 3], growing))
        results.append(snapshot(table))
    half = len(results) // 2
    assert results[:half] == results[half:]


@pytest.mark.parametrize("impl", IMPLS)
def test_generic_iterables(impl):
    table = make(impl, 4)
    table.record(2, 1.0, 10.0, -1.0, False)
    rnd = Recorder(3)
    assert table.pick(iter([0, 1, 2, 3]), rnd) == table.pick([0, 1, 2, 3], Recorder(3))
    assert table.pick(range(4), Recorder(3)) == table.pick((0, 1, 2, 3), Recorder(3))
    assert table.pick((i for i in ()), rnd) == -1
    assert table.rank(iter([range(2), (3,), [2]]), 1) == table.rank([[0, 1], [3], [2]], 1)
    table.set_state(3, impl.EP_EJECTED)
    assert table.rank([[0], {3}], 0) == [0, 1]     # a dead set group is never re-read
    assert table.pick([True, 0], Recorder(0)) in (0, 1)


# === properties, on both ===

@st.composite
def populated(draw, impl, min_rows=1):
    n = draw(st.integers(min_value=min_rows, max_value=12))
    table = impl.EndpointTable()
    for k in range(n):
        table.add(weight=draw(st.floats(min_value=0.1, max_value=4.0)))
        for _ in range(draw(st.integers(0, 3))):
            table.start(k)
        if draw(st.booleans()):
            table.record(k, draw(st.floats(0.0, 50.0)), draw(st.floats(1.0, 1e6)), -1.0, False)
        table.set_state(k, draw(st.sampled_from(STATES)))
    return table


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=200, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32))
def test_pick_only_available_and_minus_one_only_when_none(impl, data, seed):
    table = data.draw(populated(impl))
    n = len(table)
    cands = data.draw(st.lists(st.integers(0, n - 1), max_size=16))
    rnd = Recorder(seed)
    got = table.pick(cands, rnd)
    usable = [i for i in cands if table.available(i)]
    for i in range(n):    # the rule itself: healthy, or half-open with nothing in flight
        state, inflight = table.state(i), table.stats(i)["inflight"]
        assert table.available(i) == (state == impl.EP_HEALTHY
                                      or (state == impl.EP_HALF_OPEN and inflight == 0))
    if not usable:
        assert got == -1 and rnd.calls == []
    else:
        assert got in usable
        assert table.state(got) not in (impl.EP_EJECTED, impl.EP_OPEN)
        assert len(rnd.calls) == (2 if len(usable) >= 2 else 0)


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=200, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32),
       draws=st.one_of(st.none(), st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1,
                                            max_size=2)))
@example(data=None, seed=0, draws=[0.0])
@example(data=None, seed=0, draws=[0.9999999999999999])
def test_pick_draws_two_distinct_and_prefers_lower_load(impl, data, seed, draws):
    if data is None:
        table, cands = make(impl, 5), [0, 1, 2, 3, 4]
        table.start(2)
    else:
        table = data.draw(populated(impl, min_rows=2))
        cands = data.draw(st.lists(st.integers(0, len(table) - 1), min_size=2, max_size=16))
    usable = [i for i in cands if table.available(i)]
    rnd = Recorder(seed, draws)
    got = table.pick(cands, rnd)
    if len(usable) < 2:
        return
    n = len(usable)
    assert len(rnd.calls) == 2
    # linkerd's gen_pair over positions in `usable`, as documented in STYLE.md.
    a = min(int(rnd.calls[0] * n), n - 1)
    b = min(int(rnd.calls[1] * (n - 1)), n - 2)
    b += b >= a
    assert a != b and 0 <= a < n and 0 <= b < n
    assert got == (usable[b] if table.load(usable[b]) < table.load(usable[a]) else usable[a])
    # Black-box consequences: the strictly most loaded is never chosen, and with two
    # available endpoints of different loads the lower one always is (whatever rnd says).
    loads = [table.load(i) for i in usable]
    if loads.count(max(loads)) == 1:
        assert table.load(got) < max(loads)
    if n == 2 and loads[0] != loads[1]:
        assert table.load(got) == min(loads)


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=200, deadline=None)
@given(base=st.floats(1.0, 1e6), slow=st.floats(1.0, 1e3), fast=st.floats(0.0, 0.99),
       gaps=st.lists(st.floats(0.01, 30.0), min_size=1, max_size=10))
def test_peak_ewma_jumps_up_and_decays_down(impl, base, slow, fast, gaps):
    table = impl.EndpointTable(decay_s=5.0, default_rtt_us=base)
    i = table.add()
    table.record(i, 0.0, base, -1.0, False)
    assert table.stats(i)["rtt_us"] == base                 # first sample: taken as is
    peak = base * (1.0 + slow)
    table.record(i, 0.0, peak, -1.0, False)
    assert table.stats(i)["rtt_us"] == peak                 # slower: jumps up at once
    low, now, last = base * fast, 0.0, peak
    for gap in gaps:
        now += gap
        table.record(i, now, low, -1.0, False)
        rtt = table.stats(i)["rtt_us"]
        # Decays toward the faster sample (w * rtt + (1 - w) * low may round an ulp below
        # it, and the next blend back up to it).
        assert low - abs(low) * 1e-15 <= rtt <= max(last, low)
        assert rtt < last or math.isclose(last, low, rel_tol=1e-12)
        last = rtt
    # More elapsed time, more decay: a lone gap of 2 s against one of 20 s.
    rtts = []
    for gap in (2.0, 20.0):
        other = impl.EndpointTable(decay_s=5.0)
        j = other.add()
        other.record(j, 0.0, peak, -1.0, False)
        other.record(j, gap, low, -1.0, False)
        rtts.append(other.stats(j)["rtt_us"])
    assert low < rtts[1] < rtts[0] < peak
    # No time passed, nothing decays; time running backwards counts as none.
    same = impl.EndpointTable()
    j = same.add()
    same.record(j, 10.0, peak, -1.0, False)
    same.record(j, 10.0, low, -1.0, False)
    same.record(j, 3.0, low, -1.0, False)
    assert same.stats(j)["rtt_us"] == peak


@pytest.mark.parametrize("impl", IMPLS)
def test_record_counters(impl):
    table = impl.EndpointTable(error_decay_s=10.0)
    i = table.add()
    table.start(i)
    table.start(i)
    table.record(i, 1.0, 100.0, 20.0, True)
    table.record(i, 2.0, 100.0, -1.0, True)
    stats = table.stats(i)
    assert stats["inflight"] == 0 and stats["consecutive_failures"] == 2
    assert stats["error_rate"] == 1.0 and stats["ttft_us"] == 20.0
    table.record(i, 12.0, 100.0, -1.0, False)
    assert table.stats(i)["consecutive_failures"] == 0
    assert table.stats(i)["error_rate"] == pytest.approx(math.exp(-1.0))
    table.cancel(i)
    assert table.stats(i)["inflight"] == 0                  # never below zero


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=200, deadline=None)
@given(data=st.data(), weights=st.tuples(*[st.floats(0.0, 5.0)] * 4))
def test_rank_dead_last_and_cost_cheapest_first(impl, data, weights):
    n = data.draw(st.integers(1, 10))
    table = impl.EndpointTable()
    for k in range(n):
        table.add(price=data.draw(st.sampled_from([0.0, 1.0, 2.5, 10.0])),
                  quality=data.draw(st.floats(0.0, 1.0)))
        if data.draw(st.booleans()):
            table.record(k, 1.0, data.draw(st.floats(1.0, 1e5)), -1.0, False)
        table.set_state(k, data.draw(st.sampled_from(STATES)))
    groups = data.draw(st.lists(st.lists(st.integers(0, n - 1), min_size=1, max_size=3),
                                max_size=8))
    live = [g for g, rows in enumerate(groups) if any(table.available(i) for i in rows)]
    dead = [g for g in range(len(groups)) if g not in live]
    for policy in POLICIES:
        order = table.rank(groups, policy, weights)
        assert sorted(order) == list(range(len(groups)))
        assert order[len(live):] == dead                    # dead last, in the given order
        assert sorted(order[:len(live)]) == live
    order = table.rank(groups, impl.POLICY_COST)
    prices = [table.stats(groups[g][0])["price"] for g in order[:len(live)]]
    assert prices == sorted(prices)                         # cheapest available first
    order = table.rank(groups, impl.POLICY_LATENCY)
    best = [min(table.load(i) for i in groups[g] if table.available(i))
            for g in order[:len(live)]]
    assert best == sorted(best)


@pytest.mark.parametrize("impl", IMPLS)
def test_rank_score_weights(impl):
    table = impl.EndpointTable(default_rtt_us=1000.0)
    cheap = table.add(price=1.0, quality=0.2)
    good = table.add(price=9.0, quality=0.9)
    table.record(cheap, 1.0, 900.0, -1.0, False)
    table.record(good, 1.0, 100.0, -1.0, False)
    groups = [[cheap], [good]]
    assert table.rank(groups, impl.POLICY_SCORE, (1.0, 0.0, 0.0, 0.0)) == [0, 1]
    assert table.rank(groups, impl.POLICY_SCORE, (0.0, 0.0, 1.0, 0.0)) == [1, 0]
    assert table.rank(groups, impl.POLICY_SCORE, (0.0, 1.0, 0.0, 0.0)) == [1, 0]
    assert table.rank(groups, impl.POLICY_SCORE) == [0, 1]          # all ties: given order
    table.set_state(good, impl.EP_OPEN)
    assert table.rank(groups, impl.POLICY_SCORE, (0.0, 0.0, 1.0, 0.0)) == [0, 1]


@pytest.mark.parametrize("impl", IMPLS)
def test_half_open_admits_one(impl):
    table = make(impl, 2)
    table.set_state(1, impl.EP_HALF_OPEN)
    table.set_state(0, impl.EP_EJECTED)
    assert table.pick([0, 1], Recorder()) == 1
    table.start(1)
    assert table.pick([0, 1], Recorder()) == -1
    table.record(1, 1.0, 10.0, -1.0, False)
    assert table.pick([1], Recorder()) == 1
