"""The compiled cache key against its pure-Python twin, and the properties both keep.

The central property is checked with a decoder written here from the format description in
``cachekey_py``: every canonical form decodes back to exactly the request it came from (minus
the ignored top-level fields), types included. So two requests that differ in anything
cannot share a canonical form, and sharing a key would take an XXH3-128 collision.
"""

import collections
import copy
import enum
import json
import math
import random
import struct
import tracemalloc

import orjson
import pytest
import xxhash
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import _fastpath
from _fastpath import cachekey_py

IMPLS = [pytest.param(cachekey_py, id="py")]
if not _fastpath.NO_EXTENSIONS:
    from _fastpath import cachekey

    IMPLS.append(pytest.param(cachekey, id="c", marks=pytest.mark.compiled))

needs_compiled = pytest.mark.skipif(_fastpath.NO_EXTENSIONS, reason="compiled twin not built")

IGNORED = sorted(cachekey_py.IGNORED_FIELDS)
MAX_DEPTH = cachekey_py.MAX_DEPTH
# Generated requests are larger than Hypothesis likes by default.
SETTINGS = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                    deadline=None)

# === Strategies =============================================================================

# Characters at every UTF-8 length boundary, surrogates included, and varied ASCII, repeated
# into runs long enough to reach the compiled twin's 16-unit block path in each string kind.
ASCII = "".join(map(chr, range(128)))
PIECES = ["a", " ", "\x00", "\x7f", "\x80", "é", "ÿ", "\u0100", "\u07ff", "\u0800", "€",
          "\ud7ff", "\ud800", "\udbff", "\udc00", "\udfff", "\ue000", "\uffff", "\U00010000",
          "😀", "\U0010ffff", ASCII[:37], ASCII[37:]]
runs_st = st.lists(st.tuples(st.sampled_from(PIECES), st.integers(1, 40)), max_size=6).map(
    lambda runs: "".join(piece * n for piece, n in runs))
text_st = st.one_of(st.text(st.characters(exclude_categories=()), max_size=24), runs_st)
FIELDS = ["model", "messages", "role", "content", "name", "tools", "tool_choice", "n", "seed",
          "temperature", "top_p", "max_tokens", "stop", "logit_bias", *IGNORED]
key_st = st.one_of(st.sampled_from(FIELDS), text_st)
INT_EDGES = [0, 1, -1, 127, 128, -128, -129, 255, 256, 2**31, 2**63 - 1, 2**63, 2**64 - 1,
             2**64, -(2**63), -(2**63) - 1, -(2**64), 10**40, -(10**40)]
int_st = st.one_of(st.integers(), st.integers(-(2**66), 2**66), st.sampled_from(INT_EDGES))
float_st = st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                     st.sampled_from([0.0, -0.0, 1.0, 0.5, 5e-324, 1.7976931348623157e308]))
scalar_st = st.one_of(st.none(), st.booleans(), int_st, float_st, text_st)
json_st = st.recursive(
    scalar_st,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(key_st, children, max_size=5),
        # More entries than the compiled twin sorts on the stack: the merge-sort path.
        st.dictionaries(key_st, scalar_st, min_size=17, max_size=40),
    ),
    max_leaves=25,
)


@st.composite
def deep_st(draw):
    """A chain of up to MAX_DEPTH containers, the request being the first."""
    value = draw(scalar_st)
    for _ in range(draw(st.integers(0, MAX_DEPTH - 1))):
        value = [value] if draw(st.booleans()) else {draw(key_st): value}
    return value if type(value) is dict else {"deep": value}


request_st = st.one_of(st.dictionaries(key_st, json_st, max_size=8), deep_st())

# Values outside the JSON data model, for the error tests.
BAD_VALUES = [set(), frozenset(), b"x", bytearray(b"x"), (), (1,), object(), 1j,
              float("nan"), float("inf"), -float("inf"), collections.OrderedDict(),
              collections.UserDict(), collections.UserList(), range(2)]
bad_json_st = st.recursive(
    st.one_of(scalar_st, st.sampled_from(BAD_VALUES)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.one_of(key_st, st.integers()), children,
                                               max_size=4)),
    max_leaves=12,
)


# === Helpers ================================================================================

def strip(request: dict) -> dict:
    return {k: v for k, v in request.items() if k not in cachekey_py.IGNORED_FIELDS}


def same(a, b) -> bool:
    """Equal as JSON values *and* types: 1, 1.0 and True differ, so do 0.0 and -0.0."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is float:
        return struct.pack("<d", a) == struct.pack("<d", b)
    return a == b


def uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode(data: bytes):
    """(route, request) back from canonical() bytes, checking the form is the canonical one
    (minimal lengths, sorted keys, no trailing bytes)."""
    pos = 0

    def take(n):
        nonlocal pos
        assert pos + n <= len(data), "truncated"
        chunk = data[pos:pos + n]
        pos += n
        return chunk

    def length():
        shift = n = 0
        while True:
            b = take(1)[0]
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                assert b or shift == 7, "non-minimal uvarint"
                return n

    def utf8():
        return take(length()).decode("utf-8", "surrogatepass")

    def value():
        tag = take(1)
        if tag == b"N":
            return None
        if tag == b"T":
            return True
        if tag == b"F":
            return False
        if tag == b"i":
            return int.from_bytes(take(8), "little", signed=True)
        if tag == b"I":
            raw = take(length())
            n = int.from_bytes(raw, "little", signed=True)
            assert not -(2**63) <= n < 2**63 and len(raw) == (n.bit_length() + 8) // 8
            return n
        if tag == b"f":
            (f,) = struct.unpack("<d", take(8))
            assert math.isfinite(f)
            return f
        if tag == b"s":
            return utf8()
        if tag == b"[":
            return [value() for _ in range(length())]
        if tag == b"{":
            obj, last = {}, None
            for _ in range(length()):
                raw = take(length())
                assert last is None or raw > last, "keys not sorted by UTF-8 bytes"
                last = raw
                obj[raw.decode("utf-8", "surrogatepass")] = value()
            return obj
        raise AssertionError("unknown tag %r" % tag)

    assert take(1)[0] == cachekey_py.FORMAT_VERSION
    route, request = value(), value()
    assert type(route) is str and type(request) is dict
    assert pos == len(data), "trailing bytes"
    return route, request


def shuffled(value, rnd: random.Random):
    """The same JSON value with every object's keys in a new order."""
    if type(value) is dict:
        items = [(k, shuffled(v, rnd)) for k, v in value.items()]
        rnd.shuffle(items)
        return dict(items)
    if type(value) is list:
        return [shuffled(v, rnd) for v in value]
    return value


def paths(value, prefix=()):
    """Every position in a JSON value, as a tuple of keys and indices."""
    yield prefix
    if type(value) is dict:
        for k, v in value.items():
            yield from paths(v, prefix + (k,))
    elif type(value) is list:
        for i, v in enumerate(value):
            yield from paths(v, prefix + (i,))


def nest(levels: int, leaf=1, kind=list):
    """A request of ``levels`` containers: the request dict plus levels - 1 more."""
    value = leaf
    for _ in range(levels - 1):
        value = [value] if kind is list else {"k": value}
    return {"deep": value} if levels > 1 else {"leaf": leaf}


def outcome(fn, *args):
    try:
        return "ok", fn(*args)
    except (TypeError, ValueError) as exc:
        return type(exc), str(exc)


# === Compiled against Python ================================================================

def test_ignored_fields():
    assert cachekey_py.IGNORED_FIELDS == {"stream", "stream_options", "user", "metadata",
                                          "store"}


@pytest.mark.compiled
@needs_compiled
@pytest.mark.parametrize("name", ["FORMAT_VERSION", "IGNORED_FIELDS", "MAX_DEPTH"])
def test_constants_match(name):
    assert getattr(cachekey, name) == getattr(cachekey_py, name)


def test_selection_matches_environment():
    # Guards the "all or nothing" rule: the package exports one implementation.
    expected = cachekey_py if _fastpath.NO_EXTENSIONS else cachekey
    assert _fastpath.cache_key is expected.cache_key
    assert _fastpath.canonical is expected.canonical


@pytest.mark.compiled
@needs_compiled
@given(request=request_st, route=text_st, namespace=text_st)
@example(request={"a": "x" * 8186, "b": "é"}, route="r", namespace="")
@example(request={"messages": [{"role": "user", "content": "\ud83d\ude00 😀"}]}, route="",
         namespace="t")
@SETTINGS
def test_c_matches_py(request, route, namespace):
    assert cachekey.canonical(route, request) == cachekey_py.canonical(route, request)
    assert (cachekey.cache_key(route, request, namespace)
            == cachekey_py.cache_key(route, request, namespace))


@pytest.mark.compiled
@needs_compiled
@pytest.mark.parametrize("piece", PIECES + ["éa", "a€", "😀a"])
def test_c_matches_py_on_boundaries(piece):
    # Strings across the stack buffer's end (8192 bytes), uvarint widths (127/128 and
    # 16383/16384 bytes) and the 16-unit ASCII blocks, in every string kind.
    for count in (1, 2, 15, 16, 17, 42, 63, 64, 65, 127, 128, 5000, 8193, 20000):
        # Short strings at every offset up to the stack buffer's end; the rest at a few.
        fillers = range(8150, 8200) if count <= 2 else (0, 8100, 8185)
        for filler in fillers:
            ascii_run = (ASCII * (count // 128 + 1))[:count]
            for text in (piece * count, ascii_run + piece, piece + ascii_run):
                request = {"a": "x" * filler, "b": text, "c": [text, {"k": text}]}
                assert cachekey.canonical("r", request) == cachekey_py.canonical("r", request)


BAD_CALLS = [
    ("r", [], ""), ("r", None, ""), ("r", "{}", ""), (b"r", {}, ""), (None, {}, ""),
    ("r", {}, None), ("r", {}, b"t"), ("r", collections.OrderedDict(), ""),
    ("r", {"a": {1, 2}}, ""), ("r", {"a": b"x"}, ""), ("r", {"a": (1,)}, ""),
    ("r", {"a": object()}, ""), ("r", {"a": [1, 2, 3j]}, ""),
    ("r", {1: "a"}, ""), ("r", {"a": {None: 1}}, ""), ("r", {"a": {(1,): 1}}, ""),
    ("r", {"a": float("nan")}, ""), ("r", {"a": [float("inf")]}, ""),
    ("r", {"a": {"b": -float("inf")}}, ""),
    ("r", nest(MAX_DEPTH + 1), ""), ("r", nest(MAX_DEPTH + 1, kind=dict), ""),
    ("r", nest(MAX_DEPTH + 40, leaf={1}), ""),
    # Subclasses are refused alike, whatever they override.
    ("r", {"a": collections.OrderedDict()}, ""), ("r", {"a": collections.UserList()}, ""),
    ("r", {"a": enum.IntEnum("E", "X").X}, ""), ("r", {"a": type("S", (str,), {})("x")}, ""),
    ("r", {"a": type("F", (float,), {})(1.0)}, ""), ("r", {"a": type("L", (list,), {})()}, ""),
    (type("S", (str,), {})("r"), {}, ""),
    # Several faults: the first in walk order wins, in both (keys of an object are all
    # checked before its values; values go in sorted key order).
    ("r", {"b": {1}, "a": float("nan")}, ""), ("r", {"a": {1}, "b": float("nan")}, ""),
    ("r", {"z": 1, 2: {1}, "a": float("nan")}, ""),
    ("r", {"b": [float("nan")], "a": nest(MAX_DEPTH, leaf={1})}, ""),
]


@pytest.mark.compiled
@needs_compiled
@pytest.mark.parametrize("args", BAD_CALLS, ids=range(len(BAD_CALLS)))
def test_c_and_py_reject_alike(args):
    route, request, namespace = args
    c = (outcome(cachekey.cache_key, route, request, namespace),
         outcome(cachekey.canonical, route, request))
    py = (outcome(cachekey_py.cache_key, route, request, namespace),
          outcome(cachekey_py.canonical, route, request))
    assert c == py
    assert c[0][0] in (TypeError, ValueError)


@pytest.mark.compiled
@needs_compiled
@given(request=st.dictionaries(st.one_of(key_st, st.integers()), bad_json_st, max_size=6))
@SETTINGS
def test_c_and_py_agree_on_bad_input(request):
    # Whatever the mix of faults, both twins give the same result or the same error.
    assert (outcome(cachekey.canonical, "r", request)
            == outcome(cachekey_py.canonical, "r", request))


@pytest.mark.compiled
@needs_compiled
def test_compiled_does_not_leak():
    # The heap spill of the buffer and of large objects' entries is freed on success and on
    # error alike.
    big = {"messages": [{"role": "user", "content": "é" * 3000 + "x" * i} for i in range(20)],
           "logit_bias": {str(i): i for i in range(100)}}
    bad = {"a": "x" * 10000, "m": {str(i): i for i in range(50)}, "z": [{"k": {1}}]}

    def run():
        for _ in range(200):
            cachekey.cache_key("r", big, "t")
            cachekey.canonical("r", big)
            assert outcome(cachekey.cache_key, "r", bad)[0] is TypeError

    run()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 20000, grown


# === Properties, both implementations =======================================================

@pytest.mark.parametrize("impl", IMPLS)
@given(request=request_st, route=text_st)
@example(request={"n": 1, "m": 1.0, "t": True, "s": "1", "z": None, "e": [], "o": {}},
         route="r")
@example(request={"big": [2**63, -(2**63) - 1, 2**64 - 1, 10**40]}, route="r")
@SETTINGS
def test_canonical_decodes_to_the_request(impl, request, route):
    # Injective: the canonical form determines route and request exactly, types included.
    got_route, got_request = decode(impl.canonical(route, request))
    assert got_route == route
    assert same(got_request, strip(request))


@pytest.mark.parametrize("impl", IMPLS)
@given(request=request_st, route=text_st, namespace=text_st)
@SETTINGS
def test_key_is_the_documented_digest(impl, request, route, namespace):
    ns = namespace.encode("utf-8", "surrogatepass")
    expected = xxhash.xxh3_128_digest(b"s" + uvarint(len(ns)) + ns
                                      + impl.canonical(route, request))
    key = impl.cache_key(route, request, namespace)
    assert key == expected and type(key) is bytes and len(key) == 16


@pytest.mark.parametrize("impl", IMPLS)
@given(request=request_st, rnd=st.randoms(use_true_random=False))
@SETTINGS
def test_key_ignores_key_order(impl, request, rnd):
    assert impl.cache_key("r", shuffled(request, rnd)) == impl.cache_key("r", request)


@pytest.mark.parametrize("impl", IMPLS)
@given(request=request_st, indent=st.one_of(st.none(), st.integers(0, 4), st.just("\t")),
       sort_keys=st.booleans(), ensure_ascii=st.booleans())
@SETTINGS
def test_key_ignores_json_whitespace(impl, request, indent, sort_keys, ensure_ascii):
    compact = json.dumps(request, separators=(",", ":"), ensure_ascii=ensure_ascii)
    spaced = json.dumps(request, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii)
    key = impl.cache_key("r", json.loads(spaced))
    assert key == impl.cache_key("r", json.loads(compact))
    if not ensure_ascii:
        # (With \u escapes, two surrogates in a row come back as one code point: JSON's
        # doing, not ours.)
        assert key == impl.cache_key("r", request)


chat_text_st = st.text(st.characters(codec="utf-8"), max_size=200)
chat_request_st = st.fixed_dictionaries(
    {"model": st.sampled_from(["gpt-4o", "gpt-4o-mini"]),
     "messages": st.lists(st.fixed_dictionaries(
         {"role": st.sampled_from(["system", "user", "assistant"]), "content": chat_text_st}),
         min_size=1, max_size=6)},
    optional={"temperature": st.floats(0, 2), "top_p": st.floats(0, 1),
              "max_tokens": st.integers(1, 4096), "seed": st.integers(-(2**63), 2**64 - 1),
              "stop": st.lists(chat_text_st, max_size=4),
              "logit_bias": st.dictionaries(st.integers(0, 100000).map(str),
                                            st.integers(-100, 100), max_size=20),
              "stream": st.booleans(), "user": chat_text_st},
)


@pytest.mark.parametrize("impl", IMPLS)
@given(request=chat_request_st)
@SETTINGS
def test_key_survives_orjson_round_trips(impl, request):
    # What the proxy does: orjson decodes the body, whatever its spacing.
    pretty = orjson.dumps(request, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    text = json.dumps(request, indent=3)
    assert (impl.cache_key("r", orjson.loads(pretty)) == impl.cache_key("r", orjson.loads(text))
            == impl.cache_key("r", request))


@pytest.mark.parametrize("impl", IMPLS)
@given(request=request_st,
       extra=st.fixed_dictionaries({}, optional={k: json_st for k in IGNORED}))
@SETTINGS
def test_ignored_fields_do_not_matter(impl, request, extra):
    changed = {**strip(request), **extra}
    assert impl.cache_key("r", changed) == impl.cache_key("r", request)
    assert impl.canonical("r", changed) == impl.canonical("r", strip(request))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("field", IGNORED)
def test_ignored_only_at_the_top_level(impl, field):
    base = {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}
    nested = copy.deepcopy(base)
    nested["messages"][0][field] = True
    nested["tools"][0][field] = {}
    keys = {impl.cache_key("r", base), impl.cache_key("r", nested),
            impl.cache_key("r", {**base, "x": {field: 1}})}
    assert len(keys) == 3
    # Ignored fields are not even looked at: a value no JSON decoder produces passes.
    assert impl.cache_key("r", {**base, field: {1, 2}}) == impl.cache_key("r", base)


@st.composite
def mutations(draw):
    """A request and a copy changed at one position (not an ignored top-level field)."""
    request = draw(request_st)
    changed = copy.deepcopy(request)
    where = [p for p in paths(changed) if not (p and p[0] in cachekey_py.IGNORED_FIELDS)]
    path = draw(st.sampled_from(where))
    parent, last = None, None
    node = changed
    for step in path:
        parent, last, node = node, step, node[step]
    op = draw(st.sampled_from(["replace", "add", "remove", "rename"]))
    if op == "add" and type(node) is dict:
        node[draw(key_st)] = draw(json_st)
    elif op == "add" and type(node) is list:
        node.insert(draw(st.integers(0, len(node))), draw(json_st))
    elif op == "remove" and type(node) in (dict, list) and node:
        del node[draw(st.sampled_from(list(node.keys()) if type(node) is dict
                                      else list(range(len(node)))))]
    elif op == "rename" and type(parent) is dict:
        parent[draw(key_st)] = parent.pop(last)
    elif parent is None:
        changed = {draw(key_st): draw(json_st)}
    else:
        parent[last] = draw(json_st)
    # A value added at the bottom of an already deep request may pass the depth limit, and
    # a request that raises has no key to compare.
    assume(depth(changed) <= MAX_DEPTH)
    return request, changed


def depth(value) -> int:
    """Containers on the deepest path (the request itself is 1)."""
    if type(value) is dict:
        return 1 + max(map(depth, value.values()), default=0)
    if type(value) is list:
        return 1 + max(map(depth, value), default=0)
    return 0


@pytest.mark.parametrize("impl", IMPLS)
@given(pair=mutations())
@example(pair=({"n": 1}, {"n": 1.0}))
@example(pair=({"n": 1}, {"n": True}))
@example(pair=({"t": 0.0}, {"t": -0.0}))
@example(pair=({"m": [{"role": "user"}]}, {"m": [{"role": "User"}]}))
@SETTINGS
def test_any_change_changes_the_key(impl, pair):
    request, changed = pair
    assume(not same(strip(request), strip(changed)))
    assert impl.cache_key("r", changed) != impl.cache_key("r", request)


@pytest.mark.parametrize("impl", IMPLS)
@given(request=request_st, a=st.tuples(text_st, text_st), b=st.tuples(text_st, text_st))
@SETTINGS
def test_namespace_and_route_separate_keys(impl, request, a, b):
    assume(a != b)
    assert impl.cache_key(a[0], request, a[1]) != impl.cache_key(b[0], request, b[1])


@pytest.mark.parametrize("impl", IMPLS)
def test_namespace_and_route_are_length_prefixed(impl):
    req = {"model": "m"}
    keys = [impl.cache_key("ab", req, ""), impl.cache_key("b", req, "a"),
            impl.cache_key("", req, "ab"), impl.cache_key("a", req, "b"),
            impl.cache_key("ab", req), impl.cache_key("r", req, "t")]
    assert keys[0] == keys[4]
    assert len(set(keys)) == len(keys) - 1


# Requests that a careless encoding (JSON text, concatenation, str() of numbers) would merge.
COLLISION_CASES = [
    {"x": "1"}, {"x": 1}, {"x": 1.0}, {"x": True}, {"x": "true"}, {"x": 0}, {"x": False},
    {"x": 0.0}, {"x": -0.0}, {"x": None}, {"x": "null"}, {"x": ""}, {}, {"x": []}, {"x": {}},
    {"x": [None]}, {"x": [[]]}, {"x": ["a", "b"]}, {"x": ["ab"]}, {"x": ["a", "b", ""]},
    {"x": {"a": "b"}}, {"x": {"ab": ""}}, {"x": [{"a": "b"}]}, {"a": "bx"}, {"ab": "x"},
    {"x": "a\x00"}, {"x": "a"}, {"x": "\ud83d\ude00"}, {"x": "😀"}, {"x": 2**63},
    {"x": -(2**63)}, {"x": 2**64 - 1}, {"x": -1}, {"x": 1e300}, {"x": [1, 2]}, {"x": [[1], [2]]},
    {"x": [[1, 2]]}, {"x": "[1,2]"}, {"x": {"a": None}}, {"x": {"a": []}},
    {"messages": [{"role": "user", "content": "hi"}]},
    {"messages": [{"role": "assistant", "content": "hi"}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
    {"messages": [{"role": "user", "content": "hi", "name": "a"}]},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": ""}]},
]


@pytest.mark.parametrize("impl", IMPLS)
def test_known_collisions_are_distinct(impl):
    keys = [impl.cache_key("r", req) for req in COLLISION_CASES]
    assert len(set(keys)) == len(keys)
    forms = [impl.canonical("r", req) for req in COLLISION_CASES]
    assert len(set(forms)) == len(forms)


GOLDEN_REQUEST = {"model": "m", "messages": [{"role": "user", "content": "hé"}],
                  "temperature": 0.5, "n": 1, "stop": None, "logprobs": True, "seed": -2,
                  "stream": True}
GOLDEN_CANONICAL = bytes.fromhex(
    "017304636861747b07086c6f6770726f627354086d657373616765735b017b0207636f6e74656e7473"
    "0368c3a904726f6c65730475736572056d6f64656c73016d016e690100000000000000047365656469"
    "feffffffffffffff0473746f704e0b74656d706572617475726566000000000000e03f")
GOLDEN_KEY = "819b98efeb8bb6374dc5071c79360557"


@pytest.mark.parametrize("impl", IMPLS)
def test_golden_vector(impl):
    # Keys are shared between instances and versions (Redis): if this fails, the format
    # changed, and FORMAT_VERSION must be bumped along with these values.
    assert impl.canonical("chat", GOLDEN_REQUEST) == GOLDEN_CANONICAL
    assert impl.cache_key("chat", GOLDEN_REQUEST, "tenant").hex() == GOLDEN_KEY


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", [list, dict])
def test_depth_limit(impl, kind):
    impl.cache_key("r", nest(MAX_DEPTH, kind=kind))
    for too_deep in (nest(MAX_DEPTH + 1, kind=kind), nest(MAX_DEPTH, leaf=[], kind=kind),
                     nest(MAX_DEPTH, leaf={}, kind=kind)):
        with pytest.raises(ValueError, match="nested deeper than %d levels" % MAX_DEPTH):
            impl.cache_key("r", too_deep)
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError):
        impl.cache_key("r", {"loop": cyclic})


@pytest.mark.parametrize("impl", IMPLS)
@given(request=request_st)
@SETTINGS
def test_request_is_left_alone(impl, request):
    before = copy.deepcopy(request)
    impl.cache_key("r", request, "t")
    impl.canonical("r", request)
    assert same(request, before)


@pytest.mark.parametrize("impl", IMPLS)
def test_rejects_what_json_cannot_carry(impl):
    with pytest.raises(TypeError, match="request must be a dict, not 'list'"):
        impl.cache_key("r", [])
    with pytest.raises(TypeError, match="route must be a str, not 'NoneType'"):
        impl.cache_key(None, {})
    with pytest.raises(TypeError, match="namespace must be a str, not 'bytes'"):
        impl.cache_key("r", {}, b"t")
    with pytest.raises(TypeError, match="unsupported type 'set'"):
        impl.cache_key("r", {"a": [{"b": {1}}]})
    with pytest.raises(TypeError, match="object key of unsupported type 'int'"):
        impl.cache_key("r", {"a": {1: "b"}})
    with pytest.raises(ValueError, match="non-finite float"):
        impl.cache_key("r", {"a": float("nan")})
