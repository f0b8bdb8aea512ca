"""The in-process response cache, through real requests: exact keys, tenants, cache-control,
streaming replay, TTL, and what is never cached."""

from __future__ import annotations

import json

import pytest

from procs import http_call, wait_for

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


def test_tenants_are_isolated_unless_the_cache_is_shared(edge, sims):
    ask(edge, chat())
    other_tenant = {"authorization": "Bearer tenant-b"}
    assert ask(edge, chat(), other_tenant).headers["x-llmedge-cache"] == "miss"
    ask(edge, chat("shared-faq"))
    assert ask(edge, chat("shared-faq"), other_tenant).headers["x-llmedge-cache"] == "hit"


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
    ask(edge, chat("short"))
    wait_for(lambda: ask(edge, chat("short")).headers["x-llmedge-cache"] == "miss",
             message="the entry to expire")


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
