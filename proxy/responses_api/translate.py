"""OpenAI Responses <-> Chat Completions, both ways, as plain dicts.

A ``/v1/responses`` request is translated into a chat completion on the way in, and its
answer back into a ``response`` object, or the Responses event stream, on the way out.
llmedge keeps no conversation state: ``previous_response_id`` and ``store: true`` (which
later calls would need to read back) are refused rather than silently ignored; the history
goes in ``input``, as a stateless client sends it.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from ..errors import BadRequest

_KNOWN = {"model", "input", "instructions", "max_output_tokens", "temperature", "top_p",
          "tools", "tool_choice", "parallel_tool_calls", "stream", "metadata", "user",
          "store", "text", "reasoning", "truncation", "service_tier", "include",
          "previous_response_id", "stream_options", "safety_identifier", "prompt_cache_key"}
# Provider tuning an OpenAI-compatible upstream's chat endpoint has no field for.
_IGNORED = ("reasoning", "truncation", "service_tier", "include", "stream_options",
            "safety_identifier", "prompt_cache_key")


def _bad(message: str, param: str) -> BadRequest:
    return BadRequest(message, param=param)


def _content(content: Any, role: str, where: str) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad("%s.content: expected a string or a list of parts" % where, "input")
    parts: list[dict] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image: dict[str, Any] = {"url": part["image_url"]}
            if isinstance(part.get("detail"), str):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append({"type": "text", "text": part["refusal"]})
        else:
            raise _bad("%s.content[%d]: unsupported part %r" % (where, j, kind), "input")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _items(items: list) -> list[dict]:
    messages: list[dict] = []
    for i, item in enumerate(items):
        where = "input[%d]" % i
        if not isinstance(item, dict):
            raise _bad("%s: expected an object" % where, "input")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _bad("%s.role: unknown role %r" % (where, role), "input")
            messages.append({"role": "system" if role == "developer" else role,
                             "content": _content(item.get("content"), role, where)})
        elif kind == "function_call":
            if not isinstance(item.get("call_id"), str) or not isinstance(item.get("name"), str):
                raise _bad("%s: a function_call needs a call_id and a name" % where, "input")
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"],
                                 "arguments": item.get("arguments") or "{}"}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") \
                    is not None:
                last["tool_calls"].append(call)   # parallel calls share one turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise _bad("%s: a function_call_output needs a call_id" % where, "input")
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": output if isinstance(output, str)
                             else orjson.dumps(output).decode()})
        elif kind == "reasoning":
            continue   # the model's own reasoning: nothing a chat upstream takes back
        else:
            raise _bad("%s: unsupported item type %r" % (where, kind), "input")
    return messages


def _tools(tools: Any) -> list[dict]:
    if not isinstance(tools, list):
        raise _bad("tools: expected a list", "tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function" \
                or not isinstance(tool.get("name"), str):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise _bad("tools[%d]: only function tools are supported, got %r" % (i, kind),
                       "tools")
        function: dict[str, Any] = {"name": tool["name"], "parameters": tool.get(
            "parameters") or {"type": "object", "properties": {}}}
        for name in ("description", "strict"):
            if tool.get(name) is not None:
                function[name] = tool[name]
        out.append({"type": "function", "function": function})
    return out


def chat_request(doc: Any) -> dict:
    """A Responses request body (decoded JSON) as a Chat Completions one."""
    if not isinstance(doc, dict):
        raise _bad("the request body must be a JSON object", "body")
    unknown = sorted(set(doc) - _KNOWN)
    if unknown:
        raise _bad("%s: unknown field" % unknown[0], unknown[0])
    if doc.get("previous_response_id") is not None:
        raise _bad("previous_response_id: llmedge keeps no responses; send the "
                   "conversation in input", "previous_response_id")
    if doc.get("store"):
        raise _bad("store: llmedge keeps no responses; set store to false",
                   "store")
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model: a model (route or deployment) is required", "model")
    given = doc.get("input")
    messages: list[dict] = []
    if doc.get("instructions") is not None:
        if not isinstance(doc["instructions"], str):
            raise _bad("instructions: expected a string", "instructions")
        messages.append({"role": "system", "content": doc["instructions"]})
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list) and given:
        messages += _items(given)
    else:
        raise _bad("input: a string or a non-empty list of items is required", "input")
    out: dict[str, Any] = {"model": model, "messages": messages}
    if doc.get("max_output_tokens") is not None:
        value = doc["max_output_tokens"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _bad("max_output_tokens: expected an integer >= 1", "max_output_tokens")
        out["max_tokens"] = value
    for name in ("temperature", "top_p"):
        value = doc.get(name)
        if value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise _bad("%s: expected a number" % name, name)
            out[name] = value
    for name in ("user", "safety_identifier"):
        if isinstance(doc.get(name), str):
            out["user"] = doc[name]
            break
    if doc.get("tools"):
        out["tools"] = _tools(doc["tools"])
    choice = doc.get("tool_choice")
    if choice is not None:
        if choice in ("auto", "none", "required"):
            out["tool_choice"] = choice
        elif isinstance(choice, dict) and choice.get("type") == "function" \
                and isinstance(choice.get("name"), str):
            out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        else:
            raise _bad("tool_choice: expected auto, none, required or a function",
                       "tool_choice")
    if isinstance(doc.get("parallel_tool_calls"), bool) and "tools" in out:
        out["parallel_tool_calls"] = doc["parallel_tool_calls"]
    text = doc.get("text")
    if isinstance(text, dict) and isinstance(text.get("format"), dict):
        fmt = text["format"]
        if fmt.get("type") == "json_schema":
            schema = {k: fmt[k] for k in ("name", "schema", "strict", "description")
                      if k in fmt}
            out["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif fmt.get("type") == "json_object":
            out["response_format"] = {"type": "json_object"}
    stream = doc.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream: expected true or false", "stream")
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


# === the answer ===

def usage(openai_usage: Any) -> dict:
    doc = openai_usage if isinstance(openai_usage, dict) else {}
    details = doc.get("prompt_tokens_details")
    completion_details = doc.get("completion_tokens_details")
    prompt = int(doc.get("prompt_tokens") or 0)
    completion = int(doc.get("completion_tokens") or 0)
    return {"input_tokens": prompt, "output_tokens": completion,
            "total_tokens": int(doc.get("total_tokens") or prompt + completion),
            "input_tokens_details": {"cached_tokens": int(
                (details or {}).get("cached_tokens") or 0) if isinstance(details, dict) else 0},
            "output_tokens_details": {"reasoning_tokens": int(
                (completion_details or {}).get("reasoning_tokens") or 0)
                if isinstance(completion_details, dict) else 0}}


class Shell:
    """What every ``response`` object of one request carries besides its output."""

    def __init__(self, response_id: str, model: str, request: dict) -> None:
        self.id = response_id
        self.model = model
        self.created_at = int(time.time())
        self.request = request

    def response(self, status: str, output: list, usage_doc: dict | None,
                 incomplete: str | None = None) -> dict:
        request = self.request
        return {"id": self.id, "object": "response", "created_at": self.created_at,
                "status": status, "model": self.model, "output": output,
                "error": None,
                "incomplete_details": {"reason": incomplete} if incomplete else None,
                "instructions": request.get("instructions"),
                "max_output_tokens": request.get("max_output_tokens"),
                "temperature": request.get("temperature"), "top_p": request.get("top_p"),
                "tools": request.get("tools") or [],
                "tool_choice": request.get("tool_choice") or "auto",
                "parallel_tool_calls": request.get("parallel_tool_calls", True),
                "metadata": request.get("metadata") or {}, "store": False,
                "text": request.get("text") or {"format": {"type": "text"}},
                "truncation": "disabled", "usage": usage_doc}


def _message_item(item_id: str, text: str, status: str = "completed") -> dict:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]
            if status == "completed" else []}


def _call_item(item_id: str, call_id: str, name: str, arguments: str,
               status: str = "completed") -> dict:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def response(completion: Any, shell: Shell) -> dict:
    """A Chat Completions answer (decoded JSON) as a ``response`` object."""
    choice = (completion.get("choices") or [{}])[0] if isinstance(completion, dict) else {}
    said = choice.get("message") or {}
    output: list[dict] = []
    if said.get("content"):
        output.append(_message_item("msg_" + shell.id[5:], said["content"]))
    for k, call in enumerate(said.get("tool_calls") or ()):
        function = call.get("function") or {}
        output.append(_call_item("fc_%s_%d" % (shell.id[5:], k), call.get("id") or "",
                                 function.get("name") or "", function.get("arguments") or ""))
    finish = choice.get("finish_reason")
    return shell.response("incomplete" if finish == "length" else "completed", output,
                          usage(completion.get("usage") if isinstance(completion, dict)
                                else None),
                          "max_output_tokens" if finish == "length" else None)


_TEXT_DELTA = (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
               b'"item_id":%s,"output_index":%d,"content_index":0,"delta":%s,'
               b'"sequence_number":%d}\n\n')


def sse(data: dict) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (data["type"].encode(), orjson.dumps(data))


class StreamTranslator:
    """Chat Completions chunks in, Responses events out: ``response.created`` at once, each
    output item added, filled (text or function-call argument deltas) and done in turn,
    then ``response.completed`` with the whole response."""

    def __init__(self, shell: Shell) -> None:
        self.shell = shell
        self.sequence = 0
        self.items: list[dict] = []     # the output so far, completed as they close
        self.open: dict | None = None   # the item being filled
        self.open_key: str | None = None
        self.usage: dict | None = None
        self.finish: str | None = None
        self.ended = False

    def _event(self, data: dict) -> bytes:
        data["sequence_number"] = self.sequence
        self.sequence += 1
        return sse(data)

    def start(self) -> bytes:
        created = self.shell.response("in_progress", [], None)
        return (self._event({"type": "response.created", "response": created})
                + self._event({"type": "response.in_progress", "response": created}))

    def _close(self) -> bytes:
        item = self.open
        if item is None:
            return b""
        self.open = self.open_key = None
        index = len(self.items) - 1
        out = b""
        if item["type"] == "message":
            text = item["_text"]
            part = {"type": "output_text", "text": text, "annotations": []}
            out += self._event({"type": "response.output_text.done", "item_id": item["id"],
                                "output_index": index, "content_index": 0, "text": text})
            out += self._event({"type": "response.content_part.done", "item_id": item["id"],
                                "output_index": index, "content_index": 0, "part": part})
            done = _message_item(item["id"], text)
        else:
            out += self._event({"type": "response.function_call_arguments.done",
                                "item_id": item["id"], "output_index": index,
                                "arguments": item["arguments"]})
            done = _call_item(item["id"], item["call_id"], item["name"], item["arguments"])
        self.items[index] = done
        return out + self._event({"type": "response.output_item.done", "output_index": index,
                                  "item": done})

    def _open_text(self) -> bytes:
        out = self._close()
        item_id = "msg_%s_%d" % (self.shell.id[5:], len(self.items))
        item = {**_message_item(item_id, "", "in_progress"), "_text": ""}
        self.items.append(item)
        self.open, self.open_key = item, "text"
        index = len(self.items) - 1
        added = {k: v for k, v in item.items() if k != "_text"}
        return out + self._event({
            "type": "response.output_item.added", "output_index": index, "item": added}) \
            + self._event({"type": "response.content_part.added", "item_id": item_id,
                           "output_index": index, "content_index": 0,
                           "part": {"type": "output_text", "text": "", "annotations": []}})

    def _open_call(self, key: str, call_id: str, name: str) -> bytes:
        out = self._close()
        item_id = "fc_%s_%d" % (self.shell.id[5:], len(self.items))
        item = _call_item(item_id, call_id, name, "", "in_progress")
        self.items.append(item)
        self.open, self.open_key = item, key
        return out + self._event({"type": "response.output_item.added",
                                  "output_index": len(self.items) - 1, "item": dict(item)})

    def chunk(self, doc: Any) -> bytes:
        if not isinstance(doc, dict):
            return b""
        out = b""
        if doc.get("usage"):
            self.usage = usage(doc["usage"])
        for choice in doc.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self.open_key != "text":
                    out += self._open_text()
                assert self.open is not None
                self.open["_text"] += text
                # The event of nearly every chunk, written without building it as a dict.
                out += _TEXT_DELTA % (orjson.dumps(self.open["id"]), len(self.items) - 1,
                                      orjson.dumps(text), self.sequence)
                self.sequence += 1
            for call in delta.get("tool_calls") or ():
                key = "tool:%s" % call.get("index", 0)
                function = call.get("function") or {}
                if self.open_key != key:
                    out += self._open_call(key, call.get("id") or "", function.get("name") or "")
                assert self.open is not None
                if function.get("arguments"):
                    self.open["arguments"] += function["arguments"]
                    out += self._event({"type": "response.function_call_arguments.delta",
                                        "item_id": self.open["id"],
                                        "output_index": len(self.items) - 1,
                                        "delta": function["arguments"]})
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def end(self) -> bytes:
        if self.ended:
            return b""
        self.ended = True
        out = self._close()
        incomplete = self.finish == "length"
        final = self.shell.response("incomplete" if incomplete else "completed", self.items,
                                    self.usage, "max_output_tokens" if incomplete else None)
        return out + self._event({"type": "response.incomplete" if incomplete
                                  else "response.completed", "response": final})

    def error(self, code: str, message: str) -> bytes:
        self.ended = True
        items = [{k: v for k, v in item.items() if k != "_text"} for item in self.items]
        failed = self.shell.response("failed", items, self.usage)
        failed["error"] = {"code": code, "message": message}
        return self._event({"type": "error", "code": code, "message": message,
                            "param": None}) \
            + self._event({"type": "response.failed", "response": failed})
