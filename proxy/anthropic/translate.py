"""Anthropic Messages <-> OpenAI Chat Completions, both ways, as plain dicts.

The request path speaks Chat Completions; a ``/v1/messages`` request is translated into
one on the way in, and its answer (whole, streamed or an error) back into the Messages
API's shapes on the way out. Fields with no Chat Completions counterpart are refused with
a clear error rather than silently dropped, except those that only tune the provider
(``top_k``, ``thinking``, ``service_tier``), which an OpenAI-compatible upstream has no use
for (listed in the README).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import BadRequest

# Anthropic's name for each HTTP status (its error ``type``), for llmedge's own errors and
# upstream answers alike.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}
_IGNORED = ("top_k", "thinking", "service_tier", "container", "mcp_servers")
_KNOWN = {"model", "messages", "system", "max_tokens", "stop_sequences", "temperature",
          "top_p", "metadata", "tools", "tool_choice", "stream", *_IGNORED}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"type": "error",
                         "error": {"type": error_type(status), "message": message}})


# === the request ===

def _bad(message: str, param: str) -> BadRequest:
    return BadRequest(message, param=param)


def _text_of(blocks: Any, where: str) -> str:
    """A system prompt or a tool result: a string, or text blocks joined."""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise _bad("%s: expected a string or a list of text blocks" % where, where)
    parts = []
    for i, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") != "text" \
                or not isinstance(block.get("text"), str):
            raise _bad("%s[%d]: expected a text block" % (where, i), where)
        parts.append(block["text"])
    return "\n\n".join(parts)


def _image(block: dict, where: str) -> dict:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _bad("%s.source: expected an object" % where, where)
    if source.get("type") == "base64" and isinstance(source.get("data"), str) \
            and isinstance(source.get("media_type"), str):
        url = "data:%s;base64,%s" % (source["media_type"], source["data"])
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise _bad("%s.source: expected a base64 or url image source" % where, where)
    return {"type": "image_url", "image_url": {"url": url}}


def _message(message: Any, i: int) -> list[dict]:
    """One Messages turn as Chat Completions messages: a user turn's tool results become
    ``tool`` messages of their own, ahead of what else the turn says."""
    where = "messages[%d]" % i
    if not isinstance(message, dict):
        raise _bad("%s: expected an object" % where, "messages")
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise _bad("%s.role: expected 'user' or 'assistant', got %r" % (where, role),
                   "messages")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _bad("%s.content: expected a string or a list of blocks" % where, "messages")
    out: list[dict] = []
    parts: list[dict] = []
    tool_calls: list[dict] = []
    for j, block in enumerate(content):
        at = "%s.content[%d]" % (where, j)
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image" and role == "user":
            parts.append(_image(block, at))
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise _bad("%s: a tool_use block needs an id and a name" % at, "messages")
            tool_calls.append({"id": block["id"], "type": "function", "function": {
                "name": block["name"],
                "arguments": orjson.dumps(block.get("input") or {}).decode()}})
        elif kind == "tool_result" and role == "user":
            if not isinstance(block.get("tool_use_id"), str):
                raise _bad("%s: a tool_result block needs a tool_use_id" % at, "messages")
            text = _text_of(block.get("content", ""), at + ".content")
            if block.get("is_error"):
                text = "Error: " + text
            out.append({"role": "tool", "tool_call_id": block["tool_use_id"],
                        "content": text})
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue   # the model's own reasoning: nothing an OpenAI upstream takes back
        else:
            raise _bad("%s: unsupported block %r in a %s turn" % (at, kind, role), "messages")
    if parts or tool_calls or not out:
        turn: dict[str, Any] = {"role": role}
        if all(p["type"] == "text" for p in parts):
            turn["content"] = "".join(p["text"] for p in parts) if parts else (
                None if tool_calls else "")
        else:
            turn["content"] = parts
        if tool_calls:
            turn["tool_calls"] = tool_calls
        out.append(turn)
    return out


def _tools(tools: Any) -> list[dict]:
    if not isinstance(tools, list):
        raise _bad("tools: expected a list", "tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise _bad("tools[%d]: a tool needs a name" % i, "tools")
        if tool.get("type") not in (None, "custom"):
            raise _bad("tools[%d]: server tools (%s) are not supported" % (i, tool["type"]),
                       "tools")
        function: dict[str, Any] = {"name": tool["name"],
                                    "parameters": tool.get("input_schema") or {
                                        "type": "object", "properties": {}}}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> tuple[Any, bool | None]:
    """The Chat Completions ``tool_choice`` and ``parallel_tool_calls`` (None: unsaid)."""
    if not isinstance(choice, dict):
        raise _bad("tool_choice: expected an object", "tool_choice")
    kind = choice.get("type")
    parallel = False if choice.get("disable_parallel_tool_use") else None
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", None
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    raise _bad("tool_choice: unknown choice %r" % kind, "tool_choice")


def chat_request(doc: Any) -> dict:
    """A Messages request body (decoded JSON) as a Chat Completions one; BadRequest when it
    is not a valid Messages request."""
    if not isinstance(doc, dict):
        raise _bad("the request body must be a JSON object", "body")
    unknown = sorted(set(doc) - _KNOWN)
    if unknown:
        raise _bad("%s: unknown field" % unknown[0], unknown[0])
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model: a model (route or deployment) is required", "model")
    max_tokens = doc.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _bad("max_tokens: an integer >= 1 is required", "max_tokens")
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: at least one message is required", "messages")
    out: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
    chat: list[dict] = []
    if doc.get("system") is not None:
        chat.append({"role": "system", "content": _text_of(doc["system"], "system")})
    for i, message in enumerate(messages):
        chat.extend(_message(message, i))
    out["messages"] = chat
    for name in ("temperature", "top_p"):
        value = doc.get(name)
        if value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise _bad("%s: expected a number" % name, name)
            out[name] = value
    stops = doc.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad("stop_sequences: expected a list of strings", "stop_sequences")
        if stops:
            out["stop"] = stops
    metadata = doc.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _bad("metadata: expected an object", "metadata")
        if isinstance(metadata.get("user_id"), str):
            out["user"] = metadata["user_id"]
    if doc.get("tools"):
        out["tools"] = _tools(doc["tools"])
    if doc.get("tool_choice") is not None:
        choice, parallel = _tool_choice(doc["tool_choice"])
        if "tools" in out or choice == "none":
            out["tool_choice"] = choice
        if parallel is not None and "tools" in out:
            out["parallel_tool_calls"] = parallel
    stream = doc.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream: expected true or false", "stream")
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


# === the answer ===

def usage(openai_usage: Any) -> dict:
    usage_doc = openai_usage if isinstance(openai_usage, dict) else {}
    out = {"input_tokens": int(usage_doc.get("prompt_tokens") or 0),
           "output_tokens": int(usage_doc.get("completion_tokens") or 0)}
    details = usage_doc.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if cached:
        # Anthropic counts cache reads apart from the input tokens.
        out["cache_read_input_tokens"] = int(cached)
        out["input_tokens"] = max(0, out["input_tokens"] - int(cached))
    return out


def _arguments(text: Any) -> Any:
    try:
        return orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return {"_raw_arguments": text}   # what the model sent, not a guess at it


def message(completion: Any, model: str, message_id: str) -> dict:
    """A Chat Completions answer (decoded JSON) as a Messages ``message``."""
    choice = (completion.get("choices") or [{}])[0] if isinstance(completion, dict) else {}
    said = choice.get("message") or {}
    content: list[dict] = []
    if said.get("content"):
        content.append({"type": "text", "text": said["content"]})
    for call in said.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or "",
                        "name": function.get("name") or "",
                        "input": _arguments(function.get("arguments"))})
    return {"id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": content,
            "stop_reason": STOP_REASONS.get(choice.get("finish_reason"), "end_turn"),
            "stop_sequence": None, "usage": usage(completion.get("usage"))}


def upstream_error_message(body: bytes) -> str:
    """The message of an OpenAI-shaped error body, or the body itself, shortened."""
    try:
        doc = orjson.loads(body)
        error = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
    except orjson.JSONDecodeError:
        pass
    return body[:500].decode("utf-8", "replace") or "the upstream answered with an error"


# The events of every stream, written from templates rather than built as dicts.
_TEXT_DELTA = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
               b'"delta":{"type":"text_delta","text":%s}}\n\n')
_TEXT_START = (b'event: content_block_start\ndata: {"type":"content_block_start","index":%d,'
               b'"content_block":{"type":"text","text":""}}\n\n')
_BLOCK_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'
_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def sse(kind: str, data: dict) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps(data))


class StreamTranslator:
    """Chat Completions chunks in, Messages stream events out, in the Messages order:
    ``message_start`` at once, each content block opened, filled and closed in turn, then
    ``message_delta`` (stop reason, usage) and ``message_stop``."""

    def __init__(self, model: str, message_id: str) -> None:
        self.model = model
        self.message_id = message_id
        self.index = -1              # of the open content block
        self.open: str | None = None  # "text" or the open tool call's upstream index
        self.stop_reason = "end_turn"
        self.usage: dict = {"input_tokens": 0, "output_tokens": 0}
        self.ended = False

    def start(self) -> bytes:
        return sse("message_start", {"type": "message_start", "message": {
            "id": self.message_id, "type": "message", "role": "assistant",
            "model": self.model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": dict(self.usage)}}) + _PING

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return _BLOCK_STOP % self.index

    def _open(self, key: str, block: dict) -> bytes:
        out = self._close()
        self.index += 1
        self.open = key
        if block.get("type") == "text":
            return out + _TEXT_START % self.index
        return out + sse("content_block_start", {"type": "content_block_start",
                                                 "index": self.index, "content_block": block})

    def chunk(self, doc: Any) -> bytes:
        """The events for one Chat Completions chunk (decoded JSON)."""
        if not isinstance(doc, dict):
            return b""
        out = b""
        if doc.get("usage"):
            self.usage = usage(doc["usage"])
        for choice in doc.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self.open != "text":
                    out += self._open("text", {"type": "text", "text": ""})
                # The event of nearly every chunk, written without building it as a dict.
                out += _TEXT_DELTA % (self.index, orjson.dumps(text))
            for call in delta.get("tool_calls") or ():
                key = "tool:%s" % call.get("index", 0)
                function = call.get("function") or {}
                if self.open != key:
                    out += self._open(key, {"type": "tool_use", "id": call.get("id") or "",
                                            "name": function.get("name") or "", "input": {}})
                if function.get("arguments"):
                    out += sse("content_block_delta", {
                        "type": "content_block_delta", "index": self.index,
                        "delta": {"type": "input_json_delta",
                                  "partial_json": function["arguments"]}})
            if choice.get("finish_reason"):
                self.stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")
        return out

    def end(self) -> bytes:
        if self.ended:
            return b""
        self.ended = True
        return self._close() + sse("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
            "usage": self.usage}) + _MESSAGE_STOP

    def error(self, status: int, message: str) -> bytes:
        self.ended = True
        return sse("error", {"type": "error", "error": {"type": error_type(status),
                                                         "message": message}})
