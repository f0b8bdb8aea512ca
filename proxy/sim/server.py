"""A fast OpenAI-compatible upstream simulator: a real HTTP/1.1 server for tests and benchmarks.

It is the baseline the proxy's overhead is measured against, so it is built on the same stack
as the proxy (uvloop + httptools in an ``asyncio.Protocol``) and precomputes reply bytes.

Run ``python -m proxy.sim [flags]``; once listening it prints one line,
``LISTENING <host>:<port>``, to stdout, and it exits with status 0 on SIGTERM/SIGINT.

Flags (all behaviour flags can also be changed at runtime, see ``POST /_sim/config``):
  --host H            bind address (127.0.0.1)
  --port P            bind port; 0 picks an ephemeral one (0)
  --model NAME        model for /v1/models and for requests that name none (sim-model)
  --name NAME         identifies this process: ``x-sim-name`` header, ``system_fingerprint`` (sim)
  --ttft-ms F         delay before the first token (stream) or before the answer (0)
  --tokens-per-s F    stream pacing, one content chunk every 1/F s; 0 = unpaced (0). A
                      non-streamed answer waits as long as its stream would for its last chunk.
  --chunks N          content chunks per stream; non-streamed content is them joined (8)
  --reply TEXT        the assistant's text, cut into --chunks pieces
  --status CODE       answer every chat/embeddings request with CODE and an OpenAI error body
  --error-rate P      probability of answering --error-status instead (seeded by --seed)
  --error-status C    status used by --error-rate (500)
  --retry-after S     add ``Retry-After: S`` to injected 429 and 503 answers
  --stall-after N     streams go silent after N content chunks, keeping the connection open;
                      N=0 also makes non-streamed chat requests never answered
  --drop-after N      streams close the connection after N content chunks, mid chunked body;
                      N=0 also makes non-streamed chat requests closed without an answer
  --seed N            seed of the error-rate random generator (0)
  --api-key KEY       require this key on every API request, sent as each API sends it:
                      ``Authorization: Bearer``, Azure's ``api-key``, Anthropic's
                      ``x-api-key``, Gemini's ``x-goog-api-key``; for Bedrock it is the
                      secret access key its SigV4 signatures must be made with
  --framing F         how answers end: length (Content-Length or chunks), close
                      (Connection: close, body up to EOF) or http10 (HTTP/1.0 up to EOF)
  --answer-body TEXT  answer chat and embeddings requests with this body instead (with
                      --status, or 200), e.g. an HTML error page; --answer-type its type
  --layout L          JSON layout of answers: compact, spaced, pretty (indented; in streams
                      over several data: lines) or reordered (keys reversed) (compact)
  --early-role        streams send the role event (``"delta":{"role":"assistant",
                      "content":""}``) and an SSE comment ``: keep-alive`` with the headers,
                      and the first content only after --ttft-ms (without it the role rides
                      with the first content); no effect on non-streamed answers
  --malformed-after N streams send one ``data: {not json`` event after N content chunks (0:
                      right after the role event) and then carry on to [DONE]
  --continuation C    prefill (default) or none. prefill: a chat request whose last message
                      is the assistant's and that has ``"continue_final_message": true`` (or
                      ``"add_generation_prompt": false``) continues that message: when --reply
                      starts with its text (the partial) only the rest of the reply is
                      answered, else the whole reply. A partial ending where a stream's chunk
                      ended (what a cut stream delivered) leaves exactly the stream's remaining
                      chunks; one ending mid-chunk leaves that chunk's tail, then the rest;
                      always at least one chunk (possibly empty). Streamed or not as asked;
                      usage counts the whole prompt (partial included) and the new chunks.
                      Counted as ``continuations`` in /_sim/stats (a continuation request with
                      an empty or non-matching partial too), the partial kept as
                      ``last_continuation_prefix``. none: the markers are ignored, as by a
                      server that cannot continue. Without the markers a trailing assistant
                      message is an ordinary prompt.
  --context-window N  chat requests whose estimated prompt (~4 characters a token, all
                      messages' text) is longer than N tokens are answered 400 at once,
                      worded as --context-error says, and counted as ``context_exceeded``;
                      checked after the request is validated, before any continuation
  --context-error S   openai (default): OpenAI's ``context_length_exceeded`` error; vllm:
                      vLLM's OpenAI server's ``BadRequestError`` (code 400, "However, you
                      requested ..."); anthropic: ``{"type":"error","error":{"type":
                      "invalid_request_error","message":"prompt is too long: P tokens > N
                      maximum"}}``

The stream limits (--stall-after, --drop-after, --malformed-after) count the content chunks of
the answer actually streamed, a continuation's own chunks included. With --early-role a limit
of 0 cuts the stream after the role event, once the TTFT has passed (a drop then closes the
connection when the first token was due). A malformed event due at the same count as a stall or
drop goes out before it.

Endpoints: POST /v1/chat/completions, POST /v1/embeddings, POST /v1/messages and
/v1/messages/count_tokens (Anthropic's Messages API, see proxy/sim/messages.py), POST
/v1/responses (OpenAI's Responses API, see proxy/sim/responses.py), POST
/openai/deployments/{name}/chat/completions and .../embeddings (Azure OpenAI's paths;
``?api-version=`` required), POST
/v1beta/models/{model}:generateContent and :streamGenerateContent (Gemini's, see
proxy/sim/gemini.py), POST /model/{id}/converse and /converse-stream (Amazon Bedrock's, signed
requests checked; see proxy/sim/bedrock.py), GET /_sim/aws/credentials (a container
credentials endpoint, ditto), GET /v1/models, GET /_sim/stats,
POST /_sim/reset (zero counters, reseed; body ``{"config": true}`` also restores the startup
config), GET|POST /_sim/config (JSON object of snake_case behaviour options; null restores an
option's startup value; answers the effective config). Injected errors are answered at once,
without the TTFT delay, as rate limiters and overloaded frontends do.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import logging
import random
import signal
import ssl
import sys
import time
from collections import deque

import httptools
import orjson

from . import bedrock, gemini, responses
from . import messages as anthropic_messages
from . import wire
from .wire import (BEHAVIOUR_DEFAULTS, DEFAULT_REPLY, Behaviour, ConfigError,
                             validate_option)

try:
    import uvloop
except ImportError:  # pragma: no cover - platforms without uvloop
    uvloop = None

log = logging.getLogger("llmedge.simulator")

MAX_BODY = 64 * 1024 * 1024
AZURE_PREFIX = b"/openai/deployments/"
# Past this many queued pipelined requests stop reading, so a flood cannot grow memory unbounded.
MAX_PIPELINE = 64

STAT_KEYS = ("requests", "chat", "embeddings", "models", "streams_started", "streams_completed",
             "streams_aborted", "streams_dropped", "streams_stalled", "errors_injected",
             "connections_opened", "connections_closed", "continuations", "context_exceeded",
             "messages", "azure", "gemini", "bedrock", "bad_signatures", "count_tokens",
             "responses", "aws_credentials")


def _read_int(digits: str) -> int | str:
    # Past sys.get_int_max_str_digits() int() refuses: such an integer stays its digits.
    return int(digits) if len(digits) <= 4000 else digits


class Request:
    __slots__ = ("method", "path", "headers", "body", "keep_alive", "http10", "bad", "query")

    def __init__(self, method, path, headers, body, keep_alive, http10, bad=None, query=b""):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.http10 = http10
        self.bad = bad  # (status, message) of a parse failure: answer it and close


class Stream:
    """Progress of one SSE response; ``cut`` is the event index where stall/drop kicks in."""

    __slots__ = ("events", "n_content", "idx", "cut", "drop", "interval", "keep_alive",
                 "chunked")

    def __init__(self, events, n_content, cut, drop, interval, keep_alive, chunked=True):
        self.events = events
        self.chunked = chunked   # False: the events go out bare and the close ends them
        self.n_content = n_content
        self.idx = 0
        self.cut = cut
        self.drop = drop
        self.interval = interval
        self.keep_alive = keep_alive


class SimProtocol(asyncio.Protocol):
    """One client connection: parses requests, queues pipelined ones, answers them in order."""

    def __init__(self, sim: "Simulator") -> None:
        self.sim = sim
        self.loop = sim.loop
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Request] = deque()
        self.busy = False
        self.draining = False
        self.closed = False
        self.dropping = False
        self.read_paused = False
        self.write_paused = False
        self.on_resume = None
        self.timer = None
        self.stream: Stream | None = None
        self._url = b""
        self._headers: list = []
        self._body: list = []
        self._body_len = 0
        self._expect = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.sim.stats["connections_opened"] += 1
        self.sim.connections.add(self)

    def connection_lost(self, exc) -> None:
        self.closed = True
        sim = self.sim
        sim.stats["connections_closed"] += 1
        sim.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.stream is not None and not self.dropping and not sim.stopping:
            sim.stats["streams_aborted"] += 1
        self.stream = None
        self.queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        cb, self.on_resume = self.on_resume, None
        if cb is not None and not self.closed:
            cb()

    def data_received(self, data: bytes) -> None:
        if self.parser is None:
            return  # after a parse error everything up to the close is garbage
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject("protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            # httptools re-wraps callback exceptions, hence the flag rather than an except.
            if self._body_len > MAX_BODY:
                self._reject("request body too large", 413)
            else:
                self._reject("malformed HTTP request: %s" % exc)
        if len(self.queue) >= MAX_PIPELINE and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
        self._drain()

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._body_len = 0
        self._expect = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        # The length test keeps the common case free of a lower() per header.
        if len(name) == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            self._expect = True

    def on_headers_complete(self) -> None:
        # Only when nothing is in flight: a 100 written mid-response would corrupt it.
        if self._expect and not self.busy and not self.queue:
            self.transport.write(wire.CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > MAX_BODY:
            raise ValueError("body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        p = self.parser
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        path, _, query = self._url.partition(b"?")
        self.queue.append(Request(p.get_method(), path, self._headers, body,
                                  p.should_keep_alive(), p.get_http_version() == "1.0",
                                  query=query))

    def _reject(self, message: str, status: int = 400) -> None:
        self.parser = None
        self.queue.append(Request(b"", b"", [], b"", False, False, (status, message)))

    # -- request sequencing --------------------------------------------------------------------

    def _drain(self) -> None:
        if self.draining:
            return
        self.draining = True
        try:
            while not self.busy and self.queue and not self.closed:
                req = self.queue.popleft()
                self.busy = True
                if req.bad is not None:
                    self.send(req, req.bad[0], wire.error_body(req.bad[0], req.bad[1]))
                else:
                    self.sim.handle(self, req)
            if self.read_paused and len(self.queue) < MAX_PIPELINE // 4 and not self.closed:
                self.read_paused = False
                self.transport.resume_reading()
        finally:
            self.draining = False

    def finish(self, keep_alive: bool) -> None:
        """The current response is fully written: move on to the next pipelined request."""
        self.busy = False
        self.stream = None
        if not keep_alive:
            self.closed = True
            self.transport.close()
        elif not self.draining:
            self._drain()

    # -- responses -----------------------------------------------------------------------------

    def head(self, req: Request, status: int, ctype: bytes, length: int | None,
             extra: bytes = b"", framing: str = "length") -> bytes:
        status_line = wire.status_line(status)
        if framing != "length":
            # Up to EOF: no length, no chunks, and the connection closes after the body.
            if framing == "http10":
                status_line = b"HTTP/1.0" + status_line[8:]
            conn = b"" if framing == "http10" else wire.CLOSE
            size = b""
        else:
            if not req.keep_alive:
                conn = wire.CLOSE
            else:
                conn = wire.KEEP_ALIVE if req.http10 else b""
            size = (b"content-length: %d\r\n" % length if length is not None
                    else b"transfer-encoding: chunked\r\n")
        return b"%scontent-type: %s\r\n%s%s%s%s\r\n" % (
            status_line, ctype, size, self.sim.common_headers, conn, extra)

    def send(self, req: Request, status: int, body: bytes, extra: bytes = b"",
             delay: float = 0.0, ctype: bytes = wire.JSON_TYPE,
             framing: str = "length") -> None:
        data = self.head(req, status, ctype, len(body), extra, framing) + body
        keep_alive = req.keep_alive and framing == "length"
        if delay > 0:
            self.timer = self.loop.call_later(delay, self._send_now, data, keep_alive)
        else:
            self._send_now(data, keep_alive)

    def _send_now(self, data: bytes, keep_alive: bool) -> None:
        self.timer = None
        if self.closed:
            return
        self.transport.write(data)
        self.finish(keep_alive)

    def drop(self) -> None:
        """Close the connection as a crashing upstream would, mid-response if need be."""
        self.dropping = True
        self.closed = True
        self.transport.close()

    def start_stream(self, req: Request, events: list, beh: Behaviour, n: int,
                     ctype: bytes = b"text/event-stream") -> None:
        """Stream ``events`` (role, ``n`` contents, finish, [usage], [DONE]) as ``beh`` says."""
        cut, drop = len(events), False
        # A limit at or past the finish event withholds nothing, so it is ignored.
        for limit, is_drop in ((beh.stall_after, False), (beh.drop_after, True)):
            if limit is not None and limit <= n and limit + 1 <= cut:
                cut, drop = limit + 1, is_drop
        chunked = beh.framing == "length"
        self.stream = st = Stream(events, n, cut, drop, beh.interval,
                                  req.keep_alive and chunked, chunked)
        self.sim.stats["streams_started"] += 1
        head = self.head(req, 200, ctype, None, b"cache-control: no-cache\r\n", beh.framing)
        if beh.stream_tweaks:
            head = self._tweak_stream(st, beh, head)
        self.transport.write(head)
        if beh.ttft > 0:
            self.timer = self.loop.call_later(beh.ttft, self._stream_step)
        else:
            self._stream_step()

    def _tweak_stream(self, st: Stream, beh: Behaviour, head: bytes) -> bytes:
        """Apply early_role and malformed_after to a fresh stream; returns what to write now.

        Both add bytes to existing events rather than new events, so event i stays content
        chunk i for the pacing and stall/drop code.
        """
        events = st.events
        if beh.early_role:
            events[0] += wire.KEEP_ALIVE_COMMENT
        bad = beh.malformed_after
        if bad is not None and bad <= st.n_content:
            events[bad] += wire.MALFORMED_EVENT
        if beh.early_role:
            # The role goes out with the headers; _stream_step carries on from the first
            # content once the TTFT has passed.
            st.idx = 1
            head += wire.chunk(events[0]) if st.chunked else events[0]
        return head

    def _stream_step(self) -> None:
        """Write every event that is due now, then schedule the next one or end the stream."""
        self.timer = None
        st = self.stream
        if st is None or self.closed:
            return
        if self.write_paused:
            self.on_resume = self._stream_step
            return
        start = idx = st.idx
        n, cut, paced = st.n_content, st.cut, st.interval > 0
        # The role event rides with the first content; contents are then spaced by the
        # interval; finish, usage and [DONE] follow the last content at once.
        while idx < cut:
            idx += 1
            if paced and 1 <= idx - 1 < n:
                break
        st.idx = idx
        done = idx == len(st.events)
        if idx == start:
            pass  # early_role's role already went out and the stream is cut at once
        elif st.chunked:
            self.transport.write(b"".join([wire.chunk(e) for e in st.events[start:idx]])
                                 + (wire.CHUNK_END if done else b""))
        else:
            self.transport.write(b"".join(st.events[start:idx]))
        if done:
            self.sim.stats["streams_completed"] += 1
            self.finish(st.keep_alive)
        elif idx == cut:
            self._cut_stream(st)
        else:
            self.timer = self.loop.call_later(st.interval, self._stream_step)

    def _cut_stream(self, st: Stream) -> None:
        if st.drop:
            self.sim.stats["streams_dropped"] += 1
            self.drop()
        else:
            # Stays pending: connection_lost counts it as aborted when the client gives up.
            self.sim.stats["streams_stalled"] += 1


class Simulator:
    """Shared state of all connections: config, counters, and the request handlers."""

    def __init__(self, model: str = "sim-model", name: str = "sim", seed: int = 0,
                 api_key: str | None = None, **options) -> None:
        self.model = model
        # Set: every /v1 and Azure request must carry it, the way its API sends keys.
        self.api_key = api_key
        self.name = name
        self.seed = seed
        self.rng = random.Random(seed)
        startup = dict(BEHAVIOUR_DEFAULTS)
        for key, value in options.items():
            startup[key] = validate_option(key, value)
        self.startup = startup
        self.behaviour = Behaviour(dict(startup))
        self.stats = dict.fromkeys(STAT_KEYS, 0)
        self.last_headers: list = []
        self.last_path = ""          # of the last API request, query string included
        self.last_body = None
        self.last_body_text = ""     # the last /v1 body as sent (valid UTF-8 or not)
        self.last_continuation_prefix: str | None = None
        self.connections: set[SimProtocol] = set()
        self.stopping = False
        self.loop = None
        self.server = None
        self._ids = itertools.count(1)
        self._model_json = orjson.dumps(model)
        self._fingerprint = orjson.dumps("fp_sim_" + name)
        self.common_headers = b"server: llmedge-sim\r\nx-sim-name: %s\r\n" % name.encode("latin-1")
        self._models_body = orjson.dumps({"object": "list", "data": [
            {"id": model, "object": "model", "created": 0, "owned_by": "sim"}]})
        self._routes = {
            (b"POST", b"/v1/chat/completions"): self.chat,
            (b"POST", b"/v1/embeddings"): self.embeddings,
            (b"POST", b"/v1/messages"): self.messages,
            (b"POST", b"/v1/messages/count_tokens"): self.count_tokens,
            (b"POST", b"/v1/responses"): self.responses,
            (b"GET", b"/v1/models"): self.models,
            (b"GET", b"/_sim/stats"): self.sim_stats,
            (b"GET", b"/_sim/aws/credentials"): functools.partial(
                bedrock.container_credentials, self),
            (b"POST", b"/_sim/reset"): self.sim_reset,
            (b"GET", b"/_sim/config"): self.sim_config,
            (b"POST", b"/_sim/config"): self.sim_config,
        }

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0,
                    tls: ssl.SSLContext | None = None) -> tuple[str, int]:
        self.loop = asyncio.get_running_loop()
        self.server = await self.loop.create_server(lambda: SimProtocol(self), host, port,
                                                    reuse_address=True, backlog=1024, ssl=tls)
        return self.server.sockets[0].getsockname()[:2]

    async def stop(self) -> None:
        self.stopping = True
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.closed = True
            conn.transport.abort()
        if self.server is not None:
            await self.server.wait_closed()

    # -- config ----------------------------------------------------------------------------------

    def effective_config(self) -> dict:
        return {**self.behaviour.options, "model": self.model, "name": self.name,
                "seed": self.seed}

    def update_config(self, changes: dict) -> None:
        """Apply all changes or none: a bad key must not leave a half-changed config behind."""
        options = dict(self.behaviour.options)
        for key, value in changes.items():
            if key not in BEHAVIOUR_DEFAULTS:
                raise ConfigError("unknown option %r" % key)
            options[key] = self.startup[key] if value is None else validate_option(key, value)
        self.behaviour = Behaviour(options)

    # -- routing ---------------------------------------------------------------------------------

    def handle(self, conn: SimProtocol, req: Request) -> None:
        handler = self._routes.get((req.method, req.path))
        azure = req.path.startswith(AZURE_PREFIX)
        google = req.path.startswith(gemini.PREFIX)
        aws = req.path.startswith(bedrock.PREFIX)
        if azure or google or aws or req.path.startswith(b"/v1/"):
            self.stats["requests"] += 1
            self.last_headers = req.headers
            self.last_path = (req.path + (b"?" + req.query if req.query else b"")).decode(
                "latin-1")
            if not aws and not self._authorised(conn, req, azure, google):
                return   # (Bedrock's signature is checked by its handler)
        if azure and req.method == b"POST":
            self.azure(conn, req)
        elif google and req.method == b"POST":
            gemini.answer(self, conn, req)
        elif aws and req.method == b"POST":
            bedrock.answer(self, conn, req)
        elif handler is not None:
            handler(conn, req)
        elif any(path == req.path for _, path in self._routes):
            conn.send(req, 405, wire.error_body(405, "method %s not allowed on %s"
                                                % (req.method.decode(), req.path.decode())))
        else:
            conn.send(req, 404, wire.error_body(404, "unknown path %s"
                                                % req.path.decode("latin-1")))

    def _authorised(self, conn: SimProtocol, req: Request, azure: bool, google: bool) -> bool:
        """With an api_key, whether the request carries it as its API sends keys (Bearer;
        Azure's api-key; Gemini's x-goog-api-key; Anthropic's x-api-key, checked by its
        handler)."""
        if self.api_key is None or req.path.startswith(b"/v1/messages"):
            return True
        key = self.api_key.encode()
        name, expected = ((b"api-key", key) if azure else (b"x-goog-api-key", key) if google
                          else (b"authorization", b"Bearer " + key))
        if any(k.lower() == name and v == expected for k, v in req.headers):
            return True
        body = (gemini.error_body(401, "API key not valid. Please pass a valid API key.")
                if google else wire.error_body(401, "invalid API key (sent as %s)"
                                               % name.decode()))
        conn.send(req, 401, body)
        return False

    def _parse_body(self, req: Request) -> tuple[dict | None, str]:
        """(object, "") or (None, why); the parsed JSON is also remembered for /_sim/stats."""
        try:
            obj = orjson.loads(req.body)
        except orjson.JSONDecodeError:
            try:
                # Valid JSON orjson refuses (lone surrogates, numbers beyond a double), as
                # a real server's parser would take it.
                obj = json.loads(req.body, parse_int=_read_int)
            except (ValueError, RecursionError):
                self.last_body = None
                self.last_body_text = req.body.decode("utf-8", "replace")
                return None, "request body is not valid JSON"
        self.last_body = obj
        self.last_body_text = req.body.decode("utf-8", "replace")
        if not isinstance(obj, dict):
            return None, "request body must be a JSON object"
        return obj, ""

    def injected_status(self, beh: Behaviour) -> int | None:
        """The error status this request is to be answered with (``status``, or by
        ``error_rate``), counted; None: answer it. Every protocol's handler asks."""
        status = beh.status
        if status is None or status == 200:
            status = None
            if beh.error_rate > 0 and self.rng.random() < beh.error_rate:
                status = beh.error_status
        if status is not None:
            self.stats["errors_injected"] += 1
        return status

    def _injected_error(self, conn: SimProtocol, req: Request, beh: Behaviour) -> bool:
        status = self.injected_status(beh)
        if status is None:
            return False
        extra = b""
        if beh.retry_after is not None and status in (429, 503):
            extra = b"retry-after: %s\r\n" % wire.format_seconds(beh.retry_after)
        if beh.answer_body is not None:
            conn.send(req, status, beh.answer_body, extra, ctype=beh.answer_type,
                      framing=beh.framing)
        else:
            conn.send(req, status, wire.error_body(status, "simulated upstream error %d"
                                                   % status), extra, framing=beh.framing)
        return True

    def _foreign_answer(self, conn: SimProtocol, req: Request, beh: Behaviour) -> bool:
        """answer_body without an error status: a 200 that is not what was asked for."""
        if beh.answer_body is None:
            return False
        conn.send(req, 200, beh.answer_body, ctype=beh.answer_type, framing=beh.framing,
                  delay=beh.ttft)
        return True

    def _bad_request(self, conn, req, message: str, param: str | None = None) -> None:
        conn.send(req, 400, wire.error_body(400, message, param))

    # -- /v1 handlers ----------------------------------------------------------------------------

    def chat(self, conn: SimProtocol, req: Request) -> None:
        self.stats["chat"] += 1
        beh = self.behaviour
        obj, error = self._parse_body(req)
        if self._injected_error(conn, req, beh):
            return
        if obj is None:
            return self._bad_request(conn, req, error)
        if self._foreign_answer(conn, req, beh):
            return
        messages = obj.get("messages")
        if not isinstance(messages, list):
            return self._bad_request(conn, req, "'messages' is a required property "
                                     "and must be an array", "messages")
        model = obj.get("model")
        model_json = orjson.dumps(model) if isinstance(model, str) else self._model_json
        prompt_tokens = wire.estimate_prompt_tokens(messages)
        if beh.context_window is not None and prompt_tokens > beh.context_window:
            return self._context_exceeded(conn, req, beh, obj, prompt_tokens)
        frags = beh.fragments
        if beh.prefill and (obj.get("continue_final_message") is True
                            or obj.get("add_generation_prompt") is False):
            frags = self._continuation(messages, beh)
        layout = beh.layout
        if obj.get("stream") is True:
            opts = obj.get("stream_options")
            include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
            if layout == "compact":
                prefix = self._prefix(
                    b'data: {"id":"chatcmpl-sim%x","object":"chat.completion.chunk"',
                    model_json)
                events = frags.stream_events(prefix, prompt_tokens, include_usage)
            else:
                events = frags.stream_laid_out(self._head("chat.completion.chunk", model),
                                               prompt_tokens, include_usage, layout)
            conn.start_stream(req, events, beh, frags.completion_tokens)
        elif beh.stall_after == 0:
            pass  # leave the request unanswered: the connection stays busy until closed
        elif beh.drop_after == 0:
            conn.drop()
        else:
            if layout == "compact":
                prefix = self._prefix(b'{"id":"chatcmpl-sim%x","object":"chat.completion"',
                                      model_json)
                body = frags.completion_body(prefix, prompt_tokens)
            else:
                body = frags.completion_laid_out(self._head("chat.completion", model),
                                                 prompt_tokens, layout)
            delay = beh.nonstream_delay if frags is beh.fragments else beh.answer_delay(frags)
            conn.send(req, 200, body, delay=delay, framing=beh.framing)

    def messages(self, conn: SimProtocol, req: Request) -> None:
        anthropic_messages.answer(self, conn, req)

    def count_tokens(self, conn: SimProtocol, req: Request) -> None:
        anthropic_messages.count_tokens(self, conn, req)

    def responses(self, conn: SimProtocol, req: Request) -> None:
        responses.answer(self, conn, req)

    def azure(self, conn: SimProtocol, req: Request) -> None:
        """Azure OpenAI: ``/openai/deployments/{name}/chat/completions`` (or
        ``/embeddings``) with an ``api-version`` query parameter, answered as OpenAI is."""
        self.stats["azure"] += 1
        deployment, _, rest = req.path[len(AZURE_PREFIX):].partition(b"/")
        if not any(p.startswith(b"api-version=") and len(p) > 12
                   for p in req.query.split(b"&")):
            return conn.send(req, 404, wire.error_body(
                404, "Resource not found (the api-version query parameter is missing)"))
        handler = {b"chat/completions": self.chat, b"embeddings": self.embeddings}.get(rest)
        if not deployment or handler is None:
            return conn.send(req, 404, wire.error_body(404, "Resource not found"))
        handler(conn, req)

    def _context_exceeded(self, conn, req, beh: Behaviour, obj: dict, prompt_tokens: int) -> None:
        # At once, as a server refuses before it queues the prompt for prefill.
        self.stats["context_exceeded"] += 1
        budget = obj.get("max_completion_tokens")
        if budget is None:
            budget = obj.get("max_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool):
            budget = None
        conn.send(req, 400, wire.context_error_body(beh.context_error, beh.context_window,
                                                    prompt_tokens, budget),
                  framing=beh.framing)

    def _continuation(self, messages: list, beh: Behaviour) -> wire.ReplyFragments:
        """The fragments answering a request that asks to continue its last message."""
        last = messages[-1] if messages else None
        if not isinstance(last, dict) or last.get("role") != "assistant":
            return beh.fragments  # nothing to continue: an ordinary answer
        partial = wire.message_text(last.get("content"))
        self.stats["continuations"] += 1
        self.last_continuation_prefix = partial
        return beh.continuation_fragments(partial)

    def _prefix(self, head: bytes, model_json: bytes) -> bytes:
        return b'%s,"created":%d,"model":%s,"system_fingerprint":%s,' % (
            head % next(self._ids), int(time.time()), model_json, self._fingerprint)

    def _head(self, kind: str, model) -> dict:
        return {"id": "chatcmpl-sim%x" % next(self._ids), "object": kind,
                "created": int(time.time()),
                "model": model if isinstance(model, str) else self.model,
                "system_fingerprint": "fp_sim_" + self.name}

    def embeddings(self, conn: SimProtocol, req: Request) -> None:
        self.stats["embeddings"] += 1
        beh = self.behaviour
        obj, error = self._parse_body(req)
        if self._injected_error(conn, req, beh):
            return
        if obj is None:
            return self._bad_request(conn, req, error)
        if self._foreign_answer(conn, req, beh):
            return
        inputs = wire.embedding_inputs(obj.get("input"))
        if inputs is None:
            return self._bad_request(conn, req, "'input' must be a string or a non-empty "
                                     "array of strings", "input")
        model = obj.get("model")
        tokens = sum(max(1, len(t) // 4) for t in inputs)
        body = wire.laid_out({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": wire.embedding_vector(t)}
                     for i, t in enumerate(inputs)],
            "model": model if isinstance(model, str) else self.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }, beh.layout)
        conn.send(req, 200, body, delay=beh.ttft, framing=beh.framing)

    def models(self, conn: SimProtocol, req: Request) -> None:
        self.stats["models"] += 1
        conn.send(req, 200, self._models_body)

    # -- /_sim control ---------------------------------------------------------------------------

    def sim_stats(self, conn: SimProtocol, req: Request) -> None:
        headers: dict[str, str] = {}
        for name, value in self.last_headers:
            key = name.decode("latin-1").lower()
            value = value.decode("latin-1")
            headers[key] = headers[key] + ", " + value if key in headers else value
        stats = dict(self.stats)
        stats["active_connections"] = len(self.connections)
        # Bytes written but not yet taken by clients: shows whether a reader holds us back.
        stats["pending_write_bytes"] = sum(
            c.transport.get_write_buffer_size() for c in self.connections
            if c.transport is not None)
        stats["last_headers"] = headers
        stats["last_path"] = self.last_path
        stats["last_body"] = self.last_body
        stats["last_body_text"] = self.last_body_text
        stats["last_continuation_prefix"] = self.last_continuation_prefix
        try:
            body = orjson.dumps(stats)
        except TypeError:
            # A last body orjson cannot write (huge integers, lone surrogates): the standard
            # encoder writes them (infinity as the Infinity its decoder reads back).
            body = json.dumps(stats).encode()
        conn.send(req, 200, body)

    def _control_body(self, conn, req):
        if not req.body.strip():
            return {}
        try:
            obj = orjson.loads(req.body)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            self._bad_request(conn, req, "body must be a JSON object")
            return None
        return obj

    def sim_reset(self, conn: SimProtocol, req: Request) -> None:
        obj = self._control_body(conn, req)
        if obj is None:
            return
        # Literal zeroes, so counts mean "since the reset"; active_connections stays live.
        self.stats = dict.fromkeys(STAT_KEYS, 0)
        self.last_headers = []
        self.last_path = ""
        self.last_body = None
        self.last_body_text = ""
        self.last_continuation_prefix = None
        self.rng = random.Random(self.seed)
        if obj.get("config") is True:
            self.behaviour = Behaviour(dict(self.startup))
        conn.send(req, 200, orjson.dumps({"ok": True}))

    def sim_config(self, conn: SimProtocol, req: Request) -> None:
        if req.method == b"POST":
            obj = self._control_body(conn, req)
            if obj is None:
                return
            try:
                self.update_config(obj)
            except ConfigError as exc:
                return self._bad_request(conn, req, str(exc))
        conn.send(req, 200, orjson.dumps(self.effective_config()))


# -- command line --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m proxy.sim",
                                description="OpenAI-compatible upstream simulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--model", default="sim-model")
    p.add_argument("--name", default="sim")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--api-key", default=None)
    p.add_argument("--ttft-ms", type=float, default=0.0)
    p.add_argument("--tokens-per-s", type=float, default=0.0)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--reply", default=DEFAULT_REPLY)
    p.add_argument("--status", type=int, default=None)
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--error-status", type=int, default=500)
    p.add_argument("--retry-after", type=float, default=None)
    p.add_argument("--stall-after", type=int, default=None)
    p.add_argument("--drop-after", type=int, default=None)
    p.add_argument("--layout", default="compact", choices=wire.LAYOUTS)
    p.add_argument("--framing", default="length", choices=wire.FRAMINGS)
    p.add_argument("--answer-body", default=None)
    p.add_argument("--answer-type", default="text/html")
    p.add_argument("--early-role", action="store_true")
    p.add_argument("--continuation", default="prefill", choices=wire.CONTINUATIONS)
    p.add_argument("--context-window", type=int, default=None)
    p.add_argument("--context-error", default="openai", choices=wire.CONTEXT_ERRORS)
    p.add_argument("--malformed-after", type=int, default=None)
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--tls-cert", help="serve https with this certificate (PEM)")
    p.add_argument("--tls-key", help="the certificate's private key (PEM)")
    return p


async def serve(args: argparse.Namespace) -> None:
    options = {k: getattr(args, k) for k in BEHAVIOUR_DEFAULTS}
    sim = Simulator(model=args.model, name=args.name, seed=args.seed, api_key=args.api_key,
                    **options)
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    host, port = await sim.start(args.host, args.port, tls)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write("LISTENING %s:%d\n" % (host, port))
    sys.stdout.flush()
    log.info("simulator %s listening on %s:%d", args.name, host, port)
    await stop.wait()
    await sim.stop()


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        for key in BEHAVIOUR_DEFAULTS:
            validate_option(key, getattr(args, key))
    except ConfigError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    factory = uvloop.new_event_loop if uvloop is not None else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args))


if __name__ == "__main__":
    main()
