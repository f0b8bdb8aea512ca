"""The simulator's Gemini API: ``POST /v1beta/models/{model}:generateContent`` and
``:streamGenerateContent?alt=sse``.

It checks a request as Gemini does — ``contents`` with the roles ``user`` and ``model``,
parts of a known kind, a ``functionResponse`` only in a user turn — and answers with the
simulator's reply in Gemini's shapes: a stream is one chunk per reply piece, the last with
the finish reason and ``usageMetadata``, and no end marker (the body ends). A request with
function declarations whose last turn brings no function response is answered with a call
of the first function (or the one ``allowedFunctionNames`` names), one that brings one with
a text quoting it. Injected errors use Google's error body.
"""

from __future__ import annotations

from typing import Any

import orjson

from . import wire
from .messages import _arguments

PREFIX = b"/v1beta/models/"
STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
            404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
            503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_PARTS = ("text", "inlineData", "fileData", "functionCall", "functionResponse")


def error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"error": {"code": status, "message": message,
                                   "status": STATUSES.get(status, "UNKNOWN")}})


def problem(doc: Any) -> str:
    if not isinstance(doc, dict):
        return "Invalid JSON payload received. Expected an object."
    contents = doc.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for i, content in enumerate(contents):
        role = content.get("role") if isinstance(content, dict) else None
        if role not in ("user", "model"):
            return "* GenerateContentRequest.contents[%d].role: must be user or model" % i
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            return "* GenerateContentRequest.contents[%d].parts: must not be empty" % i
        for j, part in enumerate(parts):
            kinds = [k for k in _PARTS if isinstance(part, dict) and k in part]
            if len(kinds) != 1:
                return ("* GenerateContentRequest.contents[%d].parts[%d]: exactly one of %s"
                        % (i, j, ", ".join(_PARTS)))
            if kinds[0] == "functionResponse" and role != "user":
                return ("* GenerateContentRequest.contents[%d].parts[%d]: a function "
                        "response belongs in a user turn" % (i, j))
            if kinds[0] == "functionCall" and role != "model":
                return ("* GenerateContentRequest.contents[%d].parts[%d]: a function call "
                        "belongs in a model turn" % (i, j))
    system = doc.get("systemInstruction")
    if system is not None and not (isinstance(system, dict)
                                   and isinstance(system.get("parts"), list)):
        return "* GenerateContentRequest.system_instruction: parts are required"
    return ""


def _results(contents: list) -> list[str]:
    last = contents[-1]
    if last.get("role") != "user":
        return []
    out = []
    for part in last["parts"]:
        response = part.get("functionResponse") if isinstance(part, dict) else None
        if isinstance(response, dict):
            result = response.get("response")
            if isinstance(result, dict) and set(result) == {"content"}:
                result = result["content"]
            out.append(result if isinstance(result, str) else orjson.dumps(result).decode())
    return out


def _function(doc: dict) -> dict | None:
    declarations = [d for tool in doc.get("tools") or () if isinstance(tool, dict)
                    for d in tool.get("functionDeclarations") or ()]
    config = ((doc.get("toolConfig") or {}).get("functionCallingConfig") or {})
    if not declarations or config.get("mode") == "NONE":
        return None
    allowed = config.get("allowedFunctionNames")
    if allowed:
        return next((d for d in declarations if d.get("name") in allowed), None)
    return declarations[0]


def answer(sim, conn, req) -> None:
    sim.stats["gemini"] += 1
    beh = sim.behaviour
    model, _, method = req.path[len(PREFIX):].decode("latin-1").partition(":")
    if method not in ("generateContent", "streamGenerateContent") or not model:
        return conn.send(req, 404, error_body(404, "method %r not found" % method))
    stream = method == "streamGenerateContent"
    doc, why = sim._parse_body(req)
    status = sim.injected_status(beh)
    if status is not None:
        return conn.send(req, status, error_body(status, "simulated upstream error %d"
                                                 % status))
    why = why or problem(doc)
    if why:
        return conn.send(req, 400, error_body(400, why))
    contents = doc["contents"]
    prompt_tokens = max(1, len(orjson.dumps(contents)) // 4)
    if beh.context_window is not None and prompt_tokens > beh.context_window:
        sim.stats["context_exceeded"] += 1
        return conn.send(req, 400, error_body(400, "The input token count (%d) exceeds the "
                                              "maximum number of tokens allowed (%d)."
                                              % (prompt_tokens, beh.context_window)))
    results = _results(contents)
    function = None if results else _function(doc)
    if function is not None:
        schema = function.get("parameters") or {}
        pieces = [{"functionCall": {"name": function["name"],
                                    "args": _arguments({"input_schema": schema})}}]
    else:
        text = ("The tool answered: %s" % " | ".join(results) if results
                else "".join(beh.fragments.pieces))
        pieces = [{"text": piece} for piece in wire.split_reply(text, beh.options["chunks"])]
    response_id = "gemini-sim%x" % next(sim._ids)
    usage = {"promptTokenCount": prompt_tokens, "candidatesTokenCount": len(pieces),
             "totalTokenCount": prompt_tokens + len(pieces)}

    def chunk(parts: list, last: bool) -> dict:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts},
                                     "index": 0}
        if last:
            candidate["finishReason"] = "STOP"
        return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model,
                "responseId": response_id}

    if stream:
        events = [b"data: %s\r\n\r\n" % orjson.dumps(chunk([piece], i == len(pieces) - 1))
                  for i, piece in enumerate(pieces)]
        # start_stream's layout: an opening, then the content events; no end event of its
        # own (Gemini's stream ends with its body).
        conn.start_stream(req, events, beh, len(events) - 1)
        return
    conn.send(req, 200, orjson.dumps(chunk(pieces, True)), delay=beh.nonstream_delay,
              framing=beh.framing)
