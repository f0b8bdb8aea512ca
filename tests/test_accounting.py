"""ask_for_usage and take_usage on raw bodies and SSE events."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.accounting import NotJson, ask_for_usage, has_usage, read_answer, take_usage

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


def _layout(doc, style: str) -> bytes:
    if style == "compact":
        return json.dumps(doc, separators=(",", ":")).encode()
    if style == "pretty":
        return json.dumps(doc, indent=2).encode()
    if style == "reordered":
        return json.dumps(dict(reversed(list(doc.items())))).encode()
    return json.dumps(doc).encode()


def _event(payload: bytes, newline: bytes) -> bytes:
    lines = payload.split(b"\n")
    return b"".join(b"data: " + line + newline for line in lines) + newline


STYLES = st.sampled_from(["compact", "spaced", "pretty", "reordered"])
NEWLINES = st.sampled_from([b"\n", b"\r\n"])


@settings(max_examples=300, deadline=None)
@given(style=STYLES, newline=NEWLINES, content=st.text(max_size=30), prompt=st.integers(0, 10**6),
       completion=st.integers(0, 10**6), strip=st.booleans())
def test_take_usage_finds_and_strips_usage_in_any_layout(style, newline, content, prompt,
                                                         completion, strip):
    usage = {"prompt_tokens": prompt, "completion_tokens": completion,
             "total_tokens": prompt + completion}
    chunk = _event(_layout({"id": "c", "choices": [{"index": 0, "delta": {"content": content}}],
                            "usage": None}, style), newline)
    final = _event(_layout({"id": "c", "choices": [], "usage": usage}, style), newline)
    done = b"data: [DONE]" + newline + newline
    data = chunk + final + done
    kept, found = take_usage(data, strip)
    assert (found.prompt_tokens, found.completion_tokens) == (prompt, completion)
    assert kept == (chunk + done if strip else data)


@given(style=STYLES, content=st.text(max_size=30))
def test_usage_null_and_usage_inside_strings_are_not_usage(style, content):
    doc = {"choices": [{"delta": {"content": '"usage": {"prompt_tokens": 1} ' + content}}],
           "usage": None}
    data = _event(_layout(doc, style), b"\n")
    assert not has_usage(data)
    assert take_usage(data, True) == (data, None)


@given(style=STYLES, prompt=st.integers(0, 10**6))
def test_read_answer_reads_usage_in_any_layout(style, prompt):
    doc = {"id": "c", "object": "chat.completion", "choices": [],
           "usage": {"prompt_tokens": prompt, "completion_tokens": 2}}
    assert read_answer(_layout(doc, style)).prompt_tokens == prompt


def test_read_answer_tells_broken_bodies_from_odd_but_valid_ones():
    assert read_answer(b'{"choices": []}') is None
    # A usage of another shape: what can be read is counted, the rest is 0.
    odd = read_answer(b'{"usage": {"prompt_tokens": 7.0, "completion_tokens": null}}')
    assert (odd.prompt_tokens, odd.completion_tokens) == (7, 0)
    assert read_answer(b'{"usage": "many"}') is None
    # Valid JSON that msgspec alone would refuse: a lone surrogate escape.
    assert read_answer(b'{"choices": [], "note": "\\ud800"}') is None
    for broken in (b"", b"<html>502</html>", b'{"choices": [', b"[1, 2]", b'"text"',
                   b"[" * 100_000, b'{"x": NaN}', b'{"x": Infinity}', b'\xef\xbb\xbf{}',
                   '{"x": 1}'.encode("utf-16")):
        with pytest.raises(NotJson):
            read_answer(broken)


def test_take_usage_reads_odd_usage_leniently_and_still_strips_it():
    events = (b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
              b'data: {"choices":[],"usage":{"prompt_tokens":7.0,"completion_tokens":1e30}}\n\n'
              b'data: [DONE]\n\n')
    kept, usage = take_usage(events, strip=True)
    assert (usage.prompt_tokens, usage.completion_tokens) == (7, 0)
    assert b"usage\":{" not in kept and kept.endswith(b"data: [DONE]\n\n")
    # Only usage:null in every chunk is no usage, and costs no parse.
    nulls = b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n' * 3
    assert not has_usage(nulls)
    assert take_usage(nulls, True) == (nulls, None)
