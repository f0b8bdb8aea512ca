"""The classify policy through real requests: classes to deployments and to other routes,
thresholds and defaults, fallbacks, /v1/route explanations, the audit log, model files,
complexity routing from outcome data, and config errors that name their path."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from procs import wait_for

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"

CODE = ["fix this python function", "why does my rust code not compile",
        "write a sql query joining two tables", "refactor this javascript class",
        "my python script throws a KeyError", "explain this compiler error in c++"]
CHAT = ["how are you today", "tell me a joke", "what's your favourite movie",
        "good morning friend", "let's talk about the weather", "do you like music"]


def _config(sims, routes: str) -> str:
    return f"""\
server:
  http: 127.0.0.1:0
deployments:
  - name: alpha
    base_url: {sims.alpha.url}
  - name: beta
    base_url: {sims.beta.url}
  - name: gamma
    base_url: {sims.gamma.url}
routes:
{routes}
"""


def _classes(code_target: str = "deployments: [alpha]", chat_target: str = "route: smalltalk",
             code_extra: str = "") -> str:
    return f"""\
    classes:
      code:
        {code_target}
{code_extra}
        examples: {json.dumps(CODE)}
      chat:
        {chat_target}
        examples: {json.dumps(CHAT)}
  - name: smalltalk
    deployments: [beta]
"""


def _chat(edge, text: str, model: str = "auto", earlier: tuple[str, ...] = ()):
    messages = [{"role": "user", "content": t} for t in earlier]
    messages.append({"role": "user", "content": text})
    return edge.call("POST", "/v1/chat/completions", {"model": model, "messages": messages})


def _explain(edge, text: str, model: str = "auto"):
    resp = edge.call("POST", "/v1/route", {"model": model,
                                           "messages": [{"role": "user", "content": text}]})
    assert resp.status == 200, resp
    return resp.json()


def test_classes_pick_deployments_and_routes(start_edge, sims):
    edge = start_edge(_config(sims, """\
  - name: auto
    policy: classify
""" + _classes()))
    resp = _chat(edge, "my python function throws an error, please fix it")
    assert resp.status == 200, resp
    assert resp.headers["x-llmedge-upstream"] == "alpha"
    assert resp.headers["x-llmedge-decision"].startswith("classify(auto): code")
    resp = _chat(edge, "tell me a joke about the weather")
    assert resp.headers["x-llmedge-upstream"] == "beta"
    assert "-> ordered: beta" in resp.headers["x-llmedge-decision"]
    assert sims.alpha.stats()["chat"] == 1 and sims.beta.stats()["chat"] == 1


def test_route_endpoint_explains_without_calling_upstream(start_edge, sims):
    edge = start_edge(_config(sims, """\
  - name: auto
    policy: classify
    fallbacks: [gamma]
""" + _classes()))
    out = _explain(edge, "tell me a joke")
    assert out["route"] == "auto" and out["policy"] == "classify"
    assert out["path"] == ["auto", "smalltalk"]
    assert out["deployments"] == ["beta", "gamma"]
    probs = out["classification"]["probabilities"]
    assert set(probs) == {"code", "chat"} and probs["chat"] > probs["code"]
    assert abs(sum(probs.values()) - 1.0) < 1e-6
    assert [s["name"] for s in out["scores"]] == ["beta", "gamma"]
    assert out["scores"][0]["endpoints"][0]["state"] == "healthy"
    code = _explain(edge, "rust code does not compile")
    assert code["path"] == ["auto", "auto/code"] and code["deployments"] == ["alpha", "gamma"]
    assert all(sim.stats()["chat"] == 0 for sim in sims)
    # A deployment named directly is explained too; an unknown model is a 404.
    assert _explain(edge, "hi", model="gamma")["deployments"] == ["gamma"]
    resp = edge.call("POST", "/v1/route", {"model": "nope", "messages": []})
    assert resp.status == 404 and resp.json()["error"]["param"] == "model"
    assert edge.call("GET", "/v1/route").status == 405


def test_fallback_applies_after_the_class_deployment_fails(start_edge, sims):
    edge = start_edge(_config(sims, """\
  - name: auto
    policy: classify
    fallbacks: [gamma]
""" + _classes()))
    sims.alpha.configure(status=500)
    resp = _chat(edge, "fix my python code please")
    assert resp.status == 200, resp
    assert resp.headers["x-llmedge-upstream"] == "gamma"
    assert resp.headers["x-llmedge-attempts"] == "3"   # alpha, alpha again, gamma


def test_threshold_sends_unsure_requests_to_default_and_audits(start_edge, sims, tmp_path):
    audit = tmp_path / "audit.jsonl"
    edge = start_edge(_config(sims, f"""\
  - name: auto
    policy: classify
    default: gamma
    audit: {{file: {audit}, below: 0.99, include_text: true}}
""" + _classes(code_extra="        threshold: 0.99")))
    resp = _chat(edge, "python code")
    assert resp.headers["x-llmedge-upstream"] == "gamma"
    assert "below threshold 0.99" in resp.headers["x-llmedge-decision"]
    out = _explain(edge, "python code")
    assert out["classification"]["used_default"] is True
    records = wait_for(lambda: [json.loads(line) for line in audit.read_text().splitlines()]
                       if audit.exists() and len(audit.read_text().splitlines()) >= 2 else None)
    assert records[0]["route"] == "auto" and records[0]["text"] == "python code"
    assert records[0]["targets"] == ["gamma"]


def test_audit_leaves_text_out_unless_allowed(start_edge, sims, tmp_path):
    audit = tmp_path / "audit.jsonl"
    edge = start_edge(_config(sims, f"""\
  - name: auto
    policy: classify
    audit: {{file: {audit}, below: 1.0}}
""" + _classes()))
    _explain(edge, "a secret prompt about python")
    record = wait_for(lambda: audit.exists() and audit.read_text().strip() and
                      json.loads(audit.read_text().splitlines()[0]))
    assert "text" not in record and "secret" not in audit.read_text()


def test_earlier_turns_inform_the_class(start_edge, sims):
    edge = start_edge(_config(sims, """\
  - name: auto
    policy: classify
""" + _classes()))
    short = "and this one?"
    after_code = _chat(edge, short, earlier=("fix this python function", "refactor this "
                                             "javascript class"))
    after_chat = _chat(edge, short, earlier=("tell me a joke", "how are you today"))
    assert after_code.headers["x-llmedge-upstream"] == "alpha"
    assert after_chat.headers["x-llmedge-upstream"] == "beta"


def _llmedge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_model_file_from_llmedge_train(start_edge, sims, tmp_path):
    data = tmp_path / "examples.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": label}) + "\n"
                            for label, texts in (("code", CODE), ("chat", CHAT))
                            for t in texts))
    model = tmp_path / "model.json"
    done = _llmedge("train", "--data", str(data), "-o", str(model), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "12 examples, 2 classes" in done.stdout
    edge = start_edge(_config(sims, f"""\
  - name: auto
    policy: classify
    model_file: {model}
    classes:
      code: {{deployments: [alpha]}}
      chat: {{deployments: [beta]}}
"""))
    assert _chat(edge, "sql query joining tables").headers["x-llmedge-upstream"] == "alpha"
    assert _chat(edge, "good morning, how are you").headers["x-llmedge-upstream"] == "beta"
    done = _llmedge("eval", "--data", str(data), "--model", str(model), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "accuracy: 1.0000" in done.stdout and "macro-F1: 1.0000" in done.stdout


def _complexity_config(sims, outcomes: Path, share: float) -> str:
    """A complexity route trained from ``outcomes``: strong -> alpha, weak -> beta."""
    return _config(sims, f"""\
  - name: auto
    policy: classify
    outcomes_file: {outcomes}
    strong_share: {share}
    classes:
      strong: {{deployments: [alpha]}}
      weak: {{deployments: [beta]}}
""")


def test_complexity_route_strong_share_knob(start_edge, sims, tmp_path):
    rows = (DATA / "routing-outcomes" / "gsm8k.jsonl").read_text().splitlines()[:200]
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text("\n".join(rows) + "\n")
    prompts = [json.loads(r)["prompt"] for r in rows[:20]]

    def route(share: float) -> str:
        return _complexity_config(sims, outcomes, share)

    for share, expected in ((0.0, {"beta"}), (1.0, {"alpha"})):
        edge = start_edge(route(share))
        chosen = {_explain(edge, p)["deployments"][0] for p in prompts}
        assert chosen == expected, (share, chosen)
        edge.stop()
    edge = start_edge(route(0.3))
    strong = sum(_explain(edge, json.loads(r)["prompt"])["deployments"][0] == "alpha"
                 for r in rows)
    # The cut is set on these prompts: about 30% of them go to the strong model.
    assert 50 <= strong <= 70, strong


def test_strong_share_follows_live_traffic(start_edge, sims, tmp_path):
    rows = sorted((json.loads(r) for r in
                   (DATA / "routing-outcomes" / "gsm8k.jsonl").read_text().splitlines()),
                  key=lambda r: len(r["prompt"]))
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text("".join(json.dumps(r) + "\n" for r in rows[:300]))
    edge = start_edge(_complexity_config(sims, outcomes, 0.3))
    # Traffic unlike the training prompts: trained on the shorter half of the prompts, it
    # sees the longer half, which the complexity model scores high.
    traffic = [r["prompt"] for r in rows[300:]]
    random.Random(1).shuffle(traffic)
    decided = [_explain(edge, p) for p in traffic]
    first, last = decided[:100], decided[-150:]
    assert all(d["classification"]["strong_share"]["from"] == "the training prompts"
               for d in first)
    assert decided[-1]["classification"]["strong_share"]["from"] == "the last 299 requests"
    strong_first = sum(d["deployments"][0] == "alpha" for d in first)
    strong_last = sum(d["deployments"][0] == "alpha" for d in last)
    # The training prompts' cut would send most of these to the strong model; the live cut
    # brings the share back to about 30%.
    assert strong_first > 50, strong_first
    assert 25 <= strong_last <= 65, strong_last


def test_llmedge_eval_on_outcomes_reports_the_curve(tmp_path):
    done = _llmedge("eval", "--outcomes", "--data",
                    str(DATA / "routing-outcomes" / "gsm8k.jsonl"), "--limit", "300",
                    "--folds", "3", "--json", str(tmp_path / "curve.json"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "3-fold cross-validation" in done.stdout and "APGR:" in done.stdout
    curve = json.loads((tmp_path / "curve.json").read_text())
    assert curve["n"] == 300 and curve["pgr"][0] == 0.0
    assert abs(curve["pgr"][-1] - 1.0) < 1e-9 and 0.0 < curve["apgr"] < 1.0


def test_bad_classify_configs_name_the_path(sims, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(_config(sims, """\
  - name: auto
    policy: classify
    default: nowhere
    classes:
      code:
        deployments: [alpah]
        examples: [x]
      chat:
        route: loop
        examples: [y]
      both:
        deployments: [alpha]
        route: loop
        threshold: 2
  - name: loop
    policy: classify
    classes:
      back: {route: auto, examples: [z]}
  - name: plain
    deployments: [alpha]
    default: beta
"""))
    done = _llmedge("check", "-c", str(config), cwd=tmp_path)
    assert done.returncode == 2
    err = done.stderr
    assert "routes[0].classes.code.deployments[0]: unknown deployment 'alpah'" in err
    assert "routes[0].classes.chat.route: 'loop' leads back to 'auto'" in err
    assert "routes[0].classes.both: give either deployments or route" in err
    assert "routes[0].classes.both.threshold: must be between 0 and 1" in err
    assert "routes[0].default: 'nowhere' names no deployment or route" in err
    assert "routes[2].default: only used by policy 'classify'" in err


def test_session_keeps_its_class_unless_a_turn_clearly_belongs_elsewhere(start_edge, sims):
    edge = start_edge(_config(sims, """\
  - name: auto
    policy: classify
    hysteresis: 0.5
""" + _classes(chat_target="deployments: [beta]")))
    # Preconditions, without a session: an unclear turn and a clear one.
    unclear = _explain(edge, "ok thanks")["classification"]["probabilities"]
    assert unclear["chat"] > unclear["code"] and unclear["chat"] - unclear["code"] < 0.5
    clear = _explain(edge, "tell me a joke")["classification"]["probabilities"]
    assert clear["chat"] - clear["code"] > 0.5

    def ask(text: str, session: str | None = None, user: str | None = None) -> str:
        body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
        if user:
            body["user"] = user
        resp = edge.call("POST", "/v1/chat/completions", body,
                         {"x-llmedge-session": session} if session else None)
        assert resp.status == 200, resp
        return resp.headers["x-llmedge-upstream"]

    assert ask("fix my python code please", session="s1") == "alpha"
    assert ask("ok thanks", session="s1") == "alpha"      # kept: chat is not clearly ahead
    assert ask("ok thanks", session="s2") == "beta"       # another session has no history
    assert ask("ok thanks") == "beta"                     # no session, no memory
    assert ask("tell me a joke", session="s1") == "beta"  # clearly elsewhere: it moves
    assert ask("ok thanks", session="s1") == "beta"
    # The body's "user" names a session too.
    assert ask("fix my python code please", user="u1") == "alpha"
    assert ask("ok thanks", user="u1") == "alpha"


def test_rules_and_request_features_vote_with_the_classifier(start_edge, sims):
    edge = start_edge(_config(sims, """\
  - name: auto
    policy: classify
    signals:
      classifier: 1.0
      rules:
        - {pattern: '\\bselect\\b.*\\bfrom\\b', class: code, weight: 3}
      features:
        - {when: tools, class: code, weight: 2}
        - {when: images, class: chat, weight: 2}
""" + _classes(chat_target="deployments: [beta]")))
    text = "how are you today, my friend"
    plain = _explain(edge, text)
    assert plain["deployments"] == ["beta"] and plain["classification"]["votes"] == []
    ruled = _explain(edge, "SELECT name FROM friends: how are you today, my friend")
    assert ruled["deployments"] == ["alpha"]
    assert ruled["classification"]["votes"] == [
        {"signal": "rule '\\\\bselect\\\\b.*\\\\bfrom\\\\b'", "class": "code", "weight": 3.0}]
    probs = ruled["classification"]["probabilities"]
    assert probs["code"] > 0.75 and abs(sum(probs.values()) - 1.0) < 1e-9
    resp = edge.call("POST", "/v1/chat/completions", {
        "model": "auto", "messages": [{"role": "user", "content": text}],
        "tools": [{"type": "function", "function": {"name": "run_sql", "parameters": {}}}]})
    assert resp.headers["x-llmedge-upstream"] == "alpha"
    resp = edge.call("POST", "/v1/route", {"model": "auto", "messages": [{"role": "user",
        "content": [{"type": "text", "text": "fix this python function"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}]})
    votes = resp.json()["classification"]["votes"]
    assert votes == [{"signal": "images", "class": "chat", "weight": 2.0}]


def test_the_surest_signal_decides_with_combine_confidence(start_edge, sims):
    edge = start_edge(_config(sims, """\
  - name: auto
    policy: classify
    signals:
      combine: confidence
      rules:
        - {pattern: '\\bselect\\b.*\\bfrom\\b', class: code, weight: 0.97}
        - {pattern: 'friend', class: code, weight: 0.05}
""" + _classes(chat_target="deployments: [beta]")))
    text = "how are you today, my friend"
    plain = _explain(edge, text)["classification"]
    # The weak rule matched but the classifier was surer: it decides, probabilities as is.
    assert plain["class"] == "chat" and plain["votes"] == [
        {"signal": "rule 'friend'", "class": "code", "weight": 0.05}]
    sure = _explain(edge, "SELECT name FROM friends: " + text)
    assert sure["deployments"] == ["alpha"]
    votes = sure["classification"]["votes"]
    assert votes[0]["decided"] is True and "decided" not in votes[1]
    assert sure["classification"]["confidence"] == 0.97
    resp = _chat(edge, "SELECT name FROM friends: " + text)
    assert resp.status == 200 and resp.headers["x-llmedge-upstream"] == "alpha"
    edge.stop()
    # A quiet classifier (0.2 x its top probability) loses to a 0.3 rule: the rule's class
    # is routed even though the rest of the probability (0.7) sits on one other class.
    edge = start_edge(_config(sims, """\
  - name: auto
    policy: classify
    signals:
      combine: confidence
      classifier: 0.2
      rules: [{pattern: 'friend', class: code, weight: 0.3}]
""" + _classes(chat_target="deployments: [beta]")))
    out = _explain(edge, text)
    assert out["deployments"] == ["alpha"], out
    assert out["classification"]["class"] == "code"
    probs = out["classification"]["probabilities"]
    assert probs["code"] == 0.3 and abs(probs["chat"] - 0.7) < 1e-12, probs


def test_bad_signals_name_the_path(sims, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(_config(sims, """\
  - name: auto
    policy: classify
    signals:
      rules:
        - {pattern: '(unclosed', class: code}
        - {pattern: 'x', class: nope, weight: 0}
      features:
        - {when: moon_phase, class: chat}
""" + _classes(chat_target="deployments: [beta]")))
    done = _llmedge("check", "-c", str(config), cwd=tmp_path)
    assert done.returncode == 2
    err = done.stderr
    assert "routes[0].signals.rules[0].pattern: not a regular expression" in err
    assert "routes[0].signals.rules[1].class: 'nope' is not one of the route's classes" in err
    assert "routes[0].signals.rules[1].weight: must be > 0" in err
    assert "routes[0].signals.features[0].when: unknown feature 'moon_phase'" in err
    config.write_text(_config(sims, """\
  - name: auto
    policy: classify
    strong_share: 0.3
    llm: {deployment: gamma, mode: vote}
    classes:
      strong: {deployments: [alpha], examples: [prove it]}
      weak: {deployments: [beta], examples: [say hi]}
"""))
    done = _llmedge("check", "-c", str(config), cwd=tmp_path)
    assert done.returncode == 2
    assert "routes[0].llm.mode: strong_share sets its cut on the classifier alone" in done.stderr
    config.write_text(_config(sims, """\
  - name: auto
    policy: classify
    signals: {combine: confidence, rules: [{pattern: x, class: code, weight: 2}]}
    llm: {deployment: gamma, mode: vote}
""" + _classes(chat_target="deployments: [beta]")))
    done = _llmedge("check", "-c", str(config), cwd=tmp_path)
    assert done.returncode == 2
    assert "routes[0].signals.rules[0].weight: a confidence, at most 1" in done.stderr
    assert "routes[0].llm.mode: a vote has no confidence to compare" in done.stderr


def _llm_route(sims, mode: str, extra: str = "") -> str:
    return _config(sims, f"""\
  - name: auto
    policy: classify
    llm: {{deployment: gamma, mode: {mode}, timeout_s: 2.0{extra}}}
""" + _classes(chat_target="deployments: [beta]"))


def test_llm_tier_decides_and_is_cached(start_edge, sims):
    sims.gamma.configure(reply=" Code. ", chunks=1)
    edge = start_edge(_llm_route(sims, "always"))
    resp = _chat(edge, "tell me a joke")      # the classifier says chat; the LLM says code
    assert resp.status == 200, resp
    assert resp.headers["x-llmedge-upstream"] == "alpha"
    assert "(LLM router)" in resp.headers["x-llmedge-decision"]
    assert sims.gamma.stats()["chat"] == 1
    out = _explain(edge, "tell me a joke")
    assert out["classification"]["llm"] == {"mode": "always", "class": "code",
                                            "status": "cached"}
    assert sims.gamma.stats()["chat"] == 1   # answered from the cache
    from procs import metric_value
    metrics = edge.metrics()
    for result, n in (("answered", 1), ("cached", 1), ("timeout", 0)):
        assert metric_value(metrics, "llmedge_llm_router_calls_total", route="auto",
                            result=result) == n, result
    # A reload keeps the counts: counters never go back.
    assert edge.call("POST", "/admin/reload").status == 200
    assert metric_value(edge.metrics(), "llmedge_llm_router_calls_total", route="auto",
                        result="answered") == 1


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_cached_answer_skips_the_classifier_and_the_llm_tier(start_edge, sims, tmp_path,
                                                               backend):
    from procs import metric_value, parse_sse
    from redisproc import REDIS_SERVER, SKIP_REASON, RedisServer

    if backend == "redis" and REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    redis = RedisServer(tmp_path) if backend == "redis" else None
    try:
        sims.gamma.configure(reply="code", chunks=1)
        # The tier's own cache is off: only the response cache can spare the LLM a call.
        config = _llm_route(sims, "always", ", cache_size: 0").replace(
            "    policy: classify\n", "    policy: classify\n    cache: {ttl_s: 600}\n", 1)
        if redis is not None:
            config = config.replace("deployments:\n", "cache: {backend: redis, url: %s}\n"
                                    "deployments:\n" % redis.url, 1)
        edge = start_edge(config)
        body = {"model": "auto", "temperature": 0,
                "messages": [{"role": "user", "content": "tell me a joke"}]}
        first = edge.call("POST", "/v1/chat/completions", body)
        assert first.status == 200 and first.headers["x-llmedge-cache"] == "miss", first
        assert first.headers["x-llmedge-upstream"] == "alpha"
        assert sims.gamma.stats()["chat"] == 1
        second = edge.call("POST", "/v1/chat/completions", body)
        assert second.headers["x-llmedge-cache"] == "hit", second
        assert second.body == first.body
        streamed = edge.call("POST", "/v1/chat/completions", {**body, "stream": True})
        assert streamed.headers["x-llmedge-cache"] == "hit", streamed
        assert parse_sse(streamed.body)[-1] == "[DONE]"
        # Neither hit asked the LLM tier, nor any upstream.
        assert sims.gamma.stats()["chat"] == 1 and sims.alpha.stats()["chat"] == 1
        assert metric_value(edge.metrics(), "llmedge_llm_router_calls_total", route="auto",
                            result="answered") == 1
    finally:
        if redis is not None:
            redis.stop()


def test_llm_tier_falls_back_on_a_bad_answer_or_a_timeout(start_edge, sims):
    from procs import metric_value

    sims.gamma.configure(reply="I think it is code!", chunks=1)
    edge = start_edge(_llm_route(sims, "always", ", timeout_s: 0.3"))
    out = _explain(edge, "tell me a joke")
    assert out["deployments"] == ["beta"]
    assert "not a class" in out["classification"]["llm"]["status"]
    sims.gamma.configure(reply="code", ttft_ms=5000)
    resp = _chat(edge, "good morning friend, how are you")
    assert resp.status == 200 and resp.headers["x-llmedge-upstream"] == "beta"
    out = _explain(edge, "good morning friend, how are you")
    assert out["classification"]["llm"]["status"] == "no answer within 0.3s"
    metrics = edge.metrics()
    assert metric_value(metrics, "llmedge_llm_router_calls_total", result="not_a_class") == 1
    assert metric_value(metrics, "llmedge_llm_router_calls_total", result="timeout") == 2
    # The tier's short budget ran out, not the endpoint's patience: no failure is counted
    # against a slow deployment that may also serve requests.
    gamma = _endpoint(edge, "gamma")
    assert gamma["consecutive_failures"] == 0 and gamma["circuit"] == "closed", gamma


def test_llm_tier_as_cascade_and_as_voter(start_edge, sims):
    sims.gamma.configure(reply="code", chunks=1)
    edge = start_edge(_llm_route(sims, "cascade", ", below: 0.6"))
    sure = _explain(edge, "tell me a joke")
    assert sure["deployments"] == ["beta"]
    assert sure["classification"]["llm"]["status"] == "not consulted"
    assert sims.gamma.stats()["chat"] == 0
    unsure = _explain(edge, "ok thanks")     # about 0.52 chat: below 0.6, so the LLM decides
    assert unsure["deployments"] == ["alpha"] and sims.gamma.stats()["chat"] == 1
    edge.stop()
    edge = start_edge(_llm_route(sims, "vote", ", weight: 0.5"))
    voted = _explain(edge, "ok thanks")
    assert voted["deployments"] == ["alpha"]
    assert {"signal": "llm", "class": "code", "weight": 0.5} in voted["classification"]["votes"]
    clear = _explain(edge, "tell me a joke")  # one vote of 0.5 does not outweigh 0.96
    assert clear["deployments"] == ["beta"]


def test_reload_retrains_and_a_rejected_reload_keeps_serving(start_edge, sims, tmp_path):
    audit = tmp_path / "audit.jsonl"
    edge = start_edge(_config(sims, f"""\
  - name: auto
    policy: classify
    audit: {{file: {audit}, below: 1.0}}
""" + _classes()))
    assert _chat(edge, "fix my python code").headers["x-llmedge-upstream"] == "alpha"
    text = edge.config_path.read_text()
    # The code class now goes to gamma, and a new example is learned.
    edge.config_path.write_text(text.replace("deployments: [alpha]", "deployments: [gamma]")
                                .replace('"fix this python function"',
                                         '"fix this python function", "debug my go program"'))
    resp = edge.call("POST", "/admin/reload")
    assert resp.status == 200, resp
    assert _chat(edge, "fix my python code").headers["x-llmedge-upstream"] == "gamma"
    out = _explain(edge, "debug my go program")
    assert out["classification"]["class"] == "code"
    # A classify problem rejects the reload; the running routes keep serving.
    edge.config_path.write_text(text.replace("route: smalltalk", "route: nowhere"))
    resp = edge.call("POST", "/admin/reload")
    assert resp.status == 400 and "routes[0].classes.chat.route" in resp.body.decode()
    assert _chat(edge, "tell me a joke").headers["x-llmedge-upstream"] == "beta"
    assert _chat(edge, "fix my python code").headers["x-llmedge-upstream"] == "gamma"
    assert edge.stop() == 0
    lines = audit.read_text().splitlines()
    assert len(lines) >= 4 and all(json.loads(line)["route"] == "auto" for line in lines)


def test_a_reload_keeps_the_live_strong_share_window_of_an_unchanged_route(start_edge, sims,
                                                                          tmp_path):
    rows = (DATA / "routing-outcomes" / "gsm8k.jsonl").read_text().splitlines()
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text("\n".join(rows[:200]) + "\n")
    edge = start_edge(_complexity_config(sims, outcomes, 0.3))
    prompts = [json.loads(r)["prompt"] for r in rows[200:320]]
    for p in prompts:
        _explain(edge, p)

    def source() -> str:
        return _explain(edge, prompts[0])["classification"]["strong_share"]["from"]

    assert source() == "the last 120 requests"
    # Another route's change: this one's classifier and window stay.
    text = edge.config_path.read_text()
    edge.config_path.write_text(text + "  - name: other\n    deployments: [gamma]\n")
    assert edge.call("POST", "/admin/reload").status == 200
    assert source() == "the last 121 requests"
    # New training data: a new classifier, whose scores the old window does not describe.
    outcomes.write_text("\n".join(rows[:250]) + "\n")
    assert edge.call("POST", "/admin/reload").status == 200
    assert source() == "the training prompts"


def test_drain_waits_for_a_request_still_waiting_on_the_llm_tier(start_edge, sims):
    import signal
    import threading

    sims.gamma.configure(reply="code", chunks=1, ttft_ms=1000)
    edge = start_edge(_llm_route(sims, "always"))
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault(
        "resp", _chat(edge, "an unusual question the cache has not seen")))
    worker.start()
    try:
        sims.gamma.wait_stat("chat", 1)      # the request is deciding now
        edge.send_signal(signal.SIGTERM)
        assert edge.wait() == 0
    finally:
        worker.join(timeout=30)
    resp = result["resp"]
    assert resp.status == 200, resp
    assert resp.headers["x-llmedge-upstream"] == "alpha"   # the LLM tier's class, then served


def _endpoint(edge, deployment: str) -> dict:
    rows = edge.call("GET", "/admin/upstreams").json()["endpoints"]
    return next(r for r in rows if r["deployment"] == deployment)


def test_llm_tier_calls_count_on_the_router_endpoint(start_edge, sims):
    import threading

    from procs import metric_value

    sims.gamma.configure(reply="code", chunks=1, ttft_ms=1000)
    edge = start_edge(_llm_route(sims, "always", ", timeout_s: 5.0"))
    before = _endpoint(edge, "gamma")
    assert before["inflight"] == 0 and before["rtt_us"] < 0.1e6
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault(
        "resp", _chat(edge, "tell me a joke")))
    worker.start()
    try:
        sims.gamma.wait_stat("chat", 1)
        # While the router model thinks, its question is in flight on gamma's endpoint,
        # so load-aware picks see it; the proxied request has not been sent yet.
        assert _endpoint(edge, "gamma")["inflight"] == 1
        assert metric_value(edge.metrics(), "llmedge_endpoint_inflight", deployment="gamma") == 1
        assert sims.alpha.stats()["chat"] == 0
    finally:
        worker.join(timeout=30)
    resp = result["resp"]
    assert resp.status == 200 and resp.headers["x-llmedge-upstream"] == "alpha", resp
    after = _endpoint(edge, "gamma")
    # Its latency was learned (about the 1 s the simulator took), as a success.
    assert after["inflight"] == 0 and after["rtt_us"] >= 0.9e6, after
    assert after["error_rate"] == 0.0 and after["circuit"] == "closed"
    metrics = edge.metrics()
    assert metric_value(metrics, "llmedge_endpoint_latency_seconds", deployment="gamma") >= 0.9
    assert metric_value(metrics, "llmedge_endpoint_inflight", deployment="gamma") == 0
    # An answer that is no class is the router model's fault, not the endpoint's.
    sims.gamma.configure(reply="I think it is code!", ttft_ms=0)
    for text in ("good morning friend", "do you like music", "what's your favourite movie"):
        out = _explain(edge, text)
        assert "not a class" in out["classification"]["llm"]["status"], out
    after = _endpoint(edge, "gamma")
    assert after["error_rate"] == 0.0 and after["consecutive_failures"] == 0, after
    assert after["circuit"] == "closed" and after["state"] == "healthy", after
    assert sims.gamma.stats()["chat"] == 4


@pytest.mark.parametrize("failure", ["timeout", "connect"])
def test_a_failing_router_deployment_opens_its_circuit(start_edge, sims, failure):
    import time

    from procs import free_port, metric_value

    config = _llm_route(sims, "always", ", timeout_s: 1.0").replace("deployments:\n", """\
upstream:
  health: {enabled: false}
  breaker: {consecutive_failures: 2, open_s: 60, max_open_s: 60, jitter: 0}
deployments:
""", 1)
    if failure == "timeout":
        # gamma's own first-byte timeout is shorter than the tier's: its timeout fails it.
        config = config.replace("base_url: %s" % sims.gamma.url,
                                "base_url: %s\n    timeouts: {first_byte_s: 0.5}"
                                % sims.gamma.url)
        sims.gamma.configure(reply="code", chunks=1, ttft_ms=10000)
        status = "failed: upstream did not answer within the first-byte timeout"
    else:
        config = config.replace(sims.gamma.url, "http://127.0.0.1:%d/v1" % free_port())
        status = "failed: cannot connect to"
    edge = start_edge(config)
    for text in ("tell me a joke", "good morning friend"):
        out = _explain(edge, text)
        assert out["classification"]["llm"]["status"].startswith(status), out
        assert out["deployments"] == ["beta"]      # the classifier decided
    gamma = _endpoint(edge, "gamma")
    assert gamma["circuit"] == "open" and gamma["state"] == "open", gamma
    assert gamma["reason"] == "2 consecutive failures (last: %s)" % failure, gamma
    assert gamma["error_rate"] > 0 and gamma["inflight"] == 0, gamma
    metrics = edge.metrics()
    assert metric_value(metrics, "llmedge_endpoint_state", deployment="gamma",
                        state="open") == 1
    assert metric_value(metrics, "llmedge_endpoint_error_rate", deployment="gamma") > 0
    # Open: the tier skips gamma without asking it, and the classifier decides at once
    # instead of after the tier's timeout.
    started = time.monotonic()
    out = _explain(edge, "do you like music")
    assert time.monotonic() - started < 1.0
    assert out["classification"]["llm"]["status"] == \
        "failed: every endpoint of gamma is out of service", out
    assert out["deployments"] == ["beta"]
    resp = _chat(edge, "let's talk about the weather")
    assert resp.status == 200 and resp.headers["x-llmedge-upstream"] == "beta", resp
    assert "(LLM router)" not in resp.headers["x-llmedge-decision"]
    if failure == "timeout":
        assert sims.gamma.stats()["chat"] == 2


def test_the_tiers_own_short_timeout_does_not_fail_the_endpoint(start_edge, sims):
    config = _llm_route(sims, "always", ", timeout_s: 0.3").replace("deployments:\n", """\
upstream:
  health: {enabled: false}
  breaker: {consecutive_failures: 2, open_s: 60, max_open_s: 60, jitter: 0}
deployments:
""", 1)
    sims.gamma.configure(reply="code", chunks=1, ttft_ms=3000)
    edge = start_edge(config)
    for text in ("tell me a joke", "good morning friend", "do you like music"):
        out = _explain(edge, text)
        assert out["classification"]["llm"]["status"] == "no answer within 0.3s", out
    # gamma is slow, not broken: its first-byte timeout (120 s) never ran out.
    gamma = wait_for(lambda: (lambda g: g if g["inflight"] == 0 else None)(
        _endpoint(edge, "gamma")))
    assert gamma["circuit"] == "closed" and gamma["error_rate"] == 0, gamma
    assert sims.gamma.stats()["chat"] == 3


def _llmedge_asking(*args: str) -> subprocess.CompletedProcess:
    """``llmedge ... --llm``, failing on a connection or timer left open past its loop."""
    done = subprocess.run([sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-m",
                           "proxy", *args, "--llm"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "ResourceWarning" not in done.stderr and "Exception ignored" not in done.stderr, \
        done.stderr
    return done


def test_llmedge_route_asks_the_llm_tier_only_with_llm(start_edge, sims, tmp_path):
    from proxy.routing.classify_route import LLM_NOT_ASKED

    sims.gamma.configure(reply="code", chunks=1)
    config = tmp_path / "llm.yaml"
    config.write_text(_llm_route(sims, "always"))
    args = ("route", "-c", str(config), "tell me a joke")
    done = _llmedge(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["deployments"] == ["beta"]      # the classifier's class: chat
    assert out["classification"]["llm"] == {"mode": "always", "class": None,
                                            "status": LLM_NOT_ASKED}
    assert "the LLM router tier was not asked; --llm asks it" in done.stderr
    assert sims.gamma.stats()["chat"] == 0
    done = _llmedge_asking(*args)
    assert "not asked" not in done.stderr
    asked = json.loads(done.stdout)
    assert asked["deployments"] == ["alpha"] and "(LLM router)" in asked["reason"]
    assert asked["classification"]["llm"] == {"mode": "always", "class": "code",
                                              "status": "answered"}
    stats = sims.gamma.stats()
    assert stats["chat"] == 1
    cli_question = stats["last_body"]
    # The same as the server's explanation, and the same question to the router model.
    edge = start_edge(_llm_route(sims, "always"))
    served = _explain(edge, "tell me a joke")
    assert sims.gamma.stats()["last_body"] == cli_question
    assert {k: v for k, v in served.items() if k != "scores"} == \
        {k: v for k, v in asked.items() if k != "scores"}
    # A router model that does not answer in time leaves the decision to the classifier.
    sims.gamma.configure(ttft_ms=10000)
    config.write_text(_llm_route(sims, "always", ", timeout_s: 0.5"))
    late = json.loads(_llmedge_asking(*args).stdout)
    assert late["deployments"] == ["beta"]
    assert late["classification"]["llm"]["status"] == "no answer within 0.5s"
    # Cascade with a sure classifier: the tier would not be asked anyway, and says so.
    config.write_text(_llm_route(sims, "cascade", ", below: 0.6"))
    done = _llmedge(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["classification"]["llm"]["status"] == "not consulted"
    assert "not asked" not in done.stderr
