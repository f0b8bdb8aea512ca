"""Pieces of the upstream simulator: behaviour config, status lines, error bodies, SSE fragments.

Kept apart from ``proxy.sim.server`` so the server loop stays readable, and self-contained (no
imports from the proxy itself) so the simulator measures only its own cost when used as the
baseline in overhead benchmarks.
"""

from __future__ import annotations

import hashlib
import json
from http import HTTPStatus

import orjson

STATUS_LINES: dict[int, bytes] = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus
}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CLOSE = b"connection: close\r\n"
KEEP_ALIVE = b"connection: keep-alive\r\n"
JSON_TYPE = b"application/json"
CHUNK_END = b"0\r\n\r\n"
SSE_DONE = b"data: [DONE]\n\n"
# What early_role sends after the role event: servers that flush headers before the first token
# often add such a comment so idle-timeout middleboxes see bytes.
KEEP_ALIVE_COMMENT = b": keep-alive\n\n"
# What malformed_after slips into a stream: a data: line that is not JSON.
MALFORMED_EVENT = b"data: {not json\n\n"

DEFAULT_REPLY = "The quick brown fox jumps over the lazy dog while the simulator streams tokens."

BEHAVIOUR_DEFAULTS = {
    "ttft_ms": 0.0, "tokens_per_s": 0.0, "chunks": 8, "reply": DEFAULT_REPLY, "status": None,
    "error_rate": 0.0, "error_status": 500, "retry_after": None, "stall_after": None,
    "drop_after": None, "layout": "compact", "framing": "length", "answer_body": None,
    "answer_type": "text/html", "early_role": False, "continuation": "prefill",
    "context_window": None, "context_error": "openai", "malformed_after": None,
}
# How an answer's end is marked: length (Content-Length, or chunks for streams), close
# (Connection: close and the body up to EOF) or http10 (an HTTP/1.0 answer up to EOF).
FRAMINGS = ("length", "close", "http10")
# How answers are laid out as JSON: all valid, all seen from real servers. compact is what
# the fast path precomputes; spaced is Python's default separators; pretty is indented
# (in a stream, one event's JSON then spans several data: lines); reordered puts every
# object's keys in reverse order (usage before choices). Except compact, streams asked for
# usage carry "usage": null in every chunk but the last, as OpenAI's do.
LAYOUTS = ("compact", "spaced", "pretty", "reordered")
# prefill: a trailing assistant message marked for continuation is continued, as vLLM does
# with continue_final_message; none: the markers are ignored, as by a server that cannot.
CONTINUATIONS = ("prefill", "none")
# Whose words a context-length refusal uses: OpenAI's, vLLM's OpenAI server's or Anthropic's.
CONTEXT_ERRORS = ("openai", "vllm", "anthropic")
_INT_OPTIONS = {"chunks", "status", "error_status", "stall_after", "drop_after",
                "context_window", "malformed_after"}
_CHOICES = {"layout": LAYOUTS, "framing": FRAMINGS, "continuation": CONTINUATIONS,
            "context_error": CONTEXT_ERRORS}
NULLABLE = {"status", "retry_after", "stall_after", "drop_after", "answer_body",
            "context_window", "malformed_after"}


# What OpenAI itself answers with, so SDK exception mapping in clients behaves as in production.
_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", None),
    409: ("conflict_error", None),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d Unknown\r\n" % status
    return line


def error_body(status: int, message: str, param: str | None = None) -> bytes:
    """An OpenAI-shaped error object whose ``type`` matches the status class."""
    type_, code = _ERROR_TYPES.get(status, ("server_error" if status >= 500 else
                                            "invalid_request_error", None))
    if status == 400:
        code = None
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param,
                                   "code": code}})


def chunk(data: bytes) -> bytes:
    """Frame one piece of a chunked HTTP body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def split_reply(text: str, n: int) -> list[str]:
    """Cut ``text`` into exactly ``n`` contiguous pieces that join back to ``text``."""
    if n <= 0:
        return []
    size = len(text)
    return [text[i * size // n:(i + 1) * size // n] for i in range(n)]


def _text_len(content) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        # Multimodal message content: only text parts carry tokens worth estimating here.
        return sum(len(p["text"]) for p in content
                   if isinstance(p, dict) and isinstance(p.get("text"), str))
    return 0


def message_text(content) -> str:
    """The text of a message's content: a string, or the text parts of a list joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def continuation_pieces(pieces: list[str], done: int) -> list[str]:
    """What is left of ``pieces`` once their first ``done`` characters were already answered.

    A partial that ends on a piece boundary (what a stream cut after k chunks delivered) leaves
    exactly the remaining pieces, so the two answers join to the whole reply chunk for chunk;
    one ending mid-piece leaves that piece's tail first. Never empty: at least one piece.
    """
    rest = []
    pos = 0
    for piece in pieces:
        end = pos + len(piece)
        if end > done:
            rest.append(piece[max(0, done - pos):])
        pos = end
    return rest or [""]


def context_error_body(style: str, window: int, prompt_tokens: int,
                       max_tokens: int | None) -> bytes:
    """A 400 body refusing a prompt longer than ``window``, worded as ``style``'s server does."""
    if style == "anthropic":
        return orjson.dumps({"type": "error", "error": {
            "type": "invalid_request_error",
            "message": "prompt is too long: %d tokens > %d maximum" % (prompt_tokens, window)}})
    if style == "vllm":
        # vLLM's OpenAI server: its ErrorResponse nests an ErrorInfo whose code is the HTTP
        # status; the wording depends on whether the request set a completion budget.
        if max_tokens is None:
            message = ("This model's maximum context length is %d tokens. However, you "
                       "requested %d tokens in the messages, Please reduce the length of the "
                       "messages." % (window, prompt_tokens))
        else:
            message = ("This model's maximum context length is %d tokens. However, you "
                       "requested %d tokens (%d in the messages, %d in the completion). "
                       "Please reduce the length of the messages or completion."
                       % (window, prompt_tokens + max_tokens, prompt_tokens, max_tokens))
        return orjson.dumps({"error": {"message": message, "type": "BadRequestError",
                                       "param": None, "code": 400}})
    return orjson.dumps({"error": {
        "message": "This model's maximum context length is %d tokens. However, your messages "
                   "resulted in %d tokens. Please reduce the length of the messages."
                   % (window, prompt_tokens),
        "type": "invalid_request_error", "param": "messages",
        "code": "context_length_exceeded"}})


def estimate_prompt_tokens(messages) -> int:
    """A cheap, deterministic stand-in for tokenisation: ~4 characters per token."""
    total = 0
    for m in messages:
        if isinstance(m, dict):
            total += _text_len(m.get("content"))
    return max(1, total // 4)


def embedding_inputs(value) -> list[str] | None:
    """Normalise the ``input`` of an embeddings request; None when it is not usable."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return value
        # Token arrays (list[int] or list[list[int]]) are legal OpenAI input; hash their text form.
        if all(isinstance(v, (int, list)) and not isinstance(v, bool) for v in value):
            return [str(v) for v in value] if isinstance(value[0], list) else [str(value)]
    return None


def embedding_vector(text: str) -> list[float]:
    """Eight floats in [-1, 1) derived from the text, identical across runs and processes."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=32).digest()
    return [round(int.from_bytes(digest[i:i + 4], "little") / 2147483648.0 - 1.0, 6)
            for i in range(0, 32, 4)]


def format_seconds(value: float) -> bytes:
    """Retry-After as a bare number: whole seconds when integral, otherwise a short decimal."""
    return b"%g" % value


def _reversed_keys(value):
    if isinstance(value, dict):
        return {k: _reversed_keys(value[k]) for k in reversed(value)}
    if isinstance(value, list):
        return [_reversed_keys(v) for v in value]
    return value


def laid_out(doc: dict, layout: str) -> bytes:
    """``doc`` as JSON in one of LAYOUTS."""
    if layout == "spaced":
        return json.dumps(doc, ensure_ascii=False).encode()
    if layout == "pretty":
        return json.dumps(doc, indent=2, ensure_ascii=False).encode()
    if layout == "reordered":
        return json.dumps(_reversed_keys(doc), ensure_ascii=False, separators=(",", ":")).encode()
    return orjson.dumps(doc)


def sse_event(payload: bytes) -> bytes:
    """One SSE event; a payload of several lines takes a data: line each."""
    return b"".join(b"data: %s\n" % line for line in payload.split(b"\n")) + b"\n"


class ReplyFragments:
    """Everything about a chat reply that depends only on the config, serialised once.

    A per-request JSON prefix (id, created, model) is glued in front of these fragments, so a
    request costs a couple of small ``orjson.dumps`` calls and a join rather than a full encode.
    """

    __slots__ = ("pieces", "completion_tokens", "message_tail", "role_event", "content_events",
                 "finish_event")

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces
        self.completion_tokens = len(self.pieces)
        content = orjson.dumps("".join(self.pieces))
        self.message_tail = (b'"choices":[{"index":0,"message":{"role":"assistant","content":'
                             + content + b',"refusal":null},"logprobs":null,'
                             b'"finish_reason":"stop"}],"usage":')
        self.role_event = (b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
                           b'"logprobs":null,"finish_reason":null}]}\n\n')
        self.content_events = [
            b'"choices":[{"index":0,"delta":{"content":' + orjson.dumps(p)
            + b'},"logprobs":null,"finish_reason":null}]}\n\n' for p in self.pieces]
        self.finish_event = (b'"choices":[{"index":0,"delta":{},"logprobs":null,'
                             b'"finish_reason":"stop"}]}\n\n')

    def usage(self, prompt_tokens: int) -> bytes:
        c = self.completion_tokens
        return b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}' % (
            prompt_tokens, c, prompt_tokens + c)

    def completion_body(self, prefix: bytes, prompt_tokens: int) -> bytes:
        return b"".join((prefix, self.message_tail, self.usage(prompt_tokens), b"}"))

    def usage_doc(self, prompt_tokens: int) -> dict:
        c = self.completion_tokens
        return {"prompt_tokens": prompt_tokens, "completion_tokens": c,
                "total_tokens": prompt_tokens + c}

    def completion_laid_out(self, head: dict, prompt_tokens: int, layout: str) -> bytes:
        """completion_body for a layout other than compact (slower: encoded per request)."""
        return laid_out({**head, "choices": [{
            "index": 0, "message": {"role": "assistant", "content": "".join(self.pieces),
                                    "refusal": None},
            "logprobs": None, "finish_reason": "stop"}],
            "usage": self.usage_doc(prompt_tokens)}, layout)

    def stream_laid_out(self, head: dict, prompt_tokens: int, include_usage: bool,
                        layout: str) -> list[bytes]:
        """stream_events for a layout other than compact, with the same index layout."""
        none = {"usage": None} if include_usage else {}
        deltas = [{"role": "assistant", "content": ""}] + [{"content": p} for p in self.pieces]
        chunks = [{**head, "choices": [{"index": 0, "delta": d, "logprobs": None,
                                        "finish_reason": None}], **none} for d in deltas]
        chunks.append({**head, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                            "finish_reason": "stop"}], **none})
        if include_usage:
            chunks.append({**head, "choices": [], "usage": self.usage_doc(prompt_tokens)})
        events = [sse_event(laid_out(c, layout)) for c in chunks]
        events.append(SSE_DONE)
        return events

    def stream_events(self, prefix: bytes, prompt_tokens: int, include_usage: bool) -> list[bytes]:
        """The SSE events of a whole stream: role, contents, finish, [usage], [DONE].

        Index layout matters to the pacing code: 0 is the role event, 1..N the content events.
        """
        events = [prefix + self.role_event]
        events.extend(prefix + ev for ev in self.content_events)
        events.append(prefix + self.finish_event)
        if include_usage:
            events.append(b"%s\"choices\":[],\"usage\":%s}\n\n"
                          % (prefix, self.usage(prompt_tokens)))
        events.append(SSE_DONE)
        return events


class ConfigError(ValueError):
    pass


def validate_option(key: str, value):
    """Check one behaviour option; returns the value normalised (ints as int, floats as float)."""
    if key not in BEHAVIOUR_DEFAULTS:
        raise ConfigError("unknown option %r" % key)
    if value is None:
        if key in NULLABLE:
            return None
        raise ConfigError("%s cannot be null here" % key)
    if key == "reply":
        if not isinstance(value, str):
            raise ConfigError("reply must be a string")
        return value
    allowed = _CHOICES.get(key)
    if allowed is not None:
        if value not in allowed:
            raise ConfigError("%s must be one of %s" % (key, ", ".join(allowed)))
        return value
    if key == "early_role":
        if not isinstance(value, bool):
            raise ConfigError("early_role must be true or false")
        return value
    if key in ("answer_body", "answer_type"):
        # answer_body: what chat and embeddings requests get instead of an answer (with
        # --status, or 200), e.g. a load balancer's HTML page; answer_type its content type.
        if not isinstance(value, str) or (key == "answer_type" and not value.isprintable()):
            raise ConfigError("%s must be a string" % key)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError("%s must be a non-negative number" % key)
    if key in _INT_OPTIONS:
        if value != int(value):
            raise ConfigError("%s must be an integer" % key)
        value = int(value)
        if key in ("status", "error_status") and not 100 <= value <= 599:
            raise ConfigError("%s must be an HTTP status code" % key)
        return value
    if key == "error_rate" and value > 1:
        raise ConfigError("error_rate must be between 0 and 1")
    return float(value)


class Behaviour:
    """An immutable snapshot of the config plus everything derived from it.

    Requests capture the snapshot current when they start, so a config change never alters a
    stream halfway through.
    """

    __slots__ = ("options", "ttft", "interval", "nonstream_delay", "fragments", "status",
                 "error_rate", "error_status", "retry_after", "stall_after", "drop_after",
                 "layout", "framing", "answer_body", "answer_type", "reply", "early_role",
                 "prefill", "context_window", "context_error", "malformed_after",
                 "stream_tweaks")

    def __init__(self, options: dict) -> None:
        self.options = options
        self.ttft = options["ttft_ms"] / 1000.0
        rate = options["tokens_per_s"]
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.reply = options["reply"]
        self.fragments = ReplyFragments(split_reply(self.reply, options["chunks"]))
        self.nonstream_delay = self.ttft + self.interval * max(0, options["chunks"] - 1)
        self.status = options["status"]
        self.error_rate = options["error_rate"]
        self.error_status = options["error_status"]
        self.retry_after = options["retry_after"]
        self.stall_after = options["stall_after"]
        self.drop_after = options["drop_after"]
        self.layout = options["layout"]
        self.framing = options["framing"]
        body = options["answer_body"]
        self.answer_body = body.encode() if body is not None else None
        self.answer_type = options["answer_type"].encode()
        self.early_role = options["early_role"]
        self.prefill = options["continuation"] == "prefill"
        self.context_window = options["context_window"]
        self.context_error = options["context_error"]
        self.malformed_after = options["malformed_after"]
        # One test on the streaming fast path for everything that reshapes a stream's events.
        self.stream_tweaks = self.early_role or self.malformed_after is not None

    def continuation_fragments(self, partial: str) -> ReplyFragments:
        """The answer to a request continuing ``partial``: the reply's rest, or all of it."""
        if partial and self.reply.startswith(partial):
            return ReplyFragments(continuation_pieces(self.fragments.pieces, len(partial)))
        return self.fragments

    def answer_delay(self, fragments: ReplyFragments) -> float:
        """How long a non-streamed answer waits: as long as its stream's last chunk would."""
        return self.ttft + self.interval * max(0, fragments.completion_tokens - 1)
