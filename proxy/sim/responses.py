"""The simulator's OpenAI Responses API: ``POST /v1/responses``, whole and streamed.

It checks the request's shape (``input`` a string or a list of items, ``tools`` as the
Responses API writes them: ``{"type": "function", "name", "parameters"}``) and answers with
the simulator's reply as a ``response`` object, or its event stream (``response.created``,
the message item added, one ``response.output_text.delta`` per piece, the item done,
``response.completed`` with usage). A request with function tools whose input ends in no
``function_call_output`` is answered with a call of the first tool, one that ends in one
with a text quoting it.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from . import wire
from .messages import _arguments


def problem(doc: Any) -> str:
    if not isinstance(doc, dict):
        return "request body must be a JSON object"
    if not isinstance(doc.get("model"), str):
        return "Missing required parameter: 'model'."
    given = doc.get("input")
    if not isinstance(given, (str, list)) or not given:
        return "Missing required parameter: 'input'."
    if isinstance(given, list):
        for i, item in enumerate(given):
            if not isinstance(item, dict) or not (item.get("type") in (
                    "message", "function_call", "function_call_output", "reasoning")
                    or "role" in item):
                return "Invalid value for 'input[%d]'." % i
    for i, tool in enumerate(doc.get("tools") or ()):
        if not isinstance(tool, dict) or (tool.get("type") == "function"
                                          and not isinstance(tool.get("name"), str)):
            return "Missing required parameter: 'tools[%d].name'." % i
    return ""


def _results(given: Any) -> list[str]:
    if not isinstance(given, list) or not given:
        return []
    results = []
    for item in reversed(given):
        if isinstance(item, dict) and item.get("type") == "function_call_output":
            results.insert(0, str(item.get("output", "")))
        else:
            break
    return results


def _sse(doc: dict) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (doc["type"].encode(), orjson.dumps(doc))


def answer(sim, conn, req) -> None:
    sim.stats["responses"] += 1
    beh = sim.behaviour
    doc, why = sim._parse_body(req)
    if sim._injected_error(conn, req, beh):
        return
    why = why or problem(doc)
    if why:
        return conn.send(req, 400, wire.error_body(400, why))
    results = _results(doc["input"])
    tools = [t for t in doc.get("tools") or () if t.get("type") == "function"]
    number = next(sim._ids)
    response_id = "resp_sim%x" % number
    prompt_tokens = max(1, len(orjson.dumps(doc["input"])) // 4)
    if tools and not results and doc.get("tool_choice") != "none":
        arguments = orjson.dumps(_arguments({"input_schema": tools[0].get("parameters")
                                             or {}})).decode()
        pieces = wire.split_reply(arguments, max(1, min(beh.options["chunks"],
                                                        len(arguments))))
        item = {"type": "function_call", "id": "fc_sim%x" % number,
                "call_id": "call_sim%x" % number, "name": tools[0]["name"],
                "arguments": arguments, "status": "completed"}
    else:
        text = ("The tool answered: %s" % " | ".join(results) if results
                else "".join(beh.fragments.pieces))
        pieces = wire.split_reply(text, beh.options["chunks"])
        item = {"type": "message", "id": "msg_sim%x" % number, "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}
    usage = {"input_tokens": prompt_tokens, "output_tokens": len(pieces),
             "total_tokens": prompt_tokens + len(pieces),
             "input_tokens_details": {"cached_tokens": 0},
             "output_tokens_details": {"reasoning_tokens": 0}}

    def response(status: str, output: list, counted: dict | None) -> dict:
        return {"id": response_id, "object": "response", "created_at": int(time.time()),
                "status": status, "model": doc["model"], "output": output, "usage": counted,
                "error": None, "incomplete_details": None}

    if doc.get("stream") is not True:
        return conn.send(req, 200, orjson.dumps(response("completed", [item], usage)),
                         delay=beh.nonstream_delay, framing=beh.framing)
    seq = iter(range(1 << 30))
    started = dict(item, status="in_progress")
    if item["type"] == "message":
        started["content"] = []
        delta = [_sse({"type": "response.output_text.delta", "item_id": item["id"],
                       "output_index": 0, "content_index": 0, "delta": piece,
                       "sequence_number": 0}) for piece in pieces]
        opening_part = _sse({"type": "response.content_part.added", "item_id": item["id"],
                             "output_index": 0, "content_index": 0, "sequence_number": 0,
                             "part": {"type": "output_text", "text": "", "annotations": []}})
        closing_part = _sse({"type": "response.output_text.done", "item_id": item["id"],
                             "output_index": 0, "content_index": 0, "sequence_number": 0,
                             "text": item["content"][0]["text"]})
    else:
        started["arguments"] = ""
        delta = [_sse({"type": "response.function_call_arguments.delta",
                       "item_id": item["id"], "output_index": 0, "delta": piece,
                       "sequence_number": 0}) for piece in pieces]
        opening_part = b""
        closing_part = _sse({"type": "response.function_call_arguments.done",
                             "item_id": item["id"], "output_index": 0, "sequence_number": 0,
                             "arguments": item["arguments"]})
    opening = (_sse({"type": "response.created", "sequence_number": next(seq),
                     "response": response("in_progress", [], None)})
               + _sse({"type": "response.output_item.added", "output_index": 0,
                       "sequence_number": next(seq), "item": started}) + opening_part)
    closing = (closing_part
               + _sse({"type": "response.output_item.done", "output_index": 0,
                       "sequence_number": 0, "item": item})
               + _sse({"type": "response.completed", "sequence_number": 0,
                       "response": response("completed", [item], usage)}))
    conn.start_stream(req, [opening, *delta, closing], beh, len(delta))
