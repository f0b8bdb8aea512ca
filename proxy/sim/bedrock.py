"""The simulator's Amazon Bedrock runtime: ``POST /model/{modelId}/converse`` and
``/converse-stream``.

With ``--api-key`` set, every request must carry an AWS Signature Version 4 made with that
key as the secret access key (any access key id; service ``bedrock``): the simulator
computes the signature again, with botocore, over the request as it arrived (method, path,
the signed headers, the body) and answers 403 ``InvalidSignatureException`` when they
differ, as AWS does. It checks a Converse request's shape (alternating roles starting with
the user's, one kind per content block, tool results only in user turns) and answers with
the simulator's reply; a stream is AWS's binary event stream (``messageStart``,
``contentBlockDelta`` per piece, ``contentBlockStop``, ``messageStop``, then ``metadata``
with usage). Tools are called and their results quoted as the other protocols do.

``GET /_sim/aws/credentials`` plays a container credentials endpoint (what
``AWS_CONTAINER_CREDENTIALS_FULL_URI`` points at): new temporary credentials at every call,
signed by the ``--api-key`` secret, that expire in 14 minutes — inside botocore's renewal
window, so a client renews them whenever it looks.
"""

from __future__ import annotations

import datetime
import re
import struct
import zlib
from typing import Any

import orjson

from . import wire
from .messages import _arguments

PREFIX = b"/model/"
STREAM_TYPE = b"application/vnd.amazon.eventstream"
ERRORS = {400: "ValidationException", 403: "AccessDeniedException",
          404: "ResourceNotFoundException", 408: "ModelTimeoutException",
          424: "ModelErrorException", 429: "ThrottlingException",
          500: "InternalServerException", 503: "ServiceUnavailableException"}
_BLOCKS = ("text", "image", "document", "toolUse", "toolResult", "reasoningContent")
_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request,"
                   r"\s*SignedHeaders=([^,]+),\s*Signature=([0-9a-f]{64})$")


def container_credentials(sim, conn, req) -> None:
    sim.stats["aws_credentials"] += 1
    n = sim.stats["aws_credentials"]
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=14)
    conn.send(req, 200, orjson.dumps({
        "AccessKeyId": "AKIDCONTAINER%d" % n, "SecretAccessKey": sim.api_key or "",
        "Token": "container-%d" % n, "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}))


def error(status: int, message: str) -> tuple[bytes, bytes]:
    """(body, header line) of an AWS error answer."""
    kind = ERRORS.get(status, "InternalServerException")
    return orjson.dumps({"message": message}), b"x-amzn-errortype: %s\r\n" % kind.encode()


def event(kind: str, payload: dict, message_type: str = "event") -> bytes:
    """One message of AWS's event stream encoding: a prelude (total and headers length,
    its CRC32), string headers, the payload and a CRC32 of everything before it."""
    headers = b""
    for name, value in ((":event-type" if message_type == "event" else ":exception-type",
                         kind), (":content-type", "application/json"),
                        (":message-type", message_type)):
        raw = value.encode()
        headers += struct.pack(">B", len(name)) + name.encode() + b"\x07" \
            + struct.pack(">H", len(raw)) + raw
    body = orjson.dumps(payload)
    total = 12 + len(headers) + len(body) + 4
    prelude = struct.pack(">II", total, len(headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + body
    return message + struct.pack(">I", zlib.crc32(message))


def signature_problem(req, secret: str) -> str:
    """Why the request's SigV4 signature is not one made with ``secret``, or ""."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in req.headers}
    match = _AUTH.match(headers.get("authorization", ""))
    if match is None:
        return "Missing Authentication Token"
    access_key, day, region, service, signed, signature = match.groups()
    if service != "bedrock":
        return "Credential should be scoped to correct service: 'bedrock'."
    stamp = headers.get("x-amz-date", "")
    try:
        when = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(
            tzinfo=datetime.timezone.utc)
    except ValueError:
        return "X-Amz-Date is missing or malformed"
    if not stamp.startswith(day):
        return "Date in Credential scope does not match YYYYMMDD from X-Amz-Date"
    if abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) > 300:
        return "Signature expired"
    try:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials
    except ImportError:
        return "the simulator needs botocore to check signatures"
    names = signed.split(";")
    if "host" not in names:
        return "'Host' must be a signed header"
    url = "http://%s%s" % (headers.get("host", ""), req.path.decode("latin-1")
                           + ("?" + req.query.decode("latin-1") if req.query else ""))
    again = AWSRequest("POST", url, data=req.body,
                       headers={n: headers.get(n, "") for n in names if n != "host"})
    again.context["timestamp"] = stamp
    auth = SigV4Auth(Credentials(access_key, secret, headers.get("x-amz-security-token")),
                     "bedrock", region)
    expected = auth.signature(auth.string_to_sign(again, auth.canonical_request(again)), again)
    if expected != signature:
        return ("The request signature we calculated does not match the signature you "
                "provided.")
    return ""


def problem(doc: Any) -> str:
    if not isinstance(doc, dict):
        return "Malformed input request, please reformat your input and try again."
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages:
        return "The messages field is required."
    previous = None
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return "messages.%d.role: must be user or assistant" % i
        if previous is None and role != "user":
            return "A conversation must start with a user message."
        if role == previous:
            return ("A conversation must alternate between user and assistant roles.")
        previous = role
        content = message.get("content")
        if not isinstance(content, list) or not content:
            return "messages.%d.content: must be a non-empty list" % i
        for j, block in enumerate(content):
            kinds = [k for k in _BLOCKS if isinstance(block, dict) and k in block]
            if len(kinds) != 1:
                return "messages.%d.content.%d: exactly one of %s" % (i, j, ", ".join(_BLOCKS))
            if kinds[0] == "toolResult" and role != "user":
                return "messages.%d.content.%d: toolResult only in a user turn" % (i, j)
            if kinds[0] == "toolUse" and role != "assistant":
                return "messages.%d.content.%d: toolUse only in an assistant turn" % (i, j)
    system = doc.get("system")
    if system is not None and not (isinstance(system, list) and all(
            isinstance(b, dict) and isinstance(b.get("text"), str) for b in system)):
        return "system: a list of text blocks"
    tools = (doc.get("toolConfig") or {}).get("tools")
    if tools is not None and not all(
            isinstance(t, dict) and isinstance((t.get("toolSpec") or {}).get("name"), str)
            and isinstance(((t.get("toolSpec") or {}).get("inputSchema") or {}).get("json"),
                           dict) for t in tools):
        return "toolConfig.tools: each needs a toolSpec with a name and inputSchema.json"
    return ""


def _results(messages: list) -> list[str]:
    last = messages[-1]
    if last.get("role") != "user":
        return []
    out = []
    for block in last["content"]:
        result = block.get("toolResult") if isinstance(block, dict) else None
        if isinstance(result, dict):
            out.append(" ".join(str(c.get("text", orjson.dumps(c.get("json")).decode()))
                                for c in result.get("content") or () if isinstance(c, dict)))
    return out


def _tool(doc: dict) -> dict | None:
    config = doc.get("toolConfig") or {}
    specs = [t["toolSpec"] for t in config.get("tools") or ()]
    if not specs:
        return None
    named = ((config.get("toolChoice") or {}).get("tool") or {}).get("name")
    if named:
        return next((s for s in specs if s["name"] == named), None)
    return specs[0]


def answer(sim, conn, req) -> None:
    sim.stats["bedrock"] += 1
    beh = sim.behaviour
    model, _, action = req.path[len(PREFIX):].decode("latin-1").rpartition("/")
    if action not in ("converse", "converse-stream") or not model:
        body, extra = error(404, "unknown operation %r" % action)
        return conn.send(req, 404, body, extra)
    if sim.api_key is not None:
        why = signature_problem(req, sim.api_key)
        if why:
            sim.stats["bad_signatures"] += 1
            body, _ = error(403, why)
            return conn.send(req, 403, body, b"x-amzn-errortype: InvalidSignatureException\r\n")
    doc, why = sim._parse_body(req)
    status = sim.injected_status(beh)
    if status is not None:
        body, extra = error(status, "simulated upstream error %d" % status)
        return conn.send(req, status, body, extra)
    why = why or problem(doc)
    if why:
        body, extra = error(400, why)
        return conn.send(req, 400, body, extra)
    messages = doc["messages"]
    prompt_tokens = max(1, len(orjson.dumps(messages)) // 4)
    if beh.context_window is not None and prompt_tokens > beh.context_window:
        sim.stats["context_exceeded"] += 1
        body, extra = error(400, "Input is too long for requested model.")
        return conn.send(req, 400, body, extra)
    results = _results(messages)
    tool = None if results else _tool(doc)
    usage = {"inputTokens": prompt_tokens}
    if tool is not None:
        arguments = _arguments({"input_schema": tool["inputSchema"]["json"]})
        text = orjson.dumps(arguments).decode()
        pieces = wire.split_reply(text, max(1, min(beh.options["chunks"], len(text))))
        use_id = "tooluse_sim%x" % next(sim._ids)
        whole = [{"toolUse": {"toolUseId": use_id, "name": tool["name"], "input": arguments}}]
        stop_reason = "tool_use"
    else:
        reply = ("The tool answered: %s" % " | ".join(results) if results
                 else "".join(beh.fragments.pieces))
        pieces = wire.split_reply(reply, beh.options["chunks"])
        whole = [{"text": reply}]
        stop_reason = "end_turn"
    usage["outputTokens"] = len(pieces)
    usage["totalTokens"] = prompt_tokens + len(pieces)
    if action == "converse-stream":
        opening = event("messageStart", {"role": "assistant"})
        if tool is not None:
            opening += event("contentBlockStart", {"contentBlockIndex": 0, "start": {
                "toolUse": {"toolUseId": use_id, "name": tool["name"]}}})
        deltas = [event("contentBlockDelta", {"contentBlockIndex": 0, "delta": (
            {"toolUse": {"input": piece}} if tool is not None else {"text": piece})})
            for piece in pieces]
        closing = (event("contentBlockStop", {"contentBlockIndex": 0})
                   + event("messageStop", {"stopReason": stop_reason})
                   + event("metadata", {"usage": usage, "metrics": {"latencyMs": 1}}))
        conn.start_stream(req, [opening, *deltas, closing], beh, len(deltas),
                          ctype=STREAM_TYPE)
        return
    body = orjson.dumps({"output": {"message": {"role": "assistant", "content": whole}},
                         "stopReason": stop_reason, "usage": usage,
                         "metrics": {"latencyMs": 1}})
    conn.send(req, 200, body, delay=beh.nonstream_delay, framing=beh.framing)
