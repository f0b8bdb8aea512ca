"""What a client gets from llmedge, with its default settings, when an upstream fails in each
of the ways failover has to handle: what the client saw, how long until its answer was
complete, and how many completions each upstream was sent.

Every case starts fresh processes on 127.0.0.1: llmedge with a route ``auto`` =
[primary] with fallbacks [fallback] and nothing else configured (health probes on, as by
default: the upstreams answer them), a primary that misbehaves (an upstream simulator in a
fault mode, or a scripted upstream for one-off faults) and a healthy fallback simulator.
``--baseline TREE`` runs every case on a second checkout's llmedge too (its ``_fastpath``
built in place), case by case in the same run, so the two columns share the machine's mood.
The simulators and the client are this checkout's in both runs.

The deployment facts a fault needs are declared, as a user would: the primary's
``context_window`` for the context case, the fallback's ``continuation: prefill`` for the
cut-stream cases. A baseline that predates these fields (its config refuses unknown ones)
runs those cases without them.

    python bench/faults.py                           # this checkout only
    python bench/faults.py --baseline /tmp/before    # before and after, in one run
    python bench/faults.py --skip-slow --only 429-short,500-once
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

from machine import sim_control, start_llmedge, start_simulator  # noqa: E402
from scripted_upstream import CLOSE, HOLD, RESET, ScriptedUpstream, chunk  # noqa: E402

REPLY = "The primary and the fallback both know this answer by heart, word for word."
CHUNKS = 8
PRIMARY_TEXT = "answered by the primary"
CLIENT_TIMEOUT = 400.0


# === upstreams ===

def _json_answer(status: int, reason: str, body: dict, extra: bytes = b"") -> bytes:
    data = json.dumps(body).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
            % (status, reason.encode(), len(data), extra, data))


OK = _json_answer(200, "OK", {
    "id": "p1", "object": "chat.completion", "created": 1, "model": "primary",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": PRIMARY_TEXT},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}})


def _error(status: int, reason: str, message: str, code: str | None = None,
           kind: str = "server_error", extra: bytes = b"") -> bytes:
    return _json_answer(status, reason, {"error": {"message": message, "type": kind,
                                                   "param": None, "code": code}}, extra)


SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n")


def _sse(delta: dict, finish: str | None = None) -> bytes:
    return chunk(b"data: " + json.dumps({
        "id": "p1", "object": "chat.completion.chunk", "created": 1, "model": "primary",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).encode() + b"\n\n")


class Scripted:
    """A scripted upstream, counted by its completions (probes are answered, not counted)."""

    def __init__(self, scripts) -> None:
        self.server = ScriptedUpstream(scripts=scripts, answer_probes=True)
        self.url = self.server.url

    def completions(self) -> int:
        return self.server.requests

    def stop(self) -> None:
        self.server.stop()


class Sim:
    def __init__(self, workdir: Path, name: str, *args: str) -> None:
        self.proc = start_simulator(name, workdir, "--reply", REPLY, "--chunks", str(CHUNKS),
                                    *args)
        self.url = self.proc.url

    def completions(self) -> int:
        return sim_control(self.proc, "GET", "/_sim/stats")["chat"]

    def stop(self) -> None:
        self.proc.stop()


# === cases ===

@dataclass
class Setup:
    primary: object
    fallback: Sim
    primary_extra: str = ""       # extra yaml of the primary's deployment entry
    fallback_extra: str = ""
    upstream: str = ""            # an upstream: section, when a case needs one


@dataclass
class Case:
    name: str
    fault: str
    stream: bool
    setup: Callable[[Path], Setup]
    messages: list = field(default_factory=lambda: [{"role": "user", "content": "a question"}])
    slow: bool = False            # waits out a default timeout of a minute or more
    new_fields: bool = False      # declares deployment fields a baseline may not know


def fallback(workdir: Path, *args: str) -> Sim:
    return Sim(workdir, "fallback", *args)


LONG_PROMPT = [{"role": "user", "content": "Summarise this. " + "word " * 800}]


CASES = [
    Case("429-short", "429 once, Retry-After: 2", False, lambda w: Setup(
        Scripted([[_error(429, "Too Many Requests", "slow down", "rate_limit_exceeded",
                          "rate_limit_error", b"retry-after: 2\r\n")], [OK]]), fallback(w))),
    Case("429-long", "429 once, Retry-After: 30", False, lambda w: Setup(
        Scripted([[_error(429, "Too Many Requests", "slow down", "rate_limit_exceeded",
                          "rate_limit_error", b"retry-after: 30\r\n")], [OK]]), fallback(w))),
    Case("500-once", "500 once", False, lambda w: Setup(
        Scripted([[_error(500, "Internal Server Error", "oops")], [OK]]), fallback(w))),
    Case("reset-once", "connection reset once", False, lambda w: Setup(
        Scripted([[RESET], [OK]]), fallback(w))),
    Case("silent", "accepts, never answers", False, lambda w: Setup(
        Scripted([[HOLD]]), fallback(w)), slow=True),
    Case("silent-retried", "accepts, never answers; configured same_deployment: 2, "
         "first_byte_s: 10", False, lambda w: Setup(
             Scripted([[HOLD]]), fallback(w), upstream="upstream:\n  timeouts: "
             "{first_byte_s: 10}\n  retry: {same_deployment: 2}\n"), slow=True),
    Case("silent-stream", "accepts, never answers (stream)", True, lambda w: Setup(
        Scripted([[HOLD]]), fallback(w)), slow=True),
    Case("slow-first-token", "stream: role event at once, no content for 10 min", True,
         lambda w: Setup(Scripted([[SSE_HEAD, _sse({"role": "assistant", "content": ""}),
                                   chunk(b": keep-alive\n\n"), HOLD]]), fallback(w)),
         slow=True),
    Case("opening-error", "stream opens with an error event", True, lambda w: Setup(
        Scripted([[SSE_HEAD, chunk(b'data: {"error": {"message": "overloaded", "type": '
                                   b'"server_error", "code": null}}\n\n'), chunk(b"")]]),
        fallback(w))),
    Case("context-window", "prompt over the primary's context window (400 "
         "context_length_exceeded)", False, lambda w: Setup(
             Sim(w, "primary", "--context-window", "128"), fallback(w),
             primary_extra="    context_window: 128\n"),
         messages=LONG_PROMPT, new_fields=True),
    Case("context-window-vllm", "same, worded as vLLM does", False, lambda w: Setup(
        Sim(w, "primary", "--context-window", "128", "--context-error", "vllm"), fallback(w),
        primary_extra="    context_window: 128\n"), messages=LONG_PROMPT, new_fields=True),
    Case("content-filter", "400 content_filter", False, lambda w: Setup(
        Scripted([[_error(400, "Bad Request", "filtered", "content_filter",
                          "invalid_request_error")]]), fallback(w))),
    Case("cut-mid-stream", "stream reset after 3 of 8 chunks", True, lambda w: Setup(
        Sim(w, "primary", "--drop-after", "3"), fallback(w),
        fallback_extra="    continuation: prefill\n"), new_fields=True),
    Case("stall-mid-stream", "stream silent after 3 of 8 chunks", True, lambda w: Setup(
        Sim(w, "primary", "--stall-after", "3"), fallback(w),
        fallback_extra="    continuation: prefill\n"), new_fields=True, slow=True),
    Case("malformed-chunk", "stream with a malformed event after 2 chunks", True,
         lambda w: Setup(Sim(w, "primary", "--malformed-after", "2"), fallback(w))),
    Case("no-done", "stream ends after its finish_reason, without [DONE]", True,
         lambda w: Setup(Scripted([[SSE_HEAD, _sse({"role": "assistant", "content": "answered "}),
                                   _sse({"content": "by the primary"}),
                                   _sse({}, "stop"), chunk(b"")]]), fallback(w))),
    Case("cut-no-finish", "stream closed cleanly mid-answer, no finish_reason, no [DONE]",
         True, lambda w: Setup(Scripted([[SSE_HEAD, _sse({"role": "assistant",
                                                           "content": REPLY[:20]}),
                                          chunk(b""), CLOSE]]), fallback(w),
                                fallback_extra="    continuation: prefill\n"), new_fields=True),
]


def config(setup: Setup, with_new_fields: bool) -> str:
    primary_extra = setup.primary_extra if with_new_fields else ""
    fallback_extra = setup.fallback_extra if with_new_fields else ""
    return ("server: {http: 127.0.0.1:0}\n" + setup.upstream +
            "deployments:\n"
            "  - name: primary\n    base_url: %s\n%s"
            "  - name: fallback\n    base_url: %s\n%s"
            "routes:\n  - name: auto\n    deployments: [primary]\n    fallbacks: [fallback]\n"
            % (setup.primary.url, primary_extra, setup.fallback.url, fallback_extra))


# === the client ===

def ask(port: int, messages: list, stream: bool) -> dict:
    body = {"model": "auto", "messages": messages}
    if stream:
        body["stream"] = True
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    started = time.monotonic()
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body).encode(),
                     {"content-type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        took = time.monotonic() - started
        headers = {k.lower(): v for k, v in resp.getheaders()}
    except (OSError, http.client.HTTPException) as exc:
        return {"saw": "connection failed: %s" % type(exc).__name__,
                "seconds": round(time.monotonic() - started, 2)}
    finally:
        conn.close()
    return {"saw": describe(resp.status, headers, data, stream), "status": resp.status,
            "seconds": round(took, 4), "upstream": headers.get("x-llmedge-upstream")}


def describe(status: int, headers: dict, data: bytes, stream: bool) -> str:
    who = headers.get("x-llmedge-upstream") or "?"
    if status != 200 or not stream:
        try:
            doc = json.loads(data)
        except ValueError:
            return "%d, a body that is not JSON" % status
        if status != 200:
            err = doc.get("error") or {}
            code = err.get("code")
            return "%d %s" % (status, code if isinstance(code, str) and code
                              else err.get("type") or "error")
        text = doc["choices"][0]["message"]["content"]
        return "200, %s's answer%s" % (who, "" if text in (REPLY, PRIMARY_TEXT)
                                       else " (text differs)")
    text, error, continued, done, roles = "", None, None, False, 0
    for event in data_events(data):
        if event == "[DONE]":
            done = True
            continue
        try:
            doc = json.loads(event)
        except ValueError:
            continue
        if "error" in doc:
            error = doc["error"]
            continue
        for choice in doc.get("choices") or ():
            delta = choice.get("delta") or {}
            roles += "role" in delta
            text += delta.get("content") or ""
        continued = doc.get("x_llmedge", continued)
    if error is not None:
        return "stream: %d chars, then an error event (%s)" % (
            len(text), error.get("code") or error.get("type"))
    whole = text in (REPLY, PRIMARY_TEXT)
    out = "stream: %s from %s" % ("the whole answer" if whole else "%d chars (text differs)"
                                  % len(text), who)
    if continued:
        out = "stream: the whole answer%s, continued on %s at char %s" % (
            "" if whole else " (text differs)", continued.get("to"), continued.get("at_chars"))
    if roles != 1:
        out += ", %d role events" % roles
    return out + ("" if done else ", no [DONE]")


def data_events(body: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    events = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [line[5:].strip() for line in block.split(b"\n") if line.startswith(b"data:")]
        if data:
            events.append(b"\n".join(data).decode())
    return events


# === running ===

def run_case(case: Case, tree: Path, workdir: Path, knows_new_fields: bool) -> dict:
    setup = case.setup(workdir)
    edge = None
    try:
        edge = start_llmedge(config(setup, knows_new_fields), workdir, tree=tree,
                             name="llmedge-%s" % case.name)
        result = ask(edge.port, case.messages, case.stream)
        result["attempts"] = {"primary": setup.primary.completions(),
                              "fallback": setup.fallback.completions()}
        return result
    finally:
        if edge is not None:
            edge.stop()
        setup.primary.stop()
        setup.fallback.stop()


def run_recovery(tree: Path, down_s: float) -> dict:
    """The primary's connections reset for ``down_s`` seconds, then healed; a request every
    0.2 s throughout (bench/recovery.py's run, on ``tree``)."""
    import recovery

    r = recovery.run(argparse.Namespace(fault="reset", down_s=down_s, warmup=2.0, pace=0.2,
                                        max_wait=90.0, no_probes=False), tree)
    back = r["back_after_s"]
    return {"saw": "primary serves again %s after its return; %d requests failed" % (
                "%.1f s" % back if back is not None else "not within 90 s", r["non_200"]),
            "seconds": back, "attempts": None}


def git_sha(tree: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short=9", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def knows_new_fields(tree: Path) -> bool:
    """Whether a checkout's config has the deployment fields this bench's cases declare."""
    # config.py before the configuration became a package, config/__init__.py since.
    module = tree / "proxy" / "config.py"
    if not module.is_file():
        module = tree / "proxy" / "config" / "__init__.py"
    source = module.read_text()
    return "context_window" in source and "continuation" in source


def attempts_text(attempts: dict | None) -> str:
    if not attempts:
        return "-"
    return ", ".join("%s %d" % (k, v) for k, v in attempts.items() if v)


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return "%.3f" % seconds if seconds < 1 else "%.1f" % seconds


def markdown(report: dict) -> str:
    trees = report["trees"]
    out = ["- machine: %s; Python %s" % (report["machine"], report["python"]),
           "- command: `%s`" % report["command"], ""]
    head = "| fault | " + " | ".join(
        "%s: client saw | s to answer | completions sent" % label for label in trees) + " |"
    out += [head, "|---|" + "---|---:|---|" * len(trees)]
    for name, case in report["cases"].items():
        cells = []
        for label in trees:
            r = case["runs"].get(label)
            if r is None:
                cells += ["-", "-", "-"]
                continue
            cells += [r["saw"], seconds_text(r["seconds"]),
                      attempts_text(r.get("attempts"))]
        out.append("| %s (%s) | %s |" % (case["fault"], name, " | ".join(cells)))
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to run every case on")
    parser.add_argument("--only", help="comma-separated case names (%s, recovery)"
                        % ",".join(c.name for c in CASES))
    parser.add_argument("--skip-slow", action="store_true",
                        help="leave out the cases that wait out a default timeout")
    parser.add_argument("--recovery-down-s", type=float, default=20.0,
                        help="outage of the recovery case (0: leave it out)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    trees = {}
    if args.baseline:
        trees["before (%s)" % git_sha(args.baseline)] = args.baseline.resolve()
    trees["after (%s)" % git_sha(REPO)] = REPO
    cases = [c for c in CASES if (only is None or c.name in only)
             and not (args.skip_slow and c.slow)]
    report = {"machine": machine(), "python": platform.python_version(),
              "command": " ".join(["python", "bench/faults.py", *sys.argv[1:]]),
              "trees": list(trees), "cases": {}}
    workdir = Path(tempfile.mkdtemp(prefix="llmedge-faults-"))
    for case in cases:
        entry = report["cases"][case.name] = {"fault": case.fault, "runs": {}}
        for label, tree in trees.items():
            print("faults: %s on %s ..." % (case.name, label), file=sys.stderr, flush=True)
            entry["runs"][label] = run_case(case, tree, workdir, knows_new_fields(tree))
            print("faults:   %s" % json.dumps(entry["runs"][label]), file=sys.stderr, flush=True)
    if args.recovery_down_s > 0 and (only is None or "recovery" in only):
        entry = report["cases"]["recovery"] = {
            "fault": "primary's connections reset for %g s, then back" % args.recovery_down_s,
            "runs": {}}
        for label, tree in trees.items():
            print("faults: recovery on %s ..." % label, file=sys.stderr, flush=True)
            entry["runs"][label] = run_recovery(tree, args.recovery_down_s)
    text = markdown(report)
    sys.stdout.write(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return "%s, nproc %d, Linux %s" % (model, os.cpu_count() or 0, platform.release())


if __name__ == "__main__":
    sys.exit(main())
