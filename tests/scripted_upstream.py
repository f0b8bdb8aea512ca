"""An upstream that answers every request with a script of raw bytes: for the wire-level
faults the simulator does not play (an event cut across two writes, a stream that idles
after its [DONE], a content type in capitals, a second answer nobody asked for).

Not a test module. A real TCP server on 127.0.0.1, a thread per connection; the pauses in
a script are the upstream's own behaviour (they make the proxy read the parts separately),
never a test waiting for something.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Sequence

# A step: bytes to send, a pause in seconds (float), or one of the actions below.
RESET = "reset"      # close with RST, as a crashed process would
CLOSE = "close"      # close cleanly (FIN)
HOLD = "hold"        # keep the connection open and silent until the server stops

Step = bytes | float | str


_MODELS_BODY = b'{"object":"list","data":[{"id":"scripted","object":"model","owned_by":"scripted"}]}'
MODELS = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(_MODELS_BODY), _MODELS_BODY)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class ScriptedUpstream:
    """``script``: the steps every request gets; or ``scripts``: the first request gets the
    first, the second the second, ..., and every later one the last. With
    ``answer_probes`` a GET (a health probe) is answered with a model list instead, and
    neither counted nor recorded: the scripts are the completions' alone."""

    def __init__(self, script: Sequence[Step] = (),
                 scripts: Sequence[Sequence[Step]] = (), answer_probes: bool = False) -> None:
        self.scripts = [list(s) for s in scripts] or [list(script)]
        self.answer_probes = answer_probes
        self.probes = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = "http://127.0.0.1:%d/v1" % self.port
        self.connections = 0
        self.requests = 0
        self.bodies: list[bytes] = []   # every request's body, in order
        self._socks: list[socket.socket] = []
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> ScriptedUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped.set()
        self.listener.close()
        with self._lock:
            for sock in self._socks:
                try:
                    sock.close()
                except OSError:
                    pass

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                self._socks.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _read_request(self, sock: socket.socket, buf: bytes) -> tuple[bytes, bytes] | None:
        """The request's method and the bytes after the whole request (its head and
        Content-Length body)."""
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                return None
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            data = sock.recv(65536)
            if not data:
                return None
            rest += data
        method = head.split(b" ", 1)[0]
        if not (self.answer_probes and method == b"GET"):
            with self._lock:
                self.bodies.append(rest[:length])
        return method, rest[length:]

    def _serve(self, sock: socket.socket) -> None:
        buf = b""
        try:
            while True:
                request = self._read_request(sock, buf)
                if request is None:
                    return
                method, buf = request
                if self.answer_probes and method == b"GET":
                    with self._lock:
                        self.probes += 1
                    sock.sendall(MODELS)
                    continue
                with self._lock:
                    self.requests += 1
                    script = self.scripts[min(self.requests, len(self.scripts)) - 1]
                for step in script:
                    if isinstance(step, bytes):
                        sock.sendall(step)
                    elif isinstance(step, float):
                        time.sleep(step)
                    elif step == RESET:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                        sock.close()
                        return
                    elif step == CLOSE:
                        sock.shutdown(socket.SHUT_WR)
                        return
                    elif step == HOLD:
                        self._stopped.wait()
                        return
        except OSError:
            return
