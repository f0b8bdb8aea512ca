"""``llmedge demo``: starts with no keys and no config, answers on every route including
routing by prompt, and takes its simulators down with it."""

from __future__ import annotations

import signal

from procs import PYTHON, Proc, children_of, free_port, http_call, process_exists, wait_for


def test_demo_serves_and_routes_by_prompt(tmp_path):
    port = free_port()
    demo = Proc([PYTHON, "-m", "proxy", "demo", "--port", str(port)], tmp_path / "demo.log",
                label="demo")
    try:
        demo.wait_output(r"llmedge demo is serving on http://127\.0\.0\.1:%d" % port)
        simulators = children_of(demo.pid)
        assert len(simulators) == 3

        def ask(model: str, text: str):
            resp = http_call(port, "POST", "/v1/chat/completions",
                             {"model": model, "messages": [{"role": "user", "content": text}]})
            assert resp.status == 200, resp
            return resp.headers["x-llmedge-upstream"]

        assert ask("smart", "fix this python function please") == "coder"
        assert ask("smart", "prove that there are infinitely many primes, step by step") \
            == "large"
        assert ask("smart", "hello, what is the capital of spain") == "small"
        assert ask("auto", "Hello!") in ("small", "large")
        route = http_call(port, "POST", "/v1/route", {"model": "smart", "messages": [
            {"role": "user", "content": "a bash script to rename files"}]}).json()
        assert route["deployments"][0] == "coder"
        demo.send_signal(signal.SIGTERM)
        assert demo.wait() == 0
        wait_for(lambda: not any(process_exists(pid) for pid in simulators),
                 message="the demo's simulators to stop")
    finally:
        demo.stop()
