# cython: language_level=3, embedsignature=True
"""Bounded-load consistent hashing, compiled. The spec is ``hashing_py.py``."""

cimport cython
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport ceil
from libc.stdint cimport INT64_MAX, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize

import operator


__all__ = ("HashRing",)

# The one Python call of a lookup, resolved once.

cdef enum:
    _SMALL_N = 64   # lookup_bounded keeps per-call state on the stack up to this many nodes
    _F_UP = 1       # node flag: available
    _F_SEEN = 2     # node flag: already considered by this walk


# === helpers ===

cdef inline uint64_t _ring_hash(const char* data, Py_ssize_t size) noexcept nogil:
    # ring_hash in hashing_py.py, word for word (little-endian words, as int.from_bytes).
    cdef uint64_t h = 0x9E3779B97F4A7C15ULL ^ (<uint64_t>size * 0xFF51AFD7ED558CCDULL)
    cdef uint64_t word
    cdef Py_ssize_t offset = 0, i, take
    cdef const unsigned char* p
    while offset < size:
        take = size - offset
        if take > 8:
            take = 8
        word = 0
        p = <const unsigned char*>data + offset
        for i in range(take):
            word |= (<uint64_t>p[i]) << (8 * i)
        h ^= word * 0xC4CEB9FE1A85EC53ULL
        h = ((h << 31) | (h >> 33)) * 0xFF51AFD7ED558CCDULL
        offset += 8
    h ^= h >> 30
    h *= 0xBF58476D1CE4E5B9ULL
    h ^= h >> 27
    h *= 0x94D049BB133111EBULL
    return h ^ (h >> 31)


def ring_hash(bytes data):
    """The 64-bit hash of ring points and keys (see hashing_py.ring_hash)."""
    return _ring_hash(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


cdef bytes _node_name(object node):
    # As _node_name in hashing_py.py.
    if isinstance(node, str):
        return (<str>node).encode("utf-8")
    if isinstance(node, bytes):
        return bytes(node)
    raise TypeError("node names must be str or bytes, not %r" % type(node).__name__)


cdef inline uint64_t _key_point(object key) except? 0:
    # As _key_point in hashing_py.py: a str is hashed as its UTF-8 bytes, read in place
    # (lone surrogates raise UnicodeEncodeError, as str.encode does there).
    cdef const char* data
    cdef Py_ssize_t size
    if isinstance(key, str):
        data = PyUnicode_AsUTF8AndSize(key, &size)
        return _ring_hash(data, size)
    elif not isinstance(key, bytes):
        raise TypeError("key must be str or bytes, not %r" % type(key).__name__)
    return _ring_hash(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))


cdef inline Py_ssize_t _start(const uint64_t* points, Py_ssize_t size,
                              uint64_t point) noexcept nogil:
    # bisect_left(points, point), wrapping past the end to 0: HashRing._start in hashing_py.py.
    # Invariant: 0 <= lo <= hi <= size, so points[mid] is always in range.
    cdef Py_ssize_t lo = 0, hi = size, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if points[mid] < point:
            lo = mid + 1
        else:
            hi = mid
    return 0 if lo == size else lo


@cython.cdivision(True)
cdef inline double _limit(double eps, int64_t total, Py_ssize_t n_up) noexcept nogil:
    # (1.0 + eps) * (total + 1) / n_up, operation for operation as in hashing_py.py.
    # total + 1 <= 2**63 fits a uint64, and both conversions to double round to nearest like
    # Python's int -> float. n_up >= 1 (the caller returned -1 before), hence cdivision.
    return (1.0 + eps) * <double>(<uint64_t>total + 1) / <double>n_up


cdef Py_ssize_t _walk(const uint32_t* owners, Py_ssize_t size, Py_ssize_t pos,
                      Py_ssize_t n, uint8_t* flags, const int64_t* loads,
                      bint unbounded, int64_t bound) noexcept nogil:
    # The clockwise walk of HashRing.lookup_bounded in hashing_py.py, step for step: each
    # node is considered once, at its first point; the first available one under the bound
    # wins, else (only through rounding, see there) the first available one. flags[i] holds
    # _F_UP on entry; owners[*] < n, and every node owns a point, so the walk ends.
    cdef Py_ssize_t step, n_seen = 0, first_up = -1
    cdef uint32_t node
    for step in range(size):
        node = owners[pos]
        pos += 1
        if pos == size:
            pos = 0
        if flags[node] & _F_SEEN:
            continue
        flags[node] |= _F_SEEN
        if flags[node] & _F_UP:
            if unbounded or loads[node] < bound:
                return node
            if first_up < 0:
                first_up = node
        n_seen += 1
        if n_seen == n:
            break
    return first_up


# === impl HashRing ===

@cython.final
cdef class HashRing:
    """A consistent-hash ring over named nodes, with an optional load bound.

    ``nodes`` are names (``str`` is encoded as UTF-8, so ``"a"`` and ``b"a"`` are the same node);
    lookups return an index into that sequence. ``vnodes`` is the number of points per node:
    more points spread keys more evenly at the cost of a larger ring.

    Removing a node moves only the keys it owned; adding one takes about 1/(n+1) of the keys,
    all of them to the new node.
    """

    cdef uint64_t* _points   # ring points, ascending; ties ordered by owner index
    cdef uint32_t* _owners   # _owners[i]: index of the node owning _points[i], < _n
    cdef Py_ssize_t _size    # number of points, _n * vnodes >= 1
    cdef Py_ssize_t _n       # number of nodes, >= 1

    def __cinit__(self, nodes, vnodes=160):
        # The same checks, in the same order and with the same messages, as hashing_py.py.
        cdef Py_ssize_t i
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
        # Built and sorted in Python, once: it is not on the request path, and sorting the
        # (point, index) tuples gives exactly the twin's tie order.
        ring = sorted((ring_hash(b"%s#%d" % (name, i)), index)
                      for index, name in enumerate(names) for i in range(vnodes))
        self._n = len(names)
        self._size = len(ring)
        self._points = <uint64_t*>PyMem_Malloc(self._size * sizeof(uint64_t))
        self._owners = <uint32_t*>PyMem_Malloc(self._size * sizeof(uint32_t))
        if self._points is NULL or self._owners is NULL:
            raise MemoryError()
        for i in range(self._size):
            point, index = ring[i]
            self._points[i] = point
            self._owners[i] = index

    def __dealloc__(self):
        PyMem_Free(self._points)
        PyMem_Free(self._owners)

    def __len__(self):
        return self._n

    def lookup(self, key):
        """The index of the node owning ``key`` (plain consistent hashing)."""
        cdef uint64_t point = _key_point(key)
        return self._owners[_start(self._points, self._size, point)]

    def lookup_bounded(self, key, loads, epsilon, available=None):
        """The first node clockwise from ``key`` that is available and under the load bound.

        ``loads[i]`` is node ``i``'s current load, an integer >= 0; ``available[i]`` (default:
        all true) says whether node ``i`` may be chosen. The bound is
        ``ceil((1 + epsilon) * (sum(loads) + 1) / n_available)``. Returns -1 when no node is
        available.
        """
        # Validation order and messages follow HashRing.lookup_bounded in hashing_py.py.
        cdef uint64_t point = _key_point(key)
        cdef Py_ssize_t n = self._n
        cdef Py_ssize_t i, got, got_up, n_up = 0
        cdef double eps = float(epsilon)
        cdef double top
        cdef long long value
        cdef int overflow
        cdef int64_t total = 0, bound = 0
        cdef bint unbounded
        cdef uint8_t up
        # Per-call state lives on the stack (or the heap for large rings) rather than in the
        # object: __index__ or __bool__ of an element may re-enter this method.
        cdef int64_t counts_sml[_SMALL_N]
        cdef uint8_t flags_sml[_SMALL_N]
        cdef int64_t* counts = counts_sml
        cdef uint8_t* flags = flags_sml

        if not eps >= 0.0:  # also rejects NaN
            raise ValueError("epsilon must be >= 0")
        if len(loads) != n:
            raise ValueError("loads must have one entry per node (got %d for %d nodes)"
                             % (len(loads), n))
        if available is not None and len(available) != n:
            raise ValueError("available must have one entry per node (got %d for %d nodes)"
                             % (len(available), n))
        if n > _SMALL_N:
            counts = <int64_t*>PyMem_Malloc(n * sizeof(int64_t))
            flags = <uint8_t*>PyMem_Malloc(n * sizeof(uint8_t))
            if counts is NULL or flags is NULL:
                PyMem_Free(counts)
                PyMem_Free(flags)
                raise MemoryError()
        try:
            # Every element is checked even past n, as the twin does; only n are stored.
            got = 0
            for obj in loads:
                # Calls __index__ like operator.index(); sets overflow instead of raising.
                # On overflow it returns -1 with the sign in overflow: test that first.
                value = PyLong_AsLongLongAndOverflow(obj, &overflow)
                if overflow < 0 or (overflow == 0 and value < 0):
                    raise ValueError("loads must be >= 0")
                if overflow > 0 or value > INT64_MAX - total:
                    raise ValueError("loads must sum to less than 2**63")
                total += value
                if got < n:
                    counts[got] = value
                got += 1
            if available is None:
                memset(flags, _F_UP, n)
                got_up = n
            else:
                got_up = 0
                for obj in available:
                    up = _F_UP if obj else 0   # PyObject_IsTrue, like bool() in the twin
                    if got_up < n:
                        flags[got_up] = up
                    got_up += 1
            if got != n or got_up != n:
                raise ValueError("loads and available changed length while being read")
            for i in range(n):
                n_up += flags[i]
            if n_up == 0:
                return -1
            top = ceil(_limit(eps, total, n_up))
            # load < ceil(limit) for every load < 2**63 once the ceiling reaches 2**63; this
            # also covers an infinite limit, where the twin compares against math.inf.
            unbounded = top >= 9223372036854775808.0
            if not unbounded:
                bound = <int64_t>top
            return _walk(self._owners, self._size, _start(self._points, self._size, point),
                         n, flags, counts, unbounded, bound)
        finally:
            if counts != counts_sml:
                PyMem_Free(counts)
                PyMem_Free(flags)
