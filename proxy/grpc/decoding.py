"""Client bytes that grpc cannot decode: request messages and metadata values.

grpc.aio decodes a call's request message before the RPC handler runs. A deserializer that
raises there is answered UNKNOWN and logged with a traceback, and the handler never hears of
the call. A malformed message is the client's mistake, so the deserializers registered here
never raise: in place of the message the handler gets an ``Undecodable``, and answers it
INVALID_ARGUMENT (and counts it) like any other bad request.

Metadata values are decoded by grpc too, as UTF-8, falling back to latin-1 with a logged
traceback each time a call's metadata is read. ``MetadataDecodingLog`` keeps that a line at
debug level: the fallback is fine for every header llmedge reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError

from ._gen import gateway_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Gateway"]
GRPC_LOGGER = "grpc._cython.cygrpc"


class Undecodable:
    """A request message that did not decode as its method's request type."""

    __slots__ = ("message",)

    def __init__(self, type_name: str, error: DecodeError) -> None:
        reason = str(error)
        # protobuf says "Error parsing message with type 'T': why"; the why is what's new.
        prefix = "Error parsing message with type '%s'" % type_name
        if reason.startswith(prefix):
            reason = reason[len(prefix):].lstrip(": ")
        self.message = "the request is not a valid %s message%s" % (
            type_name, " (%s)" % reason.lower() if reason else "")


def deferred(message_class: Any) -> Callable[[bytes], Any]:
    """A request deserializer that returns an ``Undecodable`` instead of raising."""
    parse = message_class.FromString
    type_name = message_class.DESCRIPTOR.full_name

    def decode(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return Undecodable(type_name, exc)

    return decode


def bytes_or(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """A response serializer that also takes an answer already written as bytes
    (``_fastpath.response_bytes`` and ``chunk_bytes``)."""
    def serializer(message: Any) -> bytes:
        return message if type(message) is bytes else serialize(message)
    return serializer


def add_gateway(servicer: Any, server: grpc.aio.Server) -> None:
    """Serve ``servicer``'s RPCs as the generated ``add_GatewayServicer_to_server`` does,
    with deferred request decoding; the methods come from the service's descriptor, so a
    regenerated proto needs nothing here."""
    handlers = {}
    for method in SERVICE.methods:
        if method.client_streaming:
            raise NotImplementedError("client-streaming RPC %s" % method.full_name)
        make = (grpc.unary_stream_rpc_method_handler if method.server_streaming
                else grpc.unary_unary_rpc_method_handler)
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=deferred(message_factory.GetMessageClass(method.input_type)),
            response_serializer=bytes_or(message_factory.GetMessageClass(
                method.output_type).SerializeToString))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)


class MetadataDecodingLog(logging.Filter):
    """On grpc's own logger: its "Invalid encoding on ..." records (a client's header value
    that is not UTF-8) become one debug line without the traceback. Others pass untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith("Invalid encoding on")):
            return True
        record.exc_info = None
        record.exc_text = None
        record.msg += " (read as latin-1)"
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


METADATA_DECODING_LOG = MetadataDecodingLog()


def quiet_metadata_decoding(on: bool) -> None:
    """Install (or remove) ``MetadataDecodingLog`` on grpc's logger."""
    logger = logging.getLogger(GRPC_LOGGER)
    if on:
        logger.addFilter(METADATA_DECODING_LOG)
    else:
        logger.removeFilter(METADATA_DECODING_LOG)
