"""llmedge's OpenAI-compatible API through real sockets: the official SDK against llmedge
against the simulator, credentials, models, health, metrics and bad input."""

from __future__ import annotations

import openai
import pytest
from conftest import KEYS, MAX_BODY_BYTES, REPLIES, UNSET_KEY, edge_config
from procs import RawConn, metric_samples, metric_value, request_bytes, wait_for

MESSAGES = [{"role": "user", "content": "Hello, who is answering?"}]
CHAT = "/v1/chat/completions"
ERROR_KEYS = {"message", "type", "param", "code"}

pytestmark = pytest.mark.usefixtures("sims")


def assert_openai_error(body: dict, type_: str = "invalid_request_error") -> dict:
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == ERROR_KEYS, error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["type"] == type_, error
    assert "Traceback" not in error["message"]
    return error


# === the SDK, non-streaming and streaming ===

def test_sdk_chat_non_streaming(edge, sims):
    with edge.client() as client:
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=MESSAGES, temperature=0.25, max_tokens=64,
            extra_headers={"x-request-id": "req-test-0001"})
    headers = raw.headers
    assert headers["x-llmedge-route"] == "auto"
    assert headers["x-llmedge-upstream"] == "alpha"
    assert headers["x-llmedge-cache"] == "bypass"  # the route has no cache
    assert headers["x-llmedge-attempts"] == "1"
    assert headers["x-request-id"] == "req-test-0001"
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == REPLIES["alpha"]
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 8
    stats = sims.alpha.stats()
    assert stats["chat"] == 1
    # Only "model" is rewritten to the deployment's upstream model; the rest goes as sent.
    assert stats["last_body"] == {"model": "alpha-model", "messages": MESSAGES,
                                  "temperature": 0.25, "max_tokens": 64}
    assert stats["last_headers"]["x-request-id"] == "req-test-0001"
    assert sims.beta.stats()["chat"] == sims.gamma.stats()["chat"] == 0


def test_request_ids_are_generated_and_unique(edge):
    with edge.client() as client:
        ids = [client.chat.completions.with_raw_response.create(
            model="auto", messages=MESSAGES).headers["x-request-id"] for _ in range(3)]
    assert all(ids) and len(set(ids)) == 3, ids


def test_invalid_request_id_is_replaced(edge, sims):
    resp = edge.call("POST", CHAT, {"model": "auto", "messages": MESSAGES},
                     headers={"x-request-id": "bad id\twith\"junk"})
    assert resp.status == 200, resp
    given = resp.headers["x-request-id"]
    assert given and " " not in given and '"' not in given
    assert sims.alpha.stats()["last_headers"]["x-request-id"] == given


def test_upstream_connections_are_reused(edge, sims):
    with edge.client() as client:
        client.chat.completions.create(model="auto", messages=MESSAGES)  # warm the pool
        sims.alpha.reset(config=False)
        for _ in range(5):
            client.chat.completions.create(model="auto", messages=MESSAGES)
        for _ in range(3):
            with client.chat.completions.create(model="auto", messages=MESSAGES,
                                                stream=True) as stream:
                assert list(stream)
    stats = sims.alpha.stats()
    assert stats["chat"] == 8
    # Sequential requests go over the pooled keep-alive connection (one new connection is
    # tolerated, should the pooled one have been retired meanwhile).
    assert stats["connections_opened"] <= 1, stats["connections_opened"]


@pytest.mark.parametrize("stream", [False, True])
def test_large_answers_pass_intact(edge, sims, stream):
    # Events far larger than one socket read: the relay must reassemble and forward them.
    reply = "".join("%06d " % i for i in range(60000))  # about 420 kB
    sims.alpha.configure(reply=reply, chunks=3)
    with edge.client() as client:
        if stream:
            with client.chat.completions.create(model="auto", messages=MESSAGES,
                                                stream=True) as chunks:
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            text = client.chat.completions.create(model="auto",
                                                  messages=MESSAGES).choices[0].message.content
    assert text == reply


def test_sdk_chat_streaming(edge, sims):
    with edge.client() as client:
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=MESSAGES, stream=True)
        headers = raw.headers
        with raw.parse() as stream:
            chunks = list(stream)
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-llmedge-route"] == "auto"
    assert headers["x-llmedge-upstream"] == "alpha"
    assert headers["x-llmedge-cache"] == "bypass"
    assert headers["x-llmedge-attempts"] == "1"
    assert headers["x-request-id"]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLIES["alpha"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    stats = sims.alpha.wait_stat("streams_completed", 1)
    assert stats["streams_started"] == 1 and stats["streams_aborted"] == 0
    assert stats["last_body"]["model"] == "alpha-model"
    assert stats["last_body"]["stream"] is True


def test_sdk_streaming_include_usage(edge, sims):
    with edge.client() as client:
        stream = client.chat.completions.create(
            model="auto", messages=MESSAGES, stream=True,
            stream_options={"include_usage": True})
        with stream:
            chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    assert chunks[-2].choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLIES["alpha"]
    assert sims.alpha.stats()["last_body"]["stream_options"] == {"include_usage": True}


def test_sse_wire_format_ends_with_done(edge):
    with RawConn(edge.port) as conn:
        conn.send(request_bytes("POST", CHAT, {"model": "auto", "messages": MESSAGES,
                                               "stream": True}))
        resp = conn.read_response()
    assert resp.status == 200
    assert resp.headers["transfer-encoding"] == "chunked"
    assert resp.body.endswith(b"data: [DONE]\n\n")
    assert resp.body.startswith(b"data: {")


def test_embeddings(edge, sims):
    with edge.client() as client:
        raw = client.embeddings.with_raw_response.create(model="auto", input=["one", "two"])
    assert raw.headers["x-llmedge-route"] == "auto"
    assert raw.headers["x-llmedge-upstream"] == "alpha"
    assert raw.headers["x-llmedge-attempts"] == "1"
    result = raw.parse()
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in result.data)
    stats = sims.alpha.stats()
    assert stats["embeddings"] == 1 and stats["chat"] == 0
    assert stats["last_body"]["model"] == "alpha-model"
    assert stats["last_body"]["input"] == ["one", "two"]


def test_models_lists_routes_and_deployments(edge):
    with edge.client() as client:
        models = client.models.list().data
    owners = {m.id: m.owned_by for m in models}
    routes = {"auto", "via-dead", "via-locked", "split"}
    deployments = {"alpha", "beta", "gamma", "dead", "locked"}
    assert set(owners) == routes | deployments
    assert {owners[r] for r in routes} == {"llmedge-route"}
    assert {owners[d] for d in deployments} == {"llmedge-deployment"}
    assert len(models) == len(owners)  # no duplicates


@pytest.mark.parametrize("name", ["beta", "gamma"])
def test_direct_deployment_as_model(edge, sims, name):
    with edge.client() as client:
        raw = client.chat.completions.with_raw_response.create(model=name, messages=MESSAGES)
    assert raw.headers["x-llmedge-route"] == name
    assert raw.headers["x-llmedge-upstream"] == name
    assert raw.parse().choices[0].message.content == REPLIES[name]
    assert sims[name].stats()["last_body"]["model"] == "%s-model" % name
    assert sims.alpha.stats()["chat"] == 0


# === credentials ===

def test_client_authorization_is_replaced_by_deployment_key(edge, sims):
    with edge.client(api_key="client-secret-xyz") as client:
        client.chat.completions.create(model="auto", messages=MESSAGES)
        client.chat.completions.create(model="beta", messages=MESSAGES)
    alpha_headers = sims.alpha.stats()["last_headers"]
    beta_headers = sims.beta.stats()["last_headers"]
    assert alpha_headers["authorization"] == "Bearer " + KEYS["LLMEDGE_TEST_ALPHA_KEY"]
    assert beta_headers["authorization"] == "Bearer " + KEYS["LLMEDGE_TEST_BETA_KEY"]
    for headers in (alpha_headers, beta_headers):
        assert not any("client-secret-xyz" in v for v in headers.values()), headers


def test_deployment_without_key_sends_no_authorization(edge, sims):
    resp = edge.call("POST", CHAT, {"model": "gamma", "messages": MESSAGES},
                     headers={"authorization": "Bearer client-secret-xyz",
                              "x-api-key": "client-secret-xyz"})
    assert resp.status == 200, resp
    headers = sims.gamma.stats()["last_headers"]
    assert "authorization" not in headers
    assert not any("client-secret-xyz" in v for v in headers.values()), headers


def test_deployment_with_unset_key_is_skipped(edge, sims):
    with edge.client() as client:
        raw = client.chat.completions.with_raw_response.create(model="via-locked",
                                                               messages=MESSAGES)
    assert raw.headers["x-llmedge-route"] == "via-locked"
    assert raw.headers["x-llmedge-upstream"] == "beta"
    assert raw.headers["x-llmedge-attempts"] == "1"  # a skipped deployment is no attempt
    assert raw.parse().choices[0].message.content == REPLIES["beta"]
    # "locked" points at alpha's simulator: nothing may have been sent there.
    assert sims.alpha.stats()["requests"] == 0


def test_direct_request_to_keyless_deployment_is_503(edge, sims):
    resp = edge.call("POST", CHAT, {"model": "locked", "messages": MESSAGES})
    assert resp.status == 503, resp
    error = assert_openai_error(resp.json(), "upstream_error")
    assert UNSET_KEY in error["message"]
    assert sims.alpha.stats()["requests"] == 0


def test_readyz_503_when_a_route_has_only_keyless_deployments(start_edge, sims, dead_port):
    config = edge_config(sims, dead_port) + "  - name: only-locked\n    deployments: [locked]\n"
    unready = start_edge(config)
    resp = unready.call("GET", "/readyz")
    assert resp.status == 503, resp
    body = resp.json()
    assert body["status"] == "unready"
    assert any("only-locked" in r and UNSET_KEY in r for r in body["reasons"]), body
    assert unready.call("GET", "/healthz").status == 200  # alive, just not ready
    # The same file with the variable set is ready: the missing key was the reason.
    ready = start_edge(config, env={UNSET_KEY: "sk-now-set"})
    assert ready.call("GET", "/readyz").status == 200


# === health and metrics ===

def test_healthz_and_readyz(edge):
    health = edge.call("GET", "/healthz")
    assert health.status == 200 and health.json()["status"] == "ok"
    ready = edge.call("GET", "/readyz")
    assert ready.status == 200, ready
    assert ready.json()["status"] == "ready"


def test_metrics_count_requests_by_route_deployment_status(edge, sims):
    before = edge.metrics()
    ok_before = metric_value(before, "llmedge_requests_total", route="auto",
                             deployment="alpha", status="200")
    count_before = metric_value(before, "llmedge_request_duration_seconds_count", route="auto")
    missing_before = metric_value(before, "llmedge_requests_total", status="404")
    with edge.client() as client:
        client.chat.completions.create(model="auto", messages=MESSAGES)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=MESSAGES)

    def updated():
        text = edge.metrics()
        done = (metric_value(text, "llmedge_requests_total", route="auto", deployment="alpha",
                             status="200") == ok_before + 1
                and metric_value(text, "llmedge_request_duration_seconds_count",
                                 route="auto") == count_before + 1
                and metric_value(text, "llmedge_requests_total",
                                 status="404") == missing_before + 1)
        return text if done else None

    text = wait_for(updated, message="request metrics to count both requests")
    buckets = metric_samples(text, "llmedge_request_duration_seconds_bucket")
    auto = [(labels["le"], value) for labels, value in buckets if labels.get("route") == "auto"]
    assert auto and auto[-1][0] == "+Inf"
    assert auto[-1][1] == count_before + 1
    values = [value for _, value in auto]
    assert values == sorted(values)  # cumulative buckets
    assert "# TYPE llmedge_request_duration_seconds histogram" in text


# === bad input ===

BAD_REQUESTS = [
    pytest.param(b"{not json", 400, None, id="malformed-json"),
    pytest.param(b"", 400, None, id="empty-body"),
    pytest.param(b"[1, 2]", 400, None, id="not-an-object"),
    pytest.param({"model": 5, "messages": MESSAGES}, 400, "model", id="model-int"),
    pytest.param({"model": "auto", "messages": "x"}, 400, "messages", id="messages-str"),
    pytest.param({"model": "auto"}, 400, "messages", id="missing-messages"),
    pytest.param({"messages": MESSAGES}, 400, "model", id="missing-model"),
    pytest.param({"model": "auto", "messages": []}, 400, "messages", id="empty-messages"),
    pytest.param({"model": "auto", "messages": [{"content": "no role"}]}, 400, "messages",
                 id="message-without-role"),
    pytest.param({"model": "auto", "messages": MESSAGES, "stream": "yes"}, 400, "stream",
                 id="stream-str"),
    pytest.param({"model": "gpt-nonexistent", "messages": MESSAGES}, 404, "model",
                 id="unknown-model"),
]


@pytest.mark.parametrize("body, status, param", BAD_REQUESTS)
def test_bad_chat_request_is_openai_error_and_connection_stays_usable(edge, sims, body,
                                                                       status, param):
    with RawConn(edge.port) as conn:
        conn.send(request_bytes("POST", CHAT, body))
        resp = conn.read_response()
        assert resp.status == status, resp
        assert resp.headers["content-type"].startswith("application/json")
        error = assert_openai_error(resp.json())
        if param is not None:
            assert error["param"] is not None and error["param"].startswith(param), error
        if status == 404:
            assert error["code"] == "model_not_found"
        # The same connection then serves a good request.
        conn.send(request_bytes("POST", CHAT, {"model": "auto", "messages": MESSAGES}))
        good = conn.read_response()
    assert good.status == 200, good
    assert good.json()["choices"][0]["message"]["content"] == REPLIES["alpha"]
    assert sims.alpha.stats()["chat"] == 1  # the bad request never went upstream


def test_bad_embeddings_request(edge, sims):
    resp = edge.call("POST", "/v1/embeddings", {"model": "auto"})
    assert resp.status == 400, resp
    assert assert_openai_error(resp.json())["param"] == "input"
    assert sims.alpha.stats()["requests"] == 0


def test_unknown_model_through_sdk(edge):
    with edge.client() as client, pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="larg", messages=MESSAGES)
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"


def test_oversized_body_is_413(edge, sims):
    with RawConn(edge.port) as conn:
        # Only the head: the answer must come from the declared length alone.
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                  b"content-type: application/json\r\ncontent-length: %d\r\n\r\n"
                  % (MAX_BODY_BYTES * 4))
        resp = conn.read_response()
        assert resp.status == 413, resp
        assert_openai_error(resp.json())
        assert resp.headers["connection"] == "close"
        assert conn.at_eof()
    with RawConn(edge.port) as conn:
        # No declared length: the limit must hold for a chunked body too.
        big = b"x" * (MAX_BODY_BYTES + 1000)
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                  b"transfer-encoding: chunked\r\n\r\n%x\r\n%s" % (len(big), big))
        resp = conn.read_response()
        assert resp.status == 413, resp
        assert_openai_error(resp.json())
    assert sims.alpha.stats()["requests"] == 0
    good = edge.call("POST", CHAT, {"model": "auto", "messages": MESSAGES})
    assert good.status == 200, good


def test_get_on_chat_endpoint_is_405(edge, sims):
    resp = edge.call("GET", CHAT)
    assert resp.status == 405, resp
    assert_openai_error(resp.json())
    assert edge.call("POST", "/healthz", {}).status == 405
    assert sims.alpha.stats()["requests"] == 0
    assert edge.call("POST", CHAT, {"model": "auto", "messages": MESSAGES}).status == 200


def test_unknown_path_is_404(edge):
    for path in ("/v1/nothing", "/", "/v2/chat/completions"):
        resp = edge.call("GET", path)
        assert resp.status == 404, (path, resp)
        assert_openai_error(resp.json())
    assert edge.call("POST", CHAT, {"model": "auto", "messages": MESSAGES}).status == 200


def test_models_retrieve_names_each_route_and_deployment(edge):
    with edge.client() as client:
        auto = client.models.retrieve("auto")
        assert (auto.id, auto.owned_by) == ("auto", "llmedge-route")
        assert client.models.retrieve("alpha").owned_by == "llmedge-deployment"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("nope")
    assert edge.call("GET", "/v1/models/auto/extra").status == 404
