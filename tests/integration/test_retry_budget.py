"""The retry budget caps fallbacks across the process, so an outage cannot multiply load."""

from __future__ import annotations

MESSAGES = [{"role": "user", "content": "budget"}]


def test_fallbacks_stop_when_the_budget_is_spent(start_edge, sims):
    edge = start_edge(f"""\
server:
  http: 127.0.0.1:0
upstream:
  retry_budget: {{ratio: 0.0, min_per_s: 0.1, window_s: 50}}   # 5 retries per 50 s
  breaker: {{consecutive_failures: 1000, min_requests: 1000}}   # keep circuits out of it
  retry: {{same_deployment: 0}}   # one retry per failed request: the fallback
deployments:
  - name: alpha
    base_url: {sims.alpha.url}
  - name: beta
    base_url: {sims.beta.url}
routes:
  - name: auto
    deployments: [alpha]
    fallbacks: [beta]
""")
    sims.alpha.configure(status=500)
    answers = [edge.call("POST", "/v1/chat/completions", {"model": "auto", "messages": MESSAGES})
               for _ in range(10)]
    assert [a.status for a in answers] == [200] * 5 + [500] * 5
    assert all(a.headers["x-llmedge-attempts"] == "1" for a in answers[5:])
    assert sims.alpha.stats()["chat"] == 10
    assert sims.beta.stats()["chat"] == 5
    metrics = edge.metrics()
    assert 'kind="retry_budget"' in metrics


def test_budget_grows_with_traffic(start_edge, sims):
    edge = start_edge(f"""\
server:
  http: 127.0.0.1:0
upstream:
  retry_budget: {{ratio: 0.5, min_per_s: 0.0, window_s: 50}}
  breaker: {{consecutive_failures: 1000, min_requests: 1000}}
  retry: {{same_deployment: 0}}   # one retry per failed request: the fallback
deployments:
  - name: alpha
    base_url: {sims.alpha.url}
  - name: beta
    base_url: {sims.beta.url}
routes:
  - name: auto
    deployments: [alpha]
    fallbacks: [beta]
""")
    healthy = [edge.call("POST", "/v1/chat/completions", {"model": "auto", "messages": MESSAGES})
               for _ in range(8)]
    assert all(a.status == 200 for a in healthy)
    sims.alpha.configure(status=500)
    # Retries may reach half of the 20 requests in the window, and no more.
    answers = [edge.call("POST", "/v1/chat/completions", {"model": "auto", "messages": MESSAGES})
               for _ in range(12)]
    fell_back = sum(1 for a in answers if a.status == 200)
    assert fell_back == 10, [a.status for a in answers]
    assert answers[0].status == 200 and 500 in [a.status for a in answers]


def test_the_default_same_deployment_retry_is_budgeted_too(start_edge, sims):
    # With the defaults a 5xx is retried once on its deployment, then falls back: two
    # retries per failed request, both counted against the budget.
    edge = start_edge(f"""\
server:
  http: 127.0.0.1:0
upstream:
  retry_budget: {{ratio: 0.0, min_per_s: 0.1, window_s: 50}}   # 5 retries per 50 s
  breaker: {{consecutive_failures: 1000, min_requests: 1000}}
deployments:
  - name: alpha
    base_url: {sims.alpha.url}
  - name: beta
    base_url: {sims.beta.url}
routes:
  - name: auto
    deployments: [alpha]
    fallbacks: [beta]
""")
    sims.alpha.configure(status=500)
    answers = [edge.call("POST", "/v1/chat/completions", {"model": "auto", "messages": MESSAGES})
               for _ in range(4)]
    # 1st and 2nd: retry + fallback (4 of the 5); 3rd: the retry, then the budget is spent.
    assert [a.status for a in answers] == [200, 200, 500, 500]
    assert sims.alpha.stats()["chat"] == 2 + 2 + 2 + 1
    assert sims.beta.stats()["chat"] == 2
