"""The simulator's Anthropic Messages API: ``POST /v1/messages``, whole and streamed.

It checks a request as Anthropic does — the ``anthropic-version`` header, ``max_tokens``,
roles that alternate, tool results only in user turns and ahead of anything else there —
so a translation that gets the shape wrong fails here as it would there. The answer is the
simulator's reply, in Anthropic's shapes and event order; a request with tools whose last
turn brings no tool result is answered with a call of the first tool (or the one
``tool_choice`` names), and a turn that brings one with a text quoting it, so a tool round
trip can be tested. Injected errors (``status``, ``error_rate``) use Anthropic's error body,
529 ``overloaded_error`` included.
"""

from __future__ import annotations

from typing import Any

import orjson

from . import wire

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}
_BLOCKS = {"user": ("text", "image", "tool_result", "document"),
           "assistant": ("text", "tool_use", "thinking", "redacted_thinking")}


def error_body(status: int, message: str) -> bytes:
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def _header(req, name: bytes) -> bytes | None:
    for key, value in req.headers:
        if key.lower() == name:
            return value
    return None


def problem(doc: Any, counting: bool = False) -> str:
    """What Anthropic would refuse in this request body (a token count's, which has no
    max_tokens, with ``counting``), or ""."""
    if not isinstance(doc, dict):
        return "request body must be a JSON object"
    if not isinstance(doc.get("model"), str):
        return "model: Field required"
    max_tokens = doc.get("max_tokens")
    if counting:
        if max_tokens is not None or "stream" in doc:
            return "%s: Extra inputs are not permitted" % (
                "max_tokens" if max_tokens is not None else "stream")
    elif not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Field required"
    system = doc.get("system")
    if system is not None and not isinstance(system, str) and not (
            isinstance(system, list) and all(isinstance(b, dict) and b.get("type") == "text"
                                             for b in system)):
        return "system: Input should be a string or a list of text blocks"
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    previous = None
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in _BLOCKS:
            return "messages.%d.role: Input should be 'user' or 'assistant'" % i
        if role == previous:
            return "messages: roles must alternate between \"user\" and \"assistant\""
        previous = role
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list) or (not content and role == "user"):
            return "messages.%d.content: Input should be a string or a non-empty list" % i
        seen_other = False
        for j, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind not in _BLOCKS[role]:
                return "messages.%d.content.%d: %r blocks are not allowed in %s turns" % (
                    i, j, kind, role)
            if kind == "tool_result":
                if seen_other:
                    return ("messages.%d: tool_result blocks must come first in a user "
                            "turn" % i)
                if not isinstance(block.get("tool_use_id"), str):
                    return "messages.%d.content.%d.tool_use_id: Field required" % (i, j)
            else:
                seen_other = True
            if kind == "tool_use" and not isinstance(block.get("input"), dict):
                return "messages.%d.content.%d.input: Input should be an object" % (i, j)
            if kind == "text" and not isinstance(block.get("text"), str):
                return "messages.%d.content.%d.text: Field required" % (i, j)
    tools = doc.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(
            isinstance(t, dict) and isinstance(t.get("name"), str)
            and isinstance(t.get("input_schema"), dict) for t in tools)):
        return "tools: each tool needs a name and an input_schema"
    return ""


def _tool_results(messages: list) -> list[str]:
    last = messages[-1]
    content = last.get("content")
    if last.get("role") != "user" or not isinstance(content, list):
        return []
    results = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            result = block.get("content")
            results.append(result if isinstance(result, str) else wire.message_text(result))
    return results


def _tool_to_call(doc: dict) -> dict | None:
    tools = doc.get("tools") or []
    choice = doc.get("tool_choice") or {"type": "auto"}
    if not tools or choice.get("type") == "none":
        return None
    if choice.get("type") == "tool":
        return next((t for t in tools if t["name"] == choice.get("name")), None)
    return tools[0]


def _arguments(tool: dict) -> dict:
    """Arguments for every required property, of the property's type."""
    schema = tool.get("input_schema") or {}
    properties = schema.get("properties") or {}
    values = {"string": "sim", "integer": 1, "number": 1.5, "boolean": True,
              "array": [], "object": {}}
    return {name: values.get((properties.get(name) or {}).get("type"), "sim")
            for name in schema.get("required") or ()}


def _prompt_tokens(doc: dict) -> int:
    size = len(orjson.dumps(doc.get("messages"))) + len(str(doc.get("system") or ""))
    return max(1, size // 4)


def _sse(kind: str, data: dict) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps(data))


def count_tokens(sim, conn, req) -> None:
    """``POST /v1/messages/count_tokens``: the prompt's size as ``answer`` counts it."""
    sim.stats["count_tokens"] += 1
    if sim.api_key is not None and _header(req, b"x-api-key") != sim.api_key.encode():
        return conn.send(req, 401, error_body(401, "invalid x-api-key"))
    if not _header(req, b"anthropic-version"):
        return conn.send(req, 400, error_body(400, "anthropic-version: header is required"))
    doc, why = sim._parse_body(req)
    why = why or problem(doc, counting=True)
    if why:
        return conn.send(req, 400, error_body(400, why))
    conn.send(req, 200, orjson.dumps({"input_tokens": _prompt_tokens(doc)}))


def answer(sim, conn, req) -> None:
    """``POST /v1/messages``."""
    sim.stats["messages"] += 1
    beh = sim.behaviour
    if sim.api_key is not None and _header(req, b"x-api-key") != sim.api_key.encode():
        return conn.send(req, 401, error_body(401, "invalid x-api-key"))
    if not _header(req, b"anthropic-version"):
        return conn.send(req, 400, error_body(400, "anthropic-version: header is required"))
    doc, why = sim._parse_body(req)
    status = sim.injected_status(beh)
    if status is not None:
        extra = b""
        if beh.retry_after is not None and status in (429, 503, 529):
            extra = b"retry-after: %s\r\n" % wire.format_seconds(beh.retry_after)
        return conn.send(req, status, error_body(status, "simulated upstream error %d"
                                                 % status), extra)
    why = why or problem(doc)
    if why:
        return conn.send(req, 400, error_body(400, why))
    messages = doc["messages"]
    prompt_tokens = _prompt_tokens(doc)
    if beh.context_window is not None and prompt_tokens > beh.context_window:
        sim.stats["context_exceeded"] += 1
        return conn.send(req, 400, error_body(400, "prompt is too long: %d tokens > %d "
                                              "maximum" % (prompt_tokens, beh.context_window)))
    results = _tool_results(messages)
    tool = None if results else _tool_to_call(doc)
    message_id = "msg_sim%x" % next(sim._ids)
    model = doc["model"]
    if tool is not None:
        arguments = orjson.dumps(_arguments(tool)).decode()
        pieces = wire.split_reply(arguments, max(1, min(beh.options["chunks"], len(arguments))))
        block = {"type": "tool_use", "id": "toolu_sim%x" % next(sim._ids),
                 "name": tool["name"], "input": {}}
        whole = {**block, "input": orjson.loads(arguments)}
        stop_reason = "tool_use"
    else:
        if results:
            pieces = wire.split_reply("The tool answered: %s" % " | ".join(results),
                                      beh.options["chunks"])
        else:
            pieces = list(beh.fragments.pieces)
        block = {"type": "text", "text": ""}
        whole = {"type": "text", "text": "".join(pieces)}
        stop_reason = "end_turn"
    output_tokens = len(pieces)
    usage = {"input_tokens": prompt_tokens, "output_tokens": output_tokens}
    if doc.get("stream") is True:
        kind = "input_json_delta" if tool is not None else "text_delta"
        key = "partial_json" if tool is not None else "text"
        opening = (_sse("message_start", {"type": "message_start", "message": {
            "id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": prompt_tokens, "output_tokens": 1}}})
            + _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                           "content_block": block})
            + _sse("ping", {"type": "ping"}))
        deltas = [_sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": kind, key: piece}})
                  for piece in pieces]
        closing = (_sse("content_block_stop", {"type": "content_block_stop", "index": 0})
                   + _sse("message_delta", {"type": "message_delta", "delta": {
                       "stop_reason": stop_reason, "stop_sequence": None},
                       "usage": {"output_tokens": output_tokens}})
                   + _sse("message_stop", {"type": "message_stop"}))
        # The layout start_stream paces: an opening, one event per piece, then the end.
        conn.start_stream(req, [opening, *deltas, closing], beh, len(deltas))
        return
    body = orjson.dumps({"id": message_id, "type": "message", "role": "assistant",
                         "model": model, "content": [whole], "stop_reason": stop_reason,
                         "stop_sequence": None, "usage": usage})
    conn.send(req, 200, body, delay=beh.nonstream_delay, framing=beh.framing)
