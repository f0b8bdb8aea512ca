"""What an upstream's error answer becomes for the client.

Clients are promised OpenAI-shaped errors whoever failed. An upstream's own OpenAI-shaped
error says best what went wrong and goes back as it is; anything else (an HTML page from a
load balancer, a framework's ``{"detail": ...}``, Ollama's ``{"error": "..."}``) is wrapped,
keeping the upstream's status and a short excerpt of what it said.
"""

from __future__ import annotations

import orjson

from ..errors import UpstreamAnswer
from ..jsondoc import without_surrogate_escapes
from ..responder import JSON

EXCERPT_CHARS = 200


def excerpt(body: bytes, limit: int = EXCERPT_CHARS) -> str:
    """The start of a body as one printable line: enough to recognise a page, no more."""
    text = body[:limit * 4].decode("utf-8", "replace")
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def _json_object(body: bytes) -> dict | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        readable = without_surrogate_escapes(body)
        if readable is body:
            return None
        try:
            doc = orjson.loads(readable)
        except orjson.JSONDecodeError:
            return None
    return doc if isinstance(doc, dict) else None


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def error_for_client(status: int, body: bytes, content_type: bytes | None, deployment: str,
                     retry_after: float | None = None) -> UpstreamAnswer:
    """What to answer a client with for an upstream's non-2xx answer."""
    type_ = "upstream_error" if status >= 500 else (
        "rate_limit_error" if status == 429 else "invalid_request_error")
    doc = _json_object(body) if body else None
    if doc is not None:
        error = doc.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            is_json = content_type is not None and b"json" in content_type.lower()
            return UpstreamAnswer(status, error["message"], _text(error.get("type")) or type_,
                                  code=_text(error.get("code")), param=_text(error.get("param")),
                                  body=body, content_type=content_type if is_json else JSON,
                                  retry_after=retry_after)
        if isinstance(error, str) and error:
            message = "upstream %s answered %d: %s" % (deployment, status, error)
        else:
            message = "upstream %s answered %d: %s" % (deployment, status, excerpt(body))
    elif body:
        kind = (content_type or b"no content type").decode("latin-1").partition(";")[0]
        message = "upstream %s answered %d with a non-JSON body (%s): %s" % (
            deployment, status, kind, excerpt(body))
    else:
        message = "upstream %s answered %d with an empty body" % (deployment, status)
    return UpstreamAnswer(status, message, type_, code="upstream_status_%d" % status,
                          retry_after=retry_after)
