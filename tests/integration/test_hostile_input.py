"""Input a client may send, on purpose or not, through raw sockets: JSON nested past any
decoder's depth, valid JSON that fast decoders refuse, HTTP/1.1 requests without Host or with
expectations llmedge does not meet, HEAD, and chunks larger than the body limit. Each gets a
clear answer in the client's protocol, no traceback in the log, and the server keeps
serving."""

from __future__ import annotations

import json

import pytest

from procs import RawConn, metric_value, request_bytes

MESSAGES = [{"role": "user", "content": "hello there"}]
CODE = ["fix this python function", "my rust code does not compile",
        "write a sql query joining two tables", "refactor this javascript class"]
CHAT = ["how are you today", "tell me a joke", "good morning friend", "do you like music"]
MAX_BODY = 65536


def _config(sims) -> str:
    return f"""\
server:
  http: 127.0.0.1:0
  max_body_bytes: {MAX_BODY}
deployments:
  - name: alpha
    base_url: {sims.alpha.url}
routes:
  - name: plain
    deployments: [alpha]
  - name: cached
    deployments: [alpha]
    cache: {{ttl_s: 600, when: always}}
  - name: smart
    policy: classify
    classes:
      code:
        deployments: [alpha]
        examples: {json.dumps(CODE)}
      chat:
        deployments: [alpha]
        examples: {json.dumps(CHAT)}
"""


@pytest.fixture
def hostile_edge(start_edge, sims):
    edge = start_edge(_config(sims))
    yield edge
    assert "Traceback" not in edge.stderr(), edge.stderr()


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def deep_bodies(depth: int) -> list[tuple[str, bytes]]:
    inner = nested(depth)
    return [
        ("/v1/chat/completions", b'{"model":"plain","messages":[{"role":"user","content":"x"}],'
                                 b'"metadata":' + inner + b"}"),
        ("/v1/chat/completions", b'{"model":"plain","messages":' + inner + b"}"),
        ("/v1/chat/completions", b'{"model":"cached","messages":[{"role":"user","content":"x"}],'
                                 b'"tools":' + inner + b"}"),
        ("/v1/embeddings", b'{"model":"plain","input":' + inner + b"}"),
        ("/v1/route", b'{"model":"smart","messages":[{"role":"user","content":"x"}],'
                      b'"x":' + inner + b"}"),
    ]


@pytest.mark.parametrize("depth", [1_000, 20_000])
def test_json_nested_too_deeply_is_a_400_and_counted(hostile_edge, sims, depth):
    edge = hostile_edge
    with RawConn(edge.port) as conn:
        for path, body in deep_bodies(depth):
            conn.send(request_bytes("POST", path, body))
            resp = conn.read_response()
            assert resp.status == 400, (path, resp)
            error = resp.json()["error"]
            assert error["type"] == "invalid_request_error"
            assert "deep" in error["message"] or "array" in error["message"], error
        # The same connection still serves.
        conn.send(request_bytes("POST", "/v1/chat/completions",
                                {"model": "plain", "messages": MESSAGES}))
        assert conn.read_response().status == 200
    assert sims.alpha.stats()["chat"] == 1
    # Every refused proxy request is in the request metrics.
    assert metric_value(edge.metrics(), "llmedge_requests_total", status="400") == 4


ODD_BUT_VALID = [
    pytest.param(b'"note":"\\ud800 lone surrogate"', id="lone-surrogate"),
    pytest.param(b'"seed":' + b"7" * 5000, id="5000-digit-integer"),
    pytest.param(b'"logit_scale":1e400', id="number-beyond-a-double"),
]


@pytest.mark.parametrize("field", ODD_BUT_VALID)
@pytest.mark.parametrize("model", ["plain", "cached", "smart"])
def test_valid_json_that_fast_decoders_refuse_is_forwarded_as_sent(hostile_edge, sims, field,
                                                                   model):
    body = (b'{"model":"%s","messages":[{"role":"user","content":"fix this python function"}],'
            % model.encode() + field + b"}")
    with RawConn(hostile_edge.port) as conn:
        conn.send(request_bytes("POST", "/v1/chat/completions", body))
        resp = conn.read_response()
    assert resp.status == 200, resp
    # The odd field went upstream byte for byte (only "model" is ever rewritten).
    assert field.decode() in sims.alpha.stats()["last_body_text"]


def test_a_lone_surrogate_in_the_prompt_is_classified(hostile_edge, sims):
    body = (b'{"model":"smart","messages":[{"role":"user",'
            b'"content":"fix this python function \\udc80"}]}')
    resp = hostile_edge.call("POST", "/v1/route", body)
    assert resp.status == 200, resp
    assert resp.json()["classification"]["class"] == "code"


def test_an_http11_request_without_host_is_400(hostile_edge):
    with RawConn(hostile_edge.port) as conn:
        conn.send(b"GET /healthz HTTP/1.1\r\n\r\n")
        resp = conn.read_response()
        assert resp.status == 400
        assert "Host" in resp.json()["error"]["message"]
    with RawConn(hostile_edge.port) as conn:
        conn.send(b"GET /healthz HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n")
        assert conn.read_response().status == 400
    with RawConn(hostile_edge.port) as conn:
        # HTTP/1.0 has no Host requirement.
        conn.send(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert b" 200 " in conn.read_to_eof().split(b"\r\n")[0]


def test_an_unknown_expectation_is_417(hostile_edge, sims):
    with RawConn(hostile_edge.port) as conn:
        body = json.dumps({"model": "plain", "messages": MESSAGES}).encode()
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nexpect: 200-ok\r\n"
                  b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                  % (len(body), body))
        resp = conn.read_response()
        assert resp.status == 417
        assert resp.json()["error"]["type"] == "invalid_request_error"
    assert sims.alpha.stats()["chat"] == 0


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v1/models", "/metrics"])
def test_head_is_answered_like_get_without_a_body(hostile_edge, path):
    get = hostile_edge.call("GET", path)
    with RawConn(hostile_edge.port) as conn:
        conn.send(b"HEAD %s HTTP/1.1\r\nhost: x\r\n\r\n" % path.encode())
        status, headers = conn.read_head()
        assert status == get.status
        assert headers["content-type"] == get.headers["content-type"]
        assert int(headers["content-length"]) > 0
        # Nothing follows the head: the next request's answer comes right after it.
        conn.send(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert conn.read_response().json() == {"status": "ok"}


def test_head_on_a_post_endpoint_is_405_with_allow(hostile_edge):
    with RawConn(hostile_edge.port) as conn:
        conn.send(b"HEAD /v1/chat/completions HTTP/1.1\r\nhost: x\r\n\r\n")
        status, headers = conn.read_head()
    assert status == 405 and headers["allow"] == "POST"


def test_a_chunk_larger_than_the_body_limit_is_refused_at_once(hostile_edge, sims):
    with RawConn(hostile_edge.port) as conn:
        # Only the chunk's size line and a few of its bytes: the answer cannot wait for more.
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                  b"transfer-encoding: chunked\r\n\r\n%x\r\n{\"mo" % (MAX_BODY * 64))
        resp = conn.read_response()
        assert resp.status == 413, resp
        assert conn.at_eof()
    with RawConn(hostile_edge.port) as conn:
        # The same when the size line is split over two reads, after a first small chunk.
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                  b"transfer-encoding: chunked\r\n\r\n2\r\n{}\r\nFFF")
        conn.send(b"FFF\r\nab")
        assert conn.read_response().status == 413
    body = json.dumps({"model": "plain", "messages": MESSAGES}).encode()
    with RawConn(hostile_edge.port) as conn:
        # Chunks within the limit still pass, however they are cut.
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                  b"transfer-encoding: chunked\r\n\r\n")
        for i in range(0, len(body), 7):
            conn.send(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]))
        conn.send(b"0\r\n\r\n")
        assert conn.read_response().status == 200
    assert sims.alpha.stats()["chat"] == 1


@pytest.mark.parametrize("body", [
    pytest.param(b'{"model":"plain","messages":[{"role":"user","content":"x"}],"t":NaN}',
                 id="nan"),
    pytest.param(b'{"model":"plain","messages":[],"t":Infinity}', id="infinity"),
    pytest.param(b'\xef\xbb\xbf{"model":"plain","messages":[{"role":"user","content":"x"}]}',
                 id="byte-order-mark"),
    pytest.param('{"model":"plain","messages":[{"role":"user","content":"x"}]}'.encode("utf-16"),
                 id="utf-16"),
])
def test_what_only_lenient_decoders_take_is_not_json(hostile_edge, sims, body):
    resp = hostile_edge.call("POST", "/v1/chat/completions", body)
    assert resp.status == 400, resp
    assert "not valid JSON" in resp.json()["error"]["message"]
    assert sims.alpha.stats()["chat"] == 0


def test_admin_without_a_token_refuses_what_a_proxy_forwarded(hostile_edge):
    assert hostile_edge.call("GET", "/admin/upstreams").status == 200   # this host: allowed
    for header in ("x-forwarded-for", "forwarded", "x-real-ip"):
        resp = hostile_edge.call("GET", "/admin/upstreams", headers={header: "192.0.2.7"})
        assert resp.status == 403, (header, resp)
        assert resp.json()["error"]["code"] == "admin_loopback_only"


def test_a_request_asking_to_upgrade_is_answered_as_http11_with_its_body(hostile_edge, sims):
    body = json.dumps({"model": "plain", "messages": MESSAGES}).encode()
    with RawConn(hostile_edge.port) as conn:
        # What curl --http2 sends to an http:// URL: llmedge stays on HTTP/1.1.
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                  b"connection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n"
                  b"http2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
                  b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                  % (len(body), body)
                  + b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\n"
                    b"upgrade: websocket\r\n\r\n"
                  + b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        first = conn.read_response()
        assert first.status == 200, first
        assert first.json()["choices"][0]["message"]["content"].startswith("Alpha")
        assert conn.read_response().status == 200      # /v1/models
        assert conn.read_response().json() == {"status": "ok"}
        # Exactly one answer per request: nothing else is waiting on the connection.
        conn.send(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert conn.read_response().json() == {"status": "ok"}
    assert sims.alpha.stats()["last_body"]["messages"] == MESSAGES


def test_a_request_head_cut_short_gets_a_408(start_edge, sims):
    edge = start_edge(_config(sims).replace("max_body_bytes: %d" % MAX_BODY,
                                            "max_body_bytes: %d\n  request_timeout_s: 0.3"
                                            % MAX_BODY))
    with RawConn(edge.port) as conn:
        conn.send(b"PO")    # not even a whole method
        resp = conn.read_response()
        assert resp.status == 408
        assert conn.at_eof()


def test_a_body_past_the_limit_gets_its_413_not_a_reset(hostile_edge, sims):
    # http.client sends the whole body before it reads: the answer must still be there.
    import http.client

    big = json.dumps({"model": "plain", "messages": MESSAGES,
                      "pad": "x" * (MAX_BODY * 64)}).encode()
    for _ in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", hostile_edge.port, timeout=30)
        try:
            conn.request("POST", "/v1/chat/completions", big,
                         {"content-type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 413
            assert json.loads(resp.read())["error"]["type"] == "invalid_request_error"
        finally:
            conn.close()
    assert sims.alpha.stats()["chat"] == 0


def test_request_ids_reach_refused_requests_too(hostile_edge):
    resp = hostile_edge.call("POST", "/v1/chat/completions", {"model": "plain"},
                             headers={"x-request-id": "client-id-7"})
    assert resp.status == 400 and resp.headers["x-request-id"] == "client-id-7"


def test_an_absolute_form_request_target_is_the_path(hostile_edge):
    with RawConn(hostile_edge.port) as conn:
        conn.send(b"GET http://127.0.0.1:%d/healthz HTTP/1.1\r\nhost: x\r\n\r\n"
                  % hostile_edge.port)
        assert conn.read_response().json() == {"status": "ok"}


@pytest.mark.parametrize("value, status", [
    ("region = eu", 200), (" region=eu , ", 200), (",,=,==", 400), ("region=", 400),
    ("=eu", 400), ("a=b=c", 400)])
def test_tags_are_read_or_refused(hostile_edge, value, status):
    resp = hostile_edge.call("POST", "/v1/route", {"model": "plain", "messages": MESSAGES},
                             headers={"x-llmedge-tags": value})
    if status == 200:
        # No deployment carries region=eu: read as that tag, so unsatisfiable, not malformed.
        assert resp.status == 400 and resp.json()["error"]["code"] == "unsatisfiable_tags"
        assert "region=eu" in resp.json()["error"]["message"]
    else:
        assert resp.status == 400 and "is not a tag" in resp.json()["error"]["message"]


def test_stream_options_must_be_an_object(hostile_edge, sims):
    resp = hostile_edge.call("POST", "/v1/chat/completions",
                             {"model": "plain", "messages": MESSAGES, "stream": True,
                              "stream_options": "x"})
    assert resp.status == 400 and resp.json()["error"]["param"] == "stream_options"
    assert sims.alpha.stats()["chat"] == 0
