"""Call llmedge over gRPC: a whole answer, a stream, and the routing decision.

    python examples/grpc_client.py [HOST:PORT] [MODEL]

Uses the stubs that ship with llmedge (``proxy.grpc._gen``). A service in another language
generates its own from ``protos/llmedge/v1/gateway.proto``.
"""

from __future__ import annotations

import sys

import grpc

from proxy.grpc._gen import gateway_pb2 as pb
from proxy.grpc._gen import gateway_pb2_grpc as pb_grpc


def main(target: str = "127.0.0.1:50051", model: str = "auto") -> int:
    request = pb.ChatRequest(
        model=model,
        messages=[pb.Message(role="system", content="Answer in one sentence."),
                  pb.Message(role="user", content="Why is the sky blue?")],
        temperature=0.2,
        max_tokens=200,
    )
    # Request metadata carries what HTTP headers would: session, tags, cache control.
    metadata = [("x-llmedge-session", "user-42"), ("cache-control", "no-store")]
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GatewayStub(channel)
        try:
            # The deadline bounds the whole call, fallbacks included.
            response, call = stub.Chat.with_call(request, metadata=metadata, timeout=30)
        except grpc.RpcError as err:
            trailers = dict(err.trailing_metadata() or ())
            print("failed: %s %s (retry after: %s)" % (
                err.code().name, err.details(), trailers.get("retry-after")))
            return 1
        routing = dict(call.initial_metadata())
        print("answered by %s via route %s after %s attempt(s)" % (
            routing["x-llmedge-upstream"], routing["x-llmedge-route"],
            routing["x-llmedge-attempts"]))
        print(response.choices[0].message.content)
        print("tokens:", response.usage.total_tokens)

        for chunk in stub.ChatStream(request, metadata=metadata, timeout=60):
            for choice in chunk.choices:
                print(choice.delta.content, end="", flush=True)
        print()

        decision = stub.Route(request, timeout=5)
        print("route %s would try: %s (%s)" % (
            decision.route, ", ".join(t.deployment for t in decision.targets), decision.reason))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
