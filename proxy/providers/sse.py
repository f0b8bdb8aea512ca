"""Server-sent events cut out of bytes that arrive in pieces, for the adapters whose
provider streams something other than Chat Completions."""

from __future__ import annotations

import orjson

from ..errors import UpstreamBadResponse

# An event still missing its end past this is not SSE.
MAX_PENDING = 1024 * 1024


def error_event(kind: str, message: str) -> bytes:
    """The ``{"error": ...}`` event an OpenAI-compatible server sends when a stream fails:
    what every stream translator makes of its provider's error events."""
    return b"data: %s\n\n" % orjson.dumps({"error": {"type": kind, "message": message}})


NOT_JSON_EVENT = error_event("upstream_error", "the upstream sent a stream event that is not JSON")


class EventSplitter:
    """``feed`` returns the (event type, data) of every event the bytes completed; an
    event's several ``data:`` lines are joined by newlines, as the SSE standard says."""

    __slots__ = ("pending", "complete")

    def __init__(self) -> None:
        self.pending = b""
        self.complete = b""   # the bytes of the events the last feed completed

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        data = self.pending + data if self.pending else data
        held = b""
        if b"\r" in data:
            if data.endswith(b"\r"):
                # Maybe the first half of a CRLF: decided once the next byte is here.
                data, held = data[:-1], b"\r"
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *blocks, pending = data.split(b"\n\n")
        self.pending = pending + held
        self.complete = b"\n\n".join(blocks) + b"\n\n" if blocks else b""
        if len(self.pending) > MAX_PENDING:
            raise UpstreamBadResponse("the upstream's stream has an event longer than %d bytes"
                                      % MAX_PENDING)
        events = []
        for block in blocks:
            kind = b""
            lines = []
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    line = line[5:]
                    lines.append(line[1:] if line[:1] == b" " else line)
                elif line.startswith(b"event:"):
                    kind = line[6:].strip()
            if lines or kind:
                events.append((kind, b"\n".join(lines)))
        return events
