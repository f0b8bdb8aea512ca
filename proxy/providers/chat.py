"""Reading a Chat Completions request the way every adapter must before it writes its own
provider's: the body, a message's text or parts, a tool call's arguments, the function
tools, the stop sequences — each refused in the provider's name (``Untranslatable``) when
it is not something the provider could be sent."""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from .base import Untranslatable


class Image(NamedTuple):
    url: str
    media_type: str | None   # of a base64 data URL; None for any other URL
    data: str | None         # its base64 payload


class Function(NamedTuple):
    name: str
    description: str | None
    parameters: dict | None


class ChatReader:
    __slots__ = ("provider",)

    def __init__(self, provider: str) -> None:
        self.provider = provider

    def refuse(self, message: str) -> Untranslatable:
        return Untranslatable("%s: %s" % (self.provider, message))

    def load(self, body: bytes, known: set[str]) -> dict:
        """The request as a dict; a field this provider has no counterpart for refuses it."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise self.refuse("the request body is not JSON") from None
        return self.check(doc, known)

    def check(self, doc: Any, known: set[str]) -> dict:
        if not isinstance(doc, dict):
            raise self.refuse("the request body must be a JSON object")
        unknown = sorted(set(doc) - known)
        if unknown:
            raise self.refuse("%s: no counterpart in this provider's API" % unknown[0])
        return doc

    def text(self, content: Any, where: str) -> str:
        """A message's content that may only be text (a system prompt, a tool result)."""
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                             for p in content):
            return "\n\n".join(str(p.get("text", "")) for p in content)
        raise self.refuse("%s: only a string or text parts can go here" % where)

    def parts(self, content: Any, where: str) -> list[str | Image]:
        """A message's content as its texts and images, in order (empty text left out)."""
        if content is None:
            return []
        if isinstance(content, str):
            return [content] if content else []
        if not isinstance(content, list):
            raise self.refuse("%s: expected a string or a list of parts" % where)
        out: list[str | Image] = []
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                out.append(str(part.get("text", "")))
            elif kind == "image_url":
                out.append(self._image(part, "%s[%d]" % (where, i)))
            else:
                raise self.refuse("%s[%d]: parts of type %r cannot be sent" % (where, i, kind))
        return out

    def _image(self, part: dict, where: str) -> Image:
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str):
            raise self.refuse("%s: image_url.url is required" % where)
        if not url.startswith("data:"):
            return Image(url, None, None)
        header, _, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if encoding != "base64" or not data:
            raise self.refuse("%s: only base64 data URLs can be sent" % where)
        return Image(url, media_type, data)

    def call(self, call: Any, where: str) -> tuple[str, str, dict]:
        """(id, function name, arguments) of an assistant message's tool call."""
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise self.refuse("%s: a tool call needs a function name" % where)
        raw = function.get("arguments") or "{}"
        try:
            arguments = orjson.loads(raw) if isinstance(raw, str) else raw
        except orjson.JSONDecodeError:
            raise self.refuse("%s: the arguments are not JSON" % where) from None
        if not isinstance(arguments, dict):
            raise self.refuse("%s: the arguments must be a JSON object" % where)
        return str(call.get("id") or ""), function["name"], arguments

    def functions(self, tools: Any) -> list[Function]:
        if not isinstance(tools, list):
            raise self.refuse("tools: expected a list")
        out = []
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str) \
                    or tool.get("type", "function") != "function":
                raise self.refuse("tools[%d]: only function tools can be sent" % i)
            description = function.get("description")
            out.append(Function(function["name"],
                                description if isinstance(description, str) else None,
                                function.get("parameters") or None))
        return out

    def refuse_unsupported(self, doc: dict, one_choice: bool = True,
                           json_output: bool = False) -> None:
        """What most providers cannot do: several choices, log probabilities, a JSON
        ``response_format`` (unless ``json_output``)."""
        if one_choice and doc.get("n") not in (None, 1):
            raise self.refuse("n: %s answers one choice per request" % self.provider.title())
        if doc.get("logprobs"):
            raise self.refuse("logprobs: %s does not report them" % self.provider.title())
        response_format = doc.get("response_format")
        if not json_output and isinstance(response_format, dict) \
                and response_format.get("type") not in (None, "text"):
            raise self.refuse("response_format: %s has no counterpart"
                              % response_format.get("type"))


def add_turn(turns: list[dict], role: str, blocks: list, key: str) -> None:
    """Append a turn, or extend the last one if it has the same role: the providers whose
    roles must alternate take consecutive messages of one role as one turn."""
    if turns and turns[-1]["role"] == role:
        turns[-1][key].extend(blocks)
    else:
        turns.append({"role": role, key: blocks})


def stop_sequences(stop: Any) -> list | None:
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and stop:
        return stop
    return None


def max_tokens(doc: dict) -> int | None:
    return doc.get("max_completion_tokens") or doc.get("max_tokens") or None
