"""Ensemble signals of a ``classify`` route: regex rules and request features voting beside
the compiled classifier.

``combine: vote`` (the default): each signal adds weight to one class; the classifier adds
``weight x probability`` to every class. The class scores, divided by their sum, are the
route's probabilities, so a decision can be explained signal by signal.

``combine: confidence``: each signal's weight is its confidence (0..1], the classifier's is
``weight x`` its top probability, and the surest signal decides (its vote is marked
``decided``). A deciding rule or feature gives its class its confidence ``c``; the other
classes share ``1 - c`` as the classifier weighs them, so thresholds apply to ``c``. Request features are read from the body: ``code_block``
(a fenced block in the last user turn), ``tools`` (the request offers tools), ``images``
(an image, audio or file part) and ``long`` (a last turn of at least ``min_chars``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import msgspec

from ..errors import BadRequest
from ..jsondoc import decode_view

if TYPE_CHECKING:
    from ..config import SignalsConfig

MEDIA_PARTS = frozenset(("image_url", "input_image", "input_audio", "file"))
MAX_EARLIER_TURNS = 3   # earlier user turns that inform the class, besides the last one


class _Part(msgspec.Struct):
    type: str = ""
    text: str | None = None


class _Message(msgspec.Struct):
    role: str = ""
    content: str | list[_Part] | None = None


class _Chat(msgspec.Struct):
    messages: list[_Message] = []
    tools: list[msgspec.Raw] | None = None


_chat = msgspec.json.Decoder(_Chat)


class RequestView:
    """What routing by content reads from a chat body."""

    __slots__ = ("turns", "tools", "media")

    def __init__(self, turns: list[str], tools: bool, media: bool) -> None:
        self.turns = turns
        self.tools = tools
        self.media = media


def read_request(body: bytes) -> RequestView:
    """The user turns that inform the class (earlier ones, then the last) and request
    features; a body that is not a chat request reads as empty."""
    try:
        chat = decode_view(_chat, body)
    except BadRequest:
        return RequestView([], False, False)
    turns = []
    media = False
    for message in chat.messages:
        if message.role != "user":
            continue
        content = message.content
        if isinstance(content, list):
            media = media or any(p.type in MEDIA_PARTS for p in content)
            content = " ".join(p.text for p in content if p.type == "text" and p.text)
        if content:
            turns.append(content)
    return RequestView(turns[-(MAX_EARLIER_TURNS + 1):], bool(chat.tools), media)


class Ensemble:
    def __init__(self, labels: list[str], signals: SignalsConfig) -> None:
        self.labels = labels
        self.index = {label: i for i, label in enumerate(labels)}
        self.classifier = signals.classifier
        self.by_confidence = signals.combine == "confidence"
        # Case-insensitive: rules are written for how people type, not for exact case.
        self.rules = [(re.compile(r.pattern, re.IGNORECASE), self.index[r.class_], r.weight,
                       "rule %r" % r.pattern) for r in signals.rules]
        self.features = [(f.when, f.min_chars, self.index[f.class_], f.weight)
                         for f in signals.features]

    def combine(self, probs: list[float], request: RequestView) -> tuple[list[float],
                                                                         list[dict]]:
        """The combined probabilities and the votes that made them."""
        votes: list[dict] = []
        hits: list[tuple[int, float]] = []
        last = request.turns[-1] if request.turns else ""
        for pattern, k, weight, name in self.rules:
            if pattern.search(last):
                hits.append((k, weight))
                votes.append({"signal": name, "class": self.labels[k], "weight": weight})
        for when, min_chars, k, weight in self.features:
            if ((when == "code_block" and "```" in last) or (when == "tools" and request.tools)
                    or (when == "images" and request.media)
                    or (when == "long" and len(last) >= min_chars)):
                hits.append((k, weight))
                votes.append({"signal": when, "class": self.labels[k], "weight": weight})
        if self.by_confidence:
            return self._surest(probs, hits, votes), votes
        scores = [self.classifier * p for p in probs]
        for k, weight in hits:
            scores[k] += weight
        total = sum(scores)
        if total <= 0:
            return probs, votes
        return [s / total for s in scores], votes

    def _surest(self, probs: list[float], hits: list[tuple[int, float]],
                votes: list[dict]) -> list[float]:
        # The classifier first, so that it keeps a tie; then the signals in config order.
        best, surest = -1, self.classifier * max(probs) if probs else 0.0
        for j, (_, confidence) in enumerate(hits):
            if confidence > surest:
                best, surest = j, confidence
        if best < 0:
            return probs
        votes[best]["decided"] = True
        k = hits[best][0]
        rest = sum(probs) - probs[k]
        mixed = [(1.0 - surest) * p / rest if rest > 0.0 else 0.0 for p in probs]
        mixed[k] = surest
        return mixed
