"""How soon a recovered primary takes traffic again, with llmedge's default breaker and
health-probe settings.

Starts two upstream simulators (``primary`` and ``fallback``), a TCP fault proxy in front of
the primary (tests/faultproxy.py) and one llmedge with a route ``auto`` = [primary] with
fallbacks [fallback], and nothing else configured. A client sends one request every
``--pace`` seconds throughout. After ``--warmup`` seconds the primary goes down for
``--down-s`` seconds, then comes back; the script reports how long after it came back the
first request was served by the primary again, and how many requests meanwhile paid for a
failed attempt on it (``x-llmedge-attempts`` > 1).

Outage kinds (``--fault``):

* ``reset``: every connection to the primary is reset (a crashed host or a firewall): its
  health probes fail as well;
* ``status``: the primary answers every completion with 503 while ``GET /v1/models`` still
  passes (a serving frontend in front of a broken backend): probes cannot see it, only the
  breaker's trial requests can.

``--no-probes`` turns health probes off (``upstream.health.enabled: false``).

    python bench/recovery.py                      # reset, 60 s down
    python bench/recovery.py --fault status --down-s 30 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from faultproxy import PASS, RESET, FaultProxy  # noqa: E402
from machine import REPO, http_call, sim_control, start_llmedge, start_simulator  # noqa: E402

BODY = {"model": "auto", "messages": [{"role": "user", "content": "recovery"}]}


def config(primary_url: str, fallback_url: str, probes: bool) -> str:
    health = "" if probes else "upstream:\n  health: {enabled: false}\n"
    return f"""\
server:
  http: 127.0.0.1:0
{health}deployments:
  - name: primary
    base_url: {primary_url}
  - name: fallback
    base_url: {fallback_url}
routes:
  - name: auto
    deployments: [primary]
    fallbacks: [fallback]
"""


class Client(threading.Thread):
    """One request every ``pace`` seconds (scheduled, so a slow answer does not shift the
    rest); records (sent at, upstream, attempts, status)."""

    def __init__(self, port: int, pace: float) -> None:
        super().__init__(daemon=True)
        self.port, self.pace = port, pace
        self.log: list[tuple[float, str, int, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        due = time.monotonic()
        while not self.stop.is_set():
            sent = time.monotonic()
            status, headers, _ = http_call(self.port, "POST", "/v1/chat/completions", BODY)
            self.log.append((sent, headers.get("x-llmedge-upstream", ""),
                             int(headers.get("x-llmedge-attempts", "0")), status))
            due += self.pace
            self.stop.wait(max(0.0, due - time.monotonic()))


def run(args, tree: Path | None = None) -> dict:
    """``tree``: run another checkout's llmedge (bench/faults.py --baseline)."""
    workdir = Path(tempfile.mkdtemp(prefix="llmedge-recovery-"))
    primary = start_simulator("primary", workdir)
    fallback = start_simulator("fallback", workdir)
    fault = FaultProxy(primary.port)
    edge = client = None
    try:
        edge = start_llmedge(config(fault.url, fallback.url, not args.no_probes), workdir,
                             tree=tree or REPO)
        client = Client(edge.port, args.pace)
        client.start()
        time.sleep(args.warmup)
        down_at = time.monotonic()
        if args.fault == "reset":
            fault.set(RESET)
        else:
            sim_control(primary, "POST", "/_sim/config", {"status": 503})
        time.sleep(args.down_s)
        up_at = time.monotonic()
        if args.fault == "reset":
            fault.set(PASS)
        else:
            sim_control(primary, "POST", "/_sim/config", {"status": None})
        deadline = up_at + args.max_wait
        back_at = None
        while time.monotonic() < deadline and back_at is None:
            back_at = next((t for t, upstream, _, _ in list(client.log)
                            if t >= up_at and upstream == "primary"), None)
            time.sleep(0.05)
        client.stop.set()
        client.join(30)
        log = client.log
        outage = [r for r in log if down_at <= r[0] < up_at]
        after = [r for r in log if r[0] >= up_at and (back_at is None or r[0] < back_at)]
        return {
            "fault": args.fault, "probes": not args.no_probes, "down_s": args.down_s,
            "pace_s": args.pace,
            "back_after_s": None if back_at is None else round(back_at - up_at, 2),
            "requests_to_fallback_after_recovery": len(after),
            "outage_requests": len(outage),
            "outage_requests_with_a_failed_attempt": sum(1 for r in outage if r[2] > 1),
            "non_200": sum(1 for r in log if r[3] != 200),
        }
    finally:
        if client is not None:
            client.stop.set()
        if edge is not None:
            edge.stop()
        fault.close()
        primary.stop()
        fallback.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fault", choices=("reset", "status"), default="reset")
    parser.add_argument("--down-s", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--pace", type=float, default=0.2, help="seconds between requests")
    parser.add_argument("--max-wait", type=float, default=90.0,
                        help="give up this long after the primary came back")
    parser.add_argument("--no-probes", action="store_true")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["back_after_s"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
