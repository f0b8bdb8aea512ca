"""gRPC load and the gRPC front end's overhead against the HTTP path, in one run.

Starts an upstream simulator and one llmedge serving both front ends over the same route,
then drives the same closed-loop load (``--connections`` concurrent callers, the same
prompt) through HTTP (bench/load.py's raw httptools client) and through gRPC (grpc.aio
stubs, one channel per caller), alternating for ``--rounds`` rounds. Reported per front
end: answers per second, latency percentiles (streams: also time to first chunk), and
llmedge's own CPU time per request, read from /proc. The CPU per request is the server-side
cost alone; the latency also holds each client library's cost, which is not llmedge's.

    python bench/grpc_load.py --connections 8 --duration 5 --rounds 2 [--stream] [--json out]

With ``--floor`` each round also drives the same gRPC load at a bare grpc.aio server
answering a constant reply (``bench/grpc_floor.py``, pinned where llmedge is): the floor
llmedge's gRPC CPU per call and per streamed message is reported against. With
``--floor-upstream`` also at that server asking the simulator once per call first
(``grpc_floor.py --upstream``): the floor once a call waits on the network.

With ``--grpc-only --target HOST:PORT`` it only drives gRPC load at a running llmedge.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402

import load  # noqa: E402
import machine  # noqa: E402
from histogram import Histogram  # noqa: E402
from proxy.grpc._gen import gateway_pb2 as pb  # noqa: E402
from proxy.grpc._gen import gateway_pb2_grpc as pb_grpc  # noqa: E402

ROUTE = "auto"
PERCENTILES = (50.0, 90.0, 99.0)


# === gRPC load ===

def grpc_request(body_size: int, stream: bool, model: str = ROUTE) -> pb.ChatRequest:
    """The same prompt load.py sends (its body builder pads the user message)."""
    doc = json.loads(load.build_body(model, stream, body_size))
    return pb.ChatRequest(model=model, messages=[
        pb.Message(role=m["role"], content=m["content"]) for m in doc["messages"]])


async def grpc_load(target: str, connections: int, duration: float, warmup: float,
                    stream: bool, body_size: int, timeout: float, model: str = ROUTE) -> dict:
    """Closed loop: each caller sends its next call as soon as the previous one ended."""
    request = grpc_request(body_size, stream, model)
    latency, ttft = Histogram(), Histogram()
    counts = {"ok": 0, "errors": 0, "all": 0, "messages": 0}
    errors: dict[str, int] = {}
    start = time.perf_counter()
    window_start, window_end = start + warmup, start + warmup + duration

    async def caller(stub: pb_grpc.GatewayStub) -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= window_end:
                return
            first = 0.0
            try:
                if stream:
                    async for _ in stub.ChatStream(request, timeout=timeout):
                        counts["messages"] += 1
                        if not first:
                            first = time.perf_counter()
                else:
                    await stub.Chat(request, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                counts["all"] += 1
                if window_start <= t0:
                    counts["errors"] += 1
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                continue
            t1 = time.perf_counter()
            counts["all"] += 1
            if window_start <= t0:
                counts["ok"] += 1
                latency.record((t1 - t0) * 1e6)
                if first:
                    ttft.record((first - t0) * 1e6)

    channels = [grpc.aio.insecure_channel(target) for _ in range(connections)]
    try:
        await asyncio.gather(*(caller(pb_grpc.GatewayStub(ch)) for ch in channels))
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))
    return {"requests": counts["ok"], "completed_all": counts["all"], "errors": errors,
            "messages_all": counts["messages"] if stream else counts["all"],
            "achieved_rps": round(counts["ok"] / duration, 2),
            "latency_us": latency.summary(PERCENTILES) if counts["ok"] else None,
            "ttft_us": ttft.summary(PERCENTILES) if stream and counts["ok"] else None}


def run_grpc(args: argparse.Namespace, target: str) -> dict:
    with asyncio.Runner(loop_factory=lambda: load.new_loop(args.loop)) as runner:
        return runner.run(grpc_load(target, args.connections, args.duration, args.warmup,
                                    args.stream, args.body_size, args.timeout,
                                    args.model if args.grpc_only else ROUTE))


def run_http(args: argparse.Namespace, port: int) -> dict:
    result = load.run(load.LoadOptions(
        url="http://127.0.0.1:%d/v1/chat/completions" % port, model=ROUTE,
        connections=args.connections, duration=args.duration, warmup=args.warmup,
        stream=args.stream, body_size=args.body_size, timeout=args.timeout, loop=args.loop))
    return {"requests": result.requests, "completed_all": result.totals["completed"],
            "errors": result.errors, "achieved_rps": result.achieved_rps,
            "latency_us": {k: result.latency_us[k] for k in ("count", "p50", "p90", "p99")},
            "ttft_us": ({k: result.ttft_us[k] for k in ("count", "p50", "p90", "p99")}
                        if result.ttft_us else None)}


# === processes ===

def edge_config(sim_port: int) -> str:
    return """\
server: {http: "127.0.0.1:0", grpc: "127.0.0.1:0", max_inflight: 100000}
upstream: {health: {enabled: false}}
deployments:
  - {name: sim, base_url: "http://127.0.0.1:%d/v1"}
routes:
  - {name: %s, deployments: [sim]}
""" % (sim_port, ROUTE)


def measure(args: argparse.Namespace, label: str, edge_pid: int, fn) -> dict:
    cpu0 = machine.pid_cpu_s(edge_pid)
    own0, wall0 = time.process_time(), time.perf_counter()
    result = fn()
    cpu = machine.pid_cpu_s(edge_pid) - cpu0
    # The load generator's own CPU share: near 1.0 means the client, not llmedge, set the pace.
    result["client_cpu_util"] = round((time.process_time() - own0)
                                      / (time.perf_counter() - wall0), 3)
    done = result["completed_all"]
    result["edge_cpu_us_per_request"] = round(cpu / done * 1e6, 1) if done else None
    messages = result.get("messages_all")
    if messages:
        result["edge_cpu_us_per_message"] = round(cpu / messages * 1e6, 2)
    result["front"] = label
    return result


def combine(rows: list[dict]) -> dict:
    """Rounds of one front end: medians of the per-round numbers."""
    def median(values):
        values = sorted(v for v in values if v is not None)
        return values[len(values) // 2] if values else None

    out = {"rounds": len(rows),
           "achieved_rps": median(r["achieved_rps"] for r in rows),
           "edge_cpu_us_per_request": median(r["edge_cpu_us_per_request"] for r in rows),
           "edge_cpu_us_per_message": median(r.get("edge_cpu_us_per_message") for r in rows),
           "client_cpu_util": median(r["client_cpu_util"] for r in rows),
           "errors": sum(sum(r["errors"].values()) for r in rows)}
    for key in ("latency_us", "ttft_us"):
        if rows[0].get(key):
            out[key] = {p: median(r[key][p] for r in rows) for p in ("p50", "p90", "p99")}
    return out


def overhead(http: dict, grpc_: dict) -> dict:
    out = {}
    for key, field in (("latency_p50", ("latency_us", "p50")),
                       ("latency_p99", ("latency_us", "p99")),
                       ("ttft_p50", ("ttft_us", "p50"))):
        a = (http.get(field[0]) or {}).get(field[1])
        b = (grpc_.get(field[0]) or {}).get(field[1])
        if a and b:
            out[key] = {"http_us": a, "grpc_us": b, "grpc_minus_http_us": round(b - a, 1),
                        "ratio": round(b / a, 3)}
    a, b = http["edge_cpu_us_per_request"], grpc_["edge_cpu_us_per_request"]
    if a and b:
        out["edge_cpu_per_request"] = {"http_us": a, "grpc_us": b,
                                       "grpc_minus_http_us": round(b - a, 1),
                                       "ratio": round(b / a, 3)}
    return out


def against_floor(grpc_: dict, floor: dict) -> dict:
    """llmedge's gRPC CPU against the bare grpc.aio server's, per call and per message."""
    out = {}
    for key in ("edge_cpu_us_per_request", "edge_cpu_us_per_message"):
        a, b = floor.get(key), grpc_.get(key)
        if a and b:
            out[key] = {"floor_us": a, "grpc_us": b, "ratio": round(b / a, 3)}
    return out


def markdown(report: dict) -> str:
    lines = ["| front | rps | p50 µs | p90 µs | p99 µs | server CPU µs/call | µs/message "
             "| client CPU |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    titles = {"floor": "grpc.aio floor", "floor_upstream": "grpc.aio floor + upstream call"}
    for name in ("http", "grpc", "floor", "floor_upstream"):
        r = report.get(name)
        if not r:
            continue
        lat = r.get("latency_us") or {}
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            titles.get(name, name), r["achieved_rps"], lat.get("p50"),
            lat.get("p90"), lat.get("p99"), r["edge_cpu_us_per_request"],
            r.get("edge_cpu_us_per_message"), r["client_cpu_util"]))
    lines.append("")
    for key, row in report["overhead"].items():
        lines.append("%s: gRPC %s µs vs HTTP %s µs: %+.1f µs, ratio %.3f" % (
            key, row["grpc_us"], row["http_us"], row["grpc_minus_http_us"], row["ratio"]))
    for key, row in (report.get("against_floor") or {}).items():
        lines.append("%s: llmedge gRPC %s µs vs bare grpc.aio %s µs: ratio %.3f" % (
            key, row["grpc_us"], row["floor_us"], row["ratio"]))
    for key, row in (report.get("against_floor_upstream") or {}).items():
        lines.append("%s: llmedge gRPC %s µs vs bare grpc.aio + upstream call %s µs: "
                     "ratio %.3f" % (key, row["grpc_us"], row["floor_us"], row["ratio"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--connections", "-c", type=int, default=8,
                   help="concurrent callers (HTTP connections / gRPC channels)")
    p.add_argument("--duration", "-d", type=float, default=5.0, help="measured seconds")
    p.add_argument("--warmup", "-w", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=2, help="HTTP then gRPC, this many times")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--body-size", type=int, default=256)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--loop", choices=load.LOOPS, default="uvloop", help="the clients' loop")
    p.add_argument("--edge-loop", choices=("uvloop", "asyncio"), default="uvloop",
                   help="llmedge's loop (both front ends share it)")
    p.add_argument("--no-pin", action="store_true", help="do not pin llmedge and the load")
    p.add_argument("--floor", action="store_true",
                   help="also measure a bare grpc.aio server answering a constant reply "
                        "(bench/grpc_floor.py) on llmedge's CPU, each round")
    p.add_argument("--floor-upstream", action="store_true",
                   help="also measure the bare server asking the simulator once per call "
                        "(bench/grpc_floor.py --upstream), each round")
    p.add_argument("--grpc-only", action="store_true", help="only gRPC load at --target")
    p.add_argument("--target", default="127.0.0.1:50051", help="with --grpc-only")
    p.add_argument("--model", default=ROUTE, help="with --grpc-only: the route or deployment")
    p.add_argument("--json", default=None, help="write the report here ('-': stdout)")
    args = p.parse_args(argv)
    if args.grpc_only:
        result = run_grpc(args, args.target)
        if args.json and args.json != "-":
            Path(args.json).write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        return 0 if not result["errors"] else 1
    cpus = machine.choose_cpus(args.no_pin)
    machine.pin(0, cpus["load"])
    with tempfile.TemporaryDirectory(prefix="llmedge-grpc-bench-") as tmpdir:
        tmp = Path(tmpdir)
        sim = machine.start_listening("simulator", [sys.executable, "-m", "proxy.sim",
                                                    "--port", "0"], cpus["load"], tmp)
        edge = floor = floor_up = None
        try:
            (tmp / "edge.yaml").write_text(edge_config(sim.port))
            edge = machine.start_listening("llmedge", [
                sys.executable, "-m", "proxy", "serve", "-c", str(tmp / "edge.yaml"),
                "--loop", args.edge_loop], cpus["proxy"], tmp, count=2, tree=False)
            grpc_port = int(edge.lines[0].rsplit(":", 1)[1])   # LISTENING-GRPC comes first
            http_port = edge.port
            if args.floor:
                floor = machine.start_listening("floor", [
                    sys.executable, str(machine.REPO / "bench" / "grpc_floor.py"), "--port",
                    "0"], cpus["proxy"], tmp)
                floor_port = floor.port
            if args.floor_upstream:
                floor_up = machine.start_listening("floor-upstream", [
                    sys.executable, str(machine.REPO / "bench" / "grpc_floor.py"), "--port",
                    "0", "--upstream", "127.0.0.1:%d" % sim.port], cpus["proxy"], tmp)
            rows: dict[str, list[dict]] = {"http": [], "grpc": [], "floor": [],
                                           "floor_upstream": []}
            for _ in range(args.rounds):
                rows["http"].append(measure(args, "http", edge.pid,
                                            lambda: run_http(args, http_port)))
                rows["grpc"].append(measure(args, "grpc", edge.pid,
                                            lambda: run_grpc(args, "127.0.0.1:%d" % grpc_port)))
                if floor is not None:
                    rows["floor"].append(measure(args, "floor", floor.pid, lambda: run_grpc(
                        args, "127.0.0.1:%d" % floor_port)))
                if floor_up is not None:
                    before = machine.sim_control(sim, "GET", "/_sim/stats")["chat"]
                    row = measure(args, "floor_upstream", floor_up.pid,
                                  lambda: run_grpc(args, "127.0.0.1:%d" % floor_up.port))
                    # It did ask: one upstream call per completed call.
                    row["upstream_calls"] = (machine.sim_control(sim, "GET", "/_sim/stats")
                                             ["chat"] - before)
                    rows["floor_upstream"].append(row)
        finally:
            if floor_up is not None:
                floor_up.stop()
            if floor is not None:
                floor.stop()
            if edge is not None:
                edge.stop()
            sim.stop()
    report = {"meta": {"git": machine.git_state(), "cpu": machine.cpu_model(),
                       "python": sys.version.split()[0], "pinning": cpus,
                       "connections": args.connections, "duration_s": args.duration,
                       "stream": args.stream, "client_loop": args.loop,
                       "edge_loop": args.edge_loop,
                       "grpcio": grpc.__version__},
              "http": combine(rows["http"]), "grpc": combine(rows["grpc"]),
              "floor": combine(rows["floor"]) if rows["floor"] else None,
              "floor_upstream": (combine(rows["floor_upstream"]) if rows["floor_upstream"]
                                 else None),
              "overhead": None, "runs": rows}
    report["overhead"] = overhead(report["http"], report["grpc"])
    if report["floor"]:
        report["against_floor"] = against_floor(report["grpc"], report["floor"])
    if report["floor_upstream"]:
        report["against_floor_upstream"] = against_floor(report["grpc"],
                                                         report["floor_upstream"])
    if args.json == "-":
        print(json.dumps(report, indent=2))
    else:
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        print(markdown(report))
    return 0 if not (report["http"]["errors"] or report["grpc"]["errors"]
                     or (report["floor"] or {}).get("errors")
                     or (report["floor_upstream"] or {}).get("errors")) else 1


if __name__ == "__main__":
    sys.exit(main())
