"""replace_model: the top-level model changes, nothing else does, whatever the body holds."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.rewrite import replace_model

TEXT = st.text(alphabet=st.sampled_from(list('ab"\\/:{} \n\u00e9\u2028model')), max_size=12)
VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.integers(2**64, 2**70), TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(TEXT, st.just("model")), inner,
                                            max_size=3)),
    max_leaves=10)


@settings(max_examples=1000, deadline=None)
@given(model=TEXT, new=TEXT, rest=st.dictionaries(TEXT.filter(lambda k: k != "model"), VALUES,
                                                  max_size=4),
       first=st.booleans(), indent=st.booleans(), ascii=st.booleans())
def test_only_the_top_level_model_changes(model, new, rest, first, indent, ascii):
    doc = {"model": model, **rest} if first else {**rest, "model": model}
    body = json.dumps(doc, indent=2 if indent else None, ensure_ascii=ascii).encode()
    out = replace_model(body, new, model)
    # Python's decoder: it keeps integers beyond 64 bits exact, as the in-place rewrite does.
    assert json.loads(out) == {**doc, "model": new}


def test_the_other_bytes_stay_as_the_client_sent_them():
    body = b'{"messages": [{"role": "user", "content": "hi \\"there\\""}],  "model" :  "auto" ,' \
           b' "temperature": 0.50}'
    assert replace_model(body, "gpt-x", "auto") == body.replace(b'"auto"', b'"gpt-x"')


def test_an_escaped_top_level_key_is_not_mistaken_for_a_nested_one():
    body = b'{"\\u006dodel": "auto", "tools": [{"model": "keep-me"}]}'
    out = json.loads(replace_model(body, "gpt-x", "auto"))
    assert out == {"model": "gpt-x", "tools": [{"model": "keep-me"}]}
