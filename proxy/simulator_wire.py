"""Pieces of the upstream simulator: behaviour config, status lines, error bodies, SSE fragments.

Kept apart from ``proxy.simulator`` so the server loop stays readable, and self-contained (no
imports from the proxy itself) so the simulator measures only its own cost when used as the
baseline in overhead benchmarks.
"""

from __future__ import annotations

import hashlib
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

DEFAULT_REPLY = "The quick brown fox jumps over the lazy dog while the simulator streams tokens."

BEHAVIOUR_DEFAULTS = {
    "ttft_ms": 0.0, "tokens_per_s": 0.0, "chunks": 8, "reply": DEFAULT_REPLY, "status": None,
    "error_rate": 0.0, "error_status": 500, "retry_after": None, "stall_after": None,
    "drop_after": None,
}
_INT_OPTIONS = {"chunks", "status", "error_status", "stall_after", "drop_after"}
NULLABLE = {"status", "retry_after", "stall_after", "drop_after"}


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
        return sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
    return 0


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


class ReplyFragments:
    """Everything about a chat reply that depends only on the config, serialised once.

    A per-request JSON prefix (id, created, model) is glued in front of these fragments, so a
    request costs a couple of small ``orjson.dumps`` calls and a join rather than a full encode.
    """

    __slots__ = ("pieces", "completion_tokens", "message_tail", "role_event", "content_events",
                 "finish_event")

    def __init__(self, reply: str, chunks: int) -> None:
        self.pieces = split_reply(reply, chunks)
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

    def stream_events(self, prefix: bytes, prompt_tokens: int, include_usage: bool) -> list[bytes]:
        """HTTP chunks of a whole stream: role, contents, finish, [usage], [DONE] + terminator.

        Index layout matters to the pacing code: 0 is the role event, 1..N the content events.
        """
        events = [chunk(prefix + self.role_event)]
        events.extend(chunk(prefix + ev) for ev in self.content_events)
        events.append(chunk(prefix + self.finish_event))
        if include_usage:
            events.append(chunk(b"%s\"choices\":[],\"usage\":%s}\n\n"
                                % (prefix, self.usage(prompt_tokens))))
        events.append(chunk(SSE_DONE) + CHUNK_END)
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
                 "error_rate", "error_status", "retry_after", "stall_after", "drop_after")

    def __init__(self, options: dict) -> None:
        self.options = options
        self.ttft = options["ttft_ms"] / 1000.0
        rate = options["tokens_per_s"]
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.fragments = ReplyFragments(options["reply"], options["chunks"])
        self.nonstream_delay = self.ttft + self.interval * max(0, options["chunks"] - 1)
        self.status = options["status"]
        self.error_rate = options["error_rate"]
        self.error_status = options["error_status"]
        self.retry_after = options["retry_after"]
        self.stall_after = options["stall_after"]
        self.drop_after = options["drop_after"]
