"""The floor for llmedge's gRPC front end: a bare grpc.aio server answering a constant reply.

It serves the same llmedge.v1.Gateway service on the same grpcio, with no routing, no
upstream and no translation: ``Chat`` returns one prepared ``ChatResponse`` and
``ChatStream`` the prepared chunks of a stream as long as the simulator's default (a role
chunk, ``--chunks`` content chunks, a finish chunk). Like llmedge it sends the x-llmedge-*
initial metadata its API promises, so what is left between the two is llmedge's own work.
``bench/grpc_load.py --floor`` measures it beside llmedge in one run.

    python bench/grpc_floor.py --port 0     # prints "LISTENING 127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402

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


async def serve(port: int, chunks: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_GatewayServicer_to_server(Floor(chunks), server)
    bound = server.add_insecure_port("127.0.0.1:%d" % port)
    await server.start()
    print("LISTENING 127.0.0.1:%d" % bound, flush=True)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/grpc_floor.py", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--chunks", type=int, default=8, help="content chunks per stream")
    args = p.parse_args(argv)
    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        try:
            runner.run(serve(args.port, args.chunks))
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
