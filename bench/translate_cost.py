"""What translating another API costs llmedge: CPU per request and per streamed event.

Starts the simulator and one llmedge, then drives the same prompt, closed loop, through
each pair of a front end — ``/v1/chat/completions``, ``/v1/messages`` (Anthropic Messages),
``/v1/responses`` (OpenAI Responses) — and an upstream provider — an OpenAI-compatible
deployment, ``provider: anthropic`` (the simulator's Messages API), ``azure``, ``gemini``,
``bedrock`` (signed with made-up credentials; skipped without botocore), and an
OpenAI-compatible deployment with ``responses: true`` (Responses passed through) —
whole answers and streams, round robin for ``--rounds`` rounds. Chat Completions to the
OpenAI-compatible deployment is passed through untranslated: the baseline. llmedge's CPU
per request comes from /proc; a pair's cost is its CPU per request minus the baseline's in
the same round, and for streams that difference over the stream's events (the simulator's
``--chunks`` plus its role and finish chunks).

    python bench/translate_cost.py --connections 8 --duration 3 --rounds 3 [--json out]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import load  # noqa: E402
import machine  # noqa: E402

try:
    import botocore  # noqa: F401 (provider: bedrock signs with it)
    BEDROCK = True
except ImportError:
    BEDROCK = False

PATHS = {"chat": "/v1/chat/completions", "messages": "/v1/messages",
         "responses": "/v1/responses"}
# (front end, provider); the provider's name is also its route's.
PAIRS = [("chat", "openai"), ("messages", "openai"), ("responses", "openai"),
         ("chat", "anthropic"), ("messages", "anthropic"), ("responses", "anthropic"),
         ("chat", "azure"), ("chat", "gemini"), ("messages", "gemini"), ("chat", "bedrock"),
         ("messages", "bedrock"), ("responses", "responses")]
BASELINE = ("chat", "openai")
CHUNKS = 8
EVENTS_PER_STREAM = CHUNKS + 2   # the role chunk, the content chunks, the finish chunk


def config(sim_port: int) -> str:
    return """\
server: {http: "127.0.0.1:0", max_inflight: 100000}
upstream: {health: {enabled: false}}
deployments:
  - {name: sim, base_url: "http://127.0.0.1:%d/v1"}
  - {name: sim-anthropic, provider: anthropic, base_url: "http://127.0.0.1:%d/v1"}
  - {name: sim-azure, provider: azure, base_url: "http://127.0.0.1:%d", model: sim}
  - {name: sim-gemini, provider: gemini, base_url: "http://127.0.0.1:%d/v1beta", model: sim}
  - {name: sim-responses, base_url: "http://127.0.0.1:%d/v1", responses: true}
%sroutes:
  - {name: openai, deployments: [sim]}
  - {name: anthropic, deployments: [sim-anthropic]}
  - {name: azure, deployments: [sim-azure]}
  - {name: gemini, deployments: [sim-gemini]}
  - {name: responses, deployments: [sim-responses]}
%s""" % (sim_port, sim_port, sim_port, sim_port, sim_port,
       '  - {name: sim-bedrock, provider: bedrock, region: us-east-1, '
       'base_url: "http://127.0.0.1:%d", model: sim}\n' % sim_port if BEDROCK else "",
       "  - {name: bedrock, deployments: [sim-bedrock]}\n" if BEDROCK else "")


def measure(args, edge: machine.Proc, api: str, provider: str, stream: bool) -> dict:
    cpu0 = machine.pid_cpu_s(edge.pid)
    result = load.run(load.LoadOptions(
        url="http://127.0.0.1:%d%s" % (edge.port, PATHS[api]), model=provider, api=api,
        connections=args.connections, duration=args.duration, warmup=args.warmup,
        stream=stream, body_size=args.body_size, timeout=10.0))
    cpu = machine.pid_cpu_s(edge.pid) - cpu0
    done = result.totals["completed"]
    return {"api": api, "provider": provider, "stream": stream, "requests": result.requests,
            "errors": result.errors, "rps": result.achieved_rps,
            "cpu_us_per_request": round(cpu / done * 1e6, 1) if done else None}


def median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--connections", "-c", type=int, default=8)
    p.add_argument("--duration", "-d", type=float, default=3.0)
    p.add_argument("--warmup", "-w", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--body-size", type=int, default=256)
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if BEDROCK:
        # Made up: the simulator, started without --api-key, checks no signature, but
        # llmedge signs every request all the same.
        os.environ.update(AWS_ACCESS_KEY_ID="AKIDBENCH", AWS_SECRET_ACCESS_KEY="bench")
    else:
        PAIRS[:] = [pair for pair in PAIRS if pair[1] != "bedrock"]
    cpus = machine.choose_cpus(args.no_pin)
    machine.pin(0, cpus["load"])
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="llmedge-translate-") as tmpdir:
        tmp = Path(tmpdir)
        sim = machine.start_simulator("sim", tmp, "--chunks", str(CHUNKS), cpu=cpus["load"])
        edge = None
        try:
            edge = machine.start_llmedge(config(sim.port), tmp, cpu=cpus["proxy"])
            for round_ in range(args.rounds):
                for stream in (False, True):
                    for api, provider in PAIRS:
                        row = measure(args, edge, api, provider, stream)
                        row["round"] = round_
                        rows.append(row)
        finally:
            if edge is not None:
                edge.stop()
            sim.stop()
    summary = []

    def pair(row: dict) -> tuple[str, str]:
        return row["api"], row["provider"]

    for stream in (False, True):
        chat = median([r["cpu_us_per_request"] for r in rows
                       if pair(r) == BASELINE and r["stream"] == stream])
        for api, provider in PAIRS:
            mine = [r for r in rows if pair(r) == (api, provider) and r["stream"] == stream]
            cpu = median([r["cpu_us_per_request"] for r in mine])
            # Per round, against the baseline of the same round: the machine's drift cancels.
            extra = median([r["cpu_us_per_request"] - next(
                c["cpu_us_per_request"] for c in rows if pair(c) == BASELINE
                and c["stream"] == stream and c["round"] == r["round"]) for r in mine])
            summary.append({"api": api, "provider": provider, "stream": stream,
                            "cpu_us_per_request": cpu,
                            "ratio_to_chat": round(cpu / chat, 3),
                            "extra_us_per_request": round(extra, 1),
                            "extra_us_per_event": round(extra / EVENTS_PER_STREAM, 2)
                            if stream else None,
                            "errors": sum(sum(r["errors"].values()) for r in mine)})
    report = {"meta": {"git": machine.git_state(), "cpu": machine.cpu_model(),
                       "python": sys.version.split()[0], "pinning": cpus,
                       "connections": args.connections, "duration_s": args.duration,
                       "rounds": args.rounds, "events_per_stream": EVENTS_PER_STREAM},
              "summary": summary, "runs": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print("| front end | provider | stream | llmedge CPU µs/request | vs chat to openai | "
          "extra µs/request | extra µs/event |")
    print("|---|---|---|---:|---:|---:|---:|")
    for row in summary:
        print("| %s | %s | %s | %s | %.3f | %+.1f | %s |" % (
            row["api"], row["provider"], "yes" if row["stream"] else "no",
            row["cpu_us_per_request"],
            row["ratio_to_chat"], row["extra_us_per_request"],
            "%+.2f" % row["extra_us_per_event"] if row["stream"] else "-"))
    return 0 if not any(row["errors"] for row in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
