"""Whether an upstream's 4xx says the prompt does not fit the model's context window.

Such a request may well fit a larger model, so it is the one client error worth sending
elsewhere. Servers say it in their own words; what each says is matched here, and nothing
else is: a content filter's refusal, or any other 4xx, goes back to the client as it is.
"""

from __future__ import annotations

import re

import orjson

# OpenAI and Azure OpenAI (and servers copying them) set this code.
_CODE = "context_length_exceeded"
_MESSAGES = re.compile("|".join((
    r"maximum context length",                   # OpenAI, vLLM, Mistral, DeepSeek
    r"context[ _]length[ _]exceeded",
    r"prompt is too long",                       # Anthropic
    r"input is too long",                        # AWS Bedrock
    r"exceeds? the (?:maximum )?context (?:window|length|size)",
    r"exceeds the available context size",       # llama.cpp server
    r"exceeds the maximum number of tokens",     # Google Gemini
    r"inputs?` tokens \+ `max_new_tokens` must be",  # Hugging Face TGI
    r"must have less than \d+ tokens",           # TGI
    r"too many (?:input )?tokens",
)), re.IGNORECASE)
STATUSES = frozenset((400, 413, 422))


def context_exceeded(status: int, body: bytes) -> bool:
    if status not in STATUSES or not body:
        return False
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _MESSAGES.search(body[:4096].decode("utf-8", "replace")) is not None
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):
        if _CODE in (error.get("code"), error.get("type")):
            return True
        message = error.get("message")
    elif isinstance(error, str):
        message = error
    else:
        message = doc.get("message") or doc.get("detail") if isinstance(doc, dict) else None
    return isinstance(message, str) and _MESSAGES.search(message) is not None
