"""``llmedge demo``: llmedge in front of three simulated upstreams (one of them speaking
Anthropic's Messages API), with no keys or config.

The simulators are real server processes on loopback (``proxy.sim``); llmedge runs
in this process with a configuration built here, printed so it can be copied.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time


from ..config import parse

UPSTREAMS = (
    # name, simulated model, time to first token (ms), tokens/s, reply
    ("small", "llama-3.1-8b", 20, 400, "A small, cheap model answered this."),
    ("large", "claude-large-sim", 120, 80, "A premium large model answered this, slowly and well."),
    ("coder", "qwen-coder-sim", 60, 200, "def answer():\n    return 'a code model answered this'"),
)

CONFIG = """\
server:
  http: 127.0.0.1:{port}
  grpc: 127.0.0.1:{grpc_port}
deployments:
  - name: small
    base_url: http://127.0.0.1:{small}/v1
    model: llama-3.1-8b
    price: {{input: 0.10, output: 0.20}}
    quality: 0.55
  - name: large
    provider: anthropic          # its simulator speaks Anthropic's Messages API
    base_url: http://127.0.0.1:{large}/v1
    model: claude-large-sim
    price: {{input: 5.00, output: 15.00}}
    quality: 0.9
  - name: coder
    base_url: http://127.0.0.1:{coder}/v1
    model: qwen-coder-sim
    price: {{input: 0.50, output: 1.00}}
    quality: 0.8
routes:
  - name: auto
    deployments: [small, large]
    policy: weighted
    weights: {{small: 3, large: 1}}
    fallbacks: [coder]
  - name: cheap-first
    deployments: [small, large]
    policy: ordered
  - name: smart                  # routing by prompt: a few examples per class
    policy: classify
    default: small
    fallbacks: [large]
    classes:
      code:
        deployments: [coder]
        threshold: 0.4
        examples: ["write a python function that parses a date",
                   "why does my rust code not compile", "fix this SQL query",
                   "refactor this javascript class", "a bash script to rename files"]
      reasoning:
        deployments: [large]
        threshold: 0.4
        examples: ["prove that the square root of two is irrational",
                   "plan a three week trip through japan on a budget",
                   "compare the economic policies of two countries in depth",
                   "solve this word problem step by step", "analyse the risks of this contract"]
      chat:
        deployments: [small]
        examples: ["hello there", "what time is it in london", "thanks, that helps",
                   "tell me a joke", "what is the capital of france"]
"""

EXAMPLES = """\
llmedge demo is serving on http://127.0.0.1:{port} and grpc://127.0.0.1:{grpc_port} (Ctrl-C to stop)

Simulated upstreams: small :{small}, large :{large}, coder :{coder}
Configuration in use:

{config}
Try it:

  curl -s http://127.0.0.1:{port}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "auto", "messages": [{{"role": "user", "content": "Hello!"}}]}}' -i

  curl -sN http://127.0.0.1:{port}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "coder", "stream": true, "messages": [{{"role": "user", "content": "Write a function"}}]}}'

  # Routing by prompt: the "smart" route picks coder, large or small by what is asked.
  curl -s http://127.0.0.1:{port}/v1/chat/completions -H 'content-type: application/json' \
    -d '{{"model": "smart", "messages": [{{"role": "user", "content": "fix my python function"}}]}}' -i
  curl -s http://127.0.0.1:{port}/v1/route -H 'content-type: application/json' \
    -d '{{"model": "smart", "messages": [{{"role": "user", "content": "prove this theorem"}}]}}'

  curl -s http://127.0.0.1:{port}/v1/models
  curl -s http://127.0.0.1:{port}/metrics | grep llmedge_requests

Over gRPC (llmedge.v1.Gateway, protos/llmedge/v1/gateway.proto), from the repository:

  python examples/grpc_client.py 127.0.0.1:{grpc_port} smart

With the openai SDK (pip install openai):

  from openai import OpenAI
  client = OpenAI(base_url="http://127.0.0.1:{port}/v1", api_key="unused")
  reply = client.chat.completions.create(
      model="auto", messages=[{{"role": "user", "content": "Hello!"}}])
  print(reply.choices[0].message.content)
  for chunk in client.chat.completions.create(
          model="auto", stream=True, messages=[{{"role": "user", "content": "Hi"}}]):
      print(chunk.choices[0].delta.content or "", end="", flush=True)
"""


def _start_simulator(name: str, model: str, ttft: int, rate: int, reply: str):
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.sim", "--port", "0", "--name", name,
         "--model", model, "--ttft-ms", str(ttft), "--tokens-per-s", str(rate),
         "--reply", reply],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    return proc


def _read_port(proc: subprocess.Popen, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("LISTENING "):
            return int(line.rsplit(":", 1)[1])
        if not line and proc.poll() is not None:
            break
    raise RuntimeError("the upstream simulator did not start")


DEFAULT_GRPC_PORT = 50051


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run_demo(port: int, loop_factory, grpc_port: int | None = None) -> int:
    from ..server import Server

    if grpc_port is None:
        # The usual gRPC port when it is free; the demo is about HTTP first, so a taken
        # one is no reason to fail.
        grpc_port = DEFAULT_GRPC_PORT if _free(DEFAULT_GRPC_PORT) else 0

    procs = [_start_simulator(*spec[:4], spec[4]) for spec in UPSTREAMS]
    try:
        ports = dict(zip(("small", "large", "coder"), (_read_port(p) for p in procs)))
        text = CONFIG.format(port=port, grpc_port=grpc_port, **ports)
        config = parse(text)

        async def main() -> None:
            server = Server(config)
            await server.start()
            server.install_signals()
            print(EXAMPLES.format(port=server.address[1], grpc_port=server.grpc_address[1],
                                 config=text, **ports), flush=True)
            await server.serve_until_stopped()

        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(main())
        except OSError as exc:
            print("llmedge demo: cannot listen: %s (try --port or --grpc-port)"
                  % (exc.strerror or exc), file=sys.stderr)
            return 3
        return 0
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
            if proc.stdout is not None:
                proc.stdout.close()


__all__ = ("run_demo",)
