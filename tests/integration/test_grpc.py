"""The gRPC front end, end to end: generated stubs over real sockets, llmedge and simulators
as processes. The same request path as HTTP, so these check the translation both ways, the
status mapping, metadata, deadlines, cancellation and the service's own health/reflection."""

from __future__ import annotations

import json
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import DRAIN_TIMEOUT_S, REPLIES, edge_config
from procs import wait_for
from proxy.grpc._gen import gateway_pb2 as pb
from proxy.grpc._gen import gateway_pb2_grpc as pb_grpc

CALL_TIMEOUT = 30.0
CACHED_ROUTE = """\
  - name: cached
    deployments: [gamma]
    cache: {ttl_s: 600}
  - name: sticky
    deployments: [alpha, beta]
    affinity: session
"""


@pytest.fixture
def gedge(sims, dead_port, start_edge):
    """An llmedge with both front ends (uvloop)."""
    return start_edge(edge_config(sims, dead_port, server="  grpc: 127.0.0.1:0")
                      + CACHED_ROUTE)


@pytest.fixture
def channel(gedge):
    with grpc.insecure_channel("127.0.0.1:%d" % gedge.grpc_port) as ch:
        yield ch


@pytest.fixture
def stub(channel):
    return pb_grpc.GatewayStub(channel)


def ask(model="auto", text="Say hello.", **kw) -> pb.ChatRequest:
    return pb.ChatRequest(model=model, messages=[pb.Message(role="user", content=text)], **kw)


def initial(call) -> dict[str, str]:
    return dict(call.initial_metadata())


def trailing(err: grpc.RpcError) -> dict[str, str]:
    return dict(err.trailing_metadata() or ())


def expect_error(fn, code: grpc.StatusCode) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    assert info.value.code() == code, (info.value.code(), info.value.details())
    return info.value


# === chat ===

def test_unary_chat_answers_through_the_route(sims, stub):
    resp, call = stub.Chat.with_call(ask(temperature=0.25, max_tokens=64, seed=7),
                                     timeout=CALL_TIMEOUT)
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == REPLIES["alpha"]
    assert resp.choices[0].finish_reason == pb.FINISH_REASON_STOP
    assert resp.model == "alpha-model"
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens > 0
    meta = initial(call)
    assert meta["x-llmedge-route"] == "auto"
    assert meta["x-llmedge-upstream"] == "alpha"
    assert meta["x-llmedge-attempts"] == "1"
    assert meta["x-llmedge-cache"] == "bypass"
    assert meta["x-request-id"]
    body = sims.alpha.stats()["last_body"]
    assert body["model"] == "alpha-model"
    assert body["temperature"] == 0.25 and body["max_tokens"] == 64 and body["seed"] == 7
    assert "stream" not in body


def test_request_fields_reach_the_upstream_losslessly(sims, stub):
    tool = pb.Tool(function=pb.FunctionDefinition(
        name="lookup", description="find a thing",
        parameters_json='{"type":"object","properties":{"q":{"type":"string"}}}', strict=True))
    messages = [
        pb.Message(role="system", content="be brief"),
        pb.Message(role="user", parts=[
            pb.ContentPart(type="text", text="what is this?"),
            pb.ContentPart(image_url=pb.ImageUrl(url="data:image/png;base64,AAAA",
                                                 detail="low"))]),
        pb.Message(role="assistant", tool_calls=[pb.ToolCall(
            id="call_1", function=pb.FunctionCall(name="lookup", arguments='{"q":"x"}'))]),
        pb.Message(role="tool", tool_call_id="call_1", content="found",
                   extra_json='{"cache_hint":true}'),
    ]
    req = pb.ChatRequest(model="gamma", messages=messages, tools=[tool], tool_choice="auto",
                         response_format_json='{"type":"json_object"}', stop=["END"],
                         extra_json='{"logit_bias":{"50256":-100},"metadata":{"k":"v"}}')
    stub.Chat(req, timeout=CALL_TIMEOUT)
    body = sims.gamma.stats()["last_body"]
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                                "detail": "low"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "lookup", "arguments": '{"q":"x"}'}}]},
        {"role": "tool", "content": "found", "tool_call_id": "call_1", "cache_hint": True},
    ]
    assert body["tools"] == [{"type": "function", "function": {
        "name": "lookup", "description": "find a thing", "strict": True,
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]
    assert body["tool_choice"] == "auto"
    assert body["response_format"] == {"type": "json_object"}
    assert body["stop"] == ["END"]
    assert body["logit_bias"] == {"50256": -100} and body["metadata"] == {"k": "v"}


def test_streaming_chat_relays_chunks_as_they_come(sims, stub):
    sims.beta.configure(chunks=6)
    call = stub.ChatStream(ask("beta", include_usage=True), timeout=CALL_TIMEOUT)
    chunks = list(call)
    assert call.code() == grpc.StatusCode.OK
    text = "".join(c.choices[0].delta.content for c in chunks if c.choices)
    assert text == REPLIES["beta"]
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 6
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == pb.FINISH_REASON_STOP
    assert chunks[-1].usage.completion_tokens > 0
    assert initial(call)["x-llmedge-upstream"] == "beta"
    body = sims.beta.stats()["last_body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_failure_mid_stream_ends_with_an_error_status(sims, stub):
    sims.gamma.configure(drop_after=2)
    call = stub.ChatStream(ask("gamma"), timeout=CALL_TIMEOUT)
    got = []
    with pytest.raises(grpc.RpcError) as info:
        for chunk in call:
            got.append(chunk)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "mid-stream" in info.value.details()
    assert sum(1 for c in got if c.choices and c.choices[0].delta.content) == 2


def test_calls_without_a_deadline(stub):
    assert stub.Chat(ask("beta")).choices[0].message.content == REPLIES["beta"]
    assert "".join(c.choices[0].delta.content for c in stub.ChatStream(ask("beta"))
                   if c.choices) == REPLIES["beta"]


def test_fallback_when_the_first_deployment_is_down(stub):
    resp, call = stub.Chat.with_call(ask("via-dead"), timeout=CALL_TIMEOUT)
    assert resp.choices[0].message.content == REPLIES["beta"]
    meta = initial(call)
    assert meta["x-llmedge-upstream"] == "beta"
    assert meta["x-llmedge-attempts"] == "2"


def test_cache_hit_and_cache_control_metadata(sims, stub):
    req = ask("cached", temperature=0)
    _, first = stub.Chat.with_call(req, timeout=CALL_TIMEOUT)
    assert initial(first)["x-llmedge-cache"] == "miss"
    resp, second = stub.Chat.with_call(req, timeout=CALL_TIMEOUT)
    assert initial(second)["x-llmedge-cache"] == "hit"
    assert resp.choices[0].message.content == REPLIES["gamma"]
    streamed = stub.ChatStream(req, timeout=CALL_TIMEOUT)
    assert "".join(c.choices[0].delta.content for c in streamed if c.choices) \
        == REPLIES["gamma"]
    assert initial(streamed)["x-llmedge-cache"] == "hit"
    _, third = stub.Chat.with_call(req, metadata=[("cache-control", "no-cache")],
                                   timeout=CALL_TIMEOUT)
    assert initial(third)["x-llmedge-cache"] == "bypass"
    assert sims.gamma.stats()["chat"] == 2
    # Each credential has its own cache: another tenant's first call is a miss.
    for token, state in (("Bearer tenant-a", "miss"), ("Bearer tenant-a", "hit"),
                         ("Bearer tenant-b", "miss")):
        _, call = stub.Chat.with_call(req, metadata=[("authorization", token)],
                                      timeout=CALL_TIMEOUT)
        assert initial(call)["x-llmedge-cache"] == state, token


# === Route and ListModels ===

def test_route_decides_without_calling_an_upstream(sims, stub):
    decision = stub.Route(ask("auto"), timeout=CALL_TIMEOUT)
    assert decision.route == "auto"
    assert [t.deployment for t in decision.targets] == ["alpha", "beta", "gamma"]
    assert decision.targets[0].upstream_model == "alpha-model"
    assert decision.reason.startswith("ordered: alpha then beta,gamma")
    locked = stub.Route(ask("via-locked"), timeout=CALL_TIMEOUT)
    assert [(t.deployment, t.usable) for t in locked.targets] == [("locked", False),
                                                                   ("beta", True)]
    assert "LLMEDGE_TEST_UNSET_KEY" in locked.targets[0].unusable_reason
    assert sum(sim.stats()["chat"] for sim in sims) == 0
    err = expect_error(lambda: stub.Route(ask("nope"), timeout=CALL_TIMEOUT),
                       grpc.StatusCode.NOT_FOUND)
    assert "nope" in err.details()


def test_route_is_the_http_explainer(gedge, stub):
    decision = stub.Route(ask("auto"), timeout=CALL_TIMEOUT)
    assert decision.policy == "ordered"
    explained = json.loads(decision.explain_json)
    over_http = gedge.call("POST", "/v1/route", {
        "model": "auto", "messages": [{"role": "user", "content": "Say hello."}]}).json()
    for key in ("object", "route", "policy", "reason", "deployments", "path"):
        assert explained[key] == over_http[key], key


def test_asynchronous_routing_decisions(sims, start_edge):
    # A classify route that asks an LLM (gamma) for the class decides in a task of its own,
    # which then hands the request to the dispatching one.
    from test_classify_routing import _llm_route

    sims.gamma.configure(reply=" Code. ", chunks=1)
    edge = start_edge(_llm_route(sims, "always").replace(
        "  http: 127.0.0.1:0\n", "  http: 127.0.0.1:0\n  grpc: 127.0.0.1:0\n", 1))
    with grpc.insecure_channel("127.0.0.1:%d" % edge.grpc_port) as ch:
        stub = pb_grpc.GatewayStub(ch)
        resp, call = stub.Chat.with_call(ask(text="tell me a joke"), timeout=CALL_TIMEOUT)
        assert resp.choices[0].message.content == REPLIES["alpha"]
        assert "(LLM router)" in initial(call)["x-llmedge-decision"]
        stream = stub.ChatStream(ask(text="tell me a joke"), timeout=CALL_TIMEOUT)
        assert "".join(c.choices[0].delta.content for c in stream if c.choices) \
            == REPLIES["alpha"]
        decision = stub.Route(ask(text="tell me a joke"), timeout=CALL_TIMEOUT)
        assert decision.policy == "classify"
        assert [t.deployment for t in decision.targets] == ["alpha"]
        assert json.loads(decision.explain_json)["classification"]["llm"]["class"] == "code"


def test_route_uses_the_session_from_metadata_or_user(stub):
    by_metadata = stub.Route(ask("sticky"), metadata=[("x-llmedge-session", "user-42")],
                             timeout=CALL_TIMEOUT)
    assert by_metadata.session == "user-42"
    by_user = stub.Route(ask("sticky", user="user-7"), timeout=CALL_TIMEOUT)
    assert by_user.session == "user-7"
    assert stub.Route(ask("auto"), metadata=[("x-llmedge-session", "user-42")],
                      timeout=CALL_TIMEOUT).session == ""  # no affinity on this route


def test_list_models(stub):
    models = {m.id: m.owned_by for m in stub.ListModels(pb.ListModelsRequest(),
                                                        timeout=CALL_TIMEOUT).models}
    assert models["auto"] == "llmedge-route" and models["cached"] == "llmedge-route"
    assert models["alpha"] == "llmedge-deployment" and models["dead"] == "llmedge-deployment"


# === errors ===

@pytest.mark.parametrize("request_, needle", [
    (pb.ChatRequest(messages=[pb.Message(role="user", content="x")]), "model"),
    (pb.ChatRequest(model="auto"), "messages"),
    (pb.ChatRequest(model="auto", messages=[pb.Message(content="x")]), "role"),
    (ask(extra_json="[1, 2]"), "extra_json"),
    (ask(extra_json="{not json"), "extra_json"),
    (ask(extra_json='{"temperature": 1}', temperature=0.5), "temperature"),
    (ask(extra_json='{"stream": true}'), "stream"),
    (ask(tools=[pb.Tool(function=pb.FunctionDefinition(name="f", parameters_json="nope"))]),
     "parameters_json"),
])
def test_invalid_arguments(stub, request_, needle):
    err = expect_error(lambda: stub.Chat(request_, timeout=CALL_TIMEOUT),
                       grpc.StatusCode.INVALID_ARGUMENT)
    assert needle in err.details()


def test_unknown_model_and_unsatisfiable_tags(sims, stub):
    err = expect_error(lambda: stub.Chat(ask("no-such-route"), timeout=CALL_TIMEOUT),
                       grpc.StatusCode.NOT_FOUND)
    assert "no-such-route" in err.details()
    assert trailing(err)["x-llmedge-error-code"] == "model_not_found"
    err = expect_error(lambda: stub.Chat(ask(), metadata=[("x-llmedge-tags", "region=mars")],
                                         timeout=CALL_TIMEOUT),
                       grpc.StatusCode.INVALID_ARGUMENT)
    assert trailing(err)["x-llmedge-error-code"] == "unsatisfiable_tags"
    assert sum(sim.stats()["chat"] for sim in sims) == 0


@pytest.mark.parametrize("upstream_status, code", [
    (401, grpc.StatusCode.UNAUTHENTICATED),
    (403, grpc.StatusCode.PERMISSION_DENIED),
    (400, grpc.StatusCode.INVALID_ARGUMENT),
    (503, grpc.StatusCode.UNAVAILABLE),
    (500, grpc.StatusCode.UNAVAILABLE),   # the upstream failed, not llmedge: worth a retry
])
def test_upstream_statuses_map_to_codes(sims, stub, upstream_status, code):
    sims.gamma.configure(status=upstream_status)
    err = expect_error(lambda: stub.Chat(ask("gamma"), timeout=CALL_TIMEOUT), code)
    assert trailing(err)["x-llmedge-http-status"] == str(upstream_status)
    assert trailing(err)["x-llmedge-upstream"] == "gamma"


def test_rate_limit_is_resource_exhausted_with_retry_after(sims, gedge, stub):
    sims.gamma.configure(status=429, retry_after=7)
    err = expect_error(lambda: stub.ChatStream(ask("gamma"), timeout=CALL_TIMEOUT).next(),
                       grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert trailing(err)["retry-after"] == "7"
    assert ('llmedge_grpc_requests_total{code="RESOURCE_EXHAUSTED",method="ChatStream"} 1.0'
            in gedge.metrics())


# === deadlines and cancellation ===

def test_deadline_bounds_the_fallback_chain_and_aborts_the_upstream(sims, stub):
    # alpha times out on its own (first_byte_s 0.5) and beta then hangs: only the
    # client's deadline can end the call, and it must also end beta's request.
    for sim in (sims.alpha, sims.beta, sims.gamma):
        sim.configure(stall_after=0)
    err = expect_error(lambda: stub.Chat(ask("auto"), timeout=3.0),
                       grpc.StatusCode.DEADLINE_EXCEEDED)
    assert err is not None
    assert sims.alpha.stats()["chat"] == 1
    assert sims.beta.stats()["chat"] == 1
    # The abandoned upstream request is aborted, not left to generate.
    sims.beta.wait_stat("connections_closed", 1)


def test_stream_deadline_aborts_the_upstream_stream(sims, stub):
    sims.gamma.configure(tokens_per_s=2, chunks=40)
    call = stub.ChatStream(ask("gamma"), timeout=2.0)
    with pytest.raises(grpc.RpcError) as info:
        for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    sims.gamma.wait_stat("streams_aborted", 1)
    assert sims.gamma.stats()["streams_completed"] == 0


def test_client_cancellation_aborts_the_upstream_stream(sims, stub):
    sims.gamma.configure(tokens_per_s=5, chunks=100)
    call = stub.ChatStream(ask("gamma"), timeout=CALL_TIMEOUT)
    first = next(call)
    assert first.id
    call.cancel()
    sims.gamma.wait_stat("streams_aborted", 1)
    assert sims.gamma.stats()["streams_completed"] == 0


def test_client_cancellation_aborts_a_unary_upstream_request(sims, stub):
    sims.gamma.configure(stall_after=0)
    future = stub.Chat.future(ask("gamma"), timeout=CALL_TIMEOUT)
    sims.gamma.wait_stat("chat", 1)
    opened = sims.gamma.stats()["connections_opened"]
    assert opened >= 1
    future.cancel()
    sims.gamma.wait_stat("connections_closed", opened)


# === health, reflection, drain ===

def test_health_is_serving_and_reflection_lists_the_services(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "llmedge.v1.Gateway"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    expect_error(lambda: health.Check(health_pb2.HealthCheckRequest(service="other"),
                                      timeout=CALL_TIMEOUT), grpc.StatusCode.NOT_FOUND)
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = list(refl.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=CALL_TIMEOUT))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"llmedge.v1.Gateway", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    files = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="llmedge.v1.Gateway")]), timeout=CALL_TIMEOUT))
    assert files[0].file_descriptor_response.file_descriptor_proto


def test_health_goes_not_serving_during_drain(sims, gedge, channel, stub):
    # A slow stream keeps the drain going while health and new calls are checked.
    sims.gamma.configure(tokens_per_s=4, chunks=8)
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service="llmedge.v1.Gateway"),
                         timeout=CALL_TIMEOUT)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    stream = stub.ChatStream(ask("gamma"), timeout=CALL_TIMEOUT)
    chunks = [next(stream)]
    gedge.send_signal(signal.SIGTERM)
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT)
    assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
    expect_error(lambda: stub.Chat(ask("beta"), timeout=CALL_TIMEOUT),
                 grpc.StatusCode.UNAVAILABLE)
    # The call in flight finishes whole.
    chunks += list(stream)
    assert stream.code() == grpc.StatusCode.OK
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == REPLIES["gamma"]
    assert gedge.wait(timeout=DRAIN_TIMEOUT_S + 10) == 0


# === both loops ===

@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_chat_on_each_loop(sims, dead_port, start_edge, loop):
    edge = start_edge(edge_config(sims, dead_port, server="  grpc: 127.0.0.1:0"),
                      args=["--loop", loop])
    with grpc.insecure_channel("127.0.0.1:%d" % edge.grpc_port) as ch:
        stub = pb_grpc.GatewayStub(ch)
        assert stub.Chat(ask("beta"), timeout=CALL_TIMEOUT).choices[0].message.content \
            == REPLIES["beta"]
        text = "".join(c.choices[0].delta.content for c in
                       stub.ChatStream(ask("beta"), timeout=CALL_TIMEOUT) if c.choices)
        assert text == REPLIES["beta"]
    metrics = edge.metrics()
    assert 'llmedge_grpc_requests_total{code="OK",method="Chat"} 1.0' in metrics
    assert 'llmedge_grpc_requests_total{code="OK",method="ChatStream"} 1.0' in metrics


def test_health_is_not_serving_while_unready(sims, start_edge):
    # Every deployment of the only route lacks its key: /readyz says 503, health agrees.
    edge = start_edge(f"""\
server:
  http: 127.0.0.1:0
  grpc: 127.0.0.1:0
deployments:
  - name: locked
    base_url: {sims.alpha.url}
    api_key_env: LLMEDGE_TEST_UNSET_KEY
routes:
  - name: auto
    deployments: [locked]
""")
    assert edge.call("GET", "/readyz").status == 503
    with grpc.insecure_channel("127.0.0.1:%d" % edge.grpc_port) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT)
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_limits_message_size_and_concurrent_calls(sims, dead_port, start_edge):
    edge = start_edge(edge_config(sims, dead_port, server="""\
  grpc: 127.0.0.1:0
  grpc_limits: {max_receive_message_bytes: 2048, max_concurrent_rpcs: 1}"""))
    sims.gamma.configure(stall_after=0)
    with grpc.insecure_channel("127.0.0.1:%d" % edge.grpc_port) as ch:
        stub = pb_grpc.GatewayStub(ch)
        err = expect_error(lambda: stub.Route(ask(text="x" * 4096), timeout=CALL_TIMEOUT),
                           grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "2048" in err.details(), err.details()
        held = stub.Chat.future(ask("gamma"), timeout=CALL_TIMEOUT)
        sims.gamma.wait_stat("chat", 1)
        expect_error(lambda: stub.Route(ask(), timeout=CALL_TIMEOUT),
                     grpc.StatusCode.RESOURCE_EXHAUSTED)
        held.cancel()


def test_bad_limits_are_config_errors():
    from proxy.config import parse
    from proxy.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        parse("""\
server: {grpc: "127.0.0.1:0", grpc_limits: {max_send_message_bytes: 0, keepalive_time_s: -1}}
deployments: [{name: a, base_url: "http://127.0.0.1:1/v1"}]
""")
    assert info.value.problems == [
        "server.grpc_limits.max_send_message_bytes: must be >= 1",
        "server.grpc_limits.keepalive_time_s: must be a positive number of seconds"]


def test_the_example_client_runs(gedge):
    import subprocess
    import sys

    from procs import REPO

    out = subprocess.run([sys.executable, str(REPO / "examples" / "grpc_client.py"),
                          "127.0.0.1:%d" % gedge.grpc_port, "beta"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "answered by beta via route beta after 1 attempt(s)" in out.stdout
    assert out.stdout.count(REPLIES["beta"]) == 2
    assert "route beta would try: beta" in out.stdout


def test_a_second_llmedge_cannot_take_the_grpc_port(sims, dead_port, start_edge, tmp_path):
    import subprocess
    import sys

    from procs import REPO, free_port

    port = free_port()
    config = edge_config(sims, dead_port, server="  grpc: 127.0.0.1:%d" % port)
    first = start_edge(config)
    assert first.grpc_port == port
    path = tmp_path / "second.yaml"
    path.write_text(config)
    second = subprocess.run([sys.executable, "-m", "proxy", "serve", "-c", str(path)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert second.returncode == 3
    assert "server.grpc: cannot listen on 127.0.0.1:%d" % port in second.stderr
    assert "LISTENING" not in second.stdout


def test_a_call_outliving_the_drain_ends_unavailable(sims, gedge, stub):
    sims.gamma.configure(stall_after=0)
    future = stub.Chat.future(ask("gamma"), timeout=CALL_TIMEOUT)
    sims.gamma.wait_stat("chat", 1)
    gedge.send_signal(signal.SIGTERM)
    with pytest.raises(grpc.RpcError) as info:
        future.result(timeout=DRAIN_TIMEOUT_S + 15)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in info.value.details()
    assert gedge.wait(timeout=DRAIN_TIMEOUT_S + 15) == 0
    sims.gamma.wait_stat("connections_closed", 1)


def test_a_second_signal_stops_waiting_for_grpc_calls(sims, gedge, stub):
    sims.gamma.configure(stall_after=0)
    future = stub.Chat.future(ask("gamma"), timeout=CALL_TIMEOUT)
    sims.gamma.wait_stat("chat", 1)
    gedge.send_signal(signal.SIGTERM)
    # The first signal is handled once the health watchers have been told.
    with grpc.insecure_channel("127.0.0.1:%d" % gedge.grpc_port) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
    gedge.send_signal(signal.SIGINT)
    with pytest.raises(grpc.RpcError) as info:
        future.result(timeout=CALL_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert gedge.wait() == 0
    assert "second signal" in gedge.stderr()
    assert "drain timeout" not in gedge.stderr()


def test_a_slow_stream_reader_pushes_back_on_the_upstream(sims, start_edge):
    """~60 MB streamed to a client that reads nothing at first: gRPC's flow control stops
    the handler's writes, the events waiting for it stay few, the upstream read pauses, and
    the bytes wait in the upstream instead of in llmedge. Then every chunk arrives."""
    import time
    from pathlib import Path

    from procs import wait_for

    def rss_kib(pid: int) -> int:
        for line in Path("/proc/%d/status" % pid).read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS for %d" % pid)

    chunks, piece = 12000, "x" * 5000
    sims.alpha.configure(chunks=chunks, reply=piece * chunks, tokens_per_s=None)
    edge = start_edge("server:\n  http: 127.0.0.1:0\n  grpc: 127.0.0.1:0\ndeployments:\n"
                      "  - name: big\n    base_url: %s\n" % sims.alpha.url)
    baseline = rss_kib(edge.pid)
    with grpc.insecure_channel("127.0.0.1:%d" % edge.grpc_port) as ch:
        call = pb_grpc.GatewayStub(ch).ChatStream(ask("big"), timeout=CALL_TIMEOUT * 3)
        wait_for(lambda: sims.alpha.stats()["pending_write_bytes"] > 0,
                 message="the upstream to be held back")
        # Long enough for an llmedge without backpressure to have read most of it.
        peak, deadline = baseline, time.monotonic() + 3.0
        while time.monotonic() < deadline:
            peak = max(peak, rss_kib(edge.pid))
            time.sleep(0.05)
        held_upstream = sims.alpha.stats()["pending_write_bytes"]
        assert peak - baseline < 32 * 1024, (baseline, peak)
        assert held_upstream > 16 * 1024 * 1024, held_upstream
        got = sum(1 for c in call if c.choices and c.choices[0].delta.content == piece)
    assert call.code() == grpc.StatusCode.OK
    assert got == chunks


def test_drain_delay_keeps_grpc_serving_while_health_says_not_serving(sims, dead_port,
                                                                       start_edge):
    edge = start_edge(edge_config(sims, dead_port, server="  grpc: 127.0.0.1:0\n"
                                  "  drain_delay_s: 60"))
    with grpc.insecure_channel("127.0.0.1:%d" % edge.grpc_port) as ch:
        stub, health = pb_grpc.GatewayStub(ch), health_pb2_grpc.HealthStub(ch)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        edge.send_signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        # Unready, still serving: a load balancer that has not noticed loses nothing.
        assert stub.Chat(ask("beta"), timeout=CALL_TIMEOUT).choices[0].message.content \
            == REPLIES["beta"]
        watch.cancel()
    edge.send_signal(signal.SIGINT)  # a second signal ends the delay
    assert edge.wait() == 0


def test_reload_reaches_the_grpc_front_end(sims, dead_port, start_edge):
    config = edge_config(sims, dead_port, server="  grpc: 127.0.0.1:0")
    edge = start_edge(config)
    with grpc.insecure_channel("127.0.0.1:%d" % edge.grpc_port) as ch:
        stub = pb_grpc.GatewayStub(ch)

        def model_ids() -> set[str]:
            return {m.id for m in stub.ListModels(pb.ListModelsRequest(),
                                                  timeout=CALL_TIMEOUT).models}

        assert "fresh" not in model_ids()
        edge.config_path.write_text(config + "  - name: fresh\n    deployments: [gamma]\n")
        edge.send_signal(signal.SIGHUP)
        wait_for(lambda: "fresh" in model_ids(), message="the reloaded routes")
        resp, call = stub.Chat.with_call(ask("fresh"), timeout=CALL_TIMEOUT)
        assert resp.choices[0].message.content == REPLIES["gamma"]
        assert initial(call)["x-llmedge-route"] == "fresh"
        assert [t.deployment for t in stub.Route(ask("fresh"), timeout=CALL_TIMEOUT).targets] \
            == ["gamma"]


def test_health_follows_a_reload(sims, start_edge):
    from conftest import UNSET_KEY

    def config(key_env: str) -> str:
        return f"""\
server:
  http: 127.0.0.1:0
  grpc: 127.0.0.1:0
deployments:
  - name: alpha
    base_url: {sims.alpha.url}
    api_key_env: {key_env}
routes:
  - name: auto
    deployments: [alpha]
"""

    edge = start_edge(config(UNSET_KEY))   # the only deployment has no key: not ready
    with grpc.insecure_channel("127.0.0.1:%d" % edge.grpc_port) as ch:
        health = health_pb2_grpc.HealthStub(ch)

        def status():
            return health.Check(health_pb2.HealthCheckRequest(service="llmedge.v1.Gateway"),
                                timeout=CALL_TIMEOUT).status

        assert status() == health_pb2.HealthCheckResponse.NOT_SERVING
        edge.config_path.write_text(config("LLMEDGE_TEST_ALPHA_KEY"))
        assert edge.call("POST", "/admin/reload").status == 200
        assert status() == health_pb2.HealthCheckResponse.SERVING
        edge.config_path.write_text(config(UNSET_KEY))
        assert edge.call("POST", "/admin/reload").status == 200
        assert status() == health_pb2.HealthCheckResponse.NOT_SERVING
