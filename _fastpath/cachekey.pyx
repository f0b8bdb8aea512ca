# cython: language_level=3, embedsignature=True
"""Canonical cache key of a chat request, compiled. The spec is ``cachekey_py.py``.

The walk writes the canonical form into one growable buffer (on the stack, spilled to the
heap for large requests) using C-level type checks only, then hashes it with one call.
Output, exceptions and messages are those of ``cachekey_py.py``; the format is documented
there.
"""

from cpython.object cimport PyObject
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from libc.math cimport isfinite
# The code units of PyUnicode's 1, 2 and 4-byte kinds are uint8_t, uint16_t, uint32_t.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memmove

import xxhash

__all__ = ("FORMAT_VERSION", "IGNORED_FIELDS", "MAX_DEPTH", "cache_key", "canonical")

cdef enum:
    _FORMAT_VERSION = 1
    _MAX_DEPTH = 64

# The three constants are the same as in cachekey_py.py (a test checks it).
FORMAT_VERSION = _FORMAT_VERSION
IGNORED_FIELDS = frozenset({"stream", "stream_options", "user", "metadata", "store"})
MAX_DEPTH = _MAX_DEPTH

# Our own declarations, on PyObject*, so that the walk over borrowed references does no
# reference counting and no Python-level dispatch. None of these can fail on the exact
# built-in types they are called on, except where a NULL/-1 return is checked.
cdef extern from "Python.h":
    bint PyUnicode_CheckExact(PyObject* o)
    bint PyDict_CheckExact(PyObject* o)
    bint PyList_CheckExact(PyObject* o)
    bint PyLong_CheckExact(PyObject* o)
    bint PyFloat_CheckExact(PyObject* o)
    Py_ssize_t PyList_GET_SIZE(PyObject* o)
    PyObject* PyList_GET_ITEM(PyObject* o, Py_ssize_t i)
    Py_ssize_t PyDict_GET_SIZE(PyObject* o)
    int PyDict_Next(PyObject* o, Py_ssize_t* pos, PyObject** key, PyObject** value)
    int PySet_Contains(PyObject* s, PyObject* key)
    bint PyUnicode_IS_ASCII(PyObject* o)
    unsigned int PyUnicode_KIND(PyObject* o)
    void* PyUnicode_DATA(PyObject* o)
    Py_ssize_t PyUnicode_GET_LENGTH(PyObject* o)
    int PyUnicode_Compare(PyObject* a, PyObject* b)
    long long PyLong_AsLongLongAndOverflow(PyObject* o, int* overflow)
    double PyFloat_AS_DOUBLE(PyObject* o)
    object PyBytes_FromStringAndSize(const char* v, Py_ssize_t size)
    char* PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)
    PyObject* Py_None
    PyObject* Py_True
    PyObject* Py_False
    enum: PyUnicode_1BYTE_KIND
    enum: PyUnicode_2BYTE_KIND

cdef extern from *:
    """
    /* PyUnicode_READY: needed on 3.11 for strings built by the legacy (wstr) API; a
       deprecated no-op from 3.12. Decoders never produce such strings, but the walk reads
       PyUnicode_DATA directly, so make sure. */
    #if PY_VERSION_HEX < 0x030C0000
    #define _llmedge_unicode_ready(op) PyUnicode_READY(op)
    #else
    #define _llmedge_unicode_ready(op) 0
    #endif
    """
    int _unicode_ready "_llmedge_unicode_ready" (PyObject* o)


cdef enum:
    _STACK_SIZE = 8192     # canonical forms up to this size never touch the heap
    _MIN_SPILL = 65536     # first heap buffer: a 32 KB request spills once, not three times
    _SMALL_OBJECT = 16     # objects up to this many entries are sorted on the stack

# Cached callables (uvloop stdlib.pxi style): one module-global lookup, no attribute access.
cdef object _xxh3_128_digest = xxhash.xxh3_128_digest
cdef object _ignored = IGNORED_FIELDS


# ============================================================================================
# === Writer: a stack buffer with heap spill ==================================================

ctypedef struct _Writer:
    unsigned char* buf     # where bytes go: the caller's stack array, or heap after a spill
    Py_ssize_t pos         # bytes written so far, <= cap
    Py_ssize_t cap         # size of buf
    unsigned char* heap    # == buf once spilled (owned: PyMem_Free), else NULL


cdef int _grow(_Writer* w, Py_ssize_t need) except -1:
    cdef Py_ssize_t cap = w.cap * 2
    cdef unsigned char* mem
    if cap < w.pos + need:
        cap = w.pos + need
    if cap < _MIN_SPILL:
        cap = _MIN_SPILL
    if w.heap is NULL:
        mem = <unsigned char*>PyMem_Malloc(cap)
        if mem is NULL:
            raise MemoryError()
        memcpy(mem, w.buf, w.pos)
    else:
        mem = <unsigned char*>PyMem_Realloc(w.heap, cap)
        if mem is NULL:
            raise MemoryError()
    w.heap = mem
    w.buf = mem
    w.cap = cap
    return 0


cdef inline int _reserve(_Writer* w, Py_ssize_t need) except -1:
    if w.pos + need > w.cap:
        return _grow(w, need)
    return 0


cdef inline int _put_byte(_Writer* w, unsigned char b) except -1:
    _reserve(w, 1)
    w.buf[w.pos] = b
    w.pos += 1
    return 0


cdef inline int _write_uvarint(unsigned char* p, uint64_t n) noexcept nogil:
    # Unsigned LEB128, as cachekey_py._uvarint: at most 10 bytes; returns how many.
    cdef int k = 0
    while n >= 0x80:
        p[k] = <unsigned char>((n & 0x7F) | 0x80)
        k += 1
        n >>= 7
    p[k] = <unsigned char>n
    return k + 1


cdef inline int _put_uvarint(_Writer* w, uint64_t n) except -1:
    _reserve(w, 10)
    w.pos += _write_uvarint(w.buf + w.pos, n)
    return 0


cdef inline int _put_tagged_u64(_Writer* w, unsigned char tag, uint64_t n) except -1:
    # Tag + 8 bytes little-endian, written byte by byte so the host's byte order is moot.
    cdef int i
    _reserve(w, 9)
    w.buf[w.pos] = tag
    for i in range(8):
        w.buf[w.pos + 1 + i] = <unsigned char>(n >> (8 * i))
    w.pos += 9
    return 0


cdef inline int _put_sized(_Writer* w, const char* data, Py_ssize_t n) except -1:
    # uvarint(n) + n bytes.
    _put_uvarint(w, <uint64_t>n)
    _reserve(w, n)
    memcpy(w.buf + w.pos, data, n)
    w.pos += n
    return 0


# ============================================================================================
# === UTF-8 ===================================================================================

# Code units of the three PyUnicode kinds (Py_UCS1/2/4; Cython gives Py_UCS4 a meaning of
# its own, hence the stdint names).
ctypedef fused _unit_t:
    uint8_t
    uint16_t
    uint32_t

cdef enum:
    _BLOCK = 16            # code units checked at once for the all-ASCII fast path


cdef inline int _uvarint_len(uint64_t n) noexcept nogil:
    cdef int k = 1
    while n >= 0x80:
        n >>= 7
        k += 1
    return k


cdef inline unsigned char* _utf8_char(unsigned char* out, uint32_t c) noexcept nogil:
    # One code point as UTF-8. A surrogate (U+D800..U+DFFF) gets the ordinary 3-byte form,
    # which is what str.encode("utf-8", "surrogatepass") produces.
    if c < 0x80:
        out[0] = <unsigned char>c
        return out + 1
    if c < 0x800:
        out[0] = <unsigned char>(0xC0 | (c >> 6))
        out[1] = <unsigned char>(0x80 | (c & 0x3F))
        return out + 2
    if c < 0x10000:
        out[0] = <unsigned char>(0xE0 | (c >> 12))
        out[1] = <unsigned char>(0x80 | ((c >> 6) & 0x3F))
        out[2] = <unsigned char>(0x80 | (c & 0x3F))
        return out + 3
    out[0] = <unsigned char>(0xF0 | (c >> 18))
    out[1] = <unsigned char>(0x80 | ((c >> 12) & 0x3F))
    out[2] = <unsigned char>(0x80 | ((c >> 6) & 0x3F))
    out[3] = <unsigned char>(0x80 | (c & 0x3F))
    return out + 4


cdef Py_ssize_t _utf8_encode(unsigned char* out, const _unit_t* d,
                             Py_ssize_t n) noexcept nogil:
    # Writes the UTF-8 of n code units at out and returns its length; out has room for the
    # longest case. Text in a non-ASCII str is still mostly ASCII (markup, code, English
    # with a curly quote or an emoji), so blocks of _BLOCK all-ASCII units are narrowed in
    # one go (both fixed-size inner loops vectorise); other blocks and the tail go code point
    # by code point.
    cdef unsigned char* start = out
    cdef unsigned char narrow[_BLOCK]
    cdef Py_ssize_t i = 0
    cdef int j
    cdef _unit_t acc
    while i + _BLOCK <= n:
        acc = 0
        for j in range(_BLOCK):
            acc |= d[i + j]
        if acc < 0x80:
            if _unit_t is uint8_t:
                memcpy(out, d + i, _BLOCK)
            else:
                for j in range(_BLOCK):
                    narrow[j] = <unsigned char>d[i + j]
                memcpy(out, narrow, _BLOCK)
            out += _BLOCK
        else:
            for j in range(_BLOCK):
                out = _utf8_char(out, d[i + j])
        i += _BLOCK
    while i < n:
        out = _utf8_char(out, d[i])
        i += 1
    return out - start


cdef int _put_utf8(_Writer* w, PyObject* s) except -1:
    # uvarint(length) + UTF-8 of an exact str, as cachekey_py._put_str without the tag.
    # ASCII is copied straight from the str. Anything else is encoded here, in one pass,
    # straight into the buffer: PyUnicode_AsUTF8AndSize would allocate a UTF-8 copy and keep
    # it on the str for its lifetime, and it refuses the lone surrogates that
    # "surrogatepass" accepts.
    cdef Py_ssize_t n, size, most
    cdef const void* data
    cdef int kind, hi, k
    cdef unsigned char* p
    if _unicode_ready(s) < 0:
        return -1
    n = PyUnicode_GET_LENGTH(s)
    data = PyUnicode_DATA(s)
    if PyUnicode_IS_ASCII(s):
        return _put_sized(w, <const char*>data, n)
    # Unknown length, known bound: a code unit of the 1-, 2- and 4-byte kinds takes at most
    # 2, 3 and 4 bytes. The content goes after room for the longest prefix the bound allows
    # and is moved back if the actual prefix is shorter (only when the bounds straddle a
    # 7-bit boundary).
    kind = PyUnicode_KIND(s)
    most = n * (4 if kind == 4 else kind + 1)
    hi = _uvarint_len(<uint64_t>most)
    # Everything is reserved now: nothing below may grow the buffer, since a spill off the
    # stack copies only the first w.pos bytes.
    _reserve(w, hi + most)
    p = w.buf + w.pos
    if kind == PyUnicode_1BYTE_KIND:
        size = _utf8_encode(p + hi, <const uint8_t*>data, n)
    elif kind == PyUnicode_2BYTE_KIND:
        size = _utf8_encode(p + hi, <const uint16_t*>data, n)
    else:
        size = _utf8_encode(p + hi, <const uint32_t*>data, n)
    k = _uvarint_len(<uint64_t>size)
    if k < hi:
        memmove(p + k, p + hi, size)
    _write_uvarint(p, <uint64_t>size)   # k bytes, in front of the content
    w.pos += k + size
    return 0


# ============================================================================================
# === Object keys: sorting ====================================================================

ctypedef struct _Entry:
    PyObject* key          # exact str, borrowed from the dict
    PyObject* value        # borrowed from the dict
    const uint8_t* chars   # the key's code units if it is of the 1-byte kind, else NULL
    Py_ssize_t length      # the key's length in code points


cdef inline void _set_entry(_Entry* e, PyObject* key, PyObject* value) noexcept:
    # key: an exact, ready str.
    e.key = key
    e.value = value
    e.length = PyUnicode_GET_LENGTH(key)
    if PyUnicode_KIND(key) == PyUnicode_1BYTE_KIND:
        e.chars = <const uint8_t*>PyUnicode_DATA(key)
    else:
        e.chars = NULL


cdef inline int _entry_cmp(const _Entry* a, const _Entry* b) noexcept:
    # cachekey_py sorts keys by their UTF-8 bytes. UTF-8 (surrogates included, as
    # "surrogatepass" writes them) preserves code-point order, so comparing code points is
    # the same order without encoding anything. Keys of one dict are never equal.
    cdef Py_ssize_t i, n
    if a.chars is not NULL and b.chars is not NULL:
        # Latin-1 keys, nearly all of them: code units are code points. Keys are short and
        # differ early, so a plain loop beats a call to memcmp.
        n = a.length if a.length < b.length else b.length
        for i in range(n):
            if a.chars[i] != b.chars[i]:
                return <int>a.chars[i] - <int>b.chars[i]
        return -1 if a.length < b.length else 1
    # Cannot fail on two exact str.
    return PyUnicode_Compare(a.key, b.key)


cdef void _insertion_sort(_Entry* e, Py_ssize_t n) noexcept:
    # Binary insertion sort: few comparisons (the costly part), memmove for the shifts.
    cdef Py_ssize_t i, lo, hi, mid
    cdef _Entry x
    for i in range(1, n):
        x = e[i]
        lo = 0
        hi = i
        while lo < hi:
            mid = (lo + hi) >> 1
            if _entry_cmp(&x, &e[mid]) < 0:
                hi = mid
            else:
                lo = mid + 1
        if lo < i:
            memmove(&e[lo + 1], &e[lo], (i - lo) * sizeof(_Entry))
            e[lo] = x


cdef void _merge_sort(_Entry* e, _Entry* tmp, Py_ssize_t n) noexcept:
    # For objects with many keys (a large logit_bias): O(n log n), tmp holds n entries.
    cdef Py_ssize_t half, i, j, k
    if n <= _SMALL_OBJECT:
        _insertion_sort(e, n)
        return
    half = n >> 1
    _merge_sort(e, tmp, half)
    _merge_sort(e + half, tmp, n - half)
    memcpy(tmp, e, half * sizeof(_Entry))
    i = 0
    j = half
    k = 0
    while i < half and j < n:
        if _entry_cmp(&e[j], &tmp[i]) < 0:
            e[k] = e[j]
            j += 1
        else:
            e[k] = tmp[i]
            i += 1
        k += 1
    while i < half:
        e[k] = tmp[i]
        i += 1
        k += 1


# ============================================================================================
# === The walk ================================================================================

cdef int _put_object(_Writer* w, PyObject* obj, int depth, bint top) except -1:
    # depth: the level of obj itself (the request is 1). As cachekey_py._put_object: every
    # key is type-checked in dict order before any value is encoded, so the first error
    # reported is the same.
    cdef _Entry small[_SMALL_OBJECT]
    cdef _Entry* entries = small
    cdef Py_ssize_t n, m = 0, pos = 0, i
    cdef PyObject* key
    cdef PyObject* value
    cdef int found
    if depth > _MAX_DEPTH:
        raise ValueError("request is nested deeper than %d levels" % _MAX_DEPTH)
    n = PyDict_GET_SIZE(obj)
    if n > _SMALL_OBJECT:
        # Room for the entries and the merge sort's scratch half.
        entries = <_Entry*>PyMem_Malloc(2 * n * sizeof(_Entry))
        if entries is NULL:
            raise MemoryError()
    try:
        # Borrowed references throughout: nothing below runs Python code that could mutate
        # the request (exact built-in types only), the same contract orjson and msgspec
        # encoders rely on.
        while PyDict_Next(obj, &pos, &key, &value):
            if not PyUnicode_CheckExact(key):
                raise TypeError("request contains an object key of unsupported type %r"
                                % type(<object>key).__name__)
            if _unicode_ready(key) < 0:  # _set_entry reads the data directly
                return -1
            if top:
                found = PySet_Contains(<PyObject*>_ignored, key)
                if found < 0:
                    return -1
                if found:
                    continue
            _set_entry(&entries[m], key, value)
            m += 1
        _merge_sort(entries, entries + n, m)
        _put_byte(w, b'{')
        _put_uvarint(w, <uint64_t>m)
        for i in range(m):
            _put_utf8(w, entries[i].key)
            _put_value(w, entries[i].value, depth)
    finally:
        if entries is not small:
            PyMem_Free(entries)
    return 0


cdef int _put_value(_Writer* w, PyObject* v, int depth) except -1:
    # depth: the number of containers enclosing v. Same order of checks and the same
    # messages as cachekey_py._put_value.
    cdef Py_ssize_t i, n
    cdef long long x
    cdef int overflow = 0
    cdef double d
    cdef uint64_t bits
    if PyUnicode_CheckExact(v):
        _put_byte(w, b's')
        return _put_utf8(w, v)
    if PyDict_CheckExact(v):
        return _put_object(w, v, depth + 1, False)
    if PyList_CheckExact(v):
        if depth + 1 > _MAX_DEPTH:
            raise ValueError("request is nested deeper than %d levels" % _MAX_DEPTH)
        n = PyList_GET_SIZE(v)
        _put_byte(w, b'[')
        _put_uvarint(w, <uint64_t>n)
        for i in range(n):
            _put_value(w, PyList_GET_ITEM(v, i), depth + 1)
        return 0
    if PyLong_CheckExact(v):
        x = PyLong_AsLongLongAndOverflow(v, &overflow)
        if overflow == 0:
            return _put_tagged_u64(w, b'i', <uint64_t>x)
        return _put_big_int(w, <object>v)
    if PyFloat_CheckExact(v):
        d = PyFloat_AS_DOUBLE(v)
        if not isfinite(d):
            raise ValueError("request contains a non-finite float (NaN or infinity)")
        memcpy(&bits, &d, sizeof(bits))
        return _put_tagged_u64(w, b'f', bits)
    if v == Py_None:
        return _put_byte(w, b'N')
    if v == Py_True:
        return _put_byte(w, b'T')
    if v == Py_False:
        return _put_byte(w, b'F')
    raise TypeError("request contains a value of unsupported type %r"
                    % type(<object>v).__name__)


cdef int _put_big_int(_Writer* w, object n) except -1:
    # Outside int64 (orjson yields up to 2**64 - 1): rare, so plain Python, exactly as in
    # cachekey_py._put_value.
    data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    _put_byte(w, b'I')
    return _put_sized(w, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


# ============================================================================================
# === Public API ==============================================================================

cdef int _check_args(object route, object request, object namespace) except -1:
    # Same order and messages as cachekey_py._check_args.
    if type(route) is not str:
        raise TypeError("route must be a str, not %r" % type(route).__name__)
    if type(namespace) is not str:
        raise TypeError("namespace must be a str, not %r" % type(namespace).__name__)
    if type(request) is not dict:
        raise TypeError("request must be a dict, not %r" % type(request).__name__)
    return 0


cdef int _put_canonical(_Writer* w, object route, object request) except -1:
    _put_byte(w, _FORMAT_VERSION)
    _put_byte(w, b's')
    _put_utf8(w, <PyObject*>route)
    return _put_object(w, <PyObject*>request, 1, True)


def canonical(route, request):
    """The canonical byte form of ``request`` on ``route``: what the cache key hashes."""
    cdef unsigned char stack[_STACK_SIZE]
    cdef _Writer w
    _check_args(route, request, "")
    w.buf = stack
    w.pos = 0
    w.cap = _STACK_SIZE
    w.heap = NULL
    try:
        _put_canonical(&w, route, request)
        return PyBytes_FromStringAndSize(<char*>w.buf, w.pos)
    finally:
        PyMem_Free(w.heap)


def cache_key(route, request, namespace=""):
    """The 16-byte XXH3-128 key of ``request`` on ``route`` for tenant ``namespace``."""
    cdef unsigned char stack[_STACK_SIZE]
    cdef _Writer w
    _check_args(route, request, namespace)
    w.buf = stack
    w.pos = 0
    w.cap = _STACK_SIZE
    w.heap = NULL
    try:
        _put_byte(&w, b's')
        _put_utf8(&w, <PyObject*>namespace)
        _put_canonical(&w, route, request)
        return _xxh3_128_digest(PyBytes_FromStringAndSize(<char*>w.buf, w.pos))
    finally:
        PyMem_Free(w.heap)
