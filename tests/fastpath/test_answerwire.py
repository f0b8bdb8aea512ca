"""The compiled answer writer against its pure-Python twin, and both against the general
translation (``proxy/grpc/translate.py``): wherever a twin writes bytes, they parse to the
message the translation builds, and both twins write the same bytes or both decline."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import _fastpath
from _fastpath import answerwire_py
from proxy.grpc import translate
from proxy.grpc._gen import gateway_pb2 as pb

IMPLS = [pytest.param(answerwire_py, id="py")]
if not _fastpath.NO_EXTENSIONS:
    from _fastpath import answerwire

    IMPLS.append(pytest.param(answerwire, id="c", marks=pytest.mark.compiled))

SETTINGS = settings(suppress_health_check=[HealthCheck.too_slow], deadline=None,
                    max_examples=300)

# Strings at the UTF-8 length boundaries, and empties. No lone surrogates: answers are
# decoded by orjson, which refuses them.
text_st = st.sampled_from(["", "a", "é", "€", "😀", "chatcmpl-1", "assistant", "user",
                           "The quick brown fox."]) | st.text(
    st.characters(blacklist_categories=("Cs",)), max_size=20)
# What a JSON value may be in an upstream's answer, odd ones included.
scalar_st = (st.none() | st.booleans() | st.integers(-2, 2) | st.integers(2**31 - 2, 2**31)
             | st.integers(2**63 - 1, 2**63) | st.floats(allow_nan=False) | text_st)
odd_st = scalar_st | st.lists(scalar_st, max_size=2) | st.dictionaries(text_st, scalar_st,
                                                                         max_size=2)


def fields(plain: dict, extra_keys: list[str]):
    """Dicts of some of the plain fields (values from their strategies), sometimes with a
    value of the wrong type or a key the proto does not name."""
    keys = st.lists(st.sampled_from(sorted(plain)), unique=True)

    def build(draw_keys, data):
        doc = {}
        for key in draw_keys:
            doc[key] = data.draw(plain[key] | st.none() if data.draw(st.booleans())
                                 else plain[key])
        if data.draw(st.integers(0, 9)) == 0:
            doc[data.draw(st.sampled_from(sorted(plain) + extra_keys))] = data.draw(odd_st)
        return doc
    return st.builds(build, keys, st.data())


finish_st = st.sampled_from(["stop", "length", "tool_calls", "content_filter",
                             "function_call", "unknown", ""])
count_st = st.integers(0, 10**6) | st.integers(2**63 - 2, 2**63)
usage_st = fields({"prompt_tokens": count_st, "completion_tokens": count_st,
                   "total_tokens": count_st}, ["prompt_tokens_details"])
message_st = fields({"role": text_st, "content": text_st, "refusal": text_st, "name": text_st,
                     "tool_call_id": text_st}, ["tool_calls", "annotations", "audio"])
delta_st = fields({"role": text_st, "content": text_st, "refusal": text_st},
                  ["tool_calls", "name"])
choice_st = fields({"index": st.integers(0, 3) | st.integers(2**31 - 1, 2**31),
                    "message": message_st, "finish_reason": finish_st,
                    "logprobs": st.none()}, ["delta", "logprobs"])
chunk_choice_st = fields({"index": st.integers(0, 3), "delta": delta_st,
                          "finish_reason": finish_st, "logprobs": st.none()},
                         ["message", "logprobs"])


def answer_st(choice):
    return fields({"id": text_st, "object": st.just("chat.completion"),
                   "created": st.integers(0, 2**40) | st.integers(2**63 - 1, 2**63),
                   "model": text_st, "system_fingerprint": text_st,
                   "choices": st.lists(choice, max_size=3), "usage": usage_st},
                  ["service_tier", "choices", "usage"])


def same_message(written: bytes | None, message_class, general) -> None:
    if written is not None:
        assert message_class.FromString(written) == general


@pytest.mark.parametrize("impl", IMPLS)
@SETTINGS
@given(doc=answer_st(choice_st) | odd_st)
def test_a_whole_answer_written_parses_to_what_translate_builds(impl, doc):
    same_message(impl.response_bytes(doc), pb.ChatResponse, translate.chat_response(doc))


@pytest.mark.parametrize("impl", IMPLS)
@SETTINGS
@given(doc=answer_st(chunk_choice_st) | odd_st)
def test_a_chunk_written_parses_to_what_translate_builds(impl, doc):
    same_message(impl.chunk_bytes(doc), pb.ChatChunk, translate.chat_chunk(doc))


@pytest.mark.skipif(_fastpath.NO_EXTENSIONS, reason="compiled twin not built")
@SETTINGS
@given(whole=answer_st(choice_st) | odd_st, chunk=answer_st(chunk_choice_st) | odd_st)
def test_the_twins_write_the_same_bytes(whole, chunk):
    assert answerwire.response_bytes(whole) == answerwire_py.response_bytes(whole)
    assert answerwire.chunk_bytes(chunk) == answerwire_py.chunk_bytes(chunk)


PLAIN_ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000,
                "model": "m", "system_fingerprint": "fp", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "Hi.",
                                             "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
PLAIN_CHUNK = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000,
               "model": "m", "choices": [{"index": 0, "delta": {"content": " there"},
                                          "logprobs": None, "finish_reason": None}]}


@pytest.mark.parametrize("impl", IMPLS)
def test_plain_answers_are_written_byte_for_byte_as_protobuf_would(impl):
    assert impl.response_bytes(PLAIN_ANSWER) == \
        translate.chat_response(PLAIN_ANSWER).SerializeToString()
    assert impl.chunk_bytes(PLAIN_CHUNK) == translate.chat_chunk(PLAIN_CHUNK).SerializeToString()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("change", [
    {"choices": [{"index": 0, "message": {"role": "assistant", "tool_calls": []}}]},
    {"choices": [{"index": 0, "logprobs": {"content": []}}]},
    {"usage": {"prompt_tokens": 1, "prompt_tokens_details": {"cached_tokens": 0}}},
    {"service_tier": "default"},
    {"created": -1},
    {"model": 7},
    {"id": "\ud800"},
])
def test_what_only_the_translation_writes_is_left_to_it(impl, change):
    assert impl.response_bytes({**PLAIN_ANSWER, **change}) is None


def test_the_finish_reasons_are_the_protos():
    assert answerwire_py.FINISH_REASONS == translate.FINISH_REASONS
