"""A real ``redis-server`` for tests: started on a free port with persistence off, stopped
and restarted on the same port at will (to test llmedge while Redis is down).

Not a test module. Tests that need Redis skip, with the reason, only when the binary is
missing; ``.ci/run`` installs it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from procs import Proc, free_port

REDIS_SERVER = shutil.which("redis-server")
SKIP_REASON = "redis-server is not installed (apt-get install redis-server; .ci/run does)"


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        assert REDIS_SERVER is not None, SKIP_REASON
        self.workdir = workdir
        self.port = port or free_port()
        self.url = "redis://127.0.0.1:%d/0" % self.port
        self.proc: Proc | None = None
        self.starts = 0
        self.start()

    def start(self) -> None:
        self.starts += 1
        self.proc = Proc([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no", "--daemonize", "no",
                          "--dir", str(self.workdir), "--loglevel", "notice"],
                         self.workdir / ("redis-%d-%d.log" % (self.port, self.starts)),
                         label="redis-server :%d" % self.port)
        self.proc.wait_output(r"Ready to accept connections")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)

    def keys(self, pattern: str = "*") -> list[bytes]:
        with self.client() as r:
            return sorted(r.scan_iter(match=pattern))
