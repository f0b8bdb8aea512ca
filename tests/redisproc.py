"""A real ``redis-server`` for tests: started on a free port with persistence off, stopped
and restarted on the same port at will (to test llmedge while Redis is down).

Not a test module. Tests that need Redis skip, with the reason, only when the binary is
missing; ``.ci/run`` installs it.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from procs import Proc, free_port

REDIS_SERVER = shutil.which("redis-server")
SKIP_REASON = "redis-server is not installed (apt-get install redis-server; .ci/run does)"


def cluster_port() -> int:
    """A free port for a cluster node: its bus listens on port + 10000, so both must be free
    and the port at most 55535."""
    for _ in range(1000):
        port = free_port()
        if port > 55535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None, cluster: bool = False) -> None:
        assert REDIS_SERVER is not None, SKIP_REASON
        self.workdir = workdir
        self.cluster = cluster
        self.port = port or (cluster_port() if cluster else free_port())
        self.url = "redis://127.0.0.1:%d/0" % self.port
        self.proc: Proc | None = None
        self.starts = 0
        self.start()

    def start(self) -> None:
        self.starts += 1
        self.proc = Proc([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no", "--daemonize", "no",
                          "--dir", str(self.workdir), "--loglevel", "notice",
                          *(("--cluster-enabled", "yes", "--cluster-config-file",
                             "nodes-%d.conf" % self.port) if self.cluster else ())],
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


class RedisClusterNodes:
    """A Redis Cluster of three primaries (no replicas) on free ports."""

    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        import subprocess

        self.servers: list[RedisServer] = []
        try:
            for _ in range(nodes):
                self.servers.append(RedisServer(workdir, cluster=True))
            cli = shutil.which("redis-cli")
            assert cli is not None, "redis-cli comes with redis-server"
            subprocess.run([cli, "--cluster", "create",
                            *("127.0.0.1:%d" % s.port for s in self.servers),
                            "--cluster-replicas", "0", "--cluster-yes"],
                           check=True, capture_output=True, timeout=60)
        except BaseException:
            self.stop()      # a node that did start must not outlive the test
            raise
        self.url = self.servers[0].url

    def state_ok(self) -> bool:
        for server in self.servers:
            with server.client() as r:
                if r.cluster("INFO").get("cluster_state") != "ok":
                    return False
        return True

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
