"""``provider: bedrock``: Amazon Bedrock's Converse API behind the Chat Completions path.

Requests go to ``{base_url}/model/{model}/converse`` (streams to ``/converse-stream``),
signed with AWS Signature Version 4 by botocore's signer — the one the AWS SDKs use — with
the credentials of the SDKs' default chain (see aws_credentials.py), resolved when the
configuration is loaded and renewed before they expire. The base URL
defaults to the region's runtime endpoint. ConverseStream answers in AWS's binary event
stream, decoded by botocore's parser. System messages become ``system``; user, assistant
and tool messages alternating ``messages`` (tool results as ``toolResult`` blocks of a user
turn); images ``image`` blocks (base64 data URLs only: Converse takes bytes); tools
``toolConfig``; ``max_tokens``, ``temperature``, ``top_p`` and ``stop``
``inferenceConfig``. Answers: text, ``toolUse`` as ``tool_calls``, ``reasoningContent`` as
``reasoning_content``, stop reasons and usage (cache reads as ``cached_tokens``) mapped.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import orjson

from ..errors import UpstreamBadResponse
from .aws_credentials import AwsCredentials
from .base import Adapter, StreamTranslator
from .sse import NOT_JSON_EVENT, error_event
from .chat import ChatReader, add_turn, max_tokens, stop_sequences

STREAM_TYPE = b"application/vnd.amazon.eventstream"
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "tool_use": "tool_calls", "guardrail_intervened": "content_filter",
                  "content_filtered": "content_filter",
                  "model_context_window_exceeded": "length"}
_IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg",
                  "image/gif": "gif", "image/webp": "webp"}
_INFERENCE = {"temperature": "temperature", "top_p": "topP"}
_NOT_SENT = ("stream_options", "user", "metadata", "store", "service_tier", "seed",
             "frequency_penalty", "presence_penalty", "logit_bias", "parallel_tool_calls",
             "reasoning_effort")
_OWN = {"model", "messages", "max_tokens", "max_completion_tokens", "stop", "tools",
        "tool_choice", "stream", "n", "logprobs", "response_format", *_INFERENCE,
        *_NOT_SENT}


_read = ChatReader("bedrock")


def _blocks(content: Any, where: str) -> list[dict]:
    blocks = []
    for part in _read.parts(content, where):
        if isinstance(part, str):
            blocks.append({"text": part})
        elif part.data is None or part.media_type not in _IMAGE_FORMATS:
            raise _read.refuse("%s: Converse takes images as base64 data URLs of png, jpeg, "
                               "gif or webp" % where)
        else:
            blocks.append({"image": {"format": _IMAGE_FORMATS[part.media_type],
                                     "source": {"bytes": part.data}}})
    return blocks


def _messages(messages: Any) -> tuple[list[dict], list[dict]]:
    if not isinstance(messages, list) or not messages:
        raise _read.refuse("messages: at least one message is required")
    system: list[dict] = []
    turns: list[dict] = []
    for i, message in enumerate(messages):
        where = "messages[%d]" % i
        if not isinstance(message, dict):
            raise _read.refuse("%s: expected an object" % where)
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            text = _read.text(content, where + ".content")
            if text:
                system.append({"text": text})
            continue
        if role == "tool":
            role, blocks = "user", [{"toolResult": {
                "toolUseId": str(message.get("tool_call_id") or ""),
                "content": [{"text": _read.text(content, where + ".content")}]}}]
        elif role == "user":
            blocks = _blocks(content, where + ".content")
        elif role == "assistant":
            blocks = _blocks(content, where + ".content")
            for j, call in enumerate(message.get("tool_calls") or ()):
                call_id, name, arguments = _read.call(call, "%s.tool_calls[%d]" % (where, j))
                blocks.append({"toolUse": {"toolUseId": call_id, "name": name,
                                           "input": arguments}})
        else:
            raise _read.refuse("%s.role: %r has no Converse counterpart" % (where, role))
        if not blocks:
            continue
        add_turn(turns, role, blocks, "content")
    if not turns:
        raise _read.refuse("messages: only system messages; Converse needs a user turn")
    return system, turns


def _tool_config(tools: Any, choice: Any) -> dict | None:
    specs = []
    for function in _read.functions(tools):
        spec: dict[str, Any] = {"name": function.name, "inputSchema": {
            "json": function.parameters or {"type": "object", "properties": {}}}}
        if function.description is not None:
            spec["description"] = function.description
        specs.append({"toolSpec": spec})
    if choice == "none":
        return None   # Converse has no "none": the tools are left out instead
    config: dict[str, Any] = {"tools": specs}
    if choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if not isinstance(name, str):
            raise _read.refuse("tool_choice: %r has no Converse counterpart" % (choice,))
        config["toolChoice"] = {"tool": {"name": name}}
    elif choice not in (None, "auto"):
        raise _read.refuse("tool_choice: %r has no Converse counterpart" % (choice,))
    return config


def converse_request(doc: Any) -> dict:
    """A Chat Completions request (decoded JSON) as a Converse one."""
    doc = _read.check(doc, _OWN)
    _read.refuse_unsupported(doc)
    system, turns = _messages(doc.get("messages"))
    out: dict[str, Any] = {"messages": turns}
    if system:
        out["system"] = system
    inference: dict[str, Any] = {}
    limit = max_tokens(doc)
    if limit:
        inference["maxTokens"] = limit
    for name, converse_name in _INFERENCE.items():
        if doc.get(name) is not None:
            inference[converse_name] = doc[name]
    stop = stop_sequences(doc.get("stop"))
    if stop:
        inference["stopSequences"] = stop
    if inference:
        out["inferenceConfig"] = inference
    if doc.get("tools"):
        config = _tool_config(doc["tools"], doc.get("tool_choice"))
        if config is not None:
            out["toolConfig"] = config
    return out


# === answers ===

def usage(doc: Any) -> dict:
    doc = doc if isinstance(doc, dict) else {}
    read = int(doc.get("cacheReadInputTokens") or 0)
    written = int(doc.get("cacheWriteInputTokens") or 0)
    prompt = int(doc.get("inputTokens") or 0) + read + written
    completion = int(doc.get("outputTokens") or 0)
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    if read:
        out["prompt_tokens_details"] = {"cached_tokens": read}
    return out


def completion(doc: Any, model: str) -> dict:
    """A Converse answer as a Chat Completions one."""
    message = ((doc.get("output") or {}).get("message") if isinstance(doc, dict) else None)
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        raise ValueError("not a Converse answer")
    text, reasoning, calls = [], [], []
    for block in message["content"]:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            text.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            use = block["toolUse"]
            calls.append({"id": str(use.get("toolUseId", "")), "type": "function",
                          "function": {"name": str(use.get("name", "")),
                                       "arguments": orjson.dumps(use.get("input") or {}
                                                                 ).decode()}})
        elif isinstance(block.get("reasoningContent"), dict):
            said = (block["reasoningContent"].get("reasoningText") or {}).get("text")
            if isinstance(said, str):
                reasoning.append(said)
    out: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if reasoning:
        out["reasoning_content"] = "".join(reasoning)
    if calls:
        out["tool_calls"] = calls
    return {"id": "bedrock-%x" % time.monotonic_ns(), "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": out, "logprobs": None,
                         "finish_reason": FINISH_REASONS.get(doc.get("stopReason"), "stop")}],
            "usage": usage(doc.get("usage"))}


class ConverseStream(StreamTranslator):
    """ConverseStream's event stream in, Chat Completions chunks out: the role chunk at
    ``messageStart``, a chunk per text, reasoning or tool-input delta, the finish reason at
    ``messageStop``, usage and ``[DONE]`` at ``metadata`` (which follows it). An exception
    message becomes an ``{"error": ...}`` event."""

    __slots__ = ("buffer", "prefix", "tools", "stopped", "ended")

    def __init__(self, model: str) -> None:
        from botocore.eventstream import EventStreamBuffer
        self.buffer = EventStreamBuffer()
        self.prefix = b'data: {"id":"bedrock-%x","object":"chat.completion.chunk",' \
                      b'"created":%d,"model":%s,"choices":' % (
                          time.monotonic_ns(), int(time.time()), orjson.dumps(model))
        self.tools: dict[int, int] = {}   # content block index -> tool call index
        self.stopped = False
        self.ended = False

    def _chunk(self, delta: bytes, finish: bytes = b"null") -> bytes:
        return b'%s[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]}\n\n' % (
            self.prefix, delta, finish)

    def feed(self, data: bytes) -> bytes:
        from botocore.exceptions import EventStreamError
        from botocore.eventstream import ParserError
        self.buffer.add_data(data)
        out = []
        try:
            for message in self.buffer:
                out.append(self._message(message.headers, message.payload))
        except (ParserError, EventStreamError) as exc:
            raise UpstreamBadResponse("the upstream's event stream is broken: %s" % exc) \
                from None
        return b"".join(out)

    def _message(self, headers: dict, payload: bytes) -> bytes:
        if headers.get(":message-type") in ("exception", "error"):
            kind = headers.get(":exception-type") or headers.get(":error-code") or "error"
            try:
                said = orjson.loads(payload).get("message")
            except (orjson.JSONDecodeError, AttributeError):
                said = None
            return error_event(str(kind), str(said or kind))
        kind = headers.get(":event-type")
        try:
            doc = orjson.loads(payload) if payload else {}
        except orjson.JSONDecodeError:
            return NOT_JSON_EVENT
        if not isinstance(doc, dict):
            return b""
        if kind == "contentBlockDelta":
            delta = doc.get("delta") or {}
            if isinstance(delta.get("text"), str):
                return self._chunk(b'{"content":%s}' % orjson.dumps(delta["text"]))
            if isinstance(delta.get("toolUse"), dict):
                call = self.tools.get(doc.get("contentBlockIndex", -1))
                if call is None:
                    return b""
                return self._chunk(b'{"tool_calls":[{"index":%d,"function":{"arguments":%s}}]}'
                                   % (call, orjson.dumps(delta["toolUse"].get("input", ""))))
            said = (delta.get("reasoningContent") or {}).get("text")
            if isinstance(said, str):
                return self._chunk(b'{"reasoning_content":%s}' % orjson.dumps(said))
            return b""
        if kind == "contentBlockStart":
            use = (doc.get("start") or {}).get("toolUse")
            if isinstance(use, dict):
                call = self.tools[doc.get("contentBlockIndex", -1)] = len(self.tools)
                return self._chunk(orjson.dumps({"tool_calls": [{
                    "index": call, "id": str(use.get("toolUseId", "")), "type": "function",
                    "function": {"name": str(use.get("name", "")), "arguments": ""}}]}))
            return b""
        if kind == "messageStart":
            return self._chunk(b'{"role":"assistant","content":""}')
        if kind == "messageStop":
            self.stopped = True
            reason = FINISH_REASONS.get(doc.get("stopReason"), "stop")
            return self._chunk(b"{}", orjson.dumps(reason))
        if kind == "metadata":
            self.ended = True
            return (self.prefix + b'[],"usage":%s}\n\n' % orjson.dumps(usage(doc.get("usage")))
                    + b"data: [DONE]\n\n")
        return b""   # contentBlockStop, and event types newer than this code

    def end(self) -> bytes:
        # metadata (usage) normally follows messageStop; a stream that stopped is whole
        # without it.
        if self.stopped and not self.ended:
            self.ended = True
            return b"data: [DONE]\n\n"
        return b""


class BedrockAdapter(Adapter):
    name = "bedrock"

    def __init__(self, model: str, region: str | None, credentials: AwsCredentials) -> None:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        self._request = AWSRequest
        self.model = model
        self.region = region or "us-east-1"
        quoted = quote(model, safe="").encode("ascii")
        self.whole = b"/model/%s/converse" % quoted
        self.streamed = b"/model/%s/converse-stream" % quoted
        self.credentials = credentials
        self.unusable = credentials.problem
        self._signer = SigV4Auth(credentials.frozen, "bedrock", self.region)

    def request_path(self, path: bytes, stream: bool) -> bytes:
        return self.streamed if stream else self.whole

    def request_body(self, body: bytes, stream: bool) -> bytes:
        return orjson.dumps(converse_request(_read.load(body, _OWN)))

    def is_stream(self, content_type: bytes) -> bool:
        return content_type[:len(STREAM_TYPE)].lower() == STREAM_TYPE

    def signed_headers(self, scheme: str, host: bytes, path: bytes, body: bytes) -> bytes:
        request = self._request("POST", "%s://%s%s" % (scheme, host.decode("latin-1"),
                                                       path.decode("latin-1")),
                                data=body, headers={"Content-Type": "application/json"})
        signer = self._signer
        signer.credentials = self.credentials.frozen   # renewed by CredentialRenewal
        signer.add_auth(request)
        lines = [b"authorization: %s\r\n" % request.headers["Authorization"].encode("latin-1"),
                 b"x-amz-date: %s\r\n" % request.headers["X-Amz-Date"].encode("latin-1")]
        token = request.headers.get("X-Amz-Security-Token")
        if token:
            lines.append(b"x-amz-security-token: %s\r\n" % token.encode("latin-1"))
        return b"".join(lines)

    def answer(self, payload: bytes) -> bytes:
        return orjson.dumps(completion(orjson.loads(payload), self.model))

    def stream(self, model: str) -> StreamTranslator:
        return ConverseStream(self.model)
