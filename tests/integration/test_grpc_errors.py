"""Bad input and calls that end early on the gRPC front end, end to end: grpcio clients (and a
hand-written HTTP/2 client for what grpcio refuses to send) against a real llmedge. Each bad
call gets its own status code, llmedge logs no traceback for it and keeps serving, and every
call -- cancelled and expired ones too -- is counted in llmedge_grpc_requests_total."""

from __future__ import annotations

import re
import socket
import struct

import grpc
import pytest

from conftest import REPLIES
from procs import IO_TIMEOUT, wait_for
from proxy.grpc._gen import gateway_pb2 as pb
from test_grpc import CALL_TIMEOUT, ask, channel, expect_error, gedge, stub, trailing  # noqa: F401

METHODS = {"Chat": "unary_unary", "ChatStream": "unary_stream", "Route": "unary_unary",
           "ListModels": "unary_unary"}


def raw_call(channel, method: str, payload: bytes):
    """Call ``method`` with ``payload`` as the request message's bytes, as they are."""
    multi = getattr(channel, METHODS[method])("/llmedge.v1.Gateway/" + method,
                                             request_serializer=None,
                                             response_deserializer=None)
    answer = multi(payload, timeout=CALL_TIMEOUT)
    return list(answer) if METHODS[method] == "unary_stream" else answer


def counted(edge, method: str, code: str) -> float:
    """llmedge_grpc_requests_total for (method, code), 0 when the series is not there yet."""
    match = re.search(r'^llmedge_grpc_requests_total\{code="%s",method="%s"\} (\S+)$'
                      % (code, method), edge.metrics(), re.M)
    return float(match.group(1)) if match else 0.0


def wait_counted(edge, method: str, code: str, value: float = 1.0) -> None:
    # The handler counts the call as it ends, which may be just after the client gave up.
    try:
        wait_for(lambda: counted(edge, method, code) >= value,
                 message="llmedge_grpc_requests_total{method=%s,code=%s} >= %g"
                 % (method, code, value))
    except AssertionError as exc:
        series = [line for line in edge.metrics().splitlines()
                  if line.startswith("llmedge_grpc_requests_total")]
        raise AssertionError("%s; counted: %s" % (exc, series)) from None


def assert_no_traceback(edge) -> None:
    log = edge.stderr()
    assert "Traceback" not in log, log[-3000:]


def still_serving(stub) -> None:
    assert stub.Chat(ask("beta"), timeout=CALL_TIMEOUT).choices[0].message.content \
        == REPLIES["beta"]


# === request messages that are not protobuf ===

VALID = ask("beta").SerializeToString()


@pytest.mark.parametrize("method", list(METHODS))
def test_a_request_that_is_not_protobuf_is_invalid_argument(gedge, channel, stub, method):
    # 0xff... is a field tag whose varint never ends: no message type parses it.
    err = expect_error(lambda: raw_call(channel, method, b"\xff\xff\xff\xff\xff\xff"),
                       grpc.StatusCode.INVALID_ARGUMENT)
    message_type = "ListModelsRequest" if method == "ListModels" else "ChatRequest"
    assert "not a valid llmedge.v1.%s" % message_type in err.details(), err.details()
    assert trailing(err)["x-llmedge-error-type"] == "invalid_request_error"
    still_serving(stub)
    assert counted(gedge, method, "INVALID_ARGUMENT") == 1.0
    assert counted(gedge, method, "UNKNOWN") == 0.0
    assert_no_traceback(gedge)


@pytest.mark.parametrize("payload, needle", [
    (VALID[:-3], "not a valid llmedge.v1.ChatRequest"),          # cut short
    (b"\x0a\x02\xff\xfe" + VALID, "not a valid llmedge.v1.ChatRequest"),  # model not UTF-8
    (b"\x0a\xff\xff\xff\xff\x07x", "not a valid llmedge.v1.ChatRequest"),  # 2 GiB string
    # A known field with another wire type is kept as an unknown field, so the typed one
    # stays unset: the usual "required" answer, not a decoding failure.
    (b"\x08\x05" + VALID[VALID.index(b"\x12"):], "model: required"),
])
def test_malformed_chat_requests(gedge, channel, stub, payload, needle):
    for method in ("Chat", "ChatStream", "Route"):
        err = expect_error(lambda: raw_call(channel, method, payload),
                           grpc.StatusCode.INVALID_ARGUMENT)
        assert needle in err.details(), (method, err.details())
    still_serving(stub)
    assert_no_traceback(gedge)


# === values JSON cannot carry, fields the proto cannot leave out ===

@pytest.mark.parametrize("field, value", [
    ("temperature", float("nan")), ("top_p", float("inf")),
    ("presence_penalty", float("-inf")), ("frequency_penalty", float("nan")),
])
def test_numbers_json_cannot_carry_are_invalid_argument(sims, gedge, stub, field, value):
    # JSON has no NaN or infinity: sent on, they would reach the upstream as null.
    for call in (stub.Chat, stub.Route):
        err = expect_error(lambda: call(ask("beta", **{field: value}), timeout=CALL_TIMEOUT),
                           grpc.StatusCode.INVALID_ARGUMENT)
        assert "%s: must be a finite number" % field in err.details(), err.details()
        assert trailing(err)["x-llmedge-error-param"] == field
    assert sims.beta.stats()["chat"] == 0
    assert_no_traceback(gedge)


def test_a_function_tool_needs_a_name(sims, gedge, stub):
    nameless = pb.Tool(function=pb.FunctionDefinition(description="does things"))
    err = expect_error(lambda: stub.Chat(ask("beta", tools=[nameless]), timeout=CALL_TIMEOUT),
                       grpc.StatusCode.INVALID_ARGUMENT)
    assert "tools[0].function.name: required" in err.details(), err.details()
    assert sims.beta.stats()["chat"] == 0


# === answers too large for the client's metadata ===

def test_an_error_about_a_huge_value_still_reaches_the_client(gedge, stub):
    # The message names the model; 20,000 characters of it would not fit in the trailers a
    # client accepts (16 KiB by default), and the client would see RESOURCE_EXHAUSTED.
    model = "m" * 20000
    err = expect_error(lambda: stub.Chat(ask(model), timeout=CALL_TIMEOUT),
                       grpc.StatusCode.NOT_FOUND)
    assert err.details().startswith("The model 'mmmm"), err.details()[:100]
    assert len(err.details()) < 1024
    assert trailing(err)["x-llmedge-error-code"] == "model_not_found"
    assert counted(gedge, "Chat", "NOT_FOUND") == 1.0


# === metadata values that are not UTF-8 (grpcio will not send them: a raw HTTP/2 call) ===

# RFC 7541 appendix A.
_STATIC = [(n.encode(), v.encode()) for n, v in (
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"),
    (":path", "/index.html"), (":scheme", "http"), (":scheme", "https"), (":status", "200"),
    (":status", "204"), (":status", "206"), (":status", "304"), (":status", "400"),
    (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""),
    ("accept", ""), ("access-control-allow-origin", ""), ("age", ""), ("allow", ""),
    ("authorization", ""), ("cache-control", ""), ("content-disposition", ""),
    ("content-encoding", ""), ("content-language", ""), ("content-length", ""),
    ("content-location", ""), ("content-range", ""), ("content-type", ""), ("cookie", ""),
    ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""),
    ("max-forwards", ""), ("proxy-authenticate", ""), ("proxy-authorization", ""),
    ("range", ""), ("referer", ""), ("refresh", ""), ("retry-after", ""), ("server", ""),
    ("set-cookie", ""), ("strict-transport-security", ""), ("transfer-encoding", ""),
    ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""))]


def _hpack_int(value: int, prefix: int) -> bytes:
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([value])
    out = [limit]
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_hpack_int(block: bytes, i: int, prefix: int) -> tuple[int, int]:
    limit = (1 << prefix) - 1
    value = block[i] & limit
    i += 1
    if value < limit:
        return value, i
    shift = 0
    while True:
        byte = block[i]
        i += 1
        value += (byte & 127) << shift
        shift += 7
        if not byte & 128:
            return value, i


class RawH2Call:
    """One gRPC call on a connection of its own, written frame by frame, so that header
    values can be any bytes. Its HPACK decoder knows no Huffman code (gRPC's server sends
    plain literals) and says so when it meets one."""

    def __init__(self, port: int, path: bytes, headers: list[tuple[bytes, bytes]],
                 message: bytes) -> None:
        self.headers: dict[bytes, bytes] = {}
        self._table: list[tuple[bytes, bytes]] = []
        fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
                  (b":authority", b"127.0.0.1:%d" % port),
                  (b"content-type", b"application/grpc"), (b"te", b"trailers"), *headers]
        block = b"".join(b"\x00" + _hpack_int(len(k), 7) + k + _hpack_int(len(v), 7) + v
                         for k, v in fields)
        with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + self._frame(4, 0, 0, b"")
                         + self._frame(1, 0x4, 1, block)          # HEADERS, END_HEADERS
                         + self._frame(0, 0x1, 1, b"\x00" + struct.pack(">I", len(message))
                                       + message))               # DATA, END_STREAM
            self._read(sock)

    @staticmethod
    def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) \
            + struct.pack(">I", stream) + payload

    def _read(self, sock: socket.socket) -> None:
        buf = b""
        while True:
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                size = int.from_bytes(buf[:3], "big")
                kind, flags = buf[3], buf[4]
                stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                payload, buf = buf[9:9 + size], buf[9 + size:]
                if kind == 4 and not flags & 0x1:       # the server's SETTINGS: ack them
                    sock.sendall(self._frame(4, 0x1, 0, b""))
                elif kind == 7 or (kind == 3 and stream == 1):  # GOAWAY, RST_STREAM
                    raise AssertionError("the call was reset (frame type %d)" % kind)
                elif kind == 1 and stream == 1:
                    assert flags & 0x4, "headers continued in CONTINUATION frames"
                    if flags & 0x8:                     # PADDED
                        payload = payload[1:len(payload) - payload[0]]
                    if flags & 0x20:                    # PRIORITY
                        payload = payload[5:]
                    self._decode(payload)
                    if flags & 0x1:                     # END_STREAM: the trailers
                        return
            data = sock.recv(65536)
            if not data:
                raise AssertionError("connection closed before the call ended")
            buf += data

    def _string(self, block: bytes, i: int) -> tuple[bytes, int]:
        assert not block[i] & 0x80, "a Huffman-coded header: extend RawH2Call to decode it"
        size, i = _read_hpack_int(block, i, 7)
        return block[i:i + size], i + size

    def _decode(self, block: bytes) -> None:
        i = 0
        while i < len(block):
            first = block[i]
            if first & 0x80:                            # indexed field
                index, i = _read_hpack_int(block, i, 7)
                name, value = self._entry(index)
            elif first & 0xE0 == 0x20:                  # dynamic table size update
                _, i = _read_hpack_int(block, i, 5)
                continue
            else:                                       # literal, with or without indexing
                indexing = bool(first & 0x40)
                index, i = _read_hpack_int(block, i, 6 if indexing else 4)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, i = self._string(block, i)
                value, i = self._string(block, i)
                if indexing:
                    self._table.insert(0, (name, value))
            self.headers[name] = value

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        return _STATIC[index - 1] if index <= len(_STATIC) \
            else self._table[index - len(_STATIC) - 1]

    @property
    def code(self) -> int:
        return int(self.headers[b"grpc-status"])


@pytest.mark.parametrize("name, value, code", [
    (b"x-llmedge-session", b"\xc3\x28-user", grpc.StatusCode.OK),
    (b"authorization", b"Bearer \xff\xfe", grpc.StatusCode.OK),
    (b"x-llmedge-tags", b"region=\xff", grpc.StatusCode.INVALID_ARGUMENT),
])
def test_metadata_that_is_not_utf8(gedge, stub, name, value, code):
    call = RawH2Call(gedge.grpc_port, b"/llmedge.v1.Gateway/Chat", [(name, value)],
                     ask("auto").SerializeToString())
    assert call.code == code.value[0], call.headers
    assert counted(gedge, "Chat", code.name) == 1.0
    assert_no_traceback(gedge)
    assert "Invalid encoding" not in gedge.stderr()
    still_serving(stub)


def test_the_raw_client_sees_what_grpcio_sees(gedge):
    """RawH2Call itself: a plain call answers OK with llmedge's metadata."""
    call = RawH2Call(gedge.grpc_port, b"/llmedge.v1.Gateway/Chat", [],
                     ask("beta").SerializeToString())
    assert call.code == 0
    assert call.headers[b"x-llmedge-upstream"] == b"beta"


# === calls that end early are counted too ===

def test_a_cancelled_stream_is_counted(sims, gedge, stub):
    sims.gamma.configure(tokens_per_s=5, chunks=100)
    call = stub.ChatStream(ask("gamma"), timeout=CALL_TIMEOUT)
    assert next(call).id
    call.cancel()
    wait_counted(gedge, "ChatStream", "CANCELLED")
    sims.gamma.wait_stat("streams_aborted", 1)
    assert_no_traceback(gedge)


def test_a_stream_cancelled_before_its_first_chunk_is_counted(sims, gedge, stub):
    sims.gamma.configure(stall_after=0)
    call = stub.ChatStream(ask("gamma"), timeout=CALL_TIMEOUT)
    sims.gamma.wait_stat("chat", 1)
    call.cancel()
    wait_counted(gedge, "ChatStream", "CANCELLED")


def test_a_cancelled_unary_call_is_counted(sims, gedge, stub):
    sims.gamma.configure(stall_after=0)
    future = stub.Chat.future(ask("gamma"), timeout=CALL_TIMEOUT)
    sims.gamma.wait_stat("chat", 1)
    future.cancel()
    wait_counted(gedge, "Chat", "CANCELLED")
    still_serving(stub)
    assert counted(gedge, "Chat", "OK") == 1.0


@pytest.mark.parametrize("method", ["Chat", "ChatStream"])
def test_an_expired_deadline_is_counted(sims, gedge, stub, method):
    sims.gamma.configure(stall_after=0)

    def call():
        answer = getattr(stub, method)(ask("gamma"), timeout=1.0)
        return list(answer) if method == "ChatStream" else answer

    expect_error(call, grpc.StatusCode.DEADLINE_EXCEEDED)
    wait_counted(gedge, method, "DEADLINE_EXCEEDED")
    assert counted(gedge, method, "CANCELLED") == 0.0
    assert_no_traceback(gedge)


def test_a_stream_whose_deadline_passes_mid_stream_is_counted(sims, gedge, stub):
    sims.gamma.configure(tokens_per_s=2, chunks=40)
    call = stub.ChatStream(ask("gamma"), timeout=2.0)
    with pytest.raises(grpc.RpcError) as info:
        for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_counted(gedge, "ChatStream", "DEADLINE_EXCEEDED")
