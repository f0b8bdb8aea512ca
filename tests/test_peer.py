"""Which client connections count as this host's, for the admin endpoints without a token."""

from __future__ import annotations

import pytest

from proxy.loopback import is_loopback


@pytest.mark.parametrize("peer, loopback", [
    (("127.0.0.1", 50000), True),
    (("127.200.0.9", 1), True),          # all of 127.0.0.0/8
    (("::1", 1, 0, 0), True),
    (("::ffff:127.0.0.1", 1, 0, 0), True),   # a dual-stack listener's view of IPv4
    ("", True),                          # a Unix socket
    (("10.1.2.3", 1), False),
    (("192.168.0.7", 443), False),
    (("::ffff:10.1.2.3", 1, 0, 0), False),
    (("fe80::1%eth0", 1, 0, 2), False),
    (("0.0.0.0", 1), False),
    (("not-an-address", 1), False),
    (None, False),                       # the transport does not know
])
def test_is_loopback(peer, loopback):
    assert is_loopback(peer) is loopback
