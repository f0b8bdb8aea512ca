"""Event loop selection: uvloop when it is there ("auto"), or plain asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

LOOPS = ("auto", "uvloop", "asyncio")


def loop_factory(name: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    if name not in LOOPS:
        raise ValueError("unknown loop %r (known: %s)" % (name, ", ".join(LOOPS)))
    if name in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop
