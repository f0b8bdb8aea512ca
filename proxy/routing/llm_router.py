"""The LLM-as-router tier: a (cheap) deployment is asked which class a prompt belongs to.

The prompt lists each class with its description and examples and asks for the class name
alone. The answer is parsed strictly — after trimming whitespace, quotes, backticks and a
final period it must equal a class name (any case) — and cached by the prompt's hash. The
call is bounded by a short timeout; on a timeout, an error or an answer that is no class,
the caller falls back to the compiled classifier.

The call is traffic like any other on the router deployment's endpoint: it is one
``Dispatcher.attempt``, the very call a proxied request's attempt makes, so it counts in
flight there and its outcome goes to the endpoint table, the breaker and the outlier tally
as a proxied request's does. A connection failure, a 429, a
5xx or one of the endpoint's own timeouts is the endpoint's failure; the tier's shorter
budget running out, or an answer that is no class, is not. So a router
deployment that keeps failing gets its circuit opened, and while it is open the tier is
skipped at once instead of costing every request its timeout.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import OrderedDict

import orjson
import xxhash

from ..errors import DeadlineExceeded, UpstreamError
from ..responder import Collector

CHAT_URL = b"/v1/chat/completions"

log = logging.getLogger("llmedge.llm_router")

MAX_PROMPT_CHARS = 4000     # of the last user turn, sent to the router model
MAX_EXAMPLES = 5            # per class, in the router prompt


class LlmRouter:
    def __init__(self, router, target, labels: list[str], descriptions: dict[str, str],
                 examples: dict[str, list[str]], timeout_s: float, cache_size: int,
                 route: str = "") -> None:
        self.router = router
        self.route = route
        self.target = target
        self.labels = labels
        self.by_name = {label.casefold(): label for label in labels}
        self.timeout_s = timeout_s
        self.cache_size = cache_size
        self.cache: OrderedDict[int, str] = OrderedDict()
        lines = ["Classify the user's message into exactly one of these classes.", ""]
        for label in labels:
            line = "- %s" % label
            if descriptions.get(label):
                line += ": %s" % descriptions[label]
            shown = examples.get(label, [])[:MAX_EXAMPLES]
            if shown:
                line += " (e.g. %s)" % "; ".join(repr(e) for e in shown)
            lines.append(line)
        lines += ["", "Answer with the class name only."]
        self.system = "\n".join(lines)
        self.calls = 0

    def parse(self, content: object) -> str | None:
        if not isinstance(content, str):
            return None
        text = content.strip().rstrip(".").strip().strip("\"'`").strip()
        return self.by_name.get(text.casefold())

    async def ask(self, turns: list[str]) -> tuple[str | None, str]:
        """(class or None, what happened)."""
        text = turns[-1][:MAX_PROMPT_CHARS] if turns else ""
        key = xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"))
        cached = self.cache.get(key)
        if cached is not None:
            self.cache.move_to_end(key)
            self._count("cached")
            return cached, "cached"
        try:
            content = await self._call(text)
        except TimeoutError:
            self._count("timeout")
            return None, "no answer within %gs" % self.timeout_s
        except (UpstreamError, OSError, ssl.SSLError, ValueError) as exc:
            self._count("failed")
            return None, "failed: %s" % (getattr(exc, "message", None) or exc)
        label = self.parse(content)
        if label is None:
            self._count("not_a_class")
            return None, "answered %r, not a class" % (str(content)[:60],)
        self.cache[key] = label
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        self._count("answered")
        return label, "answered"

    def _count(self, result: str) -> None:
        # Kept on the router, which hands them to its successor: counters survive reloads.
        counts = self.router.llm_outcomes
        key = (self.route, result)
        counts[key] = counts.get(key, 0) + 1

    async def _call(self, text: str) -> object:
        """The router model's answer; TimeoutError past ``timeout_s``."""
        from ..dispatch import Answer, Dispatcher   # the dispatcher imports routing

        target = self.target
        if target.unusable:
            raise ValueError(target.unusable)
        if target.max_inflight and target.inflight >= target.max_inflight:
            # As the dispatcher does: a full deployment is skipped, not queued on.
            raise ValueError("%s is at max_inflight %d" % (target.name, target.max_inflight))
        router = self.router
        picked = router.pick_endpoint(target, None, 0.25)
        if picked is None:
            raise ValueError("every endpoint of %s is out of service" % target.name)
        body = orjson.dumps({"model": target.upstream_model, "temperature": 0, "max_tokens": 16,
                             "messages": [{"role": "system", "content": self.system},
                                          {"role": "user", "content": text}]})
        self.calls += 1
        answer = Answer(Collector(CHAT_URL, body), None, router.plan(target.name),
                        b"/chat/completions", body, target.upstream_model, False,
                        b"llm-router-%d" % self.calls)
        # The tier's budget as the request's deadline: where it is shorter than the
        # endpoint's own timeouts, running out is the budget's doing, not a failure of a
        # slow but healthy deployment that also serves requests.
        answer.deadline = time.monotonic() + self.timeout_s
        answer.upstream = target
        target.inflight += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                await Dispatcher.attempt(answer, router, target, *picked, None)
        except DeadlineExceeded:
            raise TimeoutError from None
        finally:
            target.inflight -= 1
        collected = answer.exchange
        assert isinstance(collected, Collector)
        if collected.failure is not None or collected.status != 200:
            # Whatever the endpoint said, it answered: only 429 and 5xx (raised above) count
            # against it, as for proxied requests; an answer that is no class is the router
            # model's fault.
            raise ValueError("answered HTTP %d" % collected.status)
        try:
            return orjson.loads(collected.payload)["choices"][0]["message"]["content"]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            raise ValueError("answer is not a chat completion") from None
