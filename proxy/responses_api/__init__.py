"""The OpenAI Responses API front end (``POST /v1/responses``), over the Chat Completions
request path."""
