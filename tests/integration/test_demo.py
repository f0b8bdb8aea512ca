"""``llmedge demo``: starts with no keys and no config, answers on every route including
routing by prompt, and takes its simulators down with it."""

from __future__ import annotations

import signal

import subprocess

from procs import (PYTHON, REPO, Proc, children_of, free_port, http_call, process_exists,
                   wait_for)


def test_demo_serves_and_routes_by_prompt(tmp_path):
    port, grpc_port = free_port(), free_port()
    demo = Proc([PYTHON, "-m", "proxy", "demo", "--port", str(port), "--grpc-port",
                 str(grpc_port)], tmp_path / "demo.log", label="demo")
    try:
        demo.wait_output(r"llmedge demo is serving on http://127\.0\.0\.1:%d and "
                         r"grpc://127\.0\.0\.1:%d" % (port, grpc_port))
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
        # The gRPC example the demo prints works against it as printed.
        assert "python examples/grpc_client.py 127.0.0.1:%d smart" % grpc_port in demo.stdout
        client = subprocess.run([PYTHON, "examples/grpc_client.py", "127.0.0.1:%d" % grpc_port,
                                 "smart"], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert client.returncode == 0, client.stdout + client.stderr
        assert "answered by" in client.stdout and "via route smart" in client.stdout
        demo.send_signal(signal.SIGTERM)
        assert demo.wait() == 0
        wait_for(lambda: not any(process_exists(pid) for pid in simulators),
                 message="the demo's simulators to stop")
    finally:
        demo.stop()
