"""What a provider adapter does: let the request path speak Chat Completions to a deployment
whose API is another.

The request path (routing, cache, accounting, retries, the front ends' own translations)
speaks the OpenAI Chat Completions wire throughout. A deployment with ``provider:`` other
than ``openai`` gets an ``Adapter`` that turns the request into the provider's, and its
answer — whole, streamed or an error — back into Chat Completions, so nothing after the
dispatcher's one attempt knows which provider answered.
"""

from __future__ import annotations

from ..errors import UpstreamError


class Untranslatable(UpstreamError):
    """The request asks for something this provider cannot do (``n`` > 1 from a provider
    that answers one choice). Another candidate may; if none can, the client is told why."""

    status = 400
    type = "invalid_request_error"
    kind = "untranslatable"


class StreamTranslator:
    """The provider's stream bytes in, Chat Completions SSE events out. ``feed`` takes bytes
    as they arrive, cut anywhere; what it returns is whole events only."""

    def feed(self, data: bytes) -> bytes:
        raise NotImplementedError

    def end(self) -> bytes:
        """Events owed once the provider's body ended (for a provider whose stream has no
        end marker of its own)."""
        return b""

    def passed(self) -> bytes:
        """The provider's own bytes of the events the last ``feed`` completed (what a
        client of the same API gets, untranslated)."""
        raise NotImplementedError


class Adapter:
    """One deployment's provider. ``openai`` has none: its requests and answers go as they
    are, and the plain path pays nothing for the others."""

    name = "openai"
    # Why the deployment cannot be used (no credentials), or None.
    unusable: str | None = None
    # Its API is a front end's too: that front end's requests pass untranslated.
    native = False

    def serves(self, path: bytes) -> bool:
        """Whether the provider has an equivalent of this request path (below ``/v1``)."""
        return path == b"/chat/completions"

    def request_path(self, path: bytes, stream: bool) -> bytes:
        """The path below the deployment's base URL, query string included."""
        return path

    def request_body(self, body: bytes, stream: bool) -> bytes:
        """The provider's request for a Chat Completions body; ``Untranslatable`` or
        ``BadRequest`` when it has none."""
        return body

    def is_stream(self, content_type: bytes) -> bool:
        """Whether a content type other than text/event-stream is this provider's stream."""
        return False

    def signed_headers(self, scheme: str, host: bytes, path: bytes, body: bytes) -> bytes:
        """Header lines that sign this one request (AWS SigV4), or nothing."""
        return b""

    def status(self, status: int) -> int:
        """The provider's status as the failure classes know it (Anthropic's 529
        overloaded is a 503)."""
        return status

    def answer(self, payload: bytes) -> bytes:
        """A successful whole answer as a Chat Completions one."""
        return payload

    def stream(self, model: str) -> StreamTranslator | None:
        """A translator for one streamed answer; None: the stream is Chat Completions."""
        return None
