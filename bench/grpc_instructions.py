"""Instructions per call, counted by callgrind: llmedge's gRPC front end against the bare
grpc.aio floor, and llmedge's HTTP path, for the same request on one connection.

CPU time on these shared machines varies by 3x from day to day and by ±10% between rounds;
an instruction count is the same to 0.1% from one run to the next, so a change of a few per
cent shows. Each server runs under ``valgrind --tool=callgrind`` with counting switched on
only around the measured calls (after a warm-up), the simulator and this client outside it.
Every thread of the server is counted (grpc's own included). The upstream is the simulator.

    python bench/grpc_instructions.py [--calls 1000] [--stream] [--baseline OTHER_CHECKOUT]

Rows: ``floor`` (a bare grpc.aio server answering a constant reply), ``floor+upstream``
(the same, after one upstream call per call), ``llmedge grpc``, ``llmedge http``, and with
``--baseline`` the same two for another checkout (its ``_fastpath`` built), for before and
after a change in one run. Needs valgrind.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402

import machine  # noqa: E402
from proxy.grpc._gen import gateway_pb2 as pb  # noqa: E402
from proxy.grpc._gen import gateway_pb2_grpc as pb_grpc  # noqa: E402

PROMPT = "Say something short, please."
CONFIG = """\
server: {http: "127.0.0.1:0", grpc: "127.0.0.1:0", max_inflight: 100000}
upstream: {health: {enabled: false}}
deployments:
  - {name: sim, base_url: "%s"}
routes:
  - {name: auto, deployments: [sim]}
"""


def callgrind(out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no",
            "--callgrind-out-file=%s" % out]


def grpc_caller(port: int, stream: bool):
    stub = pb_grpc.GatewayStub(grpc.insecure_channel("127.0.0.1:%d" % port))
    request = pb.ChatRequest(model="auto", messages=[pb.Message(role="user", content=PROMPT)])

    def call() -> int:
        if stream:
            return sum(1 for _ in stub.ChatStream(request, timeout=120))
        stub.Chat(request, timeout=120)
        return 1
    return call


def http_caller(port: int, stream: bool):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body = json.dumps({"model": "auto", "stream": stream,
                       "messages": [{"role": "user", "content": PROMPT}]}).encode()

    def call() -> int:
        conn.request("POST", "/v1/chat/completions", body,
                     {"content-type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError("llmedge answered %d" % response.status)
        return data.count(b"\n\ndata: ") if stream else 1   # events, [DONE] left out
    return call


def count(name: str, cmd: list[str], tmp: Path, caller, args, cwd: Path = machine.REPO,
          env: dict | None = None, lines: int = 1) -> dict:
    """Instructions per measured call of the server ``cmd`` starts under callgrind, and
    messages (stream events) per call."""
    out = tmp / ("%s.callgrind" % name.replace(" ", "-").replace("+", "-"))
    proc = machine.start_listening(name, callgrind(out) + cmd, None, tmp, env=env, cwd=cwd,
                                   count=lines, tree=False)
    try:
        call = caller(proc)
        for _ in range(args.warmup):
            call()
        subprocess.run(["callgrind_control", "-i", "on", str(proc.popen.pid)], check=True,
                       capture_output=True)
        messages = sum(call() for _ in range(args.calls))
        subprocess.run(["callgrind_control", "-i", "off", str(proc.popen.pid)], check=True,
                       capture_output=True)
    finally:
        proc.stop()
    found = re.search(r"Collected : (\d+)", proc.log_path.read_text())
    if found is None:
        raise RuntimeError("%s: no callgrind total in %s" % (name, proc.log_path))
    return {"per_call": round(int(found.group(1)) / args.calls),
            "messages_per_call": messages / args.calls}


def llmedge_rows(label: str, tree: Path, sim_url: str, tmp: Path, args) -> dict[str, dict]:
    config = tmp / ("%s.yaml" % label.replace(" ", "-"))
    config.write_text(CONFIG % sim_url)
    env = None
    if tree != machine.REPO:
        env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "proxy", "serve", "-c", str(config)]

    def port_of(kind: str):
        def caller(proc):
            grpc_line = next(ln for ln in proc.lines if ln.startswith("LISTENING-GRPC"))
            port = int(grpc_line.rsplit(":", 1)[1]) if kind == "grpc" else proc.port
            return (grpc_caller if kind == "grpc" else http_caller)(port, args.stream)
        return caller

    return {"%s grpc" % label: count("%s grpc" % label, cmd, tmp, port_of("grpc"), args,
                                     cwd=tree, env=env, lines=2),
            "%s http" % label: count("%s http" % label, cmd, tmp, port_of("http"), args,
                                     cwd=tree, env=env, lines=2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/grpc_instructions.py",
                                description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=1000, help="measured calls per server")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--stream", action="store_true", help="ChatStream and streamed requests")
    p.add_argument("--baseline", type=Path, default=None,
                   help="another checkout of llmedge to count beside this one")
    p.add_argument("--json", default=None, help="write the counts here ('-': stdout)")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind (with callgrind_control) is needed: apt-get install valgrind",
              file=sys.stderr)
        return 2
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="llmedge-instructions-") as tmp_name:
        tmp = Path(tmp_name)
        sim = machine.start_simulator("instructions", tmp)
        try:
            floor = [sys.executable, str(machine.REPO / "bench" / "grpc_floor.py"), "--port",
                     "0"]
            rows["floor"] = count("floor", floor, tmp,
                                  lambda proc: grpc_caller(proc.port, args.stream), args)
            rows["floor+upstream"] = count(
                "floor+upstream", floor + ["--upstream", "127.0.0.1:%d" % sim.port], tmp,
                lambda proc: grpc_caller(proc.port, args.stream), args)
            rows.update(llmedge_rows("llmedge", machine.REPO, sim.url, tmp, args))
            if args.baseline is not None:
                rows.update(llmedge_rows("baseline", args.baseline.resolve(), sim.url, tmp,
                                         args))
        finally:
            sim.stop()
    unit = "stream" if args.stream else "call"
    print("| server | instructions per %s | / floor | / floor+upstream | messages per %s |"
          % (unit, unit))
    print("|---|---:|---:|---:|---:|")
    floor, floor_up = rows["floor"]["per_call"], rows["floor+upstream"]["per_call"]
    for name, row in rows.items():
        print("| %s | %d | %.3f | %.3f | %.1f |" % (
            name, row["per_call"], row["per_call"] / floor, row["per_call"] / floor_up,
            row["messages_per_call"]))
    if args.json:
        report = {"calls": args.calls, "stream": args.stream, "instructions": rows,
                  "git": machine.git_state()}
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
