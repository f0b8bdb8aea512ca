"""The Anthropic Messages front end (``POST /v1/messages``) through the official ``anthropic``
SDK, in front of OpenAI-compatible upstreams: the simulator, and a scripted upstream that
records what llmedge sent it and answers with tool calls."""

from __future__ import annotations

import json

import anthropic
import pytest
from procs import IO_TIMEOUT, http_call
from scripted_upstream import ScriptedUpstream, chunk

TOOL = {"name": "get_weather", "description": "The weather in a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}}


def openai_reply(edge) -> str:
    """What the same route answers a chat completion: the text the Messages answer holds."""
    with edge.client() as c:
        return c.chat.completions.create(model="auto", messages=[
            {"role": "user", "content": "Say something."}]).choices[0].message.content


def client(edge, **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=edge.root, api_key="client-key", max_retries=0,
                               timeout=IO_TIMEOUT, **kw)


def json_answer(doc: dict, status: int = 200) -> bytes:
    data = json.dumps(doc).encode()
    return (b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (status, len(data), data))


def completion(message: dict, finish: str, usage=(12, 5)) -> bytes:
    return json_answer({"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
                        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                                  "total_tokens": sum(usage)}})


def sse_answer(*chunks: dict) -> bytes:
    head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n")
    body = b"".join(chunk(b"data: %s\n\n" % json.dumps(c).encode()) for c in chunks)
    return head + body + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


def delta(d: dict, finish: str | None = None) -> dict:
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


def scripted_edge(start_edge, upstream: ScriptedUpstream):
    return start_edge("""\
server: {http: "127.0.0.1:0"}
upstream: {health: {enabled: false}, retry: {same_deployment: 0}}
deployments:
  - {name: scripted, base_url: "%s"}
routes:
  - {name: auto, deployments: [scripted]}
""" % upstream.url)


def test_a_whole_answer_through_the_sdk(edge):
    with client(edge) as c:
        raw = c.messages.with_raw_response.create(
            model="auto", max_tokens=64, system="Be brief.",
            messages=[{"role": "user", "content": "Say something."}])
        message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "auto"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == openai_reply(edge)
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    # llmedge's own headers, and Anthropic's request-id beside them.
    assert raw.headers["x-llmedge-route"] == "auto"
    assert raw.headers["request-id"] == raw.headers["x-request-id"]
    assert message.id == "msg_" + raw.headers["x-request-id"]


def test_a_stream_in_the_messages_event_order(edge):
    with client(edge) as c:
        with c.messages.stream(model="auto", max_tokens=64,
                               messages=[{"role": "user", "content": "Stream."}]) as stream:
            kinds = [event.type for event in stream]
            final = stream.get_final_message()
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == 1 == kinds.count("content_block_stop")
    assert "text" in kinds   # the SDK's accumulated text events, from text_delta
    assert final.content[0].text == openai_reply(edge)
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


def test_the_request_is_translated_for_an_openai_upstream(start_edge):
    with ScriptedUpstream([completion({"role": "assistant", "content": "ok"}, "stop")]) as up:
        edge = scripted_edge(start_edge, up)
        with client(edge) as c:
            c.messages.create(
                model="auto", max_tokens=50, extra_body={"temperature": 0.2, "top_p": 0.9},
                stop_sequences=["END"], metadata={"user_id": "u-7"},
                system=[{"type": "text", "text": "You help."}],
                messages=[
                    {"role": "user", "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image", "source": {"type": "base64",
                                                     "media_type": "image/png",
                                                     "data": "iVBORw0KGgo="}}]},
                    {"role": "assistant", "content": "A picture."},
                    {"role": "user", "content": "Thanks."}])
        sent = json.loads(up.bodies[0])
    assert sent["max_tokens"] == 50 and sent["temperature"] == 0.2 and sent["top_p"] == 0.9
    assert sent["stop"] == ["END"] and sent["user"] == "u-7"
    assert sent["messages"] == [
        {"role": "system", "content": "You help."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
        {"role": "assistant", "content": "A picture."},
        {"role": "user", "content": "Thanks."}]


def test_a_tool_call_round_trip(start_edge):
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    with ScriptedUpstream(scripts=[
            [completion({"role": "assistant", "content": None, "tool_calls": [call]},
                        "tool_calls")],
            [completion({"role": "assistant", "content": "Sunny in Paris."}, "stop")]]) as up:
        edge = scripted_edge(start_edge, up)
        with client(edge) as c:
            question = {"role": "user", "content": "Weather in Paris?"}
            first = c.messages.create(model="auto", max_tokens=100, tools=[TOOL],
                                      tool_choice={"type": "auto"}, messages=[question])
            assert first.stop_reason == "tool_use"
            use, = first.content
            assert use.type == "tool_use" and use.name == "get_weather"
            assert use.input == {"city": "Paris"} and use.id == "call_1"
            second = c.messages.create(model="auto", max_tokens=100, tools=[TOOL], messages=[
                question, {"role": "assistant", "content": first.content},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                              "content": "sunny, 24C"}]}])
        assert second.content[0].text == "Sunny in Paris."
        tools_sent = json.loads(up.bodies[0])
        followed = json.loads(up.bodies[1])
    assert tools_sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.",
        "parameters": TOOL["input_schema"]}}]
    assert tools_sent["tool_choice"] == "auto"
    assistant, result = followed["messages"][1:]
    assert assistant["tool_calls"][0]["id"] == "call_1"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert result == {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 24C"}


def test_a_streamed_tool_call_arrives_as_input_json_deltas(start_edge):
    script = sse_answer(
        delta({"role": "assistant", "content": "Let me check."}),
        delta({"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        delta({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
        delta({}, "tool_calls"),
        {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 7,
                                  "total_tokens": 16}})
    with ScriptedUpstream([script]) as up:
        edge = scripted_edge(start_edge, up)
        with client(edge) as c:
            with c.messages.stream(model="auto", max_tokens=100, tools=[TOOL],
                                   messages=[{"role": "user", "content": "Oslo?"}]) as stream:
                events = list(stream)
                final = stream.get_final_message()
        assert json.loads(up.bodies[0])["stream_options"] == {"include_usage": True}
    partials = [e.delta.partial_json for e in events if e.type == "content_block_delta"
                and e.delta.type == "input_json_delta"]
    assert "".join(partials) == '{"city": "Oslo"}'
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[0].text == "Let me check."
    assert final.content[1].input == {"city": "Oslo"} and final.content[1].id == "call_9"
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == 7


@pytest.mark.parametrize("kwargs, error, kind", [
    ({"model": "no-such-route", "max_tokens": 5}, anthropic.NotFoundError, "not_found_error"),
    ({"model": "auto", "max_tokens": 0}, anthropic.BadRequestError, "invalid_request_error"),
])
def test_errors_in_the_messages_shape(edge, kwargs, error, kind):
    with client(edge) as c:
        with pytest.raises(error) as info:
            c.messages.create(messages=[{"role": "user", "content": "hi"}], **kwargs)
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == kind
    assert info.value.body["error"]["message"]


def test_an_upstream_error_keeps_its_status_in_the_messages_shape(start_edge):
    limited = json_answer({"error": {"message": "slow down", "type": "rate_limit",
                                     "code": "rate_limited"}}, 429)
    with ScriptedUpstream([limited]) as up:
        edge = scripted_edge(start_edge, up)
        with client(edge) as c:
            with pytest.raises(anthropic.RateLimitError) as info:
                c.messages.create(model="auto", max_tokens=5,
                                  messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["error"] == {"type": "rate_limit_error", "message": "slow down"}


@pytest.mark.parametrize("method, body, status, needle", [
    ("POST", b"{not json", 400, "not valid JSON"),
    ("POST", {"model": "auto", "max_tokens": 5, "messages": [{"role": "robot",
                                                              "content": "x"}]},
     400, "messages[0].role"),
    ("POST", {"model": "auto", "max_tokens": 5, "messages": [], "temperature": 0.5},
     400, "at least one message"),
    ("POST", {"model": "auto", "max_tokens": 5, "messages": [{"role": "user",
                                                              "content": "x"}],
              "frobnicate": True}, 400, "frobnicate: unknown field"),
    ("GET", None, 405, "use POST"),
])
def test_bad_requests_get_messages_errors(edge, method, body, status, needle):
    resp = http_call(edge.port, method, "/v1/messages", body,
                     {"x-api-key": "k", "anthropic-version": "2023-06-01"})
    assert resp.status == status, resp
    doc = resp.json()
    assert doc["type"] == "error" and needle in doc["error"]["message"], doc
    # And the server keeps serving.
    assert http_call(edge.port, "GET", "/healthz").status == 200


def test_a_cached_answer_is_replayed_in_the_messages_shapes(start_edge, sims):
    edge = start_edge("""\
server: {http: "127.0.0.1:0"}
deployments:
  - {name: gamma, base_url: "%s"}
routes:
  - {name: cached, deployments: [gamma], cache: {ttl_s: 600}}
""" % sims.gamma.url)
    ask = {"model": "cached", "max_tokens": 30, "extra_body": {"temperature": 0},
           "messages": [{"role": "user", "content": "Once, then from the cache."}]}
    with client(edge) as c:
        first = c.messages.with_raw_response.create(**ask)
        again = c.messages.with_raw_response.create(**ask)
        with c.messages.with_streaming_response.create(stream=True, **ask) as raw:
            streamed_cache = raw.headers["x-llmedge-cache"]
        with c.messages.stream(**ask) as stream:
            streamed = stream.get_final_message()
    assert first.headers["x-llmedge-cache"] == "miss"
    assert again.headers["x-llmedge-cache"] == "hit"
    assert again.parse().content[0].text == first.parse().content[0].text
    # A stream of the same request is its own cache entry (a stream is cached as one).
    assert streamed_cache in ("miss", "hit")
    assert streamed.content[0].text == first.parse().content[0].text


def test_a_stream_cut_after_it_began_ends_with_an_error_event(start_edge):
    from scripted_upstream import RESET

    head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n")
    script = [head + chunk(b"data: %s\n\n" % json.dumps(delta(
        {"role": "assistant", "content": "The start of an answer"})).encode()), 0.2, RESET]
    with ScriptedUpstream(script) as up:
        edge = scripted_edge(start_edge, up)
        with client(edge) as c:
            seen = []
            with pytest.raises(anthropic.APIStatusError) as info:
                with c.messages.stream(model="auto", max_tokens=30, messages=[
                        {"role": "user", "content": "Cut me."}]) as stream:
                    for event in stream:
                        seen.append(event.type)
    # What had begun arrived, and the cut is an error the SDK raises, never a quiet end.
    assert seen[0] == "message_start" and "text" in seen and "message_stop" not in seen
    assert info.value.status_code == 200    # the stream had begun
    assert info.value.body["error"]["type"] == "api_error"
    assert "mid-stream" in info.value.body["error"]["message"]
    # The server keeps serving.
    assert http_call(edge.port, "GET", "/healthz").status == 200
