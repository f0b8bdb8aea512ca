"""A small fault-injecting TCP proxy for tests: passes bytes through, or resets new
connections, or accepts and swallows them (a black hole), switchable at runtime.

Not a test module. It runs in a thread of the test process; faults act on connections
opened after the switch, as a flapping network path would.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading

PASS, RESET, BLACKHOLE = "pass", "reset", "blackhole"


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.mode = PASS
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = "http://127.0.0.1:%d/v1" % self.port
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._peers: dict[socket.socket, socket.socket | None] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._kill = False
        self._killed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()

    def set(self, mode: str) -> None:
        """Switch mode; a fault also resets the connections already open (the server
        went away for them too)."""
        assert mode in (PASS, RESET, BLACKHOLE)
        with self._lock:
            self.mode = mode
            self._kill = mode != PASS
            self._killed.clear()
        if mode != PASS:
            # Back only once the old connections are gone, so that connections made
            # after this call meet the new mode and nothing else.
            assert self._killed.wait(10), "the fault proxy's thread is stuck"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for sock in list(self._peers):
            sock.close()
        self._listener.close()
        self._sel.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                kill, self._kill = self._kill, False
            if kill:
                for sock in list(self._peers):
                    self._sel.unregister(sock)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
                    sock.close()
                self._peers.clear()
                self._killed.set()
            for key, _ in self._sel.select(timeout=0.05):
                if key.data is None:
                    self._accept()
                else:
                    self._pump(key.fileobj, key.data)

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        self.accepted += 1
        with self._lock:
            mode = self.mode
        if mode == RESET:
            # Linger 0: close sends RST, as a crashed or firewalled upstream would.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            return
        if mode == BLACKHOLE:
            self._peers[client] = None
            self._sel.register(client, selectors.EVENT_READ, client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        self._peers[client], self._peers[upstream] = upstream, client
        self._sel.register(client, selectors.EVENT_READ, upstream)
        self._sel.register(upstream, selectors.EVENT_READ, client)

    def _pump(self, source: socket.socket, dest: socket.socket) -> None:
        try:
            data = source.recv(65536)
        except OSError:
            data = b""
        if data and self._peers.get(source) is None:
            return  # black hole: read and ignore
        if data:
            try:
                dest.sendall(data)
                return
            except OSError:
                pass
        for sock in (source, self._peers.get(source)):
            if sock is not None and sock in self._peers:
                self._sel.unregister(sock)
                self._peers.pop(sock, None)
                sock.close()
