"""``provider: gemini``: Google's Gemini API (generateContent) behind the Chat Completions
path.

Requests go to ``{base_url}/models/{model}:generateContent`` (streams to
``:streamGenerateContent?alt=sse``) with the key in ``x-goog-api-key``. System messages
become ``systemInstruction``; user and assistant turns ``contents`` with the roles ``user``
and ``model`` (turns of one role in a row merged); images ``inlineData`` (data URLs) or
``fileData`` (other URLs); tool calls ``functionCall`` parts and tool results
``functionResponse`` parts, named after the call they answer (Gemini matches results by
name, not id); sampling settings ``generationConfig``. Answers come back as Chat
Completions: text parts as content, thought parts as ``reasoning_content``, function calls
as ``tool_calls`` (with ids made up when Gemini gives none), finish reasons and
``usageMetadata`` (cached tokens as ``cached_tokens``) mapped; each streamed chunk becomes
one chunk, and the stream's end ``[DONE]`` once a finish reason came.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import orjson

from .base import Adapter, StreamTranslator
from .chat import ChatReader, add_turn, max_tokens, stop_sequences
from .sse import NOT_JSON_EVENT, EventSplitter, error_event

FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter",
                  "RECITATION": "content_filter", "BLOCKLIST": "content_filter",
                  "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
                  "IMAGE_SAFETY": "content_filter", "MALFORMED_FUNCTION_CALL": "stop",
                  "LANGUAGE": "stop", "OTHER": "stop"}
# Chat Completions name -> generationConfig name.
_GENERATION = {"temperature": "temperature", "top_p": "topP", "top_k": "topK",
               "seed": "seed", "presence_penalty": "presencePenalty",
               "frequency_penalty": "frequencyPenalty", "n": "candidateCount"}
_NOT_SENT = ("stream_options", "user", "metadata", "store", "service_tier", "logit_bias",
             "parallel_tool_calls", "reasoning_effort", "prediction", "modalities")
_OWN = {"model", "messages", "max_tokens", "max_completion_tokens", "stop", "tools",
        "tool_choice", "stream", "response_format", "logprobs", *_GENERATION, *_NOT_SENT}


_read = ChatReader("gemini")


def _parts(content: Any, where: str) -> list[dict]:
    out = []
    for part in _read.parts(content, where):
        if isinstance(part, str):
            out.append({"text": part})
        elif part.data is not None:
            out.append({"inlineData": {"mimeType": part.media_type, "data": part.data}})
        else:
            out.append({"fileData": {"fileUri": part.url}})
    return out


def _contents(messages: Any) -> tuple[list[str], list[dict]]:
    if not isinstance(messages, list) or not messages:
        raise _read.refuse("messages: at least one message is required")
    system: list[str] = []
    contents: list[dict] = []
    names: dict[str, str] = {}   # tool call id -> function name, for the results
    for i, message in enumerate(messages):
        where = "messages[%d]" % i
        if not isinstance(message, dict):
            raise _read.refuse("%s: expected an object" % where)
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.append(_read.text(content, where + ".content"))
            continue
        if role == "user":
            role, parts = "user", _parts(content, where + ".content")
        elif role == "assistant":
            role, parts = "model", _parts(content, where + ".content")
            for j, call in enumerate(message.get("tool_calls") or ()):
                call_id, name, args = _read.call(call, "%s.tool_calls[%d]" % (where, j))
                names[call_id] = name
                parts.append({"functionCall": {"name": name, "args": args}})
        elif role == "tool":
            call_id = str(message.get("tool_call_id") or "")
            name = names.get(call_id)
            if name is None:
                raise _read.refuse("%s: answers tool call %r, which no earlier assistant message "
                              "made" % (where, call_id))
            text = _read.text(content, where + ".content")
            try:
                result = orjson.loads(text)
            except orjson.JSONDecodeError:
                result = None
            response = result if isinstance(result, dict) else {"content": text}
            role, parts = "user", [{"functionResponse": {"name": name, "response": response}}]
        else:
            raise _read.refuse("%s.role: %r has no Gemini counterpart" % (where, role))
        if not parts:
            continue
        add_turn(contents, role, parts, "parts")
    if not contents:
        raise _read.refuse("messages: only system messages; Gemini needs a user turn")
    return system, contents


def _tools(tools: Any) -> list[dict]:
    declarations = []
    for function in _read.functions(tools):
        declaration: dict[str, Any] = {"name": function.name}
        if function.description is not None:
            declaration["description"] = function.description
        if function.parameters:
            declaration["parameters"] = function.parameters
        declarations.append(declaration)
    return [{"functionDeclarations": declarations}]


def _tool_config(choice: Any) -> dict | None:
    if choice is None or choice == "auto":
        return None
    if choice == "required":
        return {"functionCallingConfig": {"mode": "ANY"}}
    if choice == "none":
        return {"functionCallingConfig": {"mode": "NONE"}}
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    if isinstance(name, str):
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    raise _read.refuse("tool_choice: %r has no Gemini counterpart" % (choice,))


def generate_request(doc: Any) -> dict:
    """A Chat Completions request (decoded JSON) as a generateContent one."""
    doc = _read.check(doc, _OWN)
    _read.refuse_unsupported(doc, one_choice=False, json_output=True)
    system, contents = _contents(doc.get("messages"))
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config: dict[str, Any] = {}
    for name, gemini_name in _GENERATION.items():
        if doc.get(name) is not None:
            config[gemini_name] = doc[name]
    limit = max_tokens(doc)
    if limit:
        config["maxOutputTokens"] = limit
    stop = stop_sequences(doc.get("stop"))
    if stop:
        config["stopSequences"] = stop
    response_format = doc.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind == "json_object":
            config["responseMimeType"] = "application/json"
        elif kind == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema")
            config["responseMimeType"] = "application/json"
            if schema:
                config["responseJsonSchema"] = schema
        elif kind not in (None, "text"):
            raise _read.refuse("response_format: %r has no Gemini counterpart" % kind)
    if config:
        out["generationConfig"] = config
    if doc.get("tools"):
        out["tools"] = _tools(doc["tools"])
        tool_config = _tool_config(doc.get("tool_choice"))
        if tool_config is not None:
            out["toolConfig"] = tool_config
    return out


# === answers ===

def usage(doc: Any) -> dict:
    doc = doc if isinstance(doc, dict) else {}
    prompt = int(doc.get("promptTokenCount") or 0)
    # Thinking tokens are billed as output.
    completion = int(doc.get("candidatesTokenCount") or 0) + int(
        doc.get("thoughtsTokenCount") or 0)
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    cached = int(doc.get("cachedContentTokenCount") or 0)
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


class _Calls:
    """Chat Completions ids for Gemini's function calls, which may come without one."""

    __slots__ = ("prefix", "count")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.count = 0

    def call(self, part: dict) -> dict:
        call = part["functionCall"]
        self.count += 1
        return {"id": str(call.get("id") or "call_%s_%d" % (self.prefix, self.count)),
                "type": "function",
                "function": {"name": str(call.get("name", "")),
                             "arguments": orjson.dumps(call.get("args") or {}).decode()}}


def _said(candidate: dict, calls: _Calls) -> tuple[str, str, list[dict]]:
    """(text, thoughts, tool calls) of one candidate's parts."""
    text, thoughts, tool_calls = [], [], []
    for part in (candidate.get("content") or {}).get("parts") or ():
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("functionCall"), dict):
            tool_calls.append(calls.call(part))
        elif isinstance(part.get("text"), str):
            (thoughts if part.get("thought") else text).append(part["text"])
    return "".join(text), "".join(thoughts), tool_calls


def _finish(candidate: dict, called: bool) -> str | None:
    reason = candidate.get("finishReason")
    if reason is None or reason == "FINISH_REASON_UNSPECIFIED":
        return None
    if called and reason == "STOP":
        return "tool_calls"
    return FINISH_REASONS.get(reason, "stop")


def completion(doc: Any) -> dict:
    """A generateContent answer as a Chat Completions one."""
    if not isinstance(doc, dict) or not isinstance(doc.get("candidates", []), list):
        raise ValueError("not a generateContent answer")
    response_id = str(doc.get("responseId") or "gemini")
    calls = _Calls(response_id)
    choices = []
    for index, candidate in enumerate(doc.get("candidates") or ()):
        if not isinstance(candidate, dict):
            continue
        text, thoughts, tool_calls = _said(candidate, calls)
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if thoughts:
            message["reasoning_content"] = thoughts
        if tool_calls:
            message["tool_calls"] = tool_calls
        choices.append({"index": candidate.get("index", index), "message": message,
                        "logprobs": None,
                        "finish_reason": _finish(candidate, bool(tool_calls)) or "stop"})
    if not choices:
        if "candidates" not in doc and "promptFeedback" not in doc:
            raise ValueError("not a generateContent answer")
        # The prompt itself was blocked: no candidate, and promptFeedback says why.
        choices.append({"index": 0, "message": {"role": "assistant", "content": None},
                        "logprobs": None, "finish_reason": "content_filter"})
    return {"id": response_id, "object": "chat.completion", "created": int(time.time()),
            "model": str(doc.get("modelVersion") or ""), "choices": choices,
            "usage": usage(doc.get("usageMetadata"))}


class GenerateStream(StreamTranslator):
    """streamGenerateContent's SSE chunks in, Chat Completions chunks out."""

    __slots__ = ("events", "model", "created", "started", "finished", "calls", "called",
                 "usage")

    def __init__(self, model: str) -> None:
        self.events = EventSplitter()
        self.model = model
        self.created = int(time.time())
        self.started = False
        self.finished = False
        self.calls = _Calls(str(self.created))
        self.called: set[int] = set()   # candidates that made a function call
        self.usage: dict | None = None

    def passed(self) -> bytes:
        return self.events.complete

    def _chunk(self, doc: dict, choices: list) -> bytes:
        return b"data: %s\n\n" % orjson.dumps({
            "id": str(doc.get("responseId") or "gemini"), "object": "chat.completion.chunk",
            "created": self.created, "model": str(doc.get("modelVersion") or self.model),
            "choices": choices})

    def feed(self, data: bytes) -> bytes:
        out = []
        for _, payload in self.events.feed(data):
            if not payload:
                continue
            try:
                doc = orjson.loads(payload)
            except orjson.JSONDecodeError:
                out.append(NOT_JSON_EVENT)
                continue
            if not isinstance(doc, dict):
                continue
            if isinstance(doc.get("error"), dict):
                error = doc["error"]
                out.append(error_event(str(error.get("status", "upstream_error")),
                                       str(error.get("message", "the stream failed"))))
                continue
            out.append(self._translate(doc))
        return b"".join(out)

    def _translate(self, doc: dict) -> bytes:
        out = b""
        if not self.started:
            self.started = True
            out += self._chunk(doc, [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                      "logprobs": None, "finish_reason": None}])
        choices = []
        for position, candidate in enumerate(doc.get("candidates") or ()):
            if not isinstance(candidate, dict):
                continue
            index = candidate.get("index", position)
            text, thoughts, tool_calls = _said(candidate, self.calls)
            delta: dict[str, Any] = {}
            if text:
                delta["content"] = text
            if thoughts:
                delta["reasoning_content"] = thoughts
            if tool_calls:
                self.called.add(index)
                delta["tool_calls"] = [{"index": self.calls.count - len(tool_calls) + i,
                                        **call} for i, call in enumerate(tool_calls)]
            finish = _finish(candidate, index in self.called)
            if delta or finish:
                choices.append({"index": index, "delta": delta, "logprobs": None,
                                "finish_reason": finish})
            if finish:
                self.finished = True
        if not doc.get("candidates") and doc.get("promptFeedback"):
            choices.append({"index": 0, "delta": {}, "logprobs": None,
                            "finish_reason": "content_filter"})
            self.finished = True
        if choices:
            out += self._chunk(doc, choices)
        if isinstance(doc.get("usageMetadata"), dict):
            # Counted so far: the last one is the answer's.
            self.usage = usage(doc["usageMetadata"])
        return out

    def end(self) -> bytes:
        # Gemini ends a stream by ending the body; only one that gave a finish reason is
        # whole, and the relay tells a cut from its missing [DONE].
        if not self.finished:
            return b""
        out = b""
        if self.usage is not None:
            out = b"data: %s\n\n" % orjson.dumps({
                "id": "gemini", "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [], "usage": self.usage})
        return out + b"data: [DONE]\n\n"


class GeminiAdapter(Adapter):
    name = "gemini"

    def __init__(self, model: str) -> None:
        self.model = model
        self.whole = b"/models/%s:generateContent" % quote(model, safe="").encode("ascii")
        self.streamed = b"/models/%s:streamGenerateContent?alt=sse" % quote(
            model, safe="").encode("ascii")

    def request_path(self, path: bytes, stream: bool) -> bytes:
        return self.streamed if stream else self.whole

    def request_body(self, body: bytes, stream: bool) -> bytes:
        return orjson.dumps(generate_request(_read.load(body, _OWN)))

    def answer(self, payload: bytes) -> bytes:
        return orjson.dumps(completion(orjson.loads(payload)))

    def stream(self, model: str) -> StreamTranslator:
        return GenerateStream(model)


def auth_headers(key: str | None) -> bytes:
    return b"x-goog-api-key: %s\r\n" % key.encode("latin-1") if key else b""
