"""Which 4xx bodies say the prompt does not fit the context window (and which do not)."""

from __future__ import annotations

import json

import pytest

from proxy.upstream.context_limit import context_exceeded

TOO_LONG = [
    (400, {"error": {"message": "x", "type": "invalid_request_error",
                     "code": "context_length_exceeded"}}),                      # OpenAI
    (400, {"object": "error", "message": "This model's maximum context length is 8192 "
           "tokens. However, you requested 9000 tokens.", "code": 400}),       # vLLM
    (400, {"type": "error", "error": {"type": "invalid_request_error",
                                      "message": "prompt is too long: 210000 tokens > "
                                                 "200000 maximum"}}),           # Anthropic
    (400, {"message": "Input is too long for requested model."}),              # Bedrock
    (400, {"error": {"code": 400, "message": "The input token count (40000) exceeds the "
                     "maximum number of tokens allowed (32768).",
                     "status": "INVALID_ARGUMENT"}}),                          # Gemini
    (400, {"error": {"code": 400, "message": "the request exceeds the available context "
                     "size, try increasing it", "type": "exceed_context_size_error"}}),
    (422, {"error": "Input validation error: `inputs` tokens + `max_new_tokens` must be "
                    "<= 4096. Given: 4000 `inputs` tokens and 500 `max_new_tokens`",
           "error_type": "validation"}),                                       # TGI
    (400, {"error": "prompt exceeds the context window"}),                     # Ollama-like
    (413, b"This model's maximum context length is 4096 tokens"),              # not JSON
]
NOT_TOO_LONG = [
    (400, {"error": {"message": "The response was filtered", "type": "invalid_request_error",
                     "code": "content_filter"}}),
    (400, {"error": {"message": "Invalid value for 'temperature'", "param": "temperature"}}),
    (429, {"error": {"message": "maximum context length", "code": "rate_limit_exceeded"}}),
    (401, {"error": {"message": "bad key"}}),
    (404, {"error": {"message": "model not found"}}),
    (400, b""),
    (400, b"<html>Bad Request</html>"),
]


def body(value) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


@pytest.mark.parametrize("status, value", TOO_LONG)
def test_recognised(status, value):
    assert context_exceeded(status, body(value))


@pytest.mark.parametrize("status, value", NOT_TOO_LONG)
def test_not_recognised(status, value):
    assert not context_exceeded(status, body(value))
