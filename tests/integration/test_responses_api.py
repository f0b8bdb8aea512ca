"""The OpenAI Responses front end (``POST /v1/responses``) through the official ``openai``
SDK's ``client.responses``, in front of chat-completions upstreams: the simulator, and a
scripted upstream that records what llmedge sent it."""

from __future__ import annotations

import json

import openai
import pytest
from procs import http_call
from scripted_upstream import ScriptedUpstream, chunk

TOOL = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}


def json_answer(doc: dict, status: int = 200) -> bytes:
    data = json.dumps(doc).encode()
    return (b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (status, len(data), data))


def completion(message: dict, finish: str, usage=(12, 5)) -> bytes:
    return json_answer({"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
                        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                                  "total_tokens": sum(usage)}})


def delta(d: dict, finish: str | None = None) -> dict:
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


def sse_answer(*chunks: dict) -> bytes:
    head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n")
    body = b"".join(chunk(b"data: %s\n\n" % json.dumps(c).encode()) for c in chunks)
    return head + body + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


def scripted_edge(start_edge, upstream: ScriptedUpstream):
    return start_edge("""\
server: {http: "127.0.0.1:0"}
upstream: {health: {enabled: false}, retry: {same_deployment: 0}}
deployments:
  - {name: scripted, base_url: "%s"}
routes:
  - {name: auto, deployments: [scripted]}
""" % upstream.url)


def chat_reply(edge) -> str:
    with edge.client() as c:
        return c.chat.completions.create(model="auto", messages=[
            {"role": "user", "content": "Say something."}]).choices[0].message.content


def test_a_whole_response_through_the_sdk(edge):
    with edge.client() as c:
        raw = c.responses.with_raw_response.create(model="auto", input="Say something.")
        response = raw.parse()
    assert response.object == "response" and response.status == "completed"
    assert response.output_text == chat_reply(edge)
    assert response.output[0].type == "message" and response.output[0].role == "assistant"
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.id == "resp_" + raw.headers["x-request-id"]
    assert raw.headers["x-llmedge-route"] == "auto"


def test_a_stream_of_responses_events(edge):
    with edge.client() as c:
        events = list(c.responses.create(model="auto", input="Stream.", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == chat_reply(edge)
    final = events[-1].response
    assert final.output_text == text and final.usage.output_tokens > 0
    for kind in ("response.output_item.added", "response.content_part.added",
                 "response.output_text.done", "response.content_part.done",
                 "response.output_item.done"):
        assert kinds.count(kind) == 1, kind


def test_the_request_is_translated_for_a_chat_upstream(start_edge):
    with ScriptedUpstream([completion({"role": "assistant", "content": '{"a": 1}'},
                                      "stop")]) as up:
        edge = scripted_edge(start_edge, up)
        with edge.client() as c:
            c.responses.create(
                model="auto", instructions="You help.", max_output_tokens=40,
                temperature=0.3, user="u-1",
                text={"format": {"type": "json_schema", "name": "thing",
                                 "schema": {"type": "object"}}},
                input=[
                    {"role": "user", "content": [
                        {"type": "input_text", "text": "Look:"},
                        {"type": "input_image", "image_url": "https://example.test/a.png"}]},
                    {"role": "assistant", "content": "A picture."},
                    {"role": "developer", "content": "Answer in JSON."}])
        sent = json.loads(up.bodies[0])
    assert sent["max_tokens"] == 40 and sent["temperature"] == 0.3 and sent["user"] == "u-1"
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "thing", "schema": {"type": "object"}}}
    assert sent["messages"] == [
        {"role": "system", "content": "You help."},
        {"role": "user", "content": [
            {"type": "text", "text": "Look:"},
            {"type": "image_url", "image_url": {"url": "https://example.test/a.png"}}]},
        {"role": "assistant", "content": "A picture."},
        {"role": "system", "content": "Answer in JSON."}]


def test_a_function_call_round_trip(start_edge):
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    with ScriptedUpstream(scripts=[
            [completion({"role": "assistant", "content": None, "tool_calls": [call]},
                        "tool_calls")],
            [completion({"role": "assistant", "content": "Sunny in Paris."}, "stop")]]) as up:
        edge = scripted_edge(start_edge, up)
        with edge.client() as c:
            first = c.responses.create(model="auto", tools=[TOOL], tool_choice="auto",
                                       input="Weather in Paris?")
            item, = first.output
            assert item.type == "function_call" and item.name == "get_weather"
            assert item.call_id == "call_1" and json.loads(item.arguments) == {"city": "Paris"}
            second = c.responses.create(model="auto", tools=[TOOL], input=[
                {"role": "user", "content": "Weather in Paris?"},
                {"type": "function_call", "call_id": item.call_id, "name": item.name,
                 "arguments": item.arguments},
                {"type": "function_call_output", "call_id": item.call_id,
                 "output": "sunny, 24C"}])
        assert second.output_text == "Sunny in Paris."
        tools_sent = json.loads(up.bodies[0])
        followed = json.loads(up.bodies[1])
    assert tools_sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.",
        "parameters": TOOL["parameters"]}}]
    assert tools_sent["tool_choice"] == "auto"
    assistant, result = followed["messages"][1:]
    assert assistant["tool_calls"][0]["id"] == "call_1"
    assert result == {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 24C"}


def test_a_streamed_function_call(start_edge):
    script = sse_answer(
        delta({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_9",
                                                    "type": "function", "function": {
                                                        "name": "get_weather",
                                                        "arguments": ""}}]}),
        delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        delta({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
        delta({}, "tool_calls"))
    with ScriptedUpstream([script]) as up:
        edge = scripted_edge(start_edge, up)
        with edge.client() as c:
            events = list(c.responses.create(model="auto", tools=[TOOL], input="Oslo?",
                                             stream=True))
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert "".join(deltas) == '{"city": "Oslo"}'
    final = events[-1].response
    item, = final.output
    assert item.type == "function_call" and item.call_id == "call_9"
    assert item.arguments == '{"city": "Oslo"}'


def test_a_cut_answer_is_incomplete(start_edge):
    with ScriptedUpstream([completion({"role": "assistant", "content": "Half"}, "length")]) \
            as up:
        edge = scripted_edge(start_edge, up)
        with edge.client() as c:
            response = c.responses.create(model="auto", input="Long?", max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize("kwargs, error, needle", [
    ({"model": "no-such-route", "input": "hi"}, openai.NotFoundError, "does not exist"),
    ({"model": "auto", "input": "hi", "previous_response_id": "resp_1"},
     openai.BadRequestError, "previous_response_id"),
    ({"model": "auto", "input": "hi", "store": True}, openai.BadRequestError, "store"),
    ({"model": "auto", "input": []}, openai.BadRequestError, "input"),
    ({"model": "auto", "input": "hi", "tools": [{"type": "web_search"}]},
     openai.BadRequestError, "only function tools"),
])
def test_errors_stay_openai_shaped(edge, kwargs, error, needle):
    with edge.client() as c:
        with pytest.raises(error) as info:
            c.responses.create(**kwargs)
    assert needle in info.value.body["message"]


def test_malformed_bodies_are_refused_and_the_server_keeps_serving(edge):
    resp = http_call(edge.port, "POST", "/v1/responses", b"{not json")
    assert resp.status == 400 and "not valid JSON" in resp.json()["error"]["message"]
    resp = http_call(edge.port, "GET", "/v1/responses")
    assert resp.status == 405
    assert http_call(edge.port, "GET", "/healthz").status == 200


def test_a_stream_cut_after_it_began_ends_failed(start_edge):
    from scripted_upstream import RESET

    head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n")
    script = [head + chunk(b"data: %s\n\n" % json.dumps(delta(
        {"role": "assistant", "content": "The start"})).encode()), 0.2, RESET]
    with ScriptedUpstream(script) as up:
        edge = scripted_edge(start_edge, up)
        with edge.client() as c:
            events = list(c.responses.create(model="auto", input="Cut me.", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and "response.output_text.delta" in kinds
    # Never a quiet end that looks complete: an error, then the failed response.
    assert kinds[-2:] == ["error", "response.failed"] and "response.completed" not in kinds
    failed = events[-1].response
    assert failed.status == "failed" and "mid-stream" in failed.error.message
    assert http_call(edge.port, "GET", "/healthz").status == 200
