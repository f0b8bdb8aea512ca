"""The shared response cache on a real redis-server: several llmedge processes sharing one
Redis, Redis going away and coming back, tenants, TTL, streaming replay, single-flight, and
what is never cached."""

from __future__ import annotations

import signal

import pytest

from flights import overlapping_requests
from procs import http_call, metric_value, parse_sse, wait_for
from redisproc import REDIS_SERVER, SKIP_REASON, RedisClusterNodes, RedisServer

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def edge_config(sims, redis, cache: str = "") -> str:
    return f"""\
server:
  http: 127.0.0.1:0
cache:
  backend: redis
  url: {redis.url}
  timeout_ms: 250
  breaker: {{failures: 2, open_s: 0.2, max_open_s: 0.5}}
{cache}
deployments:
  - name: gamma
    base_url: {sims.gamma.url}
routes:
  - name: faq
    deployments: [gamma]
    cache: {{ttl_s: 600}}
  - name: short
    deployments: [gamma]
    cache: {{ttl_s: 0.3}}
  - name: other
    deployments: [gamma]
    cache: {{ttl_s: 600}}
"""


@pytest.fixture
def pair(start_edge, sims, redis_server):
    """Two llmedge processes sharing one Redis."""
    config = edge_config(sims, redis_server)
    return start_edge(config), start_edge(config)


def chat(model="faq", **extra):
    return {"model": model, "messages": QUESTION, "temperature": 0, **extra}


def ask(edge, body, headers=None):
    headers = {"authorization": "Bearer tenant-a", **(headers or {})}
    return http_call(edge.port, "POST", "/v1/chat/completions", body, headers)


def state(resp) -> str:
    assert resp.status == 200, resp
    return resp.headers["x-llmedge-cache"]


def test_a_miss_on_one_instance_is_a_hit_on_the_other(pair, sims, redis_server):
    a, b = pair
    first = ask(a, chat())
    assert state(first) == "miss"
    second = ask(b, chat())
    assert state(second) == "hit" and "age" in second.headers
    assert second.headers["x-llmedge-upstream"] == "gamma"
    assert second.body == first.body
    assert sims.gamma.stats()["chat"] == 1
    # One key, hash-tagged so Redis Cluster puts a value and its lock in one slot.
    (key,) = redis_server.keys()
    assert key.startswith(b"llmedge:c:") and key.endswith(b"}") and b":{" in key
    assert metric_value(b.metrics(), "llmedge_cache_lookups_total", result="hit") == 1
    assert metric_value(a.metrics(), "llmedge_cache_stores_total", route="faq") == 1


def test_streaming_replay_from_another_instance_read_by_the_sdk(pair, sims):
    a, b = pair
    with a.client(api_key="tenant-a") as client:
        with client.chat.completions.with_streaming_response.create(
                model="faq", messages=QUESTION, temperature=0, stream=True,
                stream_options={"include_usage": True}) as response:
            assert response.headers["x-llmedge-cache"] == "miss"
            streamed = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    with b.client(api_key="tenant-a") as client:
        with client.chat.completions.with_streaming_response.create(
                model="faq", messages=QUESTION, temperature=0, stream=True,
                stream_options={"include_usage": True}) as response:
            assert response.headers["x-llmedge-cache"] == "hit"
            replayed = list(response.parse())
        whole = client.chat.completions.create(model="faq", messages=QUESTION, temperature=0)
    assert replayed[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in replayed if c.choices) == text
    assert [c.choices[0].finish_reason for c in replayed if c.choices][-1] == "stop"
    assert replayed[-1].usage.total_tokens == streamed[-1].usage.total_tokens
    assert whole.choices[0].message.content == text
    assert sims.gamma.stats()["chat"] == 1


def test_tenants_are_isolated_across_instances(pair, sims):
    a, b = pair
    assert state(ask(a, chat())) == "miss"
    assert state(ask(b, chat(), {"authorization": "Bearer tenant-b"})) == "miss"
    assert state(ask(b, chat(), {"authorization": "Bearer tenant-b"})) == "hit"
    assert state(ask(a, chat())) == "hit"
    assert sims.gamma.stats()["chat"] == 2


def test_ttl_is_kept_by_redis(pair, sims, redis_server):
    a, b = pair
    assert state(ask(a, chat("short"))) == "miss"
    with redis_server.client() as r:
        (key,) = redis_server.keys()
        assert 0 < r.pttl(key) <= 300
    wait_for(lambda: not redis_server.keys(), message="Redis to expire the entry")
    assert state(ask(b, chat("short"))) == "miss"


def test_what_may_not_be_cached_never_reaches_redis(pair, sims, redis_server):
    a, b = pair
    sampled = {"model": "faq", "messages": QUESTION, "temperature": 0.8}
    assert state(ask(a, sampled)) == "bypass"
    assert state(ask(b, sampled)) == "bypass"
    assert state(ask(a, chat(), {"cache-control": "no-store"})) == "miss"
    sims.gamma.configure(status=500)
    assert ask(a, chat()).status == 500
    sims.gamma.configure(status=None, drop_after=2)
    broken = ask(a, chat(stream=True))
    assert b"[DONE]" not in broken.body
    sims.gamma.configure(drop_after=None)
    assert redis_server.keys() == []
    assert sims.gamma.stats()["chat"] == 6   # the 500 was retried once on gamma


def test_redis_down_requests_go_upstream_and_caching_resumes(pair, sims, redis_server):
    a, b = pair
    assert state(ask(a, chat())) == "miss"
    assert state(ask(b, chat())) == "hit"
    redis_server.stop()
    # Redis is gone: every request still succeeds, from upstream, and is never an error.
    for i in range(6):
        resp = ask(a if i % 2 else b, chat(max_tokens=10 + i))
        assert resp.status == 200 and resp.json()["choices"][0]["message"]["content"]
        assert resp.headers["x-llmedge-cache"] == "miss"
    stream = ask(a, chat(stream=True, max_tokens=99))
    assert stream.status == 200 and parse_sse(stream.body)[-1] == "[DONE]"
    text = a.metrics()
    assert metric_value(text, "llmedge_cache_backend_errors_total", backend="redis") >= 2
    assert metric_value(text, "llmedge_requests_total", status="200") >= 4
    # Back on the same port, empty: llmedge finds it by itself and caches again.
    redis_server.start()
    question = chat(max_tokens=7)

    def cached_again() -> bool:
        ask(a, question)
        return ask(b, question).headers["x-llmedge-cache"] == "hit"
    wait_for(cached_again, timeout=30, interval=0.1, message="caching to resume")
    assert redis_server.keys()


def test_single_flight_in_one_process(start_edge, sims, redis_server):
    edge = start_edge(edge_config(sims, redis_server))
    overlapping_requests(edge, edge, sims, lambda e: ask(e, chat()))


def test_single_flight_across_instances_with_the_lock(start_edge, sims, redis_server):
    config = edge_config(sims, redis_server, "  lock: true\n  lock_ttl_s: 30")
    a, b = start_edge(config), start_edge(config)
    overlapping_requests(a, b, sims, lambda e: ask(e, chat()))
    assert metric_value(b.metrics(), "llmedge_cache_coalesced_total", scope="remote") >= 1
    # The leader freed its lock: a later miss (after the answer expires) is not held back.
    wait_for(lambda: redis_server.keys("llmedge:l:*") == [], message="the lock to be freed")
    assert len(redis_server.keys("llmedge:c:*")) == 1


def test_redis_hanging_costs_a_short_timeout_never_an_error(pair, sims, redis_server):
    a, b = pair
    assert state(ask(a, chat())) == "miss"
    # A frozen Redis accepts nothing and answers nothing: only the deadline saves a request.
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        for i in range(5):
            resp = ask(b, chat(max_tokens=20 + i))
            assert state(resp) == "miss"
        text = b.metrics()
        assert metric_value(text, "llmedge_cache_backend_errors_total", kind="timeout") >= 1
        # The breaker opened: later requests did not even try Redis.
        assert metric_value(text, "llmedge_cache_backend_errors_total",
                            kind="breaker_open") >= 1
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: state(ask(b, chat())) == "hit", timeout=30, interval=0.1,
             message="Redis to be used again")


def test_admin_cache_delete_is_seen_by_every_instance(pair, sims, redis_server):
    a, b = pair
    ask(a, chat())
    ask(a, chat("other"))
    ask(a, chat("other", max_tokens=5))
    gone = b.call("DELETE", "/admin/cache?route=other")
    assert gone.status == 200 and gone.json() == {"deleted": 2, "route": "other"}
    assert state(ask(b, chat())) == "hit"
    assert state(ask(a, chat("other"))) == "miss"
    assert a.call("DELETE", "/admin/cache").json()["deleted"] == 2
    assert redis_server.keys() == []
    text = b.metrics()
    assert metric_value(text, "llmedge_cache_operation_seconds_count", op="get") == 1
    # Redis down: the admin is told, plainly.
    redis_server.stop()
    down = a.call("DELETE", "/admin/cache")
    assert down.status == 503 and down.json()["error"]["code"] == "cache_unavailable"


def test_damaged_values_in_redis_are_misses_not_errors(pair, sims, redis_server):
    import msgspec

    a, b = pair
    assert state(ask(a, chat())) == "miss"
    (key,) = redis_server.keys()
    with redis_server.client() as r:
        r.set(key, b"\xc1 not msgpack")
        assert state(ask(b, chat())) == "miss"          # overwritten by a good answer
        assert state(ask(a, chat())) == "hit"
        # Well-formed, but not a completion: a streaming hit cannot replay it.
        damaged = [b"{not json", b"text/plain\r\nx-evil: 1", b"\xff\xfe", "faq", float("nan")]
        r.set(key, msgspec.msgpack.encode(damaged))
        resp = ask(b, chat(stream=True))
    assert resp.status == 200 and resp.headers["x-llmedge-cache"] == "miss"
    assert parse_sse(resp.body)[-1] == "[DONE]" and "x-evil" not in resp.headers
    assert metric_value(b.metrics(), "llmedge_cache_backend_errors_total", kind="decode") == 1


def test_redis_cluster_shares_answers_across_slots(start_edge, sims, tmp_path):
    cluster = RedisClusterNodes(tmp_path)
    try:
        wait_for(cluster.state_ok, timeout=30, message="the cluster to be ready")
        config = edge_config(sims, cluster).replace("  backend: redis\n",
                                                    "  backend: redis\n  cluster: true\n")
        a, b = start_edge(config), start_edge(config)
        for n in range(12):
            assert state(ask(a, chat(max_tokens=n + 1))) == "miss"
        for n in range(12):
            assert state(ask(b, chat(max_tokens=n + 1))) == "hit"
        # The hash tags spread the answers over the primaries.
        holding = [len(s.keys("llmedge:c:*")) for s in cluster.servers]
        assert sum(holding) == 12 and sum(1 for h in holding if h) >= 2, holding
        assert b.call("DELETE", "/admin/cache").json()["deleted"] == 12
        assert state(ask(a, chat(max_tokens=1))) == "miss"
        assert sims.gamma.stats()["chat"] == 13
    finally:
        cluster.stop()
