"""Metrics, usage accounting and the JSON access log, through real requests: tokens and cost
from the upstream's usage (streams included, with the usage event stripped again when the
client did not ask), attempts by outcome, fallbacks, retries with backoff, the overall
deadline, per-endpoint state gauges and probe counts."""

from __future__ import annotations

import json

from procs import metric_value, wait_for

MESSAGES = [{"role": "user", "content": "SECRET-PROMPT-TEXT how many tokens?"}]
PRICE_IN, PRICE_OUT = 2.0, 8.0   # USD per 1M tokens


def _config(sims, tmp_path, route="deployments: [alpha]\n    fallbacks: [beta]", upstream=""):
    return f"""\
server:
  http: 127.0.0.1:0
  access_log: {tmp_path / "access.jsonl"}
upstream:
  breaker: {{consecutive_failures: 10, min_requests: 100}}
{upstream}
deployments:
  - name: alpha
    base_url: {sims.alpha.url}
    api_key_env: LLMEDGE_TEST_ALPHA_KEY
    price: {{input: {PRICE_IN}, output: {PRICE_OUT}}}
  - name: beta
    base_url: {sims.beta.url}
    api_key_env: LLMEDGE_TEST_BETA_KEY
routes:
  - name: auto
    {route}
"""


def access_lines(tmp_path, count: int) -> list[dict]:
    path = tmp_path / "access.jsonl"

    def read():
        if not path.exists():
            return None
        lines = path.read_text().splitlines()
        return [json.loads(line) for line in lines] if len(lines) >= count else None

    return wait_for(read, message="%d access log lines" % count)


def test_usage_becomes_tokens_cost_and_an_access_log_line(start_edge, sims, tmp_path):
    edge = start_edge(_config(sims, tmp_path))
    with edge.client() as client:
        answer = client.chat.completions.create(model="auto", messages=MESSAGES)
    usage = answer.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    text = edge.metrics()
    assert metric_value(text, "llmedge_tokens_total", route="auto", deployment="alpha",
                        direction="in") == usage.prompt_tokens
    assert metric_value(text, "llmedge_tokens_total", route="auto", deployment="alpha",
                        direction="out") == usage.completion_tokens
    cost = (usage.prompt_tokens * PRICE_IN + usage.completion_tokens * PRICE_OUT) / 1e6
    assert abs(metric_value(text, "llmedge_cost_usd_total", route="auto",
                            deployment="alpha") - cost) < 1e-12
    assert metric_value(text, "llmedge_upstream_attempts_total", deployment="alpha",
                        outcome="ok") == 1
    assert metric_value(text, "llmedge_overhead_seconds_count") == 1
    assert metric_value(text, "llmedge_request_duration_seconds_count", route="auto",
                        deployment="alpha") == 1

    [line] = access_lines(tmp_path, 1)
    assert line["route"] == "auto" and line["deployment"] == "alpha"
    assert line["status"] == 200 and line["attempts"] == 1 and line["cache"] == "bypass"
    assert line["prompt_tokens"] == usage.prompt_tokens
    assert line["completion_tokens"] == usage.completion_tokens
    assert abs(line["cost_usd"] - cost) < 1e-12
    assert line["decision"].startswith("ordered: alpha")
    assert line["duration_ms"] >= line["upstream_ms"] > 0
    assert line["time"].endswith("Z") and line["request_id"]
    raw = (tmp_path / "access.jsonl").read_text()
    # Never the prompt, never a credential.
    assert "SECRET-PROMPT-TEXT" not in raw
    assert "sk-alpha-upstream-key" not in raw and "client-secret" not in raw


def test_stream_usage_is_counted_and_only_shown_when_asked(start_edge, sims, tmp_path):
    edge = start_edge(_config(sims, tmp_path))
    with edge.client() as client:
        plain = list(client.chat.completions.create(model="auto", messages=MESSAGES,
                                                    stream=True))
        asked = list(client.chat.completions.create(
            model="auto", messages=MESSAGES, stream=True,
            stream_options={"include_usage": True}))
    # The client that did not ask sees no usage chunk; the one that asked gets one.
    assert all(c.usage is None for c in plain)
    assert plain[-1].choices[0].finish_reason == "stop"
    with_usage = [c for c in asked if c.usage is not None]
    assert len(with_usage) == 1 and with_usage[0].choices == []
    completion = with_usage[0].usage.completion_tokens
    # Both streams were counted: llmedge asked the upstream for usage on the first one.
    text = edge.metrics()
    assert metric_value(text, "llmedge_tokens_total", deployment="alpha",
                        direction="out") == 2 * completion
    assert metric_value(text, "llmedge_time_to_first_token_seconds_count", route="auto",
                        deployment="alpha") == 2
    lines = access_lines(tmp_path, 2)
    assert all(line["stream"] and line["completion_tokens"] == completion
               and line["ttft_ms"] > 0 for line in lines)


def test_attempts_by_outcome_and_fallbacks(start_edge, sims, tmp_path):
    edge = start_edge(_config(sims, tmp_path))
    sims.alpha.configure(status=500)
    resp = edge.call("POST", "/v1/chat/completions", {"model": "auto", "messages": MESSAGES})
    assert resp.status == 200 and resp.headers["x-llmedge-upstream"] == "beta"
    text = edge.metrics()
    assert metric_value(text, "llmedge_upstream_attempts_total", deployment="alpha",
                        outcome="status") == 2   # the default retry on the same deployment
    assert metric_value(text, "llmedge_upstream_attempts_total", deployment="beta",
                        outcome="ok") == 1
    assert metric_value(text, "llmedge_retries_total", deployment="alpha") == 1
    assert metric_value(text, "llmedge_fallbacks_total", route="auto") == 1
    [line] = access_lines(tmp_path, 1)
    assert line["failures"] == ["status", "status"] and line["attempts"] == 3


def test_same_deployment_retries_back_off_then_fall_back(start_edge, sims, tmp_path):
    edge = start_edge(_config(sims, tmp_path, upstream="  retry: {same_deployment: 2, "
                                                       "backoff_s: 0.01, max_backoff_s: 0.05}"))
    sims.alpha.configure(status=500)
    resp = edge.call("POST", "/v1/chat/completions", {"model": "auto", "messages": MESSAGES})
    assert resp.status == 200 and resp.headers["x-llmedge-upstream"] == "beta"
    assert resp.headers["x-llmedge-attempts"] == "4"
    assert sims.alpha.stats()["chat"] == 3
    assert metric_value(edge.metrics(), "llmedge_retries_total", deployment="alpha") == 2
    # A 429 is the breaker's business (it honours Retry-After): no retry on the same one.
    sims.alpha.configure(status=429)
    resp = edge.call("POST", "/v1/chat/completions", {"model": "auto", "messages": MESSAGES})
    assert resp.headers["x-llmedge-upstream"] == "beta"
    assert sims.alpha.stats()["chat"] == 4


def test_overall_deadline_bounds_the_fallback_chain(start_edge, sims, tmp_path):
    edge = start_edge(_config(sims, tmp_path, upstream="  deadline_s: 0.3"))
    sims.alpha.configure(ttft_ms=5000)
    resp = edge.call("POST", "/v1/chat/completions", {"model": "auto", "messages": MESSAGES})
    assert resp.status == 504, resp
    assert resp.json()["error"]["code"] == "upstream_deadline"
    assert sims.beta.stats()["chat"] == 0   # no time was left for the fallback
    # The deadline cut the attempt short: not counted against alpha's endpoint.
    row = {r["deployment"]: r for r in edge.call("GET", "/admin/upstreams").json()["endpoints"]}
    assert row["alpha"]["consecutive_failures"] == 0 and row["alpha"]["circuit"] == "closed"


def test_endpoint_gauges_and_probe_counts(start_edge, sims, tmp_path):
    config = _config(sims, tmp_path).replace(
        "upstream:\n", "upstream:\n  health: {interval_s: 0.05, timeout_s: 1, jitter: 0}\n")
    config = config.replace("consecutive_failures: 10", "consecutive_failures: 1, open_s: 60")
    edge = start_edge(config)
    sims.alpha.configure(status=500)
    edge.call("POST", "/v1/chat/completions", {"model": "auto", "messages": MESSAGES})

    def gauges():
        text = edge.metrics()
        return text if metric_value(text, "llmedge_health_probes_total", deployment="beta",
                                    result="pass") > 0 else None

    text = wait_for(gauges, message="probe counts")
    assert metric_value(text, "llmedge_endpoint_state", deployment="alpha", state="open") == 1
    assert metric_value(text, "llmedge_endpoint_state", deployment="alpha",
                        state="healthy") == 0
    assert metric_value(text, "llmedge_endpoint_state", deployment="beta", state="healthy") == 1
    assert metric_value(text, "llmedge_endpoint_error_rate", deployment="alpha") > 0


def test_refused_requests_are_logged_too(start_edge, sims, tmp_path):
    edge = start_edge(_config(sims, tmp_path))
    assert edge.call("POST", "/v1/chat/completions",
                     {"model": "nope", "messages": MESSAGES}).status == 404
    assert edge.call("POST", "/v1/chat/completions", b"{not json").status == 400
    lines = access_lines(tmp_path, 2)
    assert [(l["status"], l["error"]) for l in lines] == [
        (404, "model_not_found"), (400, "invalid_request_error")]
    assert all(l["path"] == "/v1/chat/completions" for l in lines)


def test_usage_no_request_has_is_not_counted_and_the_log_goes_on(start_edge, sims, tmp_path):
    edge = start_edge(_config(sims, tmp_path))
    huge = {"id": "c", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10**26, "completion_tokens": 5, "total_tokens": 10**26}}
    sims.alpha.configure(answer_body=json.dumps(huge), answer_type="application/json")
    assert edge.call("POST", "/v1/chat/completions",
                     {"model": "auto", "messages": MESSAGES}).status == 200
    sims.alpha.configure(answer_body=None)
    for _ in range(3):
        assert edge.call("POST", "/v1/chat/completions",
                         {"model": "auto", "messages": MESSAGES}).status == 200
    # Every request has its line, the odd one included: the writer survived it.
    lines = access_lines(tmp_path, 4)
    assert [line["status"] for line in lines] == [200] * 4
    assert lines[0]["prompt_tokens"] == 0 and lines[0]["completion_tokens"] == 5
    text = edge.metrics()
    assert metric_value(text, "llmedge_tokens_total", deployment="alpha", direction="in") \
        == 3 * lines[1]["prompt_tokens"]
