"""Golden tests of the provider adapters' translations, on examples in the providers'
documented wire formats (tests/data/providers), and the stream translation's independence
from where the bytes are cut."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import UpstreamBadResponse
from proxy.providers import Untranslatable, adapter_for, auth_headers
from proxy.providers.anthropic import MessagesStream, completion, messages_request
from proxy.providers.gemini import GenerateStream, generate_request
from proxy.providers.gemini import completion as gemini_completion
from proxy.providers.sse import EventSplitter

DATA = Path(__file__).parent / "data" / "providers"


def chunks_of(sse: bytes) -> list:
    """The Chat Completions chunks (decoded) and the [DONE] of translated SSE."""
    out = []
    for block in sse.decode().split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        payload = block[6:]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def fed(stream, raw: bytes, cuts=()) -> bytes:
    """What a stream translator makes of ``raw`` given in pieces cut at ``cuts``, its end
    included."""
    out, at = [], 0
    for cut in sorted(set(cuts)):
        out.append(stream.feed(raw[at:cut]))
        at = cut
    out.append(stream.feed(raw[at:]))
    return b"".join(out) + stream.end()


def translate(raw: bytes, cuts: list[int] = ()) -> bytes:
    return fed(MessagesStream("fallback-model"), raw, cuts)


def test_a_documented_text_stream():
    chunks = chunks_of(translate((DATA / "anthropic_stream_text.sse").read_bytes()))
    assert chunks[-1] == "[DONE]"
    body = chunks[:-1]
    assert {c["id"] for c in body} == {"msg_01XFDUDYJgAACzvnptvVoYEL"}
    assert {c["model"] for c in body} == {"claude-sonnet-4-5"}
    assert all(c["object"] == "chat.completion.chunk" for c in body)
    assert body[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in body[1:3]] == ["Hello", "!"]
    assert body[3]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                     "finish_reason": "stop"}
    assert body[4]["choices"] == []
    assert body[4]["usage"] == {"prompt_tokens": 25, "completion_tokens": 15,
                                "total_tokens": 40}
    assert len(body) == 5


def test_a_documented_tool_use_stream():
    chunks = chunks_of(translate((DATA / "anthropic_stream_tool_use.sse").read_bytes()))
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1] if c["choices"]]
    text = "".join(d.get("content") or "" for d in deltas)
    assert text == "Okay, let's check the weather."
    calls = [call for d in deltas for call in d.get("tool_calls") or ()]
    assert calls[0] == {"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}}
    assert all(call["index"] == 0 for call in calls)
    arguments = "".join(call["function"]["arguments"] for call in calls)
    assert json.loads(arguments) == {"location": "San Francisco, CA"}
    finishes = [c["choices"][0]["finish_reason"] for c in chunks[:-1] if c["choices"]
                and c["choices"][0]["finish_reason"]]
    assert finishes == ["tool_calls"]
    usage = chunks[-2]["usage"]
    # Cache reads are prompt tokens too, and reported as cached.
    assert usage == {"prompt_tokens": 572, "completion_tokens": 89, "total_tokens": 661,
                     "prompt_tokens_details": {"cached_tokens": 100}}


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(["anthropic_stream_text.sse", "anthropic_stream_tool_use.sse"]),
       crlf=st.booleans(), data=st.data())
def test_where_the_bytes_are_cut_changes_nothing(name, crlf, data):
    raw = (DATA / name).read_bytes()
    if crlf:
        raw = raw.replace(b"\n", b"\r\n")
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    assert translate(raw, cuts) == translate((DATA / name).read_bytes())


def test_an_error_event_becomes_an_openai_error_event():
    stream = MessagesStream("m")
    out = stream.feed(b'event: error\ndata: {"type": "error", "error": {"type": '
                      b'"overloaded_error", "message": "Overloaded"}}\n\n')
    assert chunks_of(out) == [{"error": {"type": "overloaded_error", "message": "Overloaded"}}]


def test_an_event_past_the_bound_is_not_sse():
    with pytest.raises(UpstreamBadResponse):
        EventSplitter().feed(b"data: " + b"x" * (2 * 1024 * 1024))


def test_a_documented_whole_answer_with_a_tool_call():
    doc = json.loads((DATA / "anthropic_message_tool_use.json").read_text())
    answer = completion(doc)
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == \
        "I'll check the current weather in San Francisco for you."
    [call] = choice["message"]["tool_calls"]
    assert call["id"] == "toolu_01A09q90qw90lq917835lq9"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"location": "San Francisco, CA",
                                                         "unit": "celsius"}
    assert answer["usage"] == {"prompt_tokens": 404, "completion_tokens": 62,
                               "total_tokens": 466}
    with pytest.raises(ValueError):
        completion({"type": "error"})


def test_a_multi_turn_tool_conversation_as_a_messages_request():
    request = messages_request({
        "model": "route", "max_completion_tokens": 300, "temperature": 0.5,
        "parallel_tool_calls": False, "tool_choice": "required", "user": "u-1",
        "stop": ["END", "STOP"],
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {"role": "user", "content": "Weather in SF and NYC?"},
            {"role": "assistant", "content": "Checking both.", "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"location": "SF"}'}},
                {"id": "c2", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"location": "NYC"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "15 C"},
            {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text",
                                                               "text": "3 C"}]},
            {"role": "user", "content": "Thanks. Which is warmer?"}],
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "Current weather",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}],
    }, "claude-x", stream=False)
    assert request == {
        "model": "claude-x", "max_tokens": 300, "temperature": 0.5,
        "system": "You are terse.\n\nUse tools.",
        "stop_sequences": ["END", "STOP"], "metadata": {"user_id": "u-1"},
        "tools": [{"name": "get_weather", "description": "Current weather", "input_schema": {
            "type": "object", "properties": {"location": {"type": "string"}}}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather in SF and NYC?"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking both."},
                {"type": "tool_use", "id": "c1", "name": "get_weather",
                 "input": {"location": "SF"}},
                {"type": "tool_use", "id": "c2", "name": "get_weather",
                 "input": {"location": "NYC"}}]},
            # Both results in one user turn, ahead of the text that follows them.
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "15 C"},
                {"type": "tool_result", "tool_use_id": "c2", "content": "3 C"},
                {"type": "text", "text": "Thanks. Which is warmer?"}]}]}


@pytest.mark.parametrize("doc, why", [
    ({"n": 3}, "n:"),
    ({"logprobs": True}, "logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"functions": []}, "functions: no counterpart"),
    ({"messages": [{"role": "system", "content": "only this"}]}, "user turn"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input_audio"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "x", "function": {"name": "f", "arguments": "{not json"}}]}]}, "not JSON"),
])
def test_what_has_no_messages_counterpart_is_refused(doc, why):
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **doc}
    with pytest.raises(Untranslatable) as caught:
        messages_request(request, "claude", stream=False)
    assert why in str(caught.value)
    assert caught.value.status == 400


def test_the_adapters_addresses_and_keys():
    claude = adapter_for("anthropic", "claude-x", None)
    assert claude.request_path(b"/chat/completions", True) == b"/messages"
    assert claude.status(529) == 503 and claude.status(429) == 429
    assert not claude.serves(b"/embeddings")
    assert auth_headers("anthropic", "k", None) == (b"anthropic-version: 2023-06-01\r\n"
                                                    b"x-api-key: k\r\n")
    azure = adapter_for("azure", "my deployment", "2025-01-01-preview")
    assert azure.request_path(b"/embeddings", False) == \
        b"/openai/deployments/my%20deployment/embeddings?api-version=2025-01-01-preview"
    assert azure.request_body(b'{"a":1}', False) == b'{"a":1}'
    assert auth_headers("azure", "k", None) == b"api-key: k\r\n"
    assert adapter_for("openai", "m", None) is None
    assert auth_headers("openai", "k", None) == b"authorization: Bearer k\r\n"
    assert auth_headers("openai", None, None) == b""


# === gemini ===

def gemini_translate(raw: bytes, cuts=()) -> bytes:
    return fed(GenerateStream("gemini-model"), raw, cuts)


def test_a_documented_gemini_stream():
    raw = (DATA / "gemini_stream_text.sse").read_bytes()
    chunks = chunks_of(gemini_translate(raw))
    assert chunks[-1] == "[DONE]"
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1] if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content") or "" for d in deltas) == \
        "Once upon a time, in a village by the sea."
    finishes = [c["choices"][0]["finish_reason"] for c in chunks[:-1] if c["choices"]
                and c["choices"][0]["finish_reason"]]
    assert finishes == ["stop"]
    # One usage, the last one Gemini counted, after the finish.
    usages = [c["usage"] for c in chunks[:-1] if c.get("usage")]
    assert usages == [{"prompt_tokens": 8, "completion_tokens": 12, "total_tokens": 20,
                       "prompt_tokens_details": {"cached_tokens": 4}}]


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_where_a_gemini_stream_is_cut_changes_nothing(data):
    raw = (DATA / "gemini_stream_text.sse").read_bytes()
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    assert gemini_translate(raw, cuts) == gemini_translate(raw)


def test_a_gemini_stream_that_ends_without_a_finish_reason_has_no_end_marker():
    raw = (DATA / "gemini_stream_text.sse").read_bytes()
    first_two = b"\r\n\r\n".join(raw.split(b"\r\n\r\n")[:2]) + b"\r\n\r\n"
    stream = GenerateStream("m")
    out = stream.feed(first_two) + stream.end()
    assert b"[DONE]" not in out and b"finish_reason\":\"" not in out


def test_a_documented_gemini_function_call():
    doc = json.loads((DATA / "gemini_function_call.json").read_text())
    answer = gemini_completion(doc)
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["reasoning_content"] == "Thinking about the lights."
    [call] = choice["message"]["tool_calls"]
    assert call["id"] and call["function"]["name"] == "set_light_values"
    assert json.loads(call["function"]["arguments"]) == {"brightness": 25,
                                                         "color_temp": "warm"}
    # Thinking tokens are billed as output.
    assert answer["usage"] == {"prompt_tokens": 120, "completion_tokens": 28,
                               "total_tokens": 148}
    assert answer["model"] == "gemini-2.5-flash"


def test_a_blocked_prompt_is_a_content_filter_finish():
    answer = gemini_completion({"promptFeedback": {"blockReason": "SAFETY"},
                                "usageMetadata": {"promptTokenCount": 5}})
    assert answer["choices"][0]["finish_reason"] == "content_filter"
    with pytest.raises(ValueError):
        gemini_completion({"something": "else"})


def test_a_chat_request_as_generate_content():
    request = generate_request({
        "model": "route", "max_completion_tokens": 100, "top_p": 0.9, "seed": 7,
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object"}}},
        "messages": [
            {"role": "system", "content": "Sys."},
            {"role": "user", "content": [
                {"type": "text", "text": "Look:"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}}]},
            {"role": "assistant", "content": "Calling.", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "f", "arguments": '{"q": 1}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"result": 2}'}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object"}}}]})
    assert request == {
        "systemInstruction": {"parts": [{"text": "Sys."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Look:"},
                                       {"inlineData": {"mimeType": "image/jpeg",
                                                       "data": "/9j/"}}]},
            {"role": "model", "parts": [{"text": "Calling."},
                                        {"functionCall": {"name": "f", "args": {"q": 1}}}]},
            # A JSON object result goes as the response itself.
            {"role": "user", "parts": [{"functionResponse": {"name": "f",
                                                             "response": {"result": 2}}}]}],
        "generationConfig": {"topP": 0.9, "seed": 7, "maxOutputTokens": 100,
                             "responseMimeType": "application/json",
                             "responseJsonSchema": {"type": "object"}},
        "tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "object"}}]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY",
                                                 "allowedFunctionNames": ["f"]}}}
    with pytest.raises(Untranslatable, match="no earlier assistant message"):
        generate_request({"messages": [{"role": "tool", "tool_call_id": "x", "content": ""}]})
    assert adapter_for("gemini", "gemini-2.5-pro", None).request_path(
        b"/chat/completions", True) == b"/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    assert auth_headers("gemini", "k", None) == b"x-goog-api-key: k\r\n"


# === bedrock ===

def bedrock_stream_bytes() -> bytes:
    from proxy.sim.bedrock import event
    events = json.loads((DATA / "bedrock_converse_stream.json").read_text())
    return b"".join(event(kind, payload) for kind, payload in events)


def bedrock_translate(raw: bytes, cuts=()) -> bytes:
    from proxy.providers.bedrock import ConverseStream
    return fed(ConverseStream("anthropic.claude-x"), raw, cuts)


def test_a_documented_converse_stream():
    chunks = chunks_of(bedrock_translate(bedrock_stream_bytes()))
    assert chunks[-1] == "[DONE]"
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1] if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content") or "" for d in deltas) == "Let me look that up."
    calls = [call for d in deltas for call in d.get("tool_calls") or ()]
    assert calls[0] == {"index": 0, "id": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "type": "function",
                        "function": {"name": "top_song", "arguments": ""}}
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"sign": "WZPZ"}
    finishes = [c["choices"][0]["finish_reason"] for c in chunks[:-1] if c["choices"]
                and c["choices"][0]["finish_reason"]]
    assert finishes == ["tool_calls"]
    assert chunks[-2]["usage"] == {"prompt_tokens": 679, "completion_tokens": 60,
                                   "total_tokens": 739,
                                   "prompt_tokens_details": {"cached_tokens": 300}}


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_where_a_converse_stream_is_cut_changes_nothing(data):
    raw = bedrock_stream_bytes()
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))

    def without_ids(sse: bytes) -> list:   # made up per stream: Converse names none
        return [c if c == "[DONE]" else {**c, "id": "", "created": 0}
                for c in chunks_of(sse)]
    assert without_ids(bedrock_translate(raw, cuts)) == without_ids(bedrock_translate(raw))


def test_a_corrupt_event_stream_is_a_bad_response():
    raw = bytearray(bedrock_stream_bytes())
    raw[20] ^= 0xFF   # inside the first message: its CRC no longer matches
    with pytest.raises(UpstreamBadResponse):
        bedrock_translate(bytes(raw))


def test_an_exception_in_a_converse_stream_becomes_an_error_event():
    from proxy.providers.bedrock import ConverseStream
    from proxy.sim.bedrock import event
    stream = ConverseStream("m")
    out = stream.feed(event("modelStreamErrorException", {"message": "boom"}, "exception"))
    assert chunks_of(out) == [{"error": {"type": "modelStreamErrorException",
                                         "message": "boom"}}]
    assert stream.end() == b""   # never stopped: a cut, not a whole answer


def test_a_documented_converse_answer():
    from proxy.providers.bedrock import completion as bedrock_completion
    answer = bedrock_completion(json.loads((DATA / "bedrock_converse_answer.json").read_text()),
                                "anthropic.claude-x")
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "I'll look up the top song."
    assert choice["message"]["reasoning_content"] == "The user wants a song."
    [call] = choice["message"]["tool_calls"]
    assert call["id"] == "tooluse_hIEs4Y2XSyunw1SQnHTW1A"
    assert json.loads(call["function"]["arguments"]) == {"sign": "WZPZ"}
    assert answer["usage"] == {"prompt_tokens": 375, "completion_tokens": 79,
                               "total_tokens": 454}
    with pytest.raises(ValueError):
        bedrock_completion({"message": "ValidationException"}, "m")


def test_a_chat_request_as_converse():
    from proxy.providers.bedrock import converse_request
    request = converse_request({
        "model": "r", "max_tokens": 64, "top_p": 0.5, "tool_choice": "required",
        "messages": [
            {"role": "system", "content": "Sys."},
            {"role": "user", "content": [
                {"type": "text", "text": "See:"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "t1", "type": "function",
                 "function": {"name": "f", "arguments": '{"a": 1}'}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "done"},
            {"role": "user", "content": "And?"}],
        "tools": [{"type": "function", "function": {"name": "f"}}]})
    assert request == {
        "system": [{"text": "Sys."}],
        "messages": [
            {"role": "user", "content": [{"text": "See:"}, {"image": {
                "format": "png", "source": {"bytes": "iVBO"}}}]},
            {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "f",
                                                            "input": {"a": 1}}}]},
            {"role": "user", "content": [
                {"toolResult": {"toolUseId": "t1", "content": [{"text": "done"}]}},
                {"text": "And?"}]}],
        "inferenceConfig": {"maxTokens": 64, "topP": 0.5},
        "toolConfig": {"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {
            "type": "object", "properties": {}}}}}], "toolChoice": {"any": {}}}}
    with pytest.raises(Untranslatable, match="base64 data URLs"):
        converse_request({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]}]})


# === responses: true (the request path's view of a passed-through Responses answer) ===

def test_a_documented_responses_stream_as_the_request_path_reads_it():
    from proxy.providers.responses import ResponsesStream
    raw = (DATA / "openai_responses_stream.sse").read_bytes()
    stream = ResponsesStream("m")
    out = b"".join(stream.feed(raw[i:i + 13]) for i in range(0, len(raw), 13))
    chunks = chunks_of(out)
    assert chunks[-1] == "[DONE]"
    assert {c["id"] for c in chunks[1:-1]} == {"resp_67c9fdcecf488190bdd9a0a5de2c"}
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1] if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content") or "" for d in deltas) == "Hi there!"
    calls = [call for d in deltas for call in d.get("tool_calls") or ()]
    assert calls[0]["id"] == "call_12345xyz" and calls[0]["function"]["name"] == "get_weather"
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {
        "location": "Paris"}
    finishes = [c["choices"][0]["finish_reason"] for c in chunks[:-1]
                if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes == ["tool_calls"]
    assert chunks[-2]["usage"] == {"prompt_tokens": 37, "completion_tokens": 11,
                                   "total_tokens": 48,
                                   "prompt_tokens_details": {"cached_tokens": 10}}


def test_a_responses_object_as_a_completion():
    from proxy.providers.responses import completion as responses_completion
    answer = responses_completion({
        "id": "resp_1", "object": "response", "created_at": 5, "model": "gpt-x",
        "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
        "output": [{"type": "reasoning", "summary": [{"type": "summary_text",
                                                       "text": "Thought."}]},
                   {"type": "message", "role": "assistant", "content": [
                       {"type": "output_text", "text": "Partial", "annotations": []}]}],
        "usage": {"input_tokens": 4, "output_tokens": 9}})
    assert answer["choices"][0] == {"index": 0, "logprobs": None, "finish_reason": "length",
                                    "message": {"role": "assistant", "content": "Partial",
                                                "reasoning_content": "Thought."}}
    assert answer["usage"] == {"prompt_tokens": 4, "completion_tokens": 9, "total_tokens": 13}
    with pytest.raises(ValueError):
        responses_completion({"error": {"message": "x"}})
