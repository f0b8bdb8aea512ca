"""The HTTP front reads a byte stream the same however the network cuts it.

Through real sockets the kernel decides where reads end, so the cuts that matter (a chunk's
size line split across two reads, a long chunk extension, pipelined requests) cannot be
chosen there; here the protocol object is fed the same bytes cut at chosen places and must
answer exactly as when fed them whole.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.http.front import HttpFront, Limits

MAX_BODY = 4096


class Transport:
    """The little of an asyncio transport the front uses, recording what it is told."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def writelines(self, parts) -> None:
        for part in parts:
            self.write(part)

    def close(self) -> None:
        self.closed = True

    abort = close

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closed = True   # nothing more goes out: for these tests, the answer is complete

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default


class Echo:
    """An application that answers each request at once with what it received."""

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, bytes, bytes]] = []

    def connection_count(self, delta: int) -> None:
        pass

    def handle(self, ex) -> None:
        self.seen.append((ex.method, ex.url, ex.body))
        ex.respond(200, b"%d" % len(ex.body))


def run(data: bytes, cuts: list[int]) -> tuple[list, bytes, bool]:
    loop = asyncio.new_event_loop()
    try:
        app = Echo()
        front = HttpFront(app, Limits(MAX_BODY, 8192, 50, 30.0, 30.0, 64), loop, set())
        transport = Transport()
        front.connection_made(transport)
        start = 0
        for cut in sorted(set(cuts)) + [len(data)]:
            if cut > start and not transport.closed:
                front.data_received(data[start:cut])
                start = cut
        front.connection_lost(None)
        return app.seen, bytes(transport.written), transport.closed
    finally:
        loop.close()


def chunked(body: bytes, sizes: list[int], extension: bytes) -> bytes:
    out = b""
    i = 0
    for size in sizes:
        piece = body[i:i + size]
        if not piece:
            break
        out += b"%x%s\r\n%s\r\n" % (len(piece), extension, piece)
        i += len(piece)
    if i < len(body):
        out += b"%x\r\n%s\r\n" % (len(body) - i, body[i:])
    return out + b"0\r\n\r\n"


UPGRADE = b"connection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n"


def request(body: bytes, sizes: list[int], ext: bytes, form: str) -> tuple[bytes, bytes]:
    """(the request's bytes, its body) in one of three framings."""
    if form == "chunked":
        return (b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                + chunked(body, sizes, ext), body)
    upgrade = UPGRADE if form == "upgrade" else b""
    return (b"POST /echo HTTP/1.1\r\nhost: x\r\n%scontent-length: %d\r\n\r\n%s"
            % (upgrade, len(body), body), body)


REQUEST = st.builds(
    request, st.binary(max_size=300), st.lists(st.integers(1, 120), max_size=6),
    st.sampled_from([b"", b";a=b", b";x=" + b"f" * 100, b";name=\"v\""]),
    st.sampled_from(["length", "chunked", "upgrade"]))


@settings(max_examples=300, deadline=None)
@given(requests=st.lists(REQUEST, min_size=1, max_size=4), data=st.data())
def test_any_cut_of_pipelined_requests_reads_as_the_whole(requests, data):
    stream = b"".join(raw for raw, _ in requests)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6))
    whole = run(stream, [])
    # Every request read, with its body, and answered once; however the bytes are cut.
    assert [body for _, _, body in whole[0]] == [body for _, body in requests]
    assert whole[1].count(b"HTTP/1.1 200 OK") == len(requests)
    assert run(stream, cuts) == whole


@settings(max_examples=200, deadline=None)
@given(before=st.binary(min_size=0, max_size=200), data=st.data())
def test_a_chunk_declared_past_the_limit_is_refused_wherever_the_read_ends(before, data):
    head = b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    first = b"%x\r\n%s\r\n" % (len(before), before) if before else b""
    stream = head + first + b"%x\r\n" % (MAX_BODY * 8) + b"abc"
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=4))
    seen, written, closed = run(stream, cuts)
    assert seen == [] and written.startswith(b"HTTP/1.1 413 ") and closed
