"""The Anthropic Messages API front end (``POST /v1/messages``), over the Chat Completions
request path."""
