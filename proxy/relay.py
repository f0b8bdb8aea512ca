"""SseRelay: an upstream's SSE chat stream, relayed to the client event by event.

Whole events only: bytes of an event not yet ended wait for the rest (bounded). Until the
first event that carries content (text, a tool call, a refusal, reasoning, a finish reason,
``[DONE]``), events are held back — a role-only opening, empty deltas, comments — so that a
failure before the first token still moves to another candidate without the client having
seen anything; the response head goes out with the first content. An error event in that
opening is the upstream failing, not an answer. After the first content the relay does no
parsing at all: substring tests find the usage event (taken out when llmedge asked for it)
and the closing ``[DONE]``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import msgspec

from .accounting import USAGE_KEY, event_data, has_usage, take_usage
from .caching import StreamRecording
from .errors import UpstreamStreamError
from .responder import EVENT_STREAM
from .upstream.conn import ResponseHead, UpstreamConn

# A partial SSE event held back while waiting for its end is bounded: past this the
# upstream is not speaking SSE and the bytes are passed on as they are.
MAX_PENDING_EVENT = 1024 * 1024
# The events sent to the client, kept so that a cut answer can be continued elsewhere; past
# this much the answer is too long to hand to another model as a prefill.
MAX_TRANSCRIPT = 4 * 1024 * 1024

_DONE_ENDS = (b"[DONE]\n\n", b"[DONE]\r\n\r\n")
_FINISHED = re.compile(rb'"finish_reason"[ \t\r\n]*:[ \t\r\n]*"')
# A delta's text that is not empty (a quote after the opening one would end it at once).
_TEXT = re.compile(rb'"content"[ \t\r\n]*:[ \t\r\n]*"[^"]')


def ends_with_done(data: bytes) -> bool:
    """Whether the last SSE event in ``data`` is the ``[DONE]`` that closes a chat stream
    (a ``[DONE]`` inside a JSON string is not)."""
    last = data.rstrip().rpartition(b"\n")[2].rstrip()
    return last in (b"data: [DONE]", b"data:[DONE]")


class _Delta(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[msgspec.Raw] | None = None
    function_call: dict | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Opening(msgspec.Struct):
    choices: list[_Choice] | None = None
    error: dict | str | None = None


_opening_decoder = msgspec.json.Decoder(_Opening)

EMPTY, CONTENT, ERROR = 0, 1, 2


def opening_kind(event: bytes) -> tuple[int, str]:
    """What one event of a stream's opening is: EMPTY (nothing the client needs yet),
    CONTENT, or ERROR (with its message)."""
    if _TEXT.search(event) is not None:
        return CONTENT, ""    # the usual first token, told without decoding
    if (b'"content":""' in event and b'"finish_reason":null' in event
            and b'"tool_calls"' not in event and b'"refusal":"' not in event
            and b'"reasoning' not in event and b'"function_call"' not in event):
        return EMPTY, ""      # the usual role-only opening, told without decoding
    data = event_data(event)
    if not data:
        return EMPTY, ""      # a comment, or only event:/id:/retry: lines
    if data.strip() == b"[DONE]":
        return CONTENT, ""
    try:
        chunk = _opening_decoder.decode(data)
    except (msgspec.MsgspecError, RecursionError):
        return CONTENT, ""    # not ours to judge: passed on as it came, as ever
    if chunk.error is not None:
        error = chunk.error
        message = error.get("message") if isinstance(error, dict) else error
        return ERROR, message if isinstance(message, str) else str(error)[:200]
    for choice in chunk.choices or ():
        if choice.finish_reason is not None:
            return CONTENT, ""
        delta = choice.delta
        if delta is not None and (delta.content or delta.refusal or delta.reasoning_content
                                  or delta.reasoning or delta.tool_calls
                                  or delta.function_call):
            return CONTENT, ""
    return EMPTY, ""


class SseRelay:
    """Forwards whole SSE events from the upstream to the client as they arrive."""

    __slots__ = ("answer", "conn", "head", "pending", "committed", "committed_at",
                 "recording", "done", "held", "on_commit", "transform", "last", "previous")

    def __init__(self, answer, conn: UpstreamConn, head: ResponseHead,
                 recording: StreamRecording | None = None,
                 on_commit: Callable[[], None] | None = None,
                 transform: Callable[[bytes], bytes] | None = None) -> None:
        self.answer = answer
        self.conn = conn
        self.head = head
        self.pending = b""
        self.committed = False
        self.committed_at = 0.0
        self.recording = recording      # the cache's copy of the stream, when it stores it
        self.done = False               # the stream's closing "data: [DONE]" went out
        self.held: list[bytes] = []     # opening events without content, not yet sent
        self.on_commit = on_commit      # the first content went out
        # Continuing an answer begun elsewhere: its events are rewritten into that stream.
        self.transform = transform
        self.last = self.previous = b""  # the last two writes: a finish_reason in them?

    def feed(self, data: bytes) -> None:
        if self.recording is not None:
            self.recording.add(data)
        if self.pending:
            data = self.pending + data
            self.pending = b""
        if not data.endswith(b"\n\n"):
            lf = data.rfind(b"\n\n")
            crlf = data.rfind(b"\r\n\r\n")
            cut = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
            if cut:
                self.pending = data[cut:]
                data = data[:cut]
            elif len(data) <= MAX_PENDING_EVENT:
                self.pending = data   # no event ends here yet
                return
            # else: past the bound without an event's end, passed on as it is
        answer = self.answer
        # One substring test for the chunks without usage (nearly all): no call.
        if USAGE_KEY in data and (b'"usage":{' in data or has_usage(data)):
            data, usage = take_usage(data, answer.strip_usage)
            if usage is not None:
                answer.usage = usage
            if not data:
                return
        if not self.committed:
            data = self._opening(data)
            if not data:
                return
            self.commit()
        self.write(data)
        if data.endswith(_DONE_ENDS) and ends_with_done(data):
            # The client has the whole answer: however the upstream's connection ends
            # now, and even if the client leaves before it does, this one succeeded.
            self.done = answer.complete = True

    def write(self, data: bytes) -> None:
        if self.transform is not None:
            data = self.transform(data)
            if not data:
                return
        answer = self.answer
        answer.exchange.write(data)
        self.previous, self.last = self.last, data
        transcript = answer.transcript
        if transcript is not None:
            # What the client was sent, kept so that a cut answer can be continued elsewhere.
            answer.transcript_bytes += len(data)
            if answer.transcript_bytes > MAX_TRANSCRIPT:
                answer.transcript = None
            else:
                transcript.append(data)

    def _opening(self, data: bytes) -> bytes:
        """Before the first content: hold events without it; return what may go out now
        (the held events and everything from the first content on), or b"". An error event
        fails the attempt, before anything reached the client. Only the opening events are
        looked at: the first content usually comes in the first or second."""
        if len(data) > MAX_PENDING_EVENT:
            return b"".join(self.held) + data   # not SSE as we know it: as it came
        position, size = 0, len(data)
        while position < size:
            end, after = _next_event(data, position)
            kind, message = opening_kind(data[position:end])
            if kind == CONTENT:
                out = b"".join(self.held) + data[position:] if self.held else data[position:]
                self.held = []
                return out
            if kind == ERROR:
                self.conn.fail(UpstreamStreamError(
                    "upstream sent an error before any content: %s" % message[:300]))
                return b""
            self.held.append(data[position:after])
            position = after
        return b""

    def commit(self) -> None:
        self.committed = True
        self.committed_at = time.monotonic()
        answer = self.answer
        ex = answer.exchange
        if not ex.started:   # else: continuing a stream the client is already reading
            answer.first_event_at = self.committed_at
            answer.status = self.head.status
            ex.start_stream(self.head.status, EVENT_STREAM, answer.response_headers())
        if self.on_commit is not None:
            self.on_commit()
        # Couple flow control: a client that cannot keep up stops us reading upstream.
        conn = self.conn
        ex.on_pause = conn.pause_reading
        ex.on_resume = conn.resume_reading
        if ex.client_paused:
            conn.pause_reading()

    @property
    def finished(self) -> bool:
        """A finish reason went out lately: the answer ended, even if no [DONE] follows."""
        return bool(_FINISHED.search(self.previous) or _FINISHED.search(self.last))

    def settle(self) -> None:
        """The upstream's body has ended: a [DONE] left without its blank line (the body's
        very end) still closes the stream, and goes out with the blank line."""
        pending = self.pending
        if pending and not self.done and ends_with_done(pending):
            self.pending = b""
            if not self.committed:
                self.commit()
            self.write(pending.rstrip(b"\r\n") + b"\n\n")
            self.done = self.answer.complete = True

    def finish(self) -> None:
        if self.pending:
            if not self.committed:
                self.commit()
            self.write(self.pending)
            self.pending = b""
        if not self.committed:
            self.commit()
        self.answer.exchange.end_stream()


def _next_event(data: bytes, position: int) -> tuple[int, int]:
    """(where the event starting at ``position`` ends, where the next one starts); ``data``
    holds whole events only."""
    lf = data.find(b"\n\n", position)
    crlf = data.find(b"\r\n\r\n", position)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, crlf + 4
    if lf >= 0:
        return lf, lf + 2
    return len(data), len(data)
