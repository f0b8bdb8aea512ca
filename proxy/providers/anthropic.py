"""``provider: anthropic``: Anthropic's native Messages API behind the Chat Completions path.

Requests go to ``{base_url}/messages`` with ``x-api-key`` and ``anthropic-version``; system
messages become ``system``, tool results the user turns Anthropic wants them in, and turns
of one role in a row are merged (the API requires the roles to alternate). Answers come
back as Chat Completions: text and ``tool_use`` blocks as content and ``tool_calls``,
``thinking`` as ``reasoning_content``, stop reasons and usage (cache reads and writes
counted in the prompt, reads as ``cached_tokens``) mapped. A 529 (overloaded) counts as a
503. Error bodies are already ``{"error": {"type", "message"}}``, which the client gets.

Chat Completions fields with no Messages counterpart: ``n`` > 1, ``logprobs`` and a JSON
``response_format`` make the deployment ``Untranslatable`` for the request (another
candidate may take it); the sampling hints ``seed``, ``frequency_penalty``,
``presence_penalty`` and ``logit_bias`` are not sent (listed in the README).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from ..passthrough import COUNT_TOKENS_PATH
from .base import Adapter, StreamTranslator
from .chat import ChatReader, add_turn, Image, max_tokens, stop_sequences
from .sse import NOT_JSON_EVENT, EventSplitter, error_event

DEFAULT_VERSION = "2023-06-01"
# Anthropic requires max_tokens; Chat Completions clients usually leave it out.
DEFAULT_MAX_TOKENS = 4096
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "tool_use": "tool_calls", "refusal": "content_filter",
                  "pause_turn": "stop", "model_context_window_exceeded": "length"}
_NOT_SENT = ("seed", "frequency_penalty", "presence_penalty", "logit_bias", "stream_options",
             "service_tier", "store", "prediction", "modalities", "audio",
             "reasoning_effort", "web_search_options", "metadata",
             # A last assistant turn is continued by Anthropic without being asked.
             "continue_final_message", "add_generation_prompt")
_PASSED = ("temperature", "top_p", "top_k")
_OWN = {"model", "messages", "max_tokens", "max_completion_tokens", "stop", "user", "tools",
        "tool_choice", "parallel_tool_calls", "stream", "n", "logprobs", "top_logprobs",
        "response_format", *_NOT_SENT, *_PASSED}


_read = ChatReader("anthropic")


def _image(image: Image) -> dict:
    if image.data is None:
        return {"type": "image", "source": {"type": "url", "url": image.url}}
    return {"type": "image", "source": {"type": "base64", "media_type": image.media_type,
                                        "data": image.data}}


def _blocks(content: Any, where: str) -> list[dict]:
    return [{"type": "text", "text": part} if isinstance(part, str) else _image(part)
            for part in _read.parts(content, where)]


def _turns(messages: Any) -> tuple[list[str], list[dict]]:
    """(system texts, Messages turns) of Chat Completions messages."""
    if not isinstance(messages, list) or not messages:
        raise _read.refuse("messages: at least one message is required")
    system: list[str] = []
    turns: list[dict] = []
    for i, message in enumerate(messages):
        where = "messages[%d]" % i
        if not isinstance(message, dict):
            raise _read.refuse("%s: expected an object" % where)
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.append(_read.text(content, where + ".content"))
            continue
        if role == "tool":
            blocks = [{"type": "tool_result", "tool_use_id": str(message.get("tool_call_id")
                                                                 or ""),
                       "content": _read.text(content, where + ".content")}]
            role = "user"
        elif role == "user":
            blocks = _blocks(content, where + ".content")
        elif role == "assistant":
            blocks = _blocks(content, where + ".content")
            for j, call in enumerate(message.get("tool_calls") or ()):
                call_id, name, arguments = _read.call(call, "%s.tool_calls[%d]" % (where, j))
                blocks.append({"type": "tool_use", "id": call_id, "name": name,
                               "input": arguments})
        else:
            raise _read.refuse("%s.role: %r has no Messages counterpart" % (where, role))
        add_turn(turns, role, blocks, "content")
    for turn in turns:
        if not turn["content"]:
            # The API refuses empty turns; an empty message said nothing.
            turn["content"] = [{"type": "text", "text": ""}] if turn["role"] == "user" else []
    turns = [t for t in turns if t["content"]]
    if not turns:
        raise _read.refuse("messages: only system messages; Anthropic needs a user turn")
    return system, turns


def _tools(tools: Any) -> list[dict]:
    out = []
    for function in _read.functions(tools):
        entry: dict[str, Any] = {"name": function.name, "input_schema": function.parameters
                                 or {"type": "object", "properties": {}}}
        if function.description is not None:
            entry["description"] = function.description
        out.append(entry)
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict | None:
    if choice is None or choice == "auto":
        out: dict[str, Any] = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"),
                                                 str):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise _read.refuse("tool_choice: %r has no Messages counterpart" % (choice,))
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    elif choice is None:
        return None
    return out


def messages_request(doc: Any, model: str, stream: bool) -> dict:
    """A Chat Completions request (decoded JSON) as a Messages one."""
    doc = _read.check(doc, _OWN)
    _read.refuse_unsupported(doc)
    system, turns = _turns(doc.get("messages"))
    out: dict[str, Any] = {"model": model, "max_tokens": max_tokens(doc) or DEFAULT_MAX_TOKENS,
                           "messages": turns}
    if system:
        out["system"] = "\n\n".join(system)
    for name in _PASSED:
        if doc.get(name) is not None:
            out[name] = doc[name]
    stop = stop_sequences(doc.get("stop"))
    if stop:
        out["stop_sequences"] = stop
    if isinstance(doc.get("user"), str):
        out["metadata"] = {"user_id": doc["user"]}
    if doc.get("tools"):
        out["tools"] = _tools(doc["tools"])
        choice = _tool_choice(doc.get("tool_choice"), doc.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    elif doc.get("tool_choice") == "none":
        pass   # no tools, and none to call: nothing to say
    if stream:
        out["stream"] = True
    return out


# === answers ===

def usage(doc: Any) -> dict:
    """Messages usage as Chat Completions usage: every input token in the prompt (cache
    reads and writes are counted apart from ``input_tokens`` there), reads as cached."""
    doc = doc if isinstance(doc, dict) else {}
    read = int(doc.get("cache_read_input_tokens") or 0)
    written = int(doc.get("cache_creation_input_tokens") or 0)
    prompt = int(doc.get("input_tokens") or 0) + read + written
    completion = int(doc.get("output_tokens") or 0)
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    if read:
        out["prompt_tokens_details"] = {"cached_tokens": read}
    return out


def completion(message: Any) -> dict:
    """A Messages ``message`` as a Chat Completions answer."""
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        raise ValueError("not a Messages answer")
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[dict] = []
    for block in message["content"]:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            text.append(str(block.get("text", "")))
        elif kind == "thinking":
            reasoning.append(str(block.get("thinking", "")))
        elif kind == "tool_use":
            calls.append({"id": str(block.get("id", "")), "type": "function", "function": {
                "name": str(block.get("name", "")),
                "arguments": orjson.dumps(block.get("input") or {}).decode()}})
    said: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if reasoning:
        said["reasoning_content"] = "".join(reasoning)
    if calls:
        said["tool_calls"] = calls
    return {"id": str(message.get("id", "")), "object": "chat.completion",
            "created": int(time.time()), "model": str(message.get("model", "")),
            "choices": [{"index": 0, "message": said, "logprobs": None,
                         "finish_reason": FINISH_REASONS.get(message.get("stop_reason"),
                                                             "stop")}],
            "usage": usage(message.get("usage"))}


_DONE = b"data: [DONE]\n\n"


class MessagesStream(StreamTranslator):
    """Messages stream events in, Chat Completions chunks out: the role chunk at
    ``message_start``, one chunk per text, thinking or tool-argument delta, the finish
    reason and then usage at ``message_delta``, ``[DONE]`` at ``message_stop``. An ``error``
    event becomes the ``{"error": ...}`` event an OpenAI-compatible server sends."""

    __slots__ = ("events", "prefix", "tools", "input_usage", "created")

    def __init__(self, model: str) -> None:
        self.events = EventSplitter()
        self.created = int(time.time())
        self.prefix = b""
        self.tools: dict[int, int] = {}   # content block index -> tool call index
        self.input_usage: dict = {}
        self._set_prefix("", model)

    def _set_prefix(self, message_id: str, model: str) -> None:
        self.prefix = b'data: {"id":%s,"object":"chat.completion.chunk","created":%d,' \
                      b'"model":%s,"choices":' % (orjson.dumps(message_id), self.created,
                                                  orjson.dumps(model))

    def _chunk(self, delta: bytes, finish: bytes = b"null") -> bytes:
        return b'%s[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]}\n\n' % (
            self.prefix, delta, finish)

    def passed(self) -> bytes:
        return self.events.complete

    def feed(self, data: bytes) -> bytes:
        out = []
        for kind, payload in self.events.feed(data):
            event = self._event(kind, payload)
            if event:
                out.append(event)
        return b"".join(out)

    def _event(self, kind: bytes, payload: bytes) -> bytes:
        if kind == b"ping" or not payload:
            return b""
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return NOT_JSON_EVENT
        if not isinstance(doc, dict):
            return b""
        kind_name = doc.get("type")
        if kind_name == "content_block_delta":
            delta = doc.get("delta") or {}
            which = delta.get("type")
            if which == "text_delta":
                return self._chunk(b'{"content":%s}' % orjson.dumps(delta.get("text", "")))
            if which == "input_json_delta":
                call = self.tools.get(doc.get("index", -1))
                if call is None:
                    return b""
                return self._chunk(b'{"tool_calls":[{"index":%d,"function":{"arguments":%s}}]}'
                                   % (call, orjson.dumps(delta.get("partial_json", ""))))
            if which == "thinking_delta":
                return self._chunk(b'{"reasoning_content":%s}'
                                   % orjson.dumps(delta.get("thinking", "")))
            return b""
        if kind_name == "content_block_start":
            block = doc.get("content_block") or {}
            if block.get("type") == "tool_use":
                call = self.tools[doc.get("index", -1)] = len(self.tools)
                return self._chunk(orjson.dumps({"tool_calls": [{
                    "index": call, "id": str(block.get("id", "")), "type": "function",
                    "function": {"name": str(block.get("name", "")), "arguments": ""}}]}))
            if block.get("type") == "text" and block.get("text"):
                return self._chunk(b'{"content":%s}' % orjson.dumps(block["text"]))
            return b""
        if kind_name == "message_start":
            message = doc.get("message") or {}
            self._set_prefix(str(message.get("id", "")), str(message.get("model", "")))
            self.input_usage = message.get("usage") or {}
            return self._chunk(b'{"role":"assistant","content":""}')
        if kind_name == "message_delta":
            reason = FINISH_REASONS.get((doc.get("delta") or {}).get("stop_reason"), "stop")
            counted = {**self.input_usage, **(doc.get("usage") or {})}
            return (self._chunk(b"{}", orjson.dumps(reason))
                    + self.prefix + b'[],"usage":%s}\n\n' % orjson.dumps(usage(counted)))
        if kind_name == "message_stop":
            return _DONE
        if kind_name == "error":
            error = doc.get("error") if isinstance(doc.get("error"), dict) else {}
            return error_event(str(error.get("type", "upstream_error")),
                               str(error.get("message", "the stream failed")))
        return b""   # content_block_stop, and event types newer than this code


class AnthropicAdapter(Adapter):
    name = "anthropic"
    native = True

    def __init__(self, model: str) -> None:
        self.model = model

    def serves(self, path: bytes) -> bool:
        return path in (b"/chat/completions", COUNT_TOKENS_PATH)

    def request_path(self, path: bytes, stream: bool) -> bytes:
        return COUNT_TOKENS_PATH if path == COUNT_TOKENS_PATH else b"/messages"

    def request_body(self, body: bytes, stream: bool) -> bytes:
        return orjson.dumps(messages_request(_read.load(body, _OWN), self.model, stream))

    def status(self, status: int) -> int:
        return 503 if status == 529 else status

    def answer(self, payload: bytes) -> bytes:
        return orjson.dumps(completion(orjson.loads(payload)))

    def stream(self, model: str) -> StreamTranslator:
        return MessagesStream(model)


def auth_headers(key: str | None, version: str | None) -> bytes:
    headers = b"anthropic-version: %s\r\n" % (version or DEFAULT_VERSION).encode("latin-1")
    if key:
        headers += b"x-api-key: %s\r\n" % key.encode("latin-1")
    return headers
