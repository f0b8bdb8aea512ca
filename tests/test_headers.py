"""Header pairs as each front end writes them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.grpc import status
from proxy.http import wire
from proxy.responder import AnswerHeaders

values = st.binary(min_size=0, max_size=40)


@given(st.tuples(values, values, values, values, values, values))
def test_answer_headers_write_as_the_pairs_they_iterate_as(fields):
    headers = AnswerHeaders(fields)
    pairs = list(headers)
    assert [name for name, _ in pairs] == list(AnswerHeaders.NAMES)
    assert [value for _, value in pairs] == list(fields)
    # The one-format fast path writes exactly what the general one writes for the pairs.
    assert wire.header_block(headers) == wire.header_block(pairs)
    assert wire.header_block(pairs) == b"".join(b"%s: %s\r\n" % p for p in pairs)
    # Iterated again (the gRPC front reads them for metadata and again for trailers).
    assert status.metadata(headers) == status.metadata(pairs) == status.metadata(headers)


def test_metadata_values_stay_printable_ascii():
    headers = AnswerHeaders((b"r\xc3\xa9sum\xc3\xa9", b"-", b"bypass", b"1", b"", b"id"))
    route = dict(status.metadata(headers))["x-llmedge-route"]
    assert route.isascii() and route == "r\\xc3\\xa9sum\\xc3\\xa9"
