"""Who is on the other end of a client connection, as far as access decisions need it."""

from __future__ import annotations

import ipaddress


def is_loopback(peername) -> bool:
    """Whether a transport's ``peername`` is this host: 127.0.0.0/8, ::1, an IPv4-mapped
    loopback, or a Unix socket (no address)."""
    if not peername:
        return isinstance(peername, str)   # AF_UNIX peers have an empty name
    host = peername[0] if isinstance(peername, tuple) else peername
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback
