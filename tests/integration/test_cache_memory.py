"""The in-process response cache, through real requests: exact keys, tenants, cache-control,
streaming replay, TTL, and what is never cached."""

from __future__ import annotations

import json
import threading

import pytest

from flights import overlapping_requests
from procs import http_call, metric_value, parse_sse, wait_for

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def edge(start_edge, sims):
    return start_edge(f"""\
server:
  http: 127.0.0.1:0
deployments:
  - name: gamma
    base_url: {sims.gamma.url}
routes:
  - name: faq
    deployments: [gamma]
    cache: {{ttl_s: 600}}
  - name: shared-faq
    deployments: [gamma]
    cache: {{ttl_s: 600, shared: true}}
  - name: short
    deployments: [gamma]
    cache: {{ttl_s: 0.3}}
  - name: everything
    deployments: [gamma]
    cache: {{ttl_s: 600, when: always}}
  - name: uncached
    deployments: [gamma]
""")


def ask(edge, body, headers=None, raw: bytes | None = None):
    headers = {"authorization": "Bearer tenant-a", **(headers or {})}
    return http_call(edge.port, "POST", "/v1/chat/completions", raw or body, headers)


def chat(model="faq", **extra):
    return {"model": model, "messages": QUESTION, "temperature": 0, **extra}


def test_repeatable_request_is_a_miss_then_a_hit(edge, sims):
    first = ask(edge, chat())
    assert first.status == 200 and first.headers["x-llmedge-cache"] == "miss"
    second = ask(edge, chat())
    assert second.headers["x-llmedge-cache"] == "hit"
    assert "age" in second.headers
    assert second.headers["x-llmedge-upstream"] == "gamma"
    assert second.body == first.body
    assert sims.gamma.stats()["chat"] == 1


def test_key_ignores_key_order_and_whitespace_but_not_content(edge, sims):
    ask(edge, chat())
    reordered = json.dumps({"temperature": 0, "messages": QUESTION, "model": "faq"},
                           indent=3).encode()
    assert ask(edge, None, raw=reordered).headers["x-llmedge-cache"] == "hit"
    other = ask(edge, {**chat(), "messages": [{"role": "user", "content": "And Spain?"}]})
    assert other.headers["x-llmedge-cache"] == "miss"
    assert ask(edge, chat(max_tokens=5)).headers["x-llmedge-cache"] == "miss"
    assert sims.gamma.stats()["chat"] == 3


def test_sampled_requests_are_not_cached_unless_the_route_says_so(edge, sims):
    sampled = {"model": "faq", "messages": QUESTION, "temperature": 0.8}
    assert ask(edge, sampled).headers["x-llmedge-cache"] == "bypass"
    assert ask(edge, sampled).headers["x-llmedge-cache"] == "bypass"
    assert ask(edge, {**sampled, "seed": 7}).headers["x-llmedge-cache"] == "miss"
    assert ask(edge, {**sampled, "seed": 7}).headers["x-llmedge-cache"] == "hit"
    always = {**sampled, "model": "everything"}
    ask(edge, always)
    assert ask(edge, always).headers["x-llmedge-cache"] == "hit"
    assert ask(edge, chat("uncached")).headers["x-llmedge-cache"] == "bypass"
    text = edge.metrics()
    assert metric_value(text, "llmedge_cache_lookups_total", route="faq", result="bypass") == 2
    assert metric_value(text, "llmedge_cache_lookups_total", route="faq", result="miss") == 1
    assert metric_value(text, "llmedge_cache_lookups_total", route="faq", result="hit") == 1


def test_tenants_are_isolated_unless_the_cache_is_shared(edge, sims):
    ask(edge, chat())
    other_tenant = {"authorization": "Bearer tenant-b"}
    assert ask(edge, chat(), other_tenant).headers["x-llmedge-cache"] == "miss"
    ask(edge, chat("shared-faq"))
    assert ask(edge, chat("shared-faq"), other_tenant).headers["x-llmedge-cache"] == "hit"


@pytest.mark.parametrize("value, state", [("no-cache", "bypass"), ("max-age=0, NO-CACHE", "bypass"),
                                          ("x-no-cache", "hit"), ("no-cachex", "hit")])
def test_cache_control_directives_are_matched_whole(edge, sims, value, state):
    ask(edge, chat())
    assert ask(edge, chat(), {"cache-control": value}).headers["x-llmedge-cache"] == state


def test_cache_control(edge, sims):
    assert ask(edge, chat(), {"cache-control": "no-store"}).headers["x-llmedge-cache"] == "miss"
    assert ask(edge, chat(), {"cache-control": "no-cache"}).headers["x-llmedge-cache"] == "bypass"
    # no-cache skipped the lookup but stored its answer.
    assert ask(edge, chat()).headers["x-llmedge-cache"] == "hit"
    assert sims.gamma.stats()["chat"] == 2


def test_errors_are_never_cached(edge, sims):
    sims.gamma.configure(status=500)
    assert ask(edge, chat()).status == 500
    sims.gamma.configure(status=None)
    resp = ask(edge, chat())
    assert resp.status == 200 and resp.headers["x-llmedge-cache"] == "miss"


def test_ttl_expires(edge, sims):
    assert ask(edge, chat("short")).headers["x-llmedge-cache"] == "miss"
    # Stored: the cache is on for the route, so what follows is its expiry at work.
    assert metric_value(edge.metrics(), "llmedge_cache_entries") == 1
    # Asked until the answer is no longer served from the cache.
    wait_for(lambda: ask(edge, chat("short")).headers["x-llmedge-cache"] == "miss",
             message="the entry to expire")
    # The expired entry went upstream again, and its fresh answer took the old one's place.
    assert sims.gamma.stats()["chat"] == 2
    assert metric_value(edge.metrics(), "llmedge_cache_entries") == 1
    assert metric_value(edge.metrics(), "llmedge_cache_lookups_total", route="short",
                        result="miss") == 2


def test_streaming_hit_is_a_well_formed_stream_for_the_sdk(edge, sims):
    stored = ask(edge, chat()).json()
    with edge.client(api_key="tenant-a") as client:
        with client.chat.completions.with_streaming_response.create(
                model="faq", messages=QUESTION, temperature=0, stream=True,
                stream_options={"include_usage": True}) as response:
            assert response.headers["x-llmedge-cache"] == "hit"
            chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == stored["choices"][0]["message"]["content"]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].usage.total_tokens == stored["usage"]["total_tokens"]
    assert sims.gamma.stats()["chat"] == 1


def sdk_stream(edge, model="faq", usage=False, api_key="tenant-a", **extra):
    """A streamed chat request read by the openai SDK: (headers, chunks)."""
    options = {"stream_options": {"include_usage": True}} if usage else {}
    with edge.client(api_key=api_key) as client:
        with client.chat.completions.with_streaming_response.create(
                model=model, messages=QUESTION, temperature=0, stream=True,
                **options, **extra) as response:
            return response.headers, list(response.parse())


def streamed_text(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.parametrize("layout", ["compact", "pretty", "reordered"])
def test_streamed_miss_is_stored_and_answers_both_kinds_of_request(edge, sims, layout):
    sims.gamma.configure(layout=layout)
    headers, first = sdk_stream(edge, usage=True)
    assert headers["x-llmedge-cache"] == "miss"
    text = streamed_text(first)
    assert text.startswith("Gamma answers")
    # A non-streaming request is answered from the stream, as one chat.completion.
    with edge.client(api_key="tenant-a") as client:
        raw = client.chat.completions.with_raw_response.create(
            model="faq", messages=QUESTION, temperature=0)
    assert raw.headers["x-llmedge-cache"] == "hit" and "age" in raw.headers
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == text
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == first[-1].usage.total_tokens
    # A streaming request is replayed: role first, the same text, finish reason, usage, [DONE]
    # (the SDK would raise on a malformed stream or one that does not end).
    headers, again = sdk_stream(edge, usage=True)
    assert headers["x-llmedge-cache"] == "hit"
    assert again[0].choices[0].delta.role == "assistant"
    assert streamed_text(again) == text
    assert [c.choices[0].finish_reason for c in again if c.choices][-1] == "stop"
    assert again[-1].usage.total_tokens == first[-1].usage.total_tokens
    # Without include_usage the replay carries no usage chunk.
    headers, plain = sdk_stream(edge)
    assert headers["x-llmedge-cache"] == "hit"
    assert all(c.usage is None for c in plain) and streamed_text(plain) == text
    assert sims.gamma.stats()["chat"] == 1


def test_raw_replay_is_well_formed_sse(edge, sims):
    ask(edge, chat())
    resp = ask(edge, chat(stream=True))
    assert resp.status == 200 and resp.headers["x-llmedge-cache"] == "hit"
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(resp.body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_broken_and_failed_streams_are_never_stored(edge, sims):
    sims.gamma.configure(drop_after=2)
    resp = ask(edge, chat(stream=True))
    assert resp.headers["x-llmedge-cache"] == "miss"
    assert b"[DONE]" not in resp.body   # the break was reported, not dressed up as an end
    sims.gamma.configure(drop_after=None, status=500)
    assert ask(edge, chat(stream=True)).status == 500
    sims.gamma.configure(status=None)
    assert ask(edge, chat()).headers["x-llmedge-cache"] == "miss"
    assert ask(edge, chat()).headers["x-llmedge-cache"] == "hit"


def test_stream_larger_than_max_entry_bytes_is_not_stored(start_edge, sims):
    small = start_edge(f"""\
server:
  http: 127.0.0.1:0
cache: {{max_entry_bytes: 300}}
deployments:
  - name: gamma
    base_url: {sims.gamma.url}
routes:
  - name: faq
    deployments: [gamma]
    cache: {{ttl_s: 600}}
""")
    for _ in range(2):
        resp = ask(small, chat(stream=True))
        assert resp.status == 200 and parse_sse(resp.body)[-1] == "[DONE]"
        assert resp.headers["x-llmedge-cache"] == "miss"
    assert sims.gamma.stats()["chat"] == 2


def test_tenant_header_namespaces_instead_of_the_api_key(start_edge, sims):
    tenant_edge = start_edge(f"""\
server:
  http: 127.0.0.1:0
cache: {{tenant_header: X-Tenant}}
deployments:
  - name: gamma
    base_url: {sims.gamma.url}
routes:
  - name: faq
    deployments: [gamma]
    cache: {{ttl_s: 600}}
""")

    def state(tenant=None, key="Bearer k1"):
        headers = {"authorization": key, **({"x-tenant": tenant} if tenant else {})}
        return ask(tenant_edge, chat(), headers).headers["x-llmedge-cache"]

    assert state("acme") == "miss"
    assert state("acme", key="Bearer k2") == "hit"     # one tenant, several keys
    assert state("globex") == "miss"                   # same key, another tenant
    assert state("globex", key="Bearer k3") == "hit"
    assert state() == "miss"                           # no header: the key is the tenant
    assert state(key="Bearer k2") == "miss"
    assert sims.gamma.stats()["chat"] == 4


def test_single_flight_identical_misses_make_one_upstream_request(edge, sims):
    overlapping_requests(edge, edge, sims, lambda e: ask(e, chat()))
    text = edge.metrics()
    assert metric_value(text, "llmedge_cache_coalesced_total", route="faq", scope="local") == 5
    assert metric_value(text, "llmedge_cache_lookups_total", route="faq", result="hit") == 5


def test_single_flight_behind_a_stream(edge, sims):
    # Followers asking for a whole answer get the leader's stream, assembled.
    results = overlapping_requests(edge, edge, sims, lambda e: ask(e, chat()),
                                   send_first=lambda e: ask(e, chat(stream=True)))
    streamed = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                       for e in parse_sse(results[0].body)[:-1]
                       if json.loads(e)["choices"])
    assert results[1].json()["choices"][0]["message"]["content"] == streamed


def test_single_flight_wait_is_bounded(start_edge, sims):
    edge = start_edge(f"""\
server:
  http: 127.0.0.1:0
cache: {{wait_s: 0.3}}
deployments:
  - name: gamma
    base_url: {sims.gamma.url}
routes:
  - name: faq
    deployments: [gamma]
    cache: {{ttl_s: 600}}
""")
    sims.gamma.configure(ttft_ms=2000)
    results: list = []
    leader = threading.Thread(target=lambda: results.append(ask(edge, chat())))
    leader.start()
    sims.gamma.wait_stat("chat", 1)
    # Still within the leader's 2 s, the follower stops waiting after 0.3 s and asks itself.
    follower = ask(edge, chat())
    assert follower.status == 200 and follower.headers["x-llmedge-cache"] == "miss"
    assert sims.gamma.stats()["chat"] == 2
    leader.join(timeout=60)
    assert results[0].status == 200


def test_single_flight_followers_go_upstream_when_the_leader_fails(start_edge, sims):
    impatient = start_edge(f"""\
server:
  http: 127.0.0.1:0
deployments:
  - name: gamma
    base_url: {sims.gamma.url}
    timeouts: {{first_byte_s: 2}}
routes:
  - name: faq
    deployments: [gamma]
    cache: {{ttl_s: 600}}
""")
    sims.gamma.configure(stall_after=0)      # the leader's request is never answered
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(ask(impatient, chat())))]
    threads[0].start()
    sims.gamma.wait_stat("chat", 1)
    sims.gamma.configure(stall_after=None)
    for _ in range(3):
        threads.append(threading.Thread(target=lambda: results.append(ask(impatient, chat()))))
        threads[-1].start()
    wait_for(lambda: metric_value(impatient.metrics(), "llmedge_inflight_requests") >= 4,
             message="followers waiting")
    for t in threads:
        t.join(timeout=60)
    # The leader's timeout was not shared: the followers asked upstream themselves.
    assert sorted(r.status for r in results) == [200, 200, 200, 504]
    assert sims.gamma.stats()["chat"] == 4


def test_admin_cache_delete_by_route_and_all(start_edge, sims):
    admin = start_edge(f"""\
server:
  http: 127.0.0.1:0
  admin_token_env: LLMEDGE_TEST_ADMIN_TOKEN
cache: {{max_entries: 2}}
deployments:
  - name: gamma
    base_url: {sims.gamma.url}
routes:
  - name: faq
    deployments: [gamma]
    cache: {{ttl_s: 600}}
  - name: other
    deployments: [gamma]
    cache: {{ttl_s: 600}}
""", env={"LLMEDGE_TEST_ADMIN_TOKEN": "s3cret"})
    token = {"authorization": "Bearer s3cret"}
    ask(admin, chat())
    ask(admin, chat("other"))
    refused = admin.call("DELETE", "/admin/cache")
    assert refused.status == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert admin.call("DELETE", "/admin/cache",
                      headers={"authorization": "Bearer wrong"}).status == 401
    assert admin.call("GET", "/admin/cache", headers=token).status == 405
    # A typo or an empty route must not empty every route's cache.
    for query in ("?rout=faq", "?route=", "?route=faq&route=other"):
        typo = admin.call("DELETE", "/admin/cache" + query, headers=token)
        assert typo.status == 400, (query, typo)
    assert ask(admin, chat()).headers["x-llmedge-cache"] == "hit"
    missing = admin.call("DELETE", "/admin/cache?route=nope", headers=token)
    assert missing.status == 404 and missing.json()["error"]["code"] == "route_not_found"
    # The scheme's name is case-insensitive.
    gone = admin.call("DELETE", "/admin/cache?route=faq", headers={"authorization": "bearer s3cret"})
    assert gone.status == 200 and gone.json() == {"deleted": 1, "route": "faq"}
    assert ask(admin, chat("other")).headers["x-llmedge-cache"] == "hit"
    assert ask(admin, chat()).headers["x-llmedge-cache"] == "miss"
    assert admin.call("DELETE", "/admin/cache", headers=token).json()["deleted"] == 2
    assert ask(admin, chat("other")).headers["x-llmedge-cache"] == "miss"
    # Bounded by max_entries: a third answer evicts the least recently used.
    ask(admin, chat(max_tokens=3))
    ask(admin, chat(max_tokens=4))
    text = admin.metrics()
    assert metric_value(text, "llmedge_cache_entries") == 2
    assert metric_value(text, "llmedge_cache_evictions_total") == 1
    assert metric_value(text, "llmedge_cache_bytes") > 0
    assert metric_value(text, "llmedge_cache_stores_total") == 6
    assert metric_value(text, "llmedge_cache_stored_bytes_total", route="faq") > 0


def test_check_rejects_bad_cache_config(tmp_path):
    import subprocess

    from procs import PYTHON, REPO

    path = tmp_path / "bad.yaml"
    path.write_text("""\
cache: {backend: memcached, timeout_ms: 0, pool_size: 0, tenant_header: "x tenant",
        breaker: {failures: 0, open_s: -1}}
deployments:
  - name: small
    base_url: http://127.0.0.1:9001/v1
""")
    proc = subprocess.run([PYTHON, "-m", "proxy", "check", "-c", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    for problem in ("cache.backend: unknown backend 'memcached'", "cache.timeout_ms",
                    "cache.pool_size", "cache.tenant_header", "cache.breaker.failures",
                    "cache.breaker.open_s"):
        assert problem in proc.stderr, (problem, proc.stderr)
    path.write_text(path.read_text().replace(
        "cache: {backend: memcached, timeout_ms: 0, pool_size: 0, tenant_header: \"x tenant\",\n"
        "        breaker: {failures: 0, open_s: -1}}",
        "cache: {backend: redis, url: 'http://127.0.0.1:6379'}"))
    proc = subprocess.run([PYTHON, "-m", "proxy", "check", "-c", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "cache.url: expected a redis://" in proc.stderr


def test_reload_applies_route_cache_settings_and_reports_the_store_as_fixed(edge, sims):
    ask(edge, chat())
    text = edge.config_path.read_text()
    # A route's cache policy follows the reload; the store itself (and what it holds) stays.
    edge.config_path.write_text(text.replace("  - name: uncached\n    deployments: [gamma]\n",
                                             "  - name: uncached\n    deployments: [gamma]\n"
                                             "    cache: {ttl_s: 600}\n")
                                + "cache: {max_entries: 5}\n")
    resp = edge.call("POST", "/admin/reload")
    assert resp.status == 200 and resp.json()["needs_restart"] == ["cache"]
    assert ask(edge, chat()).headers["x-llmedge-cache"] == "hit"
    assert ask(edge, chat("uncached")).headers["x-llmedge-cache"] == "miss"
    assert ask(edge, chat("uncached")).headers["x-llmedge-cache"] == "hit"


def test_stream_stored_without_include_usage_still_answers_with_usage(edge, sims):
    # llmedge asks upstream for usage on every stream (for accounting) and keeps it in the
    # stored completion, though this client did not ask to see it.
    headers, chunks = sdk_stream(edge)
    assert headers["x-llmedge-cache"] == "miss" and all(c.usage is None for c in chunks)
    whole = ask(edge, chat())
    assert whole.headers["x-llmedge-cache"] == "hit"
    assert whole.json()["usage"]["total_tokens"] > 0
    headers, replay = sdk_stream(edge, usage=True)
    assert headers["x-llmedge-cache"] == "hit" and replay[-1].usage.total_tokens > 0


def test_a_hit_still_honours_the_requests_tags(start_edge, sims):
    # The cache looks before the route decides, so a stored answer from a deployment the
    # request's tags rule out must not be served to it.
    edge = start_edge(f"""\
server:
  http: 127.0.0.1:0
deployments:
  - name: alpha
    base_url: {sims.alpha.url}
    tags: [region=us]
  - name: beta
    base_url: {sims.beta.url}
    tags: [region=eu]
routes:
  - name: faq
    deployments: [alpha, beta]
    policy: ordered
    cache: {{ttl_s: 600}}
""")
    first = ask(edge, chat())
    assert first.headers["x-llmedge-upstream"] == "alpha", first
    eu = ask(edge, chat(), {"x-llmedge-tags": "region=eu"})
    assert eu.status == 200, eu
    assert eu.headers["x-llmedge-upstream"] == "beta"
    assert eu.headers["x-llmedge-cache"] == "miss"
    assert sims.beta.stats()["chat"] == 1
    # The EU answer is now the stored one: a request that allows it gets it from the cache.
    again = ask(edge, chat(), {"x-llmedge-tags": "region=eu"})
    assert again.headers["x-llmedge-cache"] == "hit" and again.headers[
        "x-llmedge-upstream"] == "beta"
    # Tags no deployment carries are refused as before, cached answer or not.
    mars = ask(edge, chat(), {"x-llmedge-tags": "region=mars"})
    assert mars.status == 400 and mars.json()["error"]["code"] == "unsatisfiable_tags"
    assert mars.headers["x-request-id"]
    assert sims.alpha.stats()["chat"] == 1 and sims.beta.stats()["chat"] == 1
    # Counted as a route that refuses at once counts a refusal: no route, no deployment.
    assert metric_value(edge.metrics(), "llmedge_requests_total", route="-", deployment="-",
                        status="400") == 1
