"""The gRPC front end: service ``llmedge.v1.Gateway`` over the HTTP front end's request path."""

from __future__ import annotations

from pathlib import Path


def proto_path() -> Path:
    """The shipped ``llmedge/v1/gateway.proto``, for generating clients in other
    languages (place it as ``llmedge/v1/gateway.proto`` under protoc's include path)."""
    return Path(__file__).resolve().parent / "_gen" / "gateway.proto"
