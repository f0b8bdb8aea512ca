"""The checked-in gRPC stubs are what protos/ generates today, and they import as a package."""

from __future__ import annotations

from proxy.grpc import gen, proto_path


def test_checked_in_stubs_are_current():
    assert gen.stale() == [], "run: python -m proxy.grpc.gen"


def test_stubs_import_inside_the_package():
    from proxy.grpc._gen import gateway_pb2, gateway_pb2_grpc

    assert gateway_pb2.DESCRIPTOR.package == "llmedge.v1"
    assert set(gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].methods_by_name) == {
        "Chat", "ChatStream", "Route", "ListModels"}
    assert hasattr(gateway_pb2_grpc, "GatewayStub")


def test_shipped_proto_is_the_source():
    assert proto_path().read_bytes() == (gen.PROTOS / gen.PROTO).read_bytes()
