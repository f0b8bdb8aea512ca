"""The floor for llmedge's gRPC front end: a bare grpc.aio server answering a constant reply.

It serves the same llmedge.v1.Gateway service on the same grpcio, with no routing, no
upstream and no translation: ``Chat`` returns one prepared ``ChatResponse`` and
``ChatStream`` the prepared chunks of a stream as long as the simulator's default (a role
chunk, ``--chunks`` content chunks, a finish chunk). Like llmedge it sends the x-llmedge-*
initial metadata its API promises, so what is left between the two is llmedge's own work.
``bench/grpc_load.py --floor`` measures it beside llmedge in one run.

With ``--upstream`` each call first makes one HTTP request to the simulator (a stream is
relayed event by event) on a minimal keep-alive client, then answers the same constants:
what grpc.aio costs once a call waits on network I/O, which llmedge's calls always do
(``bench/grpc_load.py --floor-upstream``).

    python bench/grpc_floor.py --port 0     # prints "LISTENING 127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
import httptools  # noqa: E402

from proxy.grpc._gen import gateway_pb2 as pb  # noqa: E402
from proxy.grpc._gen import gateway_pb2_grpc as pb_grpc  # noqa: E402

REPLY = "The simulated upstream answers this request with a fixed reply of forty-odd tokens."
METADATA = (("x-llmedge-route", "auto"), ("x-llmedge-upstream", "sim"),
            ("x-llmedge-cache", "bypass"), ("x-llmedge-attempts", "1"),
            ("x-llmedge-decision", "ordered: sim"), ("x-request-id", "floor-1"))


def constant_answer() -> pb.ChatResponse:
    return pb.ChatResponse(
        id="chatcmpl-floor", created=1700000000, model="sim-model",
        choices=[pb.Choice(index=0, message=pb.Message(role="assistant", content=REPLY),
                           finish_reason=pb.FINISH_REASON_STOP)],
        usage=pb.Usage(prompt_tokens=60, completion_tokens=16, total_tokens=76))


def constant_stream(chunks: int) -> list[pb.ChatChunk]:
    step = -(-len(REPLY) // chunks)
    pieces = [REPLY[i:i + step] for i in range(0, len(REPLY), step)]

    def chunk(delta: pb.Delta, finish: int = pb.FINISH_REASON_UNSPECIFIED) -> pb.ChatChunk:
        return pb.ChatChunk(id="chatcmpl-floor", created=1700000000, model="sim-model",
                            choices=[pb.ChunkChoice(index=0, delta=delta,
                                                    finish_reason=finish)])

    return ([chunk(pb.Delta(role="assistant", content=""))]
            + [chunk(pb.Delta(content=piece)) for piece in pieces]
            + [chunk(pb.Delta(), pb.FINISH_REASON_STOP)])


class Floor(pb_grpc.GatewayServicer):
    def __init__(self, chunks: int) -> None:
        self.answer = constant_answer()
        self.stream = constant_stream(chunks)

    async def Chat(self, request, context):  # noqa: N802 (the generated API's name)
        await context.send_initial_metadata(METADATA)
        return self.answer

    async def ChatStream(self, request, context):  # noqa: N802
        await context.send_initial_metadata(METADATA)
        for chunk in self.stream:
            yield chunk


# === with an upstream: the same constant answers, after one loopback HTTP call each ===

class _Answer(asyncio.Protocol):
    """One keep-alive connection to the upstream; feeds each response's body, SSE event by
    event for streams, to the call waiting on it. The least a Python client can do: no
    timeouts, no retries, no pooling policy, which is what llmedge adds."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.events: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.buffer = b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.buffer += body
        *events, self.buffer = self.buffer.split(b"\n\n")
        for event in events:
            self.events.put_nowait(event)

    def on_message_complete(self) -> None:
        if self.buffer:
            self.events.put_nowait(self.buffer)
            self.buffer = b""
        self.events.put_nowait(None)

    def connection_lost(self, exc) -> None:
        self.events.put_nowait(None)


class Upstream:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[_Answer] = []

    def request(self, stream: bool) -> bytes:
        body = json.dumps({"model": "sim", "stream": stream,
                           "messages": [{"role": "user", "content": "hello"}]}).encode()
        return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: upstream\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body))

    async def events(self, stream: bool):
        conn = self.idle.pop() if self.idle else None
        if conn is None or conn.transport.is_closing():
            _, conn = await asyncio.get_running_loop().create_connection(
                _Answer, self.host, self.port)
        conn.transport.write(self.request(stream))
        done = False
        try:
            while (event := await conn.events.get()) is not None:
                yield event
            done = True
        finally:
            if done and not conn.transport.is_closing():
                self.idle.append(conn)
            else:
                conn.transport.close()   # left mid-answer: its rest would confuse the next


class UpstreamFloor(Floor):
    def __init__(self, chunks: int, upstream: Upstream) -> None:
        super().__init__(chunks)
        self.upstream = upstream

    async def Chat(self, request, context):  # noqa: N802
        async for _ in self.upstream.events(False):
            pass
        await context.send_initial_metadata(METADATA)
        return self.answer

    async def ChatStream(self, request, context):  # noqa: N802
        await context.send_initial_metadata(METADATA)
        # One message per upstream event (the last carries the finish), whatever the two
        # counts; the stream is read to its end so its connection goes back to the pool.
        chunks = iter(self.stream[:-1])
        async for event in self.upstream.events(True):
            if not event.startswith(b"data: [DONE]"):
                message = next(chunks, None)
                if message is not None:
                    yield message
        yield self.stream[-1]


async def serve(port: int, chunks: int, upstream: str | None) -> None:
    server = grpc.aio.server()
    if upstream:
        host, _, upstream_port = upstream.rpartition(":")
        servicer = UpstreamFloor(chunks, Upstream(host, int(upstream_port)))
    else:
        servicer = Floor(chunks)
    pb_grpc.add_GatewayServicer_to_server(servicer, server)
    bound = server.add_insecure_port("127.0.0.1:%d" % port)
    await server.start()
    print("LISTENING 127.0.0.1:%d" % bound, flush=True)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/grpc_floor.py", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--chunks", type=int, default=8, help="content chunks per stream")
    p.add_argument("--upstream", metavar="HOST:PORT",
                   help="ask this upstream (the simulator) once per call before answering, "
                        "relaying a stream event by event")
    args = p.parse_args(argv)
    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        try:
            runner.run(serve(args.port, args.chunks, args.upstream))
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
