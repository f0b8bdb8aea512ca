"""ask_for_usage and take_usage on raw bodies and SSE events."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.accounting import ask_for_usage, take_usage

OPTIONS = st.one_of(st.none(), st.just({}), st.just({"include_usage": False}),
                    st.just({"include_usage": True}), st.just({"other": 1}))


@settings(max_examples=300, deadline=None)
@given(options=OPTIONS, spaces=st.sampled_from(["", " ", "\n  "]), indent=st.booleans(),
       content=st.text(max_size=20))
def test_ask_for_usage_sets_include_usage_and_keeps_the_rest(options, spaces, indent, content):
    doc = {"model": "m", "stream": True, "messages": [{"role": "user", "content": content}],
           "seed": 2**65}
    if options is not None:
        doc["stream_options"] = options
    body = (spaces + json.dumps(doc, indent=2 if indent else None)).encode()
    out = ask_for_usage(body)
    if options is not None and options.get("include_usage") is True:
        assert out is None   # the client asked already: nothing to strip later
        return
    assert json.loads(out) == {**doc, "stream_options": {**(options or {}),
                                                            "include_usage": True}}


def test_take_usage_strips_only_the_usage_event_when_asked():
    events = (b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
              b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
              b'data: [DONE]\n\n')
    kept, usage = take_usage(events, strip=True)
    assert (usage.prompt_tokens, usage.completion_tokens) == (3, 2)
    assert kept == events.replace(
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n', b"")
    same, usage = take_usage(events, strip=False)
    assert same == events and usage.completion_tokens == 2
