"""Native upstream providers (``provider: anthropic``, ``azure``, ``gemini``, ``bedrock``)
behind every
front end, end to end: the official ``openai`` and ``anthropic`` SDKs talk to llmedge, which
talks to simulators that speak Anthropic's Messages API and Azure OpenAI's paths and
refuse a request without the key sent the way each API wants it (the "plain" one also
serves Azure's, Gemini's and Bedrock's paths, and checks Bedrock's SigV4 signatures)."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest
from procs import IO_TIMEOUT, Llmedge, Simulator, http_call

KEY_ENV = "LLMEDGE_TEST_PROVIDER_KEY"
KEY = "provider-secret"
REPLY = "Native providers answer through the same request path."
TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


AWS_KEY_ID = "AKIDLLMEDGETEST"


def aws_env(workdir, secret: str | None) -> dict:
    """AWS credentials in the environment only: whatever ~/.aws holds on this machine is
    kept out."""
    return {"AWS_ACCESS_KEY_ID": AWS_KEY_ID if secret else None,
            "AWS_SECRET_ACCESS_KEY": secret, "AWS_SESSION_TOKEN": None, "AWS_PROFILE": None,
            "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "no-aws-credentials"),
            "AWS_CONFIG_FILE": str(workdir / "no-aws-config"),
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": None,
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": None, "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """Two simulators that want the key (one plays Anthropic, one Azure and OpenAI) and an
    llmedge in front of them."""
    workdir = tmp_path_factory.mktemp("providers")
    started = []
    try:
        claude = Simulator(workdir, "claude", "--api-key", KEY, "--reply", REPLY)
        started.append(claude)
        plain = Simulator(workdir, "plain", "--api-key", KEY, "--reply", REPLY)
        started.append(plain)
        edge = Llmedge(workdir, """\
server: {http: "127.0.0.1:0", grpc: "127.0.0.1:0"}
upstream: {health: {enabled: false}, retry: {same_deployment: 0}}
deployments:
  - {name: claude, provider: anthropic, base_url: "%s", model: claude-sim,
     api_key_env: %s}
  - {name: azure-gpt, provider: azure, base_url: "http://127.0.0.1:%d",
     model: my-gpt-deployment, api_version: "2024-10-21", api_key_env: %s}
  - {name: plain, base_url: "%s", model: plain-model, api_key_env: %s}
  - {name: gem, provider: gemini, base_url: "http://127.0.0.1:%d/v1beta", model: gemini-sim,
     api_key_env: %s}
  - {name: nova, provider: bedrock, region: us-west-2, base_url: "http://127.0.0.1:%d",
     model: "anthropic.claude-3-haiku-20240307-v1:0"}
  - {name: plain-responses, base_url: "%s", model: plain-model, api_key_env: %s,
     responses: true}
routes:
  - {name: to-claude, deployments: [claude]}
  - {name: to-azure, deployments: [azure-gpt]}
  - {name: claude-or-plain, deployments: [claude], fallbacks: [plain]}
  - {name: claude-cached, deployments: [claude], cache: {ttl_s: 600, when: always}}
  - {name: to-gemini, deployments: [gem]}
  - {name: to-bedrock, deployments: [nova]}
  - {name: plain-then-claude, deployments: [plain], fallbacks: [claude]}
  - {name: to-responses, deployments: [plain-responses]}
  - {name: claude-then-responses, deployments: [claude], fallbacks: [plain-responses]}
  - {name: gemini-then-claude, deployments: [gem], fallbacks: [claude]}
  - {name: bedrock-then-claude, deployments: [nova], fallbacks: [claude]}
""" % (claude.url, KEY_ENV, plain.port, KEY_ENV, plain.url, KEY_ENV, plain.port, KEY_ENV,
       plain.port, plain.url, KEY_ENV),
            env={KEY_ENV: KEY, "LLMEDGE_LOG_LEVEL": "info", **aws_env(workdir, KEY)},
            name="llmedge-providers")
        started.append(edge)
        yield edge, claude, plain
    finally:
        codes = {proc.label: proc.stop() for proc in started}
        assert all(code == 0 for code in codes.values()), codes
        if started and isinstance(started[-1], Llmedge):
            assert "Traceback" not in started[-1].stderr(), started[-1].stderr()[-5000:]


@pytest.fixture
def env(native):
    for sim in native[1:]:
        sim.reset(config=True)
    return native


def anthropic_client(edge) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=edge.root, api_key="client-key", max_retries=0,
                               timeout=IO_TIMEOUT)


def tool_round_trip(edge, route: str, stream: bool):
    """Ask for the weather with the tool offered, then answer the call the model made:
    (the call's id, name and arguments, the first answer's finish reasons, the second
    answer's text)."""
    question = [{"role": "user", "content": "Weather in Oslo?"}]
    with edge.client() as c:
        if stream:
            chunks = list(c.chat.completions.create(model=route, messages=question,
                                                    tools=[TOOL], stream=True))
            deltas = [d for ch in chunks if ch.choices
                      for d in ch.choices[0].delta.tool_calls or ()]
            call_id, name = deltas[0].id, deltas[0].function.name
            arguments = "".join(d.function.arguments or "" for d in deltas)
            finish = [ch.choices[0].finish_reason for ch in chunks
                      if ch.choices and ch.choices[0].finish_reason]
        else:
            first = c.chat.completions.create(model=route, messages=question, tools=[TOOL])
            call = first.choices[0].message.tool_calls[0]
            call_id, name, arguments = call.id, call.function.name, call.function.arguments
            finish = [first.choices[0].finish_reason]
        second = c.chat.completions.create(model=route, tools=[TOOL], messages=[
            *question,
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function",
                 "function": {"name": name, "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": call_id, "content": "Sunny, 21 C"}])
    return call_id, name, arguments, finish, second.choices[0].message.content


# === provider: anthropic ===

def test_a_chat_completion_answered_by_the_messages_api(env):
    edge, claude, _ = env
    with edge.client() as c:
        raw = c.chat.completions.with_raw_response.create(
            model="to-claude", max_tokens=50, temperature=0.2, stop="NEVER",
            messages=[{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Say something."}])
        answer = raw.parse()
    assert answer.choices[0].message.content == REPLY
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens > 0
    assert answer.usage.completion_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert raw.headers["x-llmedge-upstream"] == "claude"
    stats = claude.stats()
    assert stats["messages"] == 1 and stats["chat"] == 0
    assert stats["last_path"] == "/v1/messages"
    headers = stats["last_headers"]
    assert headers["x-api-key"] == KEY and headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers   # the client's own key is never forwarded
    sent = stats["last_body"]
    assert sent["model"] == "claude-sim" and sent["max_tokens"] == 50
    assert sent["system"] == "Be brief." and sent["temperature"] == 0.2
    assert sent["stop_sequences"] == ["NEVER"]
    assert sent["messages"] == [{"role": "user",
                                 "content": [{"type": "text", "text": "Say something."}]}]


def test_a_chat_stream_answered_by_the_messages_api(env):
    edge, claude, _ = env
    with edge.client() as c:
        chunks = list(c.chat.completions.create(
            model="to-claude", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Say something."}]))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == REPLY
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices
                and ch.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    sent = claude.stats()["last_body"]
    assert sent["stream"] is True and "stream_options" not in sent
    assert sent["max_tokens"] == 4096   # Anthropic requires it; the client left it out


def test_a_stream_without_usage_asked_gets_none(env):
    edge, _, _ = env
    with edge.client() as c:
        chunks = list(c.chat.completions.create(
            model="to-claude", stream=True,
            messages=[{"role": "user", "content": "Say something."}]))
    assert all(ch.usage is None for ch in chunks)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == REPLY


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_round_trip_through_the_openai_sdk(env, stream):
    edge, claude, _ = env
    call_id, name, arguments, finish, second = tool_round_trip(edge, "to-claude", stream)
    assert finish == ["tool_calls"]
    assert name == "get_weather" and json.loads(arguments) == {"city": "sim"}
    sent = claude.stats()["last_body"]
    assert sent["tools"] == [{"name": "get_weather", "description": "The weather in a city.",
                              "input_schema": TOOL["function"]["parameters"]}]
    assert second == "The tool answered: Sunny, 21 C"
    turns = claude.stats()["last_body"]["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"] == [{"type": "tool_use", "id": call_id, "name": "get_weather",
                                    "input": {"city": "sim"}}]
    assert turns[2]["content"] == [{"type": "tool_result", "tool_use_id": call_id,
                                    "content": "Sunny, 21 C"}]


def test_the_anthropic_sdk_through_llmedge_to_the_messages_api(env):
    edge, claude, _ = env
    tool = {"name": "get_weather", "description": "The weather in a city.",
            "input_schema": TOOL["function"]["parameters"]}
    question = {"role": "user", "content": "Weather in Oslo?"}
    with anthropic_client(edge) as c:
        first = c.messages.create(model="to-claude", max_tokens=100, tools=[tool],
                                  messages=[question])
        assert first.stop_reason == "tool_use"
        use = [b for b in first.content if b.type == "tool_use"][0]
        assert use.name == "get_weather" and use.input == {"city": "sim"}
        with c.messages.stream(model="to-claude", max_tokens=100, tools=[tool], messages=[
                question, {"role": "assistant", "content": [use.model_dump()]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                              "content": "Sunny"}]}]) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert text == "The tool answered: Sunny"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    assert claude.stats()["messages"] == 2


def test_a_streamed_tool_call_reaches_the_anthropic_sdk_whole(env):
    edge, _, _ = env
    tool = {"name": "lookup", "input_schema": {
        "type": "object", "properties": {"id": {"type": "integer"}, "q": {"type": "string"}},
        "required": ["id", "q"]}}
    with anthropic_client(edge) as c:
        with c.messages.stream(model="to-claude", max_tokens=100, tools=[tool],
                               tool_choice={"type": "tool", "name": "lookup"},
                               messages=[{"role": "user", "content": "Find it."}]) as stream:
            final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [(b.type, b.name, b.input) for b in final.content] == [
        ("tool_use", "lookup", {"id": 1, "q": "sim"})]


def test_overloaded_529_falls_back_like_a_503(env):
    edge, claude, plain = env
    claude.configure(status=529)
    with edge.client() as c:
        raw = c.chat.completions.with_raw_response.create(
            model="claude-or-plain", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-llmedge-upstream"] == "plain"
    assert raw.parse().choices[0].message.content == REPLY
    assert claude.stats()["errors_injected"] == 1 and plain.stats()["chat"] == 1
    # With nowhere else to go the client hears it as a 503, in Anthropic's words.
    with edge.client() as c, pytest.raises(openai.APIStatusError) as caught:
        c.chat.completions.create(model="to-claude",
                                  messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503
    assert "simulated upstream error 529" in str(caught.value)


def test_requests_the_messages_api_cannot_take_are_refused_with_the_reason(env):
    edge, claude, _ = env
    with edge.client() as c:
        with pytest.raises(openai.BadRequestError) as caught:
            c.chat.completions.create(model="to-claude", n=2,
                                      messages=[{"role": "user", "content": "hi"}])
        assert "n: Anthropic answers one choice" in str(caught.value)
        with pytest.raises(openai.BadRequestError) as caught:
            c.embeddings.create(model="to-claude", input="hi")
        assert "no /v1/embeddings" in str(caught.value)
    assert claude.stats()["messages"] == 0   # refused before anything was sent
    # ... and a candidate that can take it does.
    with edge.client() as c:
        answer = c.chat.completions.create(model="claude-or-plain", n=2,
                                           messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == REPLY


def test_an_image_goes_as_an_anthropic_image_block(env):
    edge, claude, _ = env
    with edge.client() as c:
        c.chat.completions.create(model="to-claude", messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is it?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert claude.stats()["last_body"]["messages"][0]["content"] == [
        {"type": "text", "text": "What is it?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}]


# === provider: azure ===

@pytest.mark.parametrize("stream", [False, True])
def test_azure_openai_paths_and_key(env, stream):
    edge, _, plain = env
    with edge.client() as c:
        if stream:
            text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
                model="to-azure", stream=True, messages=[{"role": "user", "content": "hi"}])
                if ch.choices)
        else:
            text = c.chat.completions.create(
                model="to-azure", messages=[{"role": "user", "content": "hi"}]
            ).choices[0].message.content
    assert text == REPLY
    stats = plain.stats()
    assert stats["azure"] == 1
    assert stats["last_path"] == ("/openai/deployments/my-gpt-deployment/chat/completions"
                                  "?api-version=2024-10-21")
    assert stats["last_headers"]["api-key"] == KEY
    assert "authorization" not in stats["last_headers"]


def test_azure_embeddings(env):
    edge, _, plain = env
    with edge.client() as c:
        result = c.embeddings.create(model="to-azure", input=["a", "b"])
    assert len(result.data) == 2
    assert plain.stats()["last_path"].startswith(
        "/openai/deployments/my-gpt-deployment/embeddings?api-version=")


def test_the_simulators_refuse_a_missing_key(env):
    _, claude, plain = env
    resp = http_call(claude.port, "POST", "/v1/messages", {
        "model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        headers={"anthropic-version": "2023-06-01"})
    assert resp.status == 401 and resp.json()["error"]["type"] == "authentication_error"
    resp = http_call(plain.port, "POST", "/openai/deployments/d/chat/completions"
                     "?api-version=2024-10-21", {"messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 401


# === the Messages API to provider: anthropic: passed through ===

def sse_kinds(raw: bytes) -> list[str]:
    return [line[7:] for line in raw.decode().split("\n") if line.startswith("event: ")]


def test_a_messages_request_to_an_anthropic_deployment_goes_as_the_client_sent_it(env):
    edge, claude, _ = env
    body = {"model": "to-claude", "max_tokens": 64, "top_k": 5,
            "thinking": {"type": "enabled", "budget_tokens": 32},
            "system": [{"type": "text", "text": "Be brief.",
                        "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "Say something."}]}
    resp = http_call(edge.port, "POST", "/v1/messages", body,
                     headers={"x-api-key": "client-key", "anthropic-version": "2023-06-01"})
    assert resp.status == 200, resp
    # Untranslated both ways: what the provider got is the client's body but for the
    # model, and what the client got is the provider's own answer (its id, its model).
    assert claude.stats()["last_body"] == {**body, "model": "claude-sim"}
    answer = resp.json()
    assert answer["id"].startswith("msg_sim") and answer["model"] == "claude-sim"
    assert answer["content"] == [{"type": "text", "text": REPLY}]
    assert resp.headers["x-llmedge-upstream"] == "claude"
    assert resp.headers["request-id"] == resp.headers["x-request-id"]


def test_a_passed_through_stream_is_the_providers_own_events(env):
    edge, claude, _ = env
    body = {"model": "to-claude", "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": "Stream."}]}
    resp = http_call(edge.port, "POST", "/v1/messages", body,
                     headers={"x-api-key": "client-key", "anthropic-version": "2023-06-01"})
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream")
    # The simulator's order (a translation would put ping right after message_start).
    kinds = sse_kinds(resp.body)
    assert kinds[:3] == ["message_start", "content_block_start", "ping"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert b'"id":"msg_sim' in resp.body
    # The SDK reads the same stream whole.
    with anthropic_client(edge) as c:
        with c.messages.stream(model="to-claude", max_tokens=64,
                               messages=[{"role": "user", "content": "Stream."}]) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert text == REPLY and final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    assert claude.stats()["last_body"]["stream"] is True


@pytest.mark.parametrize("stream", [False, True])
def test_a_messages_request_falls_back_from_anthropic_to_openai(env, stream):
    edge, claude, plain = env
    claude.configure(status=529)
    with anthropic_client(edge) as c:
        if stream:
            with c.messages.stream(model="claude-or-plain", max_tokens=64,
                                   messages=[{"role": "user", "content": "hi"}]) as s:
                message = s.get_final_message()
        else:
            message = c.messages.create(model="claude-or-plain", max_tokens=64,
                                        messages=[{"role": "user", "content": "hi"}])
    # Answered by the OpenAI-compatible fallback, translated as for any OpenAI upstream.
    assert message.content[0].text == REPLY
    assert not message.id.startswith("msg_sim")
    assert claude.stats()["errors_injected"] == 1 and plain.stats()["chat"] == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_passed_through_answer_is_cached(env, stream):
    edge, claude, _ = env
    question = [{"role": "user", "content": "Cache me %s." % stream}]
    with anthropic_client(edge) as c:
        def ask():
            if stream:
                raw = c.messages.with_raw_response.create(
                    model="claude-cached", max_tokens=64, messages=question, stream=True)
                text = "".join(event.delta.text for event in raw.parse()
                               if event.type == "content_block_delta")
                return raw.headers["x-llmedge-cache"], text
            raw = c.messages.with_raw_response.create(model="claude-cached", max_tokens=64,
                                                      messages=question)
            return raw.headers["x-llmedge-cache"], raw.parse().content[0].text
        assert ask() == ("miss", REPLY)
        assert ask() == ("hit", REPLY)
    assert claude.stats()["messages"] == 1


# === provider: gemini ===

@pytest.mark.parametrize("stream", [False, True])
def test_a_chat_completion_answered_by_gemini(env, stream):
    edge, _, plain = env
    with edge.client() as c:
        request = dict(model="to-gemini", temperature=0.3, max_tokens=40, stop=["NEVER"],
                       messages=[{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Say something."}])
        if stream:
            chunks = list(c.chat.completions.create(
                **request, stream=True, stream_options={"include_usage": True}))
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            finish = [ch.choices[0].finish_reason for ch in chunks
                      if ch.choices and ch.choices[0].finish_reason]
            usage = chunks[-1].usage
        else:
            answer = c.chat.completions.create(**request)
            text, finish = answer.choices[0].message.content, [answer.choices[0].finish_reason]
            usage = answer.usage
    assert text == REPLY and finish == ["stop"]
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    stats = plain.stats()
    assert stats["gemini"] == 1
    assert stats["last_path"] == ("/v1beta/models/gemini-sim:streamGenerateContent?alt=sse"
                                  if stream else "/v1beta/models/gemini-sim:generateContent")
    assert stats["last_headers"]["x-goog-api-key"] == KEY
    assert "authorization" not in stats["last_headers"]
    sent = stats["last_body"]
    assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert sent["contents"] == [{"role": "user", "parts": [{"text": "Say something."}]}]
    assert sent["generationConfig"] == {"temperature": 0.3, "maxOutputTokens": 40,
                                        "stopSequences": ["NEVER"]}


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_round_trip_through_gemini(env, stream):
    edge, _, plain = env
    call_id, name, arguments, finish, second = tool_round_trip(edge, "to-gemini", stream)
    assert finish == ["tool_calls"] and call_id
    assert name == "get_weather" and json.loads(arguments) == {"city": "sim"}
    assert plain.stats()["last_body"]["tools"] == [{"functionDeclarations": [{
        "name": "get_weather", "description": "The weather in a city.",
        "parameters": TOOL["function"]["parameters"]}]}]
    assert second == "The tool answered: Sunny, 21 C"
    contents = plain.stats()["last_body"]["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    assert contents[1]["parts"] == [{"functionCall": {"name": "get_weather",
                                                      "args": {"city": "sim"}}}]
    # Gemini matches a result to its call by the function's name.
    assert contents[2]["parts"] == [{"functionResponse": {
        "name": "get_weather", "response": {"content": "Sunny, 21 C"}}}]


def test_the_anthropic_sdk_and_the_responses_api_in_front_of_gemini(env):
    edge, _, _ = env
    tool = {"name": "get_weather", "input_schema": TOOL["function"]["parameters"]}
    with anthropic_client(edge) as c:
        with c.messages.stream(model="to-gemini", max_tokens=64, tools=[tool],
                               messages=[{"role": "user", "content": "Weather?"}]) as s:
            final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [(b.name, b.input) for b in final.content if b.type == "tool_use"] == [
        ("get_weather", {"city": "sim"})]
    with edge.client() as c:
        response = c.responses.create(model="to-gemini", input="Say something.")
        streamed = [e for e in c.responses.create(model="to-gemini", input="Say something.",
                                                  stream=True)]
    assert response.output_text == REPLY
    assert streamed[-1].type == "response.completed"
    assert streamed[-1].response.output_text == REPLY


def test_a_gemini_stream_cut_short_is_not_passed_off_as_whole(env):
    edge, _, plain = env
    plain.configure(drop_after=2)
    with edge.client() as c, pytest.raises(openai.APIError):
        for _ in c.chat.completions.create(model="to-gemini", stream=True,
                                           messages=[{"role": "user", "content": "hi"}]):
            pass


# === provider: bedrock ===

BEDROCK_PATH = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"


@pytest.mark.parametrize("stream", [False, True])
def test_a_chat_completion_answered_by_bedrock_converse(env, stream):
    edge, _, plain = env
    with edge.client() as c:
        request = dict(model="to-bedrock", temperature=0.1, max_tokens=30, stop="NEVER",
                       messages=[{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Say something."}])
        if stream:
            chunks = list(c.chat.completions.create(
                **request, stream=True, stream_options={"include_usage": True}))
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            finish = [ch.choices[0].finish_reason for ch in chunks
                      if ch.choices and ch.choices[0].finish_reason]
            usage = chunks[-1].usage
        else:
            answer = c.chat.completions.create(**request)
            text, finish = answer.choices[0].message.content, [answer.choices[0].finish_reason]
            usage = answer.usage
    assert text == REPLY and finish == ["stop"]
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    stats = plain.stats()
    assert stats["bedrock"] == 1 and stats["bad_signatures"] == 0
    assert stats["last_path"] == BEDROCK_PATH + ("-stream" if stream else "")
    authorization = stats["last_headers"]["authorization"]
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=%s/" % AWS_KEY_ID)
    assert "/us-west-2/bedrock/aws4_request" in authorization
    sent = stats["last_body"]
    assert sent["system"] == [{"text": "Be brief."}]
    assert sent["messages"] == [{"role": "user", "content": [{"text": "Say something."}]}]
    assert sent["inferenceConfig"] == {"maxTokens": 30, "temperature": 0.1,
                                       "stopSequences": ["NEVER"]}


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_round_trip_through_bedrock(env, stream):
    edge, _, plain = env
    call_id, name, arguments, finish, second = tool_round_trip(edge, "to-bedrock", stream)
    assert finish == ["tool_calls"] and call_id.startswith("tooluse_sim")
    assert name == "get_weather" and json.loads(arguments) == {"city": "sim"}
    assert plain.stats()["last_body"]["toolConfig"] == {"tools": [{"toolSpec": {
        "name": "get_weather", "description": "The weather in a city.",
        "inputSchema": {"json": TOOL["function"]["parameters"]}}}]}
    assert second == "The tool answered: Sunny, 21 C"
    turns = plain.stats()["last_body"]["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"] == [{"toolUse": {"toolUseId": call_id, "name": "get_weather",
                                                "input": {"city": "sim"}}}]
    assert turns[2]["content"] == [{"toolResult": {"toolUseId": call_id,
                                                   "content": [{"text": "Sunny, 21 C"}]}}]
    assert plain.stats()["bad_signatures"] == 0


def test_the_anthropic_sdk_in_front_of_bedrock(env):
    edge, _, _ = env
    tool = {"name": "get_weather", "input_schema": TOOL["function"]["parameters"]}
    with anthropic_client(edge) as c:
        with c.messages.stream(model="to-bedrock", max_tokens=64, tools=[tool],
                               messages=[{"role": "user", "content": "Weather?"}]) as s:
            final = s.get_final_message()
        text = c.messages.create(model="to-bedrock", max_tokens=64, messages=[
            {"role": "user", "content": "Say something."}]).content[0].text
    assert final.stop_reason == "tool_use"
    assert [(b.name, b.input) for b in final.content if b.type == "tool_use"] == [
        ("get_weather", {"city": "sim"})]
    assert text == REPLY


def signed(body: bytes, secret: str, port: int) -> dict:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    request = AWSRequest("POST", "http://127.0.0.1:%d%s" % (port, BEDROCK_PATH), data=body,
                         headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(AWS_KEY_ID, secret), "bedrock", "us-west-2").add_auth(request)
    return {"authorization": request.headers["Authorization"],
            "x-amz-date": request.headers["X-Amz-Date"]}


def test_the_bedrock_simulator_checks_signatures(env):
    _, _, plain = env
    body = json.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}).encode()
    good = http_call(plain.port, "POST", BEDROCK_PATH, body, headers=signed(body, KEY,
                                                                           plain.port))
    assert good.status == 200, good
    wrong_key = http_call(plain.port, "POST", BEDROCK_PATH, body,
                          headers=signed(body, "not-the-secret", plain.port))
    assert wrong_key.status == 403
    assert wrong_key.headers["x-amzn-errortype"] == "InvalidSignatureException"
    tampered = http_call(plain.port, "POST", BEDROCK_PATH, body.replace(b"hi", b"ho"),
                         headers=signed(body, KEY, plain.port))
    assert tampered.status == 403
    unsigned = http_call(plain.port, "POST", BEDROCK_PATH, body)
    assert unsigned.status == 403
    assert plain.stats()["bad_signatures"] == 3


def test_bedrock_without_aws_credentials_is_unusable_and_says_why(start_edge, env, tmp_path):
    _, _, plain = env
    edge = start_edge("""server: {http: "127.0.0.1:0"}
upstream: {health: {enabled: false}}
deployments:
  - {name: nova, provider: bedrock, region: us-west-2, base_url: "http://127.0.0.1:%d",
     model: m}
routes:
  - {name: to-bedrock, deployments: [nova]}
""" % plain.port, env=aws_env(tmp_path, None))
    with edge.client() as c, pytest.raises(openai.APIStatusError) as caught:
        c.chat.completions.create(model="to-bedrock",
                                  messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503
    assert "no AWS credentials" in str(caught.value)
    assert plain.stats()["bedrock"] == 0


# === POST /v1/messages/count_tokens ===

def test_count_tokens_is_answered_by_an_anthropic_deployment(env):
    edge, claude, _ = env
    with anthropic_client(edge) as c:
        count = c.messages.count_tokens(
            model="to-claude", system="Be brief.",
            messages=[{"role": "user", "content": "How many tokens is this?"}])
    stats = claude.stats()
    assert stats["count_tokens"] == 1 and stats["messages"] == 0
    assert stats["last_path"] == "/v1/messages/count_tokens"
    assert stats["last_body"] == {
        "model": "claude-sim", "system": "Be brief.",
        "messages": [{"role": "user", "content": "How many tokens is this?"}]}
    assert count.input_tokens > 0


def test_count_tokens_skips_deployments_that_cannot_count(env):
    edge, claude, plain = env
    with anthropic_client(edge) as c:
        with pytest.raises(anthropic.BadRequestError) as caught:
            c.messages.count_tokens(model="to-gemini",
                                    messages=[{"role": "user", "content": "hi"}])
    assert "does not count tokens" in str(caught.value)
    assert plain.stats()["gemini"] == 0   # nothing was sent
    # A route whose first choice cannot count falls back to one that can.
    with anthropic_client(edge) as c:
        assert c.messages.count_tokens(model="plain-then-claude", messages=[
            {"role": "user", "content": "hi"}]).input_tokens > 0
    assert claude.stats()["count_tokens"] == 1 and plain.stats()["chat"] == 0


# === the Responses API to a deployment with responses: true: passed through ===

def test_a_responses_request_passes_to_a_deployment_that_speaks_it(env):
    edge, _, plain = env
    with edge.client() as c:
        raw = c.responses.with_raw_response.create(
            model="to-responses", input="Say something.", instructions="Be brief.",
            reasoning={"effort": "low"}, store=False)
        response = raw.parse()
    assert response.output_text == REPLY
    assert response.id.startswith("resp_sim")   # the upstream's own object, not a translation
    assert raw.headers["x-llmedge-upstream"] == "plain-responses"
    stats = plain.stats()
    assert stats["responses"] == 1 and stats["chat"] == 0
    assert stats["last_path"] == "/v1/responses"
    assert stats["last_body"] == {"model": "plain-model", "input": "Say something.",
                                  "instructions": "Be brief.", "reasoning": {"effort": "low"},
                                  "store": False}
    # Chat Completions to the same deployment stay Chat Completions.
    with edge.client() as c:
        c.chat.completions.create(model="to-responses",
                                  messages=[{"role": "user", "content": "hi"}])
    assert plain.stats()["chat"] == 1 and plain.stats()["last_path"] == "/v1/chat/completions"


def test_a_passed_through_responses_stream_and_tool_round_trip(env):
    edge, _, plain = env
    tool = {"type": "function", "name": "get_weather", "description": "The weather.",
            "parameters": TOOL["function"]["parameters"]}
    with edge.client() as c:
        events = list(c.responses.create(model="to-responses", input="Stream.", stream=True))
        first = c.responses.create(model="to-responses", input="Weather in Oslo?",
                                   tools=[tool])
        [call] = [item for item in first.output if item.type == "function_call"]
        second = c.responses.create(model="to-responses", tools=[tool], input=[
            {"role": "user", "content": "Weather in Oslo?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name,
             "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}])
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[-1].response.id.startswith("resp_sim")
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == REPLY
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "sim"}
    assert second.output_text == "The tool answered: Sunny"
    assert plain.stats()["responses"] == 3 and plain.stats()["chat"] == 0


@pytest.mark.parametrize("stream", [False, True])
def test_a_responses_request_falls_back_from_a_translation_to_a_passthrough(env, stream):
    edge, claude, plain = env
    claude.configure(status=529)
    with edge.client() as c:
        if stream:
            events = list(c.responses.create(model="claude-then-responses", input="hi",
                                             stream=True))
            response = events[-1].response
        else:
            response = c.responses.create(model="claude-then-responses", input="hi")
    assert claude.stats()["errors_injected"] == 1
    assert response.output_text == REPLY and response.id.startswith("resp_sim")
    assert plain.stats()["responses"] == 1


# === failure classes across providers ===

@pytest.mark.parametrize("route, refusing, answering", [
    ("claude-or-plain", "claude", "plain"),
    ("gemini-then-claude", "plain", "claude"),
    ("bedrock-then-claude", "plain", "claude"),
])
def test_a_prompt_too_long_for_one_provider_goes_to_the_next(env, route, refusing, answering):
    """Each provider says "too long" in its own words (Anthropic's "prompt is too long",
    Gemini's "exceeds the maximum number of tokens", Bedrock's "Input is too long"); each is
    the context-window refusal that moves the prompt on rather than failing it."""
    edge, claude, plain = env
    sims = {"claude": claude, "plain": plain}
    sims[refusing].configure(context_window=5)
    with edge.client() as c:
        raw = c.chat.completions.with_raw_response.create(model=route, messages=[
            {"role": "user", "content": "A prompt longer than five tokens, by some way."}])
    assert raw.parse().choices[0].message.content == REPLY
    assert raw.headers["x-llmedge-attempts"] == "2"
    assert sims[refusing].stats()["context_exceeded"] == 1
    assert sims[answering].stats()["context_exceeded"] == 0


# === the gRPC front end to every provider ===

# === every provider behind both SDKs ===

PROVIDER_ROUTES = ["to-claude", "to-azure", "to-gemini", "to-bedrock"]


# The simulator's Chat Completions answer calls no tools, so Azure's tool round trip (the
# same translation as any OpenAI-compatible upstream's) is tested against a scripted
# upstream in test_messages_api.py; here Azure answers text.
@pytest.mark.parametrize("stream_first", [False, True])
@pytest.mark.parametrize("route", ["to-claude", "to-gemini", "to-bedrock"])
def test_the_anthropic_sdk_round_trips_a_tool_call_through_every_native_provider(
        env, route, stream_first):
    edge, _, _ = env
    tool = {"name": "get_weather", "description": "The weather in a city.",
            "input_schema": TOOL["function"]["parameters"]}
    question = {"role": "user", "content": "Weather in Oslo?"}
    with anthropic_client(edge) as c:
        if stream_first:
            with c.messages.stream(model=route, max_tokens=100, tools=[tool],
                                   messages=[question]) as stream:
                first = stream.get_final_message()
        else:
            first = c.messages.create(model=route, max_tokens=100, tools=[tool],
                                      messages=[question])
        assert first.stop_reason == "tool_use"
        use = [b for b in first.content if b.type == "tool_use"][0]
        assert use.name == "get_weather" and use.input == {"city": "sim"}
        follow_up = dict(model=route, max_tokens=100, tools=[tool], messages=[
            question, {"role": "assistant", "content": [use.model_dump()]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                          "content": "Sunny"}]}])
        if stream_first:
            second = c.messages.create(**follow_up)
            text = second.content[0].text
        else:
            with c.messages.stream(**follow_up) as stream:
                text = "".join(stream.text_stream)
                second = stream.get_final_message()
    assert text == "The tool answered: Sunny"
    assert second.stop_reason == "end_turn" and second.usage.output_tokens > 0


def test_the_anthropic_sdk_through_azure(env):
    edge, _, plain = env
    question = [{"role": "user", "content": "Hi."}]
    with anthropic_client(edge) as c:
        whole = c.messages.create(model="to-azure", max_tokens=100, messages=question)
        with c.messages.stream(model="to-azure", max_tokens=100, messages=question) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
    assert whole.content[0].text == text == REPLY
    assert whole.stop_reason == final.stop_reason == "end_turn"
    assert plain.stats()["azure"] == 2


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("route", PROVIDER_ROUTES)
def test_the_openai_sdk_chat_and_responses_through_every_provider(env, route, stream):
    edge, _, _ = env
    with edge.client() as c:
        if stream:
            chunks = list(c.chat.completions.create(
                model=route, stream=True, messages=[{"role": "user", "content": "Hi."}]))
            chat = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            events = list(c.responses.create(model=route, input="Hi.", stream=True))
            assert events[0].type == "response.created"
            assert events[-1].type == "response.completed"
            responses = "".join(e.delta for e in events
                                if e.type == "response.output_text.delta")
            assert events[-1].response.output_text == responses
        else:
            chat = c.chat.completions.create(
                model=route, messages=[{"role": "user", "content": "Hi."}]
            ).choices[0].message.content
            responses = c.responses.create(model=route, input="Hi.").output_text
    assert chat == REPLY and responses == REPLY


@pytest.mark.parametrize("route", ["to-claude", "to-gemini", "to-bedrock", "to-azure"])
def test_grpc_calls_reach_every_provider(env, route):
    import grpc

    from proxy.grpc._gen import gateway_pb2 as pb
    from proxy.grpc._gen import gateway_pb2_grpc as pb_grpc
    edge, _, _ = env
    request = pb.ChatRequest(model=route, messages=[pb.Message(role="user", content="hi")])
    with grpc.insecure_channel("127.0.0.1:%d" % edge.grpc_port) as channel:
        stub = pb_grpc.GatewayStub(channel)
        answer, call = stub.Chat.with_call(request, timeout=IO_TIMEOUT)
        chunks = list(stub.ChatStream(request, timeout=IO_TIMEOUT))
    assert answer.choices[0].message.content == REPLY
    assert answer.choices[0].finish_reason == pb.FINISH_REASON_STOP
    assert answer.usage.completion_tokens > 0
    assert dict(call.initial_metadata())["x-llmedge-route"] == route
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == REPLY
    assert [c.choices[0].finish_reason for c in chunks if c.choices
            and c.choices[0].finish_reason] == [pb.FINISH_REASON_STOP]
