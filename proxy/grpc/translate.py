"""Between the proto messages of ``llmedge.v1`` and the OpenAI JSON the request path speaks.

Requests become the JSON body the HTTP front end would have received, so both front ends
share one request path. Answers go the other way; whatever an upstream sends that the proto
does not name is kept in ``extra_json``, and a value of an unexpected type is kept there
too rather than dropped or allowed to fail the answer.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from ..errors import BadRequest
from ._gen import gateway_pb2 as pb

# Request fields copied as they are when the client set them (proto3 ``optional``).
_OPTIONAL = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "n",
             "presence_penalty", "frequency_penalty", "seed", "parallel_tool_calls",
             "logprobs", "top_logprobs")
# Set by the RPC itself (Chat or ChatStream), never by extra_json.
_RESERVED = frozenset(("stream",))

FINISH_REASONS = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "tool_calls": pb.FINISH_REASON_TOOL_CALLS,
    "content_filter": pb.FINISH_REASON_CONTENT_FILTER,
    "function_call": pb.FINISH_REASON_FUNCTION_CALL,
}


# === request: proto -> OpenAI JSON ===

def _json(text: str, where: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("%s: not valid JSON: %s" % (where, exc), param=where) from None


def _json_object(text: str, where: str) -> dict[str, Any]:
    value = _json(text, where)
    if not isinstance(value, dict):
        raise BadRequest("%s: must be a JSON object" % where, param=where)
    return value


def _merge(doc: dict[str, Any], extra_json: str, where: str) -> dict[str, Any]:
    if extra_json:
        extra = _json_object(extra_json, where)
        for key, value in extra.items():
            if key in doc or key in _RESERVED:
                # Two values for one field: refuse rather than pick one silently.
                raise BadRequest("%s: %r is set by a typed field (or by the RPC); set it "
                                 "there only" % (where, key), param=where)
            doc[key] = value
    return doc


def _part(part: pb.ContentPart, where: str) -> dict[str, Any]:
    kind = part.type
    if not kind:
        kind = ("image_url" if part.HasField("image_url") else
                "input_audio" if part.HasField("input_audio") else "text")
    doc: dict[str, Any] = {"type": kind}
    if kind == "text" or part.text:
        doc["text"] = part.text
    if part.HasField("image_url"):
        image: dict[str, Any] = {"url": part.image_url.url}
        if part.image_url.detail:
            image["detail"] = part.image_url.detail
        doc["image_url"] = image
    if part.HasField("input_audio"):
        doc["input_audio"] = {"data": part.input_audio.data, "format": part.input_audio.format}
    return _merge(doc, part.extra_json, where + ".extra_json")


def _tool_call(call: pb.ToolCall, where: str) -> dict[str, Any]:
    doc = {"id": call.id, "type": call.type or "function",
           "function": {"name": call.function.name, "arguments": call.function.arguments}}
    return _merge(doc, call.extra_json, where + ".extra_json")


_ROLE = pb.Message.DESCRIPTOR.fields_by_name["role"]
_CONTENT = pb.Message.DESCRIPTOR.fields_by_name["content"]


def _message(msg: pb.Message, where: str) -> dict[str, Any]:
    fields = msg.ListFields()   # the set ones, in field order: one call instead of a test each
    if len(fields) == 2 and fields[0][0] is _ROLE and fields[1][0] is _CONTENT:
        return {"role": fields[0][1], "content": fields[1][1]}   # most messages
    if not msg.role:
        raise BadRequest("%s.role: required" % where, param=where + ".role")
    doc: dict[str, Any] = {"role": msg.role}
    if msg.parts:
        doc["content"] = [_part(p, "%s.parts[%d]" % (where, i)) for i, p in enumerate(msg.parts)]
    elif msg.HasField("content"):
        doc["content"] = msg.content
    else:
        doc["content"] = None
    if msg.name:
        doc["name"] = msg.name
    if msg.tool_calls:
        doc["tool_calls"] = [_tool_call(c, "%s.tool_calls[%d]" % (where, i))
                             for i, c in enumerate(msg.tool_calls)]
    if msg.tool_call_id:
        doc["tool_call_id"] = msg.tool_call_id
    if msg.HasField("refusal"):
        doc["refusal"] = msg.refusal
    return _merge(doc, msg.extra_json, where + ".extra_json")


def _tool(tool: pb.Tool, where: str) -> dict[str, Any]:
    fn = tool.function
    if not fn.name and tool.type in ("", "function"):
        # proto3 cannot leave the name out, only empty: say so here rather than have each
        # upstream answer (or not) for a tool called "".
        raise BadRequest("%s.function.name: required" % where, param=where + ".function.name")
    function: dict[str, Any] = {"name": fn.name}
    if fn.description:
        function["description"] = fn.description
    if fn.parameters_json:
        function["parameters"] = _json_object(fn.parameters_json,
                                              where + ".function.parameters_json")
    if fn.HasField("strict"):
        function["strict"] = fn.strict
    return _merge({"type": tool.type or "function", "function": function}, tool.extra_json,
                  where + ".extra_json")


def request_body(req: pb.ChatRequest, stream: bool) -> bytes:
    """The OpenAI chat completion request for ``req``; BadRequest names the bad field."""
    # The set fields in one call: most requests set three or four of twenty.
    present = {field.name: value for field, value in req.ListFields()}
    model = present.get("model")
    if not model:
        raise BadRequest("model: required", param="model")
    doc: dict[str, Any] = {
        "model": model,
        "messages": [_message(m, "messages[%d]" % i)
                     for i, m in enumerate(present.get("messages", ()))],
    }
    for name in _OPTIONAL:
        if name in present:
            value = present[name]
            if isinstance(value, float) and not math.isfinite(value):
                # JSON has no NaN or infinity: the upstream would get null.
                raise BadRequest("%s: must be a finite number" % name, param=name)
            doc[name] = value
    if "stop" in present:
        doc["stop"] = list(present["stop"])
    if "user" in present:
        doc["user"] = present["user"]
    if "tools" in present:
        doc["tools"] = [_tool(t, "tools[%d]" % i) for i, t in enumerate(present["tools"])]
    if "tool_choice" in present:
        choice = present["tool_choice"]
        doc["tool_choice"] = (_json_object(choice, "tool_choice")
                              if choice.lstrip().startswith("{") else choice)
    if "response_format_json" in present:
        doc["response_format"] = _json_object(present["response_format_json"],
                                              "response_format_json")
    if stream:
        doc["stream"] = True
        if present.get("include_usage"):
            doc["stream_options"] = {"include_usage": True}
    if "extra_json" in present:
        _merge(doc, present["extra_json"], "extra_json")
    return orjson.dumps(doc)


# === answers: OpenAI JSON -> proto ===

def _extra(extra: dict[str, Any]) -> str:
    return orjson.dumps(extra).decode() if extra else ""


def _set(msg: Any, field: str, value: Any, extra: dict[str, Any], key: str) -> None:
    """Set a scalar field, or keep the value in ``extra`` when its type does not fit."""
    try:
        setattr(msg, field, value)
    except (TypeError, ValueError):
        extra[key] = value


def _fill(msg: Any, doc: Any, scalars: frozenset[str], nested: dict[str, Any],
          skip: frozenset[str] = frozenset()) -> Any:
    """Copy ``doc`` into ``msg``: scalars by name, ``nested[key](msg, value, extra)`` for the
    rest, everything unknown (or of the wrong type) into ``msg.extra_json``."""
    if not isinstance(doc, dict):
        msg.extra_json = _extra({"value": doc})
        return msg
    extra: dict[str, Any] = {}
    for key, value in doc.items():
        if value is None or key in skip:
            continue
        if key in scalars:
            _set(msg, key, value, extra, key)
        elif key in nested:
            nested[key](msg, value, extra)
        else:
            extra[key] = value
    if extra:
        msg.extra_json = _extra(extra)
    return msg


def _finish_reason(msg: Any, value: Any, extra: dict[str, Any]) -> None:
    code = FINISH_REASONS.get(value) if isinstance(value, str) else None
    if code is None:
        extra["finish_reason"] = value
    else:
        msg.finish_reason = code


def _logprobs(msg: Any, value: Any, extra: dict[str, Any]) -> None:
    msg.logprobs_json = orjson.dumps(value).decode()


def _usage(msg: Any, value: Any, extra: dict[str, Any]) -> None:
    _fill(msg.usage, value, _USAGE, {})


def _function(msg: Any, value: Any, extra: dict[str, Any]) -> None:
    if not isinstance(value, dict):
        extra["function"] = value
        return
    fn = msg.function
    fn.SetInParent()
    rest = {}
    for key, item in value.items():
        if key in ("name", "arguments") and isinstance(item, str):
            setattr(fn, key, item)
        elif item is not None:
            rest[key] = item
    if rest:
        extra["function"] = rest


def _repeated(kind: str, fill: Any) -> Any:
    def add(msg: Any, value: Any, extra: dict[str, Any]) -> None:
        if not isinstance(value, list):
            extra[kind] = value
            return
        field = getattr(msg, kind)
        for item in value:
            fill(field.add(), item)
    return add


def _content(msg: Any, value: Any, extra: dict[str, Any]) -> None:
    if isinstance(value, str):
        msg.content = value
    else:
        extra["content"] = value  # e.g. content parts in an answer


_USAGE = frozenset(("prompt_tokens", "completion_tokens", "total_tokens"))
_TOP = frozenset(("id", "created", "model", "system_fingerprint"))
_OBJECT = frozenset(("object",))  # implied by the message type


def _tool_call_out(msg: pb.ToolCall, doc: Any) -> None:
    _fill(msg, doc, frozenset(("id", "type")), {"function": _function})


def _tool_call_delta(msg: pb.ToolCallDelta, doc: Any) -> None:
    _fill(msg, doc, frozenset(("index", "id", "type")), {"function": _function})


_MESSAGE_NESTED = {"content": _content, "tool_calls": _repeated("tool_calls", _tool_call_out)}
_DELTA_NESTED = {"content": _content, "tool_calls": _repeated("tool_calls", _tool_call_delta)}


def _message_out(msg: Any, value: Any, extra: dict[str, Any]) -> None:
    target = msg.message
    target.SetInParent()
    _fill(target, value, frozenset(("role", "name", "refusal", "tool_call_id")), _MESSAGE_NESTED)


def _delta(msg: Any, value: Any, extra: dict[str, Any]) -> None:
    target = msg.delta
    target.SetInParent()
    _fill(target, value, frozenset(("role", "refusal")), _DELTA_NESTED)


def _choice(msg: pb.Choice, doc: Any) -> None:
    _fill(msg, doc, frozenset(("index",)), {"message": _message_out,
                                            "finish_reason": _finish_reason,
                                            "logprobs": _logprobs})


def _chunk_choice(msg: pb.ChunkChoice, doc: Any) -> None:
    _fill(msg, doc, frozenset(("index",)), {"delta": _delta, "finish_reason": _finish_reason,
                                            "logprobs": _logprobs})


_RESPONSE_NESTED = {"choices": _repeated("choices", _choice), "usage": _usage}
_CHUNK_NESTED = {"choices": _repeated("choices", _chunk_choice), "usage": _usage}


def chat_response(doc: Any) -> pb.ChatResponse:
    """A whole ``chat.completion`` object as a ChatResponse."""
    return _fill(pb.ChatResponse(), doc, _TOP, _RESPONSE_NESTED, _OBJECT)


def chat_chunk(doc: Any) -> pb.ChatChunk:
    """One ``chat.completion.chunk`` object as a ChatChunk."""
    return _fill(pb.ChatChunk(), doc, _TOP, _CHUNK_NESTED, _OBJECT)


def completion_as_chunk(doc: Any) -> pb.ChatChunk:
    """A whole completion (an upstream that answered a stream request without streaming)
    as the one chunk of a stream: each choice's message becomes its delta."""
    if isinstance(doc, dict) and isinstance(doc.get("choices"), list):
        doc = dict(doc)
        doc["choices"] = [
            {("delta" if k == "message" else k): v for k, v in c.items()}
            if isinstance(c, dict) else c for c in doc["choices"]]
    return chat_chunk(doc)
