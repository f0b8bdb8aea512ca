"""Bounded-load consistent hashing for session affinity: the reference implementation.

This is the spec for ``hashing.pyx``; both must return the same node for the same ring, key,
loads and availability, and reject bad input with the same exception type and message.

The ring: each node contributes ``vnodes`` points, the XXH3-64 hashes of the labels
``b"%s#%d" % (name, i)`` (``name`` encoded as UTF-8 when it is a ``str``), sorted by
(point, node index). A key is hashed the same way and owned by the first point at or after its
hash, wrapping to the start of the ring. The label format is part of the contract: changing it
remaps every session.

Bounded load follows Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded
Loads" (2018): walk clockwise from the key's point and take the first available node whose load
is below ``ceil((1 + epsilon) * (sum(loads) + 1) / n_available)``. The ``+ 1`` counts the request
being placed, so some node always qualifies and no node ends above (1 + epsilon) times the mean.
"""

import math
import operator
from bisect import bisect_left
from collections.abc import Sequence


__all__ = ("HashRing",)

# Loads are kept as C int64 in the compiled twin; their sum must fit too.
_LOAD_LIMIT = 1 << 63


_M64 = (1 << 64) - 1
_SEED = 0x9E3779B97F4A7C15
_K1 = 0xFF51AFD7ED558CCD
_K2 = 0xC4CEB9FE1A85EC53


def ring_hash(data: bytes) -> int:
    """The 64-bit hash of ring points and keys.

    Eight bytes at a time (little-endian, the last word zero-padded; the length is mixed in
    first, so padding cannot make two inputs alike), each word multiplied in and rotated,
    then the splitmix64 finaliser for avalanche. Written here rather than borrowed from a
    hashing library so the compiled twin can run it in C without a call back into Python.
    """
    h = (_SEED ^ ((len(data) * _K1) & _M64)) & _M64
    for offset in range(0, len(data), 8):
        word = int.from_bytes(data[offset:offset + 8], "little")
        h ^= (word * _K2) & _M64
        h = (((h << 31) | (h >> 33)) & _M64) * _K1 & _M64
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & _M64
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & _M64
    return h ^ (h >> 31)


def _node_name(node: object) -> bytes:
    if isinstance(node, str):
        # str.encode(), not node.encode(): a subclass's override is ignored, as in C.
        return str.encode(node, "utf-8")
    if isinstance(node, bytes):
        return bytes(node)
    raise TypeError("node names must be str or bytes, not %r" % type(node).__name__)


def _key_point(key: object) -> int:
    if isinstance(key, str):
        key = str.encode(key, "utf-8")
    elif not isinstance(key, bytes):
        raise TypeError("key must be str or bytes, not %r" % type(key).__name__)
    return ring_hash(key)


class HashRing:
    """A consistent-hash ring over named nodes, with an optional load bound.

    ``nodes`` are names (``str`` is encoded as UTF-8, so ``"a"`` and ``b"a"`` are the same node);
    lookups return an index into that sequence. ``vnodes`` is the number of points per node:
    more points spread keys more evenly at the cost of a larger ring.

    Removing a node moves only the keys it owned; adding one takes about 1/(n+1) of the keys,
    all of them to the new node.
    """

    __slots__ = ("_n", "_points", "_owners")

    def __init__(self, nodes: Sequence[str | bytes], vnodes: int = 160) -> None:
        if isinstance(nodes, (str, bytes)):
            raise TypeError("nodes must be a sequence of names, not a single name")
        names = [_node_name(node) for node in nodes]
        if not names:
            raise ValueError("nodes must not be empty")
        seen = set()
        for name in names:
            if name in seen:
                raise ValueError("duplicate node name %r" % name)
            seen.add(name)
        vnodes = operator.index(vnodes)
        if vnodes < 1:
            raise ValueError("vnodes must be >= 1")
        # Ties between equal points (a 64-bit collision) go to the lower node index.
        ring = sorted((ring_hash(b"%s#%d" % (name, i)), index)
                      for index, name in enumerate(names) for i in range(vnodes))
        self._n = len(names)
        self._points = [point for point, _ in ring]
        self._owners = [index for _, index in ring]

    def __len__(self) -> int:
        return self._n

    def _start(self, point: int) -> int:
        # The first ring position at or after the point, wrapping past the end.
        i = bisect_left(self._points, point)
        return 0 if i == len(self._points) else i

    def lookup(self, key: str | bytes) -> int:
        """The index of the node owning ``key`` (plain consistent hashing)."""
        return self._owners[self._start(_key_point(key))]

    def lookup_bounded(self, key: str | bytes, loads: Sequence[int], epsilon: float,
                       available: Sequence[bool] | None = None) -> int:
        """The first node clockwise from ``key`` that is available and under the load bound.

        ``loads[i]`` is node ``i``'s current load (e.g. requests in flight), an integer >= 0;
        ``available[i]`` (default: all true) says whether node ``i`` may be chosen. The bound
        is ``ceil((1 + epsilon) * (sum(loads) + 1) / n_available)``. Returns -1 when no node
        is available.
        """
        point = _key_point(key)
        n = self._n
        eps = float(epsilon)
        if not eps >= 0.0:  # also rejects NaN
            raise ValueError("epsilon must be >= 0")
        if len(loads) != n:
            raise ValueError("loads must have one entry per node (got %d for %d nodes)"
                             % (len(loads), n))
        if available is not None and len(available) != n:
            raise ValueError("available must have one entry per node (got %d for %d nodes)"
                             % (len(available), n))
        counts = []
        total = 0
        for load in loads:
            value = operator.index(load)
            if value < 0:
                raise ValueError("loads must be >= 0")
            total += value
            if total >= _LOAD_LIMIT:
                raise ValueError("loads must sum to less than 2**63")
            counts.append(value)
        up = [True] * n if available is None else [bool(a) for a in available]
        if len(counts) != n or len(up) != n:
            # Only a sequence whose len() disagrees with its iteration gets here.
            raise ValueError("loads and available changed length while being read")
        n_up = up.count(True)
        if n_up == 0:
            return -1
        # Computed in double precision, operation by operation, exactly as in C. The limit
        # is >= 1/n_up > 0, never NaN; it is infinite only for an infinite epsilon.
        limit = (1.0 + eps) * (total + 1) / n_up
        bound = math.inf if math.isinf(limit) else math.ceil(limit)

        owners = self._owners
        size = len(owners)
        start = self._start(point)
        seen = [False] * n
        n_seen = 0
        first_up = -1
        for step in range(size):
            node = owners[(start + step) % size]
            if seen[node]:
                continue
            seen[node] = True
            if up[node]:
                if counts[node] < bound:
                    return node
                if first_up < 0:
                    first_up = node
            n_seen += 1
            if n_seen == n:
                break
        # Unreachable in exact arithmetic: were every available load >= limit, they would sum
        # to at least (1 + epsilon) * (sum(loads) + 1) > sum(loads). Rounding of totals at
        # 2**53 and above can leave every available node at the bound; the first available
        # one on the walk then stands.
        return first_up
