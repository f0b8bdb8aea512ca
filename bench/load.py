"""A load generator for OpenAI-compatible chat endpoints: uvloop, raw protocol, keep-alive.

One process drives many keep-alive connections through an ``asyncio.Protocol`` that parses
responses with ``httptools`` (no HTTP client library in the way), in one of two modes:

* closed loop (``--connections N``): N connections, each sending its next request as soon as
  the previous answer is complete. Measures latency at a fixed concurrency and the throughput
  the target sustains at it.
* open loop (``--rate R [--arrival constant|poisson]``): requests are scheduled at R per second
  whatever the target does, on as many connections as needed (up to ``--max-connections``;
  requests wait in a queue beyond that). Latency is measured from each request's *scheduled*
  send time, so a target that falls behind shows its queueing delay instead of hiding it
  (coordinated omission). ``service`` latency (from the actual send) and ``send_lag`` (how late
  the generator itself was) are reported too.

Streaming (``--stream``) adds time to first byte (response head), time to first token (first
body chunk), the time between chunks and chunks per response. Latency percentiles come from an
HDR-style histogram with µs resolution (``bench/histogram.py``); errors are counted by kind:
``connect``, ``status_<code>``, ``reset``, ``timeout``, ``parse``, ``stream_incomplete``.

Only requests scheduled inside the measured window (after ``--warmup``, for ``--duration``)
are counted; the achieved rate is those answered successfully per second of the window.

    python bench/load.py --url http://127.0.0.1:8080/v1/chat/completions --model auto \\
        --connections 64 --duration 10 --json out.json
    python bench/load.py --url ... --rate 2000 --arrival poisson --stream

From Python: ``result = await run_load(LoadOptions(url=..., connections=8))``, or
``run(options)`` outside a running loop. ``result.to_dict()`` is what ``--json`` writes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import ssl
import sys
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httptools

sys.path.insert(0, str(Path(__file__).resolve().parent))
from histogram import Histogram, percentile_key, PERCENTILES  # noqa: E402

perf_counter = time.perf_counter

ARRIVALS = ("constant", "poisson")
LOOPS = ("uvloop", "asyncio")
MAX_LATENCY_US = 3_600_000_000   # histograms track up to an hour


@dataclass
class LoadOptions:
    url: str = "http://127.0.0.1:8080/v1/chat/completions"
    model: str = "auto"
    connections: int = 1             # closed loop: concurrent connections
    rate: float | None = None        # open loop: requests per second (closed loop when None)
    arrival: str = "constant"        # open loop: constant or poisson inter-arrival times
    max_connections: int = 1024      # open loop: connections opened at most
    duration: float = 10.0           # measured window, seconds
    warmup: float = 1.0              # seconds before the window: sent, not counted
    stream: bool = False
    body_size: int = 256             # approximate JSON request body size, bytes
    timeout: float = 30.0            # per request (and connect); also the drain limit
    seed: int = 1
    headers: list[str] = field(default_factory=list)   # extra "Name: value" request headers
    loop: str = "uvloop"
    spin_us: float = 1000.0          # open loop: yield-spin instead of sleeping this close to
                                     # a send (loop timers have 1 ms granularity); 0: never
    insecure: bool = False           # https: skip certificate verification
    api: str = "chat"                # the body's shape: chat | messages | responses (the URL
                                     # must name the matching endpoint)

    def check(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("--url must be an http:// or https:// URL, got %r" % self.url)
        if self.rate is None and self.connections < 1:
            raise ValueError("--connections must be >= 1")
        if self.rate is not None and not self.rate > 0:
            raise ValueError("--rate must be > 0")
        if self.arrival not in ARRIVALS:
            raise ValueError("--arrival must be one of %s" % ", ".join(ARRIVALS))
        if not self.duration > 0 or self.warmup < 0 or not self.timeout > 0:
            raise ValueError("--duration and --timeout must be > 0, --warmup >= 0")
        if self.max_connections < 1 or self.body_size < 0:
            raise ValueError("--max-connections must be >= 1 and --body-size >= 0")
        for header in self.headers:
            if ":" not in header:
                raise ValueError("--header must look like 'Name: value', got %r" % header)

    @property
    def mode(self) -> str:
        return "closed" if self.rate is None else "open"


@dataclass
class Result:
    options: dict
    mode: str
    loop: str
    window_s: float                  # the measured window
    wall_s: float                    # the whole run: warm-up, window and drain
    requests: int                    # sent in the window and answered with 2xx
    errors: dict[str, int]           # of requests sent in the window, by kind
    error_count: int
    achieved_rps: float              # 2xx answers that arrived in the window, per second
    target_rps: float | None
    latency_us: dict                 # from scheduled (open) or actual (closed) send time
    service_us: dict | None          # open loop: from the actual send
    send_lag_us: dict | None         # open loop: actual send minus scheduled send (generator
                                     # lateness plus waiting for a free connection)
    ttfb_us: dict | None             # streaming: first byte of the response
    ttft_us: dict | None             # streaming: first body chunk
    inter_chunk_us: dict | None      # streaming: between consecutive body chunks
    chunks_per_response: dict | None
    totals: dict                     # the whole run, warm-up included
    generator: dict                  # the generator's own CPU use and peak RSS
    histograms: dict                 # sparse latency histogram(s), to merge runs

    def to_dict(self) -> dict:
        return asdict(self)


APIS = ("chat", "messages", "responses")
# What the last event of a complete stream carries, per API.
STREAM_END = {"chat": b"[DONE]", "messages": b"event: message_stop",
              "responses": b"event: response.completed"}


def build_body(model: str, stream: bool, size: int, api: str = "chat") -> bytes:
    """A request of about ``size`` bytes in the shape of ``api`` (the user message is padded
    to get there): the same prompt whichever API carries it."""
    if api == "messages":
        doc: dict = {"model": model, "max_tokens": 256, "stream": stream,
                     "messages": [{"role": "user", "content": ""}]}
    elif api == "responses":
        doc = {"model": model, "stream": stream, "input": ""}
    else:
        doc = {"model": model, "messages": [{"role": "user", "content": ""}], "stream": stream}
    base = len(json.dumps(doc, separators=(",", ":")))
    filler = "The quick brown fox jumps over the lazy dog. "
    pad = max(1, size - base)
    text = (filler * (pad // len(filler) + 1))[:pad]
    if api == "responses":
        doc["input"] = text
    else:
        doc["messages"][0]["content"] = text
    return json.dumps(doc, separators=(",", ":")).encode()


def build_request(options: LoadOptions) -> bytes:
    parts = urlsplit(options.url)
    path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    body = build_body(options.model, options.stream, options.body_size, options.api)
    head = ["POST %s HTTP/1.1" % path, "Host: %s" % parts.netloc,
            "Content-Type: application/json",
            "Accept: %s" % ("text/event-stream" if options.stream else "application/json"),
            "Content-Length: %d" % len(body), "User-Agent: llmedge-bench-load/0.1"]
    head.extend(h.strip() for h in options.headers)
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class Conn(asyncio.Protocol):
    """One keep-alive connection. ``send`` writes the prebuilt request; the answer is timed
    from ``data_received`` (the time of the read that completed it)."""

    __slots__ = ("gen", "parser", "transport", "busy", "t_intended", "t_sent", "t_first",
                 "t_prev", "now", "chunks", "gaps", "tail")

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.t_intended = 0.0
        self.t_sent = 0.0
        self.t_first = 0.0
        self.t_prev = 0.0
        self.now = 0.0
        self.chunks = 0
        self.gaps: list[float] | None = None
        self.tail = b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, intended: float | None) -> None:
        """Send now; latency counts from ``intended`` (None: from now, as closed loops do)."""
        self.busy = True
        self.t_first = 0.0
        self.chunks = 0
        gen = self.gen
        gen.inflight += 1
        gen.sent_all += 1
        self.t_sent = t = perf_counter()
        self.t_intended = t if intended is None else intended
        self.transport.write(gen.request)

    def data_received(self, data: bytes) -> None:
        now = self.now = perf_counter()
        if not self.t_first:
            self.t_first = now
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.gen.fail(self, "parse")
            if self.transport is not None:
                self.transport.abort()

    def on_message_complete(self) -> None:
        parser = self.parser
        self.gen.complete(self, parser.get_status_code(), parser.should_keep_alive())

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.gen.lost(self)


class StreamConn(Conn):
    """Also times each body chunk (one SSE event per HTTP chunk, as servers send them)."""

    __slots__ = ()

    def on_body(self, body: bytes) -> None:
        now = self.now
        if self.chunks:
            self.gaps.append(now - self.t_prev)
        else:
            self.gaps = [now]      # the first entry is the time of the first chunk
        self.t_prev = now
        self.chunks += 1
        self.tail = (self.tail + body)[-self.gen.tail_keep:]


class Generator:
    def __init__(self, options: LoadOptions, loop: asyncio.AbstractEventLoop) -> None:
        options.check()
        self.options = options
        self.loop = loop
        parts = urlsplit(options.url)
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self.ssl = ssl.create_default_context()
            if options.insecure:
                self.ssl.check_hostname = False
                self.ssl.verify_mode = ssl.CERT_NONE
        self.request = build_request(options)
        self.stream = options.stream
        self.stream_end = STREAM_END[options.api]
        # Enough of the stream's end to hold its last event's marker: a Responses stream
        # ends with the whole response object after it.
        self.tail_keep = 8192 if options.api == "responses" else 64
        self.conn_class = StreamConn if options.stream else Conn
        self.open_loop = options.rate is not None
        h = lambda: Histogram(MAX_LATENCY_US)  # noqa: E731
        self.latency = h()
        self.service = h() if self.open_loop else None
        self.send_lag = h() if self.open_loop else None
        self.ttfb = h() if self.stream else None
        self.ttft = h() if self.stream else None
        self.inter_chunk = h() if self.stream else None
        self.chunk_counts = h() if self.stream else None
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.errors_all: Counter[str] = Counter()
        self.completed_all = 0
        self.ok_in_window = 0             # 2xx answers that arrived in the window
        self.timeout = options.timeout
        self.sent_all = 0
        self.scheduled = 0
        self.connections_opened = 0
        self.connecting = 0
        self.inflight = 0
        self.conns: set[Conn] = set()
        self.idle: list[Conn] = []
        self.pending: deque[float] = deque()   # open loop: scheduled times waiting for a conn
        self.stopping = False
        self.record_from = self.record_until = 0.0
        self.drained = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()

    # === bookkeeping ===

    def in_window(self, t: float) -> bool:
        return self.record_from <= t < self.record_until

    def error(self, kind: str, t: float) -> None:
        self.errors_all[kind] += 1
        if self.in_window(t):
            self.errors[kind] += 1

    def _check_drained(self) -> None:
        if self.stopping and self.inflight == 0 and not self.pending:
            self.drained.set()

    def _spawn(self, coro) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # === connection events ===

    def complete(self, conn: Conn, status: int, keep_alive: bool) -> None:
        if not conn.busy:   # an answer nobody asked for (e.g. a 408 on an idle connection)
            if conn.transport is not None:
                conn.transport.close()
            return
        now = conn.now
        conn.busy = False
        self.inflight -= 1
        self.completed_all += 1
        t0 = conn.t_intended
        if not 200 <= status < 300:
            kind = "status_%d" % status
        elif now - conn.t_sent > self.timeout:
            kind = "timeout"          # answered, but after the timeout (the sweeper is coarse)
        elif self.stream and self.stream_end not in conn.tail:
            kind = "stream_incomplete"
        else:
            kind = None
            if self.record_from <= now < self.record_until:
                self.ok_in_window += 1
        if kind is not None:
            self.error(kind, t0)
        elif self.record_from <= t0 < self.record_until:
            self.ok += 1
            self.latency.record((now - t0) * 1e6)
            if self.open_loop:
                self.service.record((now - conn.t_sent) * 1e6)
                self.send_lag.record((conn.t_sent - t0) * 1e6)
            if self.stream:
                self.ttfb.record((conn.t_first - t0) * 1e6)
                self.chunk_counts.record(conn.chunks)
                gaps = conn.gaps
                if gaps:
                    self.ttft.record((gaps[0] - t0) * 1e6)
                    record = self.inter_chunk.record
                    for gap in gaps[1:]:
                        record(gap * 1e6)
        if self.stream:
            conn.tail = b""
            conn.gaps = None
        if not keep_alive:
            conn.transport.close()   # connection_lost replaces it
            self._check_drained()
            return
        self.on_idle(conn, now)

    def fail(self, conn: Conn, kind: str) -> None:
        """The request on ``conn`` failed; the connection is being dropped."""
        if conn.busy:
            conn.busy = False
            self.inflight -= 1
            self.error(kind, conn.t_intended)
        self._check_drained()

    def lost(self, conn: Conn) -> None:
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.busy:
            self.fail(conn, "reset")
        if not self.stopping:
            if self.open_loop:
                self._connect_for_pending()
            else:
                self._spawn(self._closed_slot())
        self._check_drained()

    def on_idle(self, conn: Conn, now: float) -> None:
        if self.open_loop:
            if self.pending:
                conn.send(self.pending.popleft())
            else:
                self.idle.append(conn)
                self._check_drained()
        elif not self.stopping and now < self.record_until:
            conn.send(None)
        else:
            self.idle.append(conn)
            self._check_drained()

    async def _connect(self, count_error: bool = True) -> Conn | None:
        conn = self.conn_class(self)
        self.connecting += 1
        try:
            async with asyncio.timeout(self.options.timeout):
                await self.loop.create_connection(lambda: conn, self.host, self.port,
                                                  ssl=self.ssl)
        except (OSError, TimeoutError, ssl.SSLError):
            if count_error:
                self.error("connect", perf_counter())
            return None
        finally:
            self.connecting -= 1
        self.connections_opened += 1
        if self.stopping and not self.open_loop:
            conn.transport.close()
            return None
        self.conns.add(conn)
        return conn

    # === closed loop ===

    async def _closed_slot(self) -> None:
        """Open a connection (retrying) and start its request chain."""
        while not self.stopping:
            conn = await self._connect()
            if conn is not None:
                if conn.transport is not None:
                    self.on_idle(conn, perf_counter())
                return
            await asyncio.sleep(0.05)   # the target refuses: do not spin

    async def run_closed(self) -> None:
        start = perf_counter()
        self.record_from = start + self.options.warmup
        self.record_until = self.record_from + self.options.duration
        for _ in range(self.options.connections):
            self._spawn(self._closed_slot())
        await self._sweep_until(self.record_until)

    # === open loop ===

    def _connect_for_pending(self) -> None:
        while (self.pending and self.connecting < len(self.pending)
               and len(self.conns) + self.connecting < self.options.max_connections):
            self.connecting += 1   # reserve now; _open_for_pending takes it back
            self._spawn(self._open_for_pending())

    async def _open_for_pending(self) -> None:
        self.connecting -= 1
        conn = await self._connect(count_error=False)
        if conn is None:
            # Nothing to send it on: the oldest waiting request fails with the connect error.
            if self.pending:
                self.error("connect", self.pending.popleft())
            else:
                self.error("connect", perf_counter())
            self._check_drained()
            return
        if conn.transport is not None:
            self.on_idle(conn, perf_counter())

    def _dispatch(self, t: float) -> None:
        self.scheduled += 1
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.send(t)
                return
        self.pending.append(t)
        self._connect_for_pending()

    async def run_open(self) -> None:
        options = self.options
        rnd = random.Random(options.seed)
        interval = 1.0 / options.rate
        poisson = options.arrival == "poisson"
        spin = options.spin_us / 1e6
        start = perf_counter()
        self.record_from = start + options.warmup
        self.record_until = end = self.record_from + options.duration
        sweeper = self.loop.create_task(self._sweep_until(end))
        t = start
        while t < end:
            now = perf_counter()
            while t <= now and t < end:
                self._dispatch(t)
                t += rnd.expovariate(options.rate) if poisson else interval
            if t < end:
                delay = t - perf_counter()
                # sleep(0) only yields: I/O is still polled, without waiting for a timer.
                await asyncio.sleep(delay - spin if delay > spin else 0)
        await sweeper

    # === both ===

    async def _sweep_until(self, end: float) -> None:
        """Time out stuck requests, every 50 ms, until the window ends."""
        timeout = self.options.timeout
        while True:
            now = perf_counter()
            if now >= end:
                return
            for conn in list(self.conns):
                if conn.busy and now - conn.t_sent > timeout:
                    self.fail(conn, "timeout")
                    if conn.transport is not None:
                        conn.transport.abort()
            pending = self.pending
            while pending and now - pending[0] > timeout:
                self.error("timeout", pending.popleft())
            await asyncio.sleep(min(0.05, end - now))

    async def drain(self) -> None:
        """Stop sending; wait (up to the timeout) for the answers still due; close all."""
        self.stopping = True
        self._check_drained()
        try:
            async with asyncio.timeout(self.options.timeout):
                await self.drained.wait()
        except TimeoutError:
            pass
        for conn in list(self.conns):
            if conn.busy:
                self.fail(conn, "timeout")
        while self.pending:
            self.error("timeout", self.pending.popleft())
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.sleep(0)   # let connection_lost callbacks run


def _summary(h: Histogram | None) -> dict | None:
    return None if h is None else h.summary()


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run_load(options: LoadOptions) -> Result:
    """Run one measurement on the running loop and return its result."""
    loop = asyncio.get_running_loop()
    gen = Generator(options, loop)
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()   # collector pauses would show up as generator-made latency
    cpu0 = _cpu_seconds()
    wall0 = perf_counter()
    try:
        if gen.open_loop:
            await gen.run_open()
        else:
            await gen.run_closed()
        await gen.drain()
    finally:
        if gc_was_enabled:
            gc.enable()
    wall = perf_counter() - wall0
    cpu = _cpu_seconds() - cpu0
    window = options.duration
    histograms = {"latency": gen.latency.to_sparse()}
    if gen.ttfb is not None:
        histograms["ttfb"] = gen.ttfb.to_sparse()
    return Result(
        options=asdict(options), mode=options.mode, loop=type(loop).__module__.split(".")[0],
        window_s=window, wall_s=round(wall, 4), requests=gen.ok,
        errors=dict(sorted((k, v) for k, v in gen.errors.items() if v)),
        error_count=sum(gen.errors.values()),
        achieved_rps=round(gen.ok_in_window / window, 2), target_rps=options.rate,
        latency_us=gen.latency.summary(), service_us=_summary(gen.service),
        send_lag_us=_summary(gen.send_lag), ttfb_us=_summary(gen.ttfb),
        ttft_us=_summary(gen.ttft), inter_chunk_us=_summary(gen.inter_chunk),
        chunks_per_response=_summary(gen.chunk_counts),
        totals={"scheduled": gen.scheduled if gen.open_loop else None,
                "sent": gen.sent_all, "completed": gen.completed_all,
                "errors": dict(sorted((k, v) for k, v in gen.errors_all.items() if v)),
                "connections_opened": gen.connections_opened},
        generator={"cpu_s": round(cpu, 4), "cpu_util": round(cpu / wall, 3) if wall else 0.0,
                   "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   "pid": os.getpid(),
                   "affinity": sorted(os.sched_getaffinity(0))
                   if hasattr(os, "sched_getaffinity") else None},
        histograms=histograms)


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            print("load: uvloop is not installed; using the asyncio loop", file=sys.stderr)
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(options: LoadOptions) -> Result:
    """``run_load`` on a fresh loop of the kind ``options.loop`` names."""
    options.check()
    with asyncio.Runner(loop_factory=lambda: new_loop(options.loop)) as runner:
        return runner.run(run_load(options))


# === output ===

def _fmt_us(v) -> str:
    if v is None:
        return "-"
    return "%d" % v if v < 10_000 else "{:,}".format(int(v))


def markdown(result: Result) -> str:
    o = result.options
    if result.mode == "closed":
        what = "closed loop, %d connection%s" % (o["connections"], "" if o["connections"] == 1
                                                  else "s")
    else:
        what = "open loop, %g req/s %s arrivals (up to %d connections)" % (
            o["rate"], o["arrival"], o["max_connections"])
    lines = [
        "### load: %s, %s, %gs (+%gs warm-up)" % (
            what, "streaming" if o["stream"] else "non-streaming", o["duration"], o["warmup"]),
        "",
        "`%s` model `%s`, %d-byte body, %s loop" % (o["url"], o["model"], len(build_body(
            o["model"], o["stream"], o["body_size"])), result.loop),
        "",
        "| requests ok | errors | achieved req/s | generator CPU |",
        "|---:|---:|---:|---:|",
        "| %d | %d%s | %.1f%s | %.0f%% |" % (
            result.requests, result.error_count,
            " (%s)" % ", ".join("%s: %d" % kv for kv in result.errors.items())
            if result.errors else "",
            result.achieved_rps,
            " of %g" % result.target_rps if result.target_rps else "",
            100 * result.generator["cpu_util"]),
        "",
        "| µs | " + " | ".join(percentile_key(p) for p in PERCENTILES) + " | max | mean |",
        "|---|" + "---:|" * (len(PERCENTILES) + 2),
    ]
    rows = [("latency", result.latency_us), ("service", result.service_us),
            ("send lag", result.send_lag_us), ("first byte", result.ttfb_us),
            ("first token", result.ttft_us), ("between chunks", result.inter_chunk_us)]
    for name, s in rows:
        if s is None or not s.get("count"):
            continue
        lines.append("| %s | %s | %s | %s |" % (
            name, " | ".join(_fmt_us(s[percentile_key(p)]) for p in PERCENTILES),
            _fmt_us(s["max"]), _fmt_us(s["mean"])))
    if result.chunks_per_response and result.chunks_per_response.get("count"):
        lines += ["", "chunks per response: mean %.1f, max %d" % (
            result.chunks_per_response["mean"], result.chunks_per_response["max"])]
    if result.generator["cpu_util"] > 0.9:
        spinning = result.mode == "open" and o["spin_us"] > 0
        lines += ["", "**note:** the generator used %.0f%% of a core%s." % (
            100 * result.generator["cpu_util"],
            " (it spins between sends, see --spin-us; check send lag)" if spinning
            else ": it may be the bottleneck")]
    return "\n".join(lines) + "\n"


def plot(result: Result, path: str) -> bool:
    """A latency-by-percentile plot (HdrHistogram style); False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, FixedFormatter
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, data in result.histograms.items():
        points = Histogram.from_sparse(data).distribution()
        if not points:
            continue
        xs = [1.0 / max(1e-6, 1.0 - min(p, 99.9999) / 100.0) for p, _ in points]
        ax.plot(xs, [v for _, v in points], label=name)
    ax.set_xscale("log")
    ticks = [1, 2, 10, 100, 1000, 10000]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FixedFormatter(
        ["0%", "50%", "90%", "99%", "99.9%", "99.99%"]))
    ax.set_xlabel("percentile")
    ax.set_ylabel("µs")
    ax.set_title("%s, %s" % (result.options["url"], result.mode))
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def build_parser() -> argparse.ArgumentParser:
    d = LoadOptions()
    p = argparse.ArgumentParser(
        prog="bench/load.py", description="Load generator for OpenAI-compatible chat endpoints",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--url", default=d.url)
    p.add_argument("--model", default=d.model)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--connections", "-c", type=int, default=d.connections,
                      help="closed loop: concurrent connections")
    mode.add_argument("--rate", "-r", type=float, default=None,
                      help="open loop: requests per second (latency from the scheduled time)")
    p.add_argument("--arrival", choices=ARRIVALS, default=d.arrival,
                   help="open loop: inter-arrival times")
    p.add_argument("--max-connections", type=int, default=d.max_connections,
                   help="open loop: most connections to open")
    p.add_argument("--duration", "-d", type=float, default=d.duration,
                   help="measured seconds")
    p.add_argument("--warmup", "-w", type=float, default=d.warmup,
                   help="seconds of load before measuring")
    p.add_argument("--stream", action="store_true", help="request and time SSE streams")
    p.add_argument("--api", choices=APIS, default=d.api,
                   help="the request's shape; --url must name its endpoint (/v1/messages, "
                        "/v1/responses)")
    p.add_argument("--body-size", type=int, default=d.body_size,
                   help="approximate request body bytes")
    p.add_argument("--timeout", type=float, default=d.timeout,
                   help="seconds per request and per connect")
    p.add_argument("--seed", type=int, default=d.seed, help="poisson arrivals seed")
    p.add_argument("--header", "-H", action="append", default=[], dest="headers",
                   help="extra request header 'Name: value' (repeatable)")
    p.add_argument("--spin-us", type=float, default=d.spin_us,
                   help="open loop: busy-yield rather than sleep when the next send is this "
                        "close (precise send times, more generator CPU); 0 to always sleep")
    p.add_argument("--loop", choices=LOOPS, default=d.loop)
    p.add_argument("--insecure", action="store_true", help="https: do not verify certificates")
    p.add_argument("--cpu", default=None,
                   help="pin this process to these CPUs, e.g. 1 or 0,2 (Linux)")
    p.add_argument("--grpc", default=None, metavar="HOST:PORT",
                   help="drive llmedge's gRPC front end at HOST:PORT instead of HTTP "
                        "(closed loop; runs bench/grpc_load.py --grpc-only)")
    p.add_argument("--json", default=None, help="write the result as JSON here ('-': stdout)")
    p.add_argument("--plot", default=None, help="write a latency plot PNG (needs matplotlib)")
    p.add_argument("--quiet", "-q", action="store_true", help="no markdown summary")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.grpc:
        if args.rate is not None:
            parser.error("--grpc drives a closed loop: use --connections, not --rate")
        import grpc_load   # only here: grpcio is not needed for HTTP load

        grpc_argv = ["--grpc-only", "--target", args.grpc, "-c", str(args.connections),
                     "-d", str(args.duration), "-w", str(args.warmup),
                     "--body-size", str(args.body_size), "--timeout", str(args.timeout),
                     "--model", args.model]
        if args.stream:
            grpc_argv.append("--stream")
        if args.json:
            grpc_argv += ["--json", args.json]
        return grpc_load.main(grpc_argv)
    fields = {k: v for k, v in vars(args).items() if k in LoadOptions.__dataclass_fields__}
    options = LoadOptions(**fields)
    try:
        options.check()
    except ValueError as exc:
        parser.error(str(exc))
    if args.cpu is not None:
        try:
            os.sched_setaffinity(0, {int(c) for c in args.cpu.split(",")})
        except (AttributeError, ValueError, OSError) as exc:
            print("load: cannot pin to CPUs %s: %s" % (args.cpu, exc), file=sys.stderr)
    result = run(options)
    data = result.to_dict()
    if args.json == "-":
        json.dump(data, sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
    if not args.quiet and args.json != "-":
        sys.stdout.write(markdown(result))
    if args.plot:
        if plot(result, args.plot):
            if not args.quiet:
                print("latency plot written to %s" % args.plot)
        else:
            print("load: matplotlib is not installed; no plot written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
