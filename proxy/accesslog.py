"""The JSON access log: one line per request, written by a thread of its own.

The request path only appends a small dict to a bounded queue; encoding and writing (which
may block on a slow disk or a full pipe) happen off the loop. When the writer falls behind
past ``MAX_QUEUED`` lines, further lines are counted as dropped instead of growing memory or
slowing requests. Prompt text, keys and headers are never logged.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time

import orjson

log = logging.getLogger("llmedge.access")

MAX_QUEUED = 65536
_STOP = object()


class AccessLog:
    def __init__(self, target: str) -> None:
        """``target``: ``-`` or ``stderr``, ``stdout``, or a file path (appended to)."""
        self.target = target
        self.dropped = 0
        self.written = 0
        self._queue: queue.Queue = queue.Queue(MAX_QUEUED)
        if target in ("-", "stderr"):
            self._fd, self._own = sys.stderr.fileno(), False
        elif target == "stdout":
            self._fd, self._own = sys.stdout.fileno(), False
        else:
            self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._own = True
        self._thread = threading.Thread(target=self._write_lines, name="access-log",
                                        daemon=True)
        self._thread.start()

    def write(self, record: dict) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def _write_lines(self) -> None:
        q = self._queue
        while True:
            batch = [q.get()]
            try:
                while len(batch) < 512:
                    batch.append(q.get_nowait())
            except queue.Empty:
                pass
            stop = batch[-1] is _STOP
            if stop:
                batch.pop()
            if batch:
                data = b"".join(self._encode(r) for r in batch)
                try:
                    while data:
                        data = data[os.write(self._fd, data):]
                    self.written += len(batch)
                except OSError as exc:
                    self.dropped += len(batch)
                    log.warning("access log %s: %s", self.target, exc)
            if stop:
                return

    def _encode(self, record: dict) -> bytes:
        try:
            return orjson.dumps({"time": _iso(record.pop("ts")), **record}) + b"\n"
        except (TypeError, ValueError, KeyError) as exc:
            # One record that cannot be written must not stop the log for every later one.
            self.dropped += 1
            log.warning("access log %s: a record could not be encoded: %s", self.target, exc)
            return b""

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop (bounded: a stuck disk cannot hold up exit)."""
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        if self._own:
            os.close(self._fd)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (t % 1 * 1000)
