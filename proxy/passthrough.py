"""Same protocol on both sides: a front end's request passed to a provider of its own API
untranslated.

A front end that is a translation (the Messages API over chat completions) offers a
``Native`` with the client's own body. When an attempt goes to a deployment whose adapter
speaks that API, the dispatcher sends that body (only ``model`` rewritten) and the client
gets the provider's answer as it came: the whole body, or the stream's events. The request
path still sees Chat Completions — the adapter's translation of the same answer decides
when a stream has started, counts usage and is what the cache keeps — so routing, retries,
accounting and caching work as for every other pair; only what the client receives is the
provider's own bytes. Each attempt says again whether it is native: a fallback to a
deployment of another API is translated as usual, and nothing of a failed native attempt
reaches the client.
"""

from __future__ import annotations

from .rewrite import replace_model

# A request only a provider of the front end's own API can answer: it is never translated.
COUNT_TOKENS_PATH = b"/messages/count_tokens"


class Native:
    __slots__ = ("api", "body", "model", "on", "whole", "events")

    def __init__(self, api: str, body: bytes, model: str) -> None:
        self.api = api              # the adapter name whose API the body is in
        self.body = body            # as the client sent it
        self.model = model          # as the client named it
        self.on = False             # the current attempt is native
        self.whole: bytes | None = None   # a native attempt's whole answer, as it came
        self.events = []            # a native stream's events not yet written

    def begin(self, on: bool) -> None:
        """A new attempt: native or not, nothing of the last one kept."""
        self.on = on
        self.whole = None
        self.events = []

    def body_for(self, upstream_model: str) -> bytes:
        if upstream_model == self.model:
            return self.body
        return replace_model(self.body, upstream_model, self.model)

    def take_events(self) -> bytes:
        out = b"".join(self.events)
        self.events = []
        return out
