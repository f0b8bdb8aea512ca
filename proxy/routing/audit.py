"""The audit log of unsure routing decisions: JSONL, written off the event loop.

The loop only puts a line on a queue (never blocks); one writer thread per file appends and
flushes after every batch. ``close()`` queues a stop and returns at once: the thread writes
what is left and exits on its own, so shutdown never waits on the disk. The thread is a
daemon, so a log that is never closed cannot keep the process alive; ``join()`` waits for
the last lines where that matters (the CLI).
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import orjson

log = logging.getLogger("llmedge.audit")

_STOP = object()


class AuditLog:
    def __init__(self, path: str, below: float, include_text: bool) -> None:
        self.path = path
        self.below = below
        self.include_text = include_text
        self.dropped = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # Started by the first line: building a route (llmedge check, a reload that is then
        # rejected) touches no file.
        self._thread: threading.Thread | None = None

    def write(self, route: str, label: str, confidence: float, probabilities: dict,
              targets: list[str], text: str) -> None:
        record = {"ts": time.time(), "route": route, "class": label,
                  "confidence": round(confidence, 6),
                  "probabilities": {k: round(v, 6) for k, v in probabilities.items()},
                  "targets": targets}
        if self.include_text:
            record["text"] = text
        self._queue.put(orjson.dumps(record) + b"\n")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llmedge-audit",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._queue.put(_STOP)

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            f = open(self.path, "ab")
        except OSError as exc:
            log.error("audit log %s cannot be opened: %s", self.path, exc)
            f = None
        try:
            while True:
                line = self._queue.get()
                if line is _STOP:
                    return
                if f is None:
                    self.dropped += 1
                    continue
                f.write(line)
                # Write everything already queued before flushing once.
                while True:
                    try:
                        line = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if line is _STOP:
                        f.flush()
                        return
                    f.write(line)
                f.flush()
        except OSError as exc:
            log.error("audit log %s: %s", self.path, exc)
        finally:
            if f is not None:
                f.close()
