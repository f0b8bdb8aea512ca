# cython: language_level=3, embedsignature=True
# distutils: extra_compile_args = -ffp-contract=off
"""The endpoint table, compiled. The spec is ``scoring_py.py``: same names, signatures,
results (bit for bit), exceptions and messages.

Bit-identical floats need the twin's operations in the twin's order, libm's ``exp`` (what
``math.exp`` calls) and no fused multiply-add: ``-ffp-contract=off`` above stops GCC (whose
default contracts ``a * b + c`` wherever the target has FMA, e.g. aarch64 or -march=native)
and clang from fusing the EWMA and score sums.
"""

cimport cython
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.list cimport PyList_CheckExact, PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_CheckExact
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.number cimport PyIndex_Check, PyNumber_AsSsize_t, PyNumber_Float
from cpython.object cimport PyObject, Py_TYPE
from cpython.pyport cimport PY_SSIZE_T_MIN
from cpython.ref cimport Py_INCREF
from cpython.sequence cimport (PySequence_Fast_GET_ITEM, PySequence_Fast_GET_SIZE,
                               PySequence_Fast_ITEMS)
from cpython.tuple cimport PyTuple_CheckExact
from libc.math cimport INFINITY, exp, fabs, isfinite, isinf, isnan
from libc.stdint cimport UINT32_MAX, uint8_t, uint32_t
from libc.stdlib cimport qsort
from libc.string cimport memcpy

cdef extern from *:
    """
    /* The value of an exact int 0 <= v < 2**30 (one digit), read inline: the per-candidate
       cost of pick() and rank(). CPython 3.12+ offers this as PyUnstable_Long_IsCompact /
       CompactValue; before, ob_size is the signed digit count: the value is ob_digit[0] for
       size 1 and 0 for size 0 (what Cython's own conversions do). Returns 0 for anything
       else, negative ints included, which then take the general path. */
    static inline int llmedge_small_index(PyObject *o, Py_ssize_t *out) {
        if (!PyLong_CheckExact(o)) return 0;
    #if defined(Py_LIMITED_API)
        return 0;
    #elif PY_VERSION_HEX >= 0x030C0000
        if (!PyUnstable_Long_IsCompact((PyLongObject *)o)) return 0;
        *out = PyUnstable_Long_CompactValue((PyLongObject *)o);
        return *out >= 0;
    #else
        Py_ssize_t size = Py_SIZE(o);
        if ((size_t)size > 1) return 0;
        *out = (Py_ssize_t)((PyLongObject *)o)->ob_digit[0] & -size;   /* size 0: 0 */
        return 1;
    #endif
    }
    """
    bint llmedge_small_index(PyObject* o, Py_ssize_t* out) noexcept nogil

__all__ = ("EP_EJECTED", "EP_HALF_OPEN", "EP_HEALTHY", "EP_OPEN", "POLICY_COST",
           "POLICY_LATENCY", "POLICY_SCORE", "EndpointTable")

# Plain ints, as in the twin (a cpdef enum would export IntFlag members instead).
EP_HEALTHY = <int>STATE_HEALTHY
EP_EJECTED = <int>STATE_EJECTED
EP_OPEN = <int>STATE_OPEN
EP_HALF_OPEN = <int>STATE_HALF_OPEN

POLICY_COST = <int>RANK_COST
POLICY_LATENCY = <int>RANK_LATENCY
POLICY_SCORE = <int>RANK_SCORE

cdef enum:
    _PICK_STACK = 256       # pick(): usable rows kept on the C stack up to this many
    _RANK_STACK = 64        # rank(): groups kept on the C stack up to this many
    _INSERTION_MAX = 32     # rank(): insertion sort up to this many live groups, qsort above


# === helpers ===

cdef double _finite(str name, object value, double low) except? -1.0:
    # scoring_py._finite: float(value) (PyNumber_Float is exactly that, strings included),
    # then finite and >= low, else its ValueError and message.
    cdef double v
    if PyFloat_CheckExact(value):
        v = PyFloat_AS_DOUBLE(value)
    else:
        v = PyFloat_AS_DOUBLE(PyNumber_Float(value))
    if not isfinite(v) or v < low:
        raise ValueError("%s must be finite and >= %g" % (name, low))
    return v


cdef int _member(object value, int count) except -2:
    # `value in (0, 1, ..., count - 1)` as the twin tests EP_* / POLICY_* (== against each
    # member in order); returns the member, or -1 for none. Only ever stores the int found:
    # where the twin would keep the object given (1.0, True), this keeps 1.
    cdef int overflow = 0
    cdef long long v
    cdef int k
    if PyLong_CheckExact(value):
        v = PyLong_AsLongLongAndOverflow(value, &overflow)
        return <int>v if overflow == 0 and 0 <= v < count else -1
    for k in range(count):
        if k == value:
            return k
    return -1


cdef object _not_an_index(object i):
    # What the twin's list subscript raises for an index that passed `0 <= i < n` but is no
    # integer (1.0, say): CPython's list_subscript message, verbatim.
    return TypeError("list indices must be integers or slices, not %.200s"
                     % Py_TYPE(i).tp_name.decode("utf-8", "replace"))


cdef int _resize(void** slot, size_t size) except -1:
    # Reallocates *slot, leaving it untouched (and still owned) on failure.
    cdef void* p = PyMem_Realloc(slot[0], size)
    if p is NULL:
        raise MemoryError()
    slot[0] = p
    return 0


@cython.cdivision(True)
cdef inline double _peak_ewma(double current, double stamp, double now_s, double sample,
                              double decay_s) noexcept nogil:
    # EndpointTable._peak_ewma in scoring_py.py, operation for operation.
    cdef double elapsed, w, blended
    if stamp < 0.0 or sample > current:
        return sample
    elapsed = now_s - stamp
    if 0.0 > elapsed:       # max(elapsed, 0.0): keeps a NaN, as Python's max does
        elapsed = 0.0
    w = exp(-elapsed / decay_s)
    blended = current * w + sample * (1.0 - w)
    # Decaying never rises: the blend of two values may round an ulp past both.
    return current if blended > current else blended


cdef inline int _int_min(double x, double hi, double* out) except -1:
    # min(int(x), hi) for a float x, as pick() computes its draws: int() truncates toward
    # zero and rejects NaN and infinities with these messages. The result is integral and
    # exactly representable, so later comparisons and "+ 1" match Python's int arithmetic
    # wherever the outcome can differ (see _subscript).
    if isnan(x):
        raise ValueError("cannot convert float NaN to integer")
    if isinf(x):
        raise OverflowError("cannot convert float infinity to integer")
    if fabs(x) < 4503599627370496.0:    # below 2**52 a double may have a fraction: drop it
        x = <double><long long>x        # (C's conversion truncates toward zero, as int())
    out[0] = hi if hi < x else x
    return 0


cdef inline Py_ssize_t _subscript(double idx, Py_ssize_t count) except -1:
    # The position `usable[idx]` reads in the twin's list of `count` rows, for an integral
    # idx <= count - 1. Only an rnd() outside [0, 1) makes idx negative; Python then counts
    # from the end, or raises one of these.
    if idx >= 0.0:
        return <Py_ssize_t>idx
    if idx < <double>PY_SSIZE_T_MIN:
        raise IndexError("cannot fit 'int' into an index-sized integer")
    if <Py_ssize_t>idx + count < 0:
        raise IndexError("list index out of range")
    return <Py_ssize_t>idx + count


cdef void* _spill(void* buf, void* stack, Py_ssize_t used, Py_ssize_t new_cap,
                  size_t size) except NULL:
    # pick() and rank(): a buffer of new_cap elements of `size` bytes keeping the first
    # `used`. The first spill leaves the stack buffer for the heap, later ones reallocate;
    # on failure the old buffer stays the caller's to free.
    cdef void* p
    if <size_t>new_cap > (<size_t>-1 >> 1) // size:
        raise MemoryError()
    if buf == stack:
        p = PyMem_Malloc(<size_t>new_cap * size)
        if p is not NULL:
            memcpy(p, stack, <size_t>used * size)
    else:
        p = PyMem_Realloc(buf, <size_t>new_cap * size)
    if p is NULL:
        raise MemoryError()
    return p


cdef inline bint _usable(const uint8_t* state, const uint32_t* inflight,
                         Py_ssize_t row) noexcept nogil:
    # EndpointTable._available: healthy, or half-open with no trial in flight.
    cdef uint8_t s = state[row]
    return s == STATE_HEALTHY or (s == STATE_HALF_OPEN and inflight[row] == 0)


cdef Py_ssize_t _scan(PyObject** items, Py_ssize_t j, Py_ssize_t size, Py_ssize_t n,
                      const uint8_t* state, const uint32_t* inflight, Py_ssize_t* usable,
                      Py_ssize_t* count, Py_ssize_t cap) noexcept nogil:
    # pick()'s loop over items[j:size] while they are small ints in 0..n-1 (no Python code
    # runs, so nothing can change under it): appends the available rows to usable[*count:cap].
    # Returns where it stopped: size when done, else at an item for the general path (any
    # other object, or an available row with `usable` full). Kept apart from pick() so that
    # the compiler can hold this loop's few variables in registers.
    cdef Py_ssize_t k, c = count[0]
    while j < size:
        if not (llmedge_small_index(items[j], &k) and <size_t>k < <size_t>n):
            break
        if _usable(state, inflight, k):
            if c == cap:
                break
            usable[c] = k
            c += 1
        j += 1
    count[0] = c
    return j


# === rank() sorting ===

ctypedef struct _Live:
    # One group with an available endpoint, as the twin's `live` tuples.
    double key1             # cost: price; latency: load; score: the weighted score
    double key2             # cost: latency; otherwise 0.0 (the twin's second tuple member)
    double price            # first row's price
    double rtt              # lowest rtt among the available rows, us
    double quality          # first row's quality
    double load             # lowest load among the available rows, finite
    Py_ssize_t group        # index in `groups`; breaks ties, as the twin's `k` does


cdef inline bint _before(const _Live* a, const _Live* b) noexcept nogil:
    # The twin sorts by ((key1, key2), k). Keys are never NaN: live groups have finite
    # features (a NaN or infinite load leaves a group dead), weights are finite, and the
    # normalised values lie in 0..1, so the order is total and any sort agrees with sorted().
    if a.key1 != b.key1:
        return a.key1 < b.key1
    if a.key2 != b.key2:
        return a.key2 < b.key2
    return a.group < b.group


cdef int _compare_live(const void* a, const void* b) noexcept nogil:
    if _before(<const _Live*>a, <const _Live*>b):
        return -1
    if _before(<const _Live*>b, <const _Live*>a):
        return 1
    return 0


cdef void _sort_live(_Live* live, Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t j, k
    cdef _Live item
    if m > _INSERTION_MAX:
        qsort(live, <size_t>m, sizeof(_Live), _compare_live)
        return
    for j in range(1, m):
        item = live[j]
        k = j
        while k > 0 and _before(&item, &live[k - 1]):
            live[k] = live[k - 1]
            k -= 1
        live[k] = item


# === impl EndpointTable ===

@cython.final
cdef class EndpointTable:
    """Endpoint statistics in flat arrays, and power-of-two-choices over them.

    Latency is a peak-EWMA: a sample above the average replaces it at once, one below pulls
    it down with weight ``1 - exp(-elapsed / decay_s)``. Load is ``latency × (inflight + 1)``.
    """

    # Fields and their invariants: scoring.pxd.

    def __cinit__(self):
        # The twin's defaults, so that even an instance whose __init__ never ran is usable.
        self._decay_s = 10.0
        self._default_rtt_us = 1_000_000.0
        self._error_decay_s = 30.0

    def __init__(self, decay_s=10.0, default_rtt_us=1_000_000.0, error_decay_s=30.0):
        self._decay_s = _finite("decay_s", decay_s, 1e-9)
        self._default_rtt_us = _finite("default_rtt_us", default_rtt_us, 0.0)
        self._error_decay_s = _finite("error_decay_s", error_decay_s, 1e-9)
        self._n = 0     # a second __init__ empties the table, as the twin's does

    def __dealloc__(self):
        PyMem_Free(self._rtt)
        PyMem_Free(self._ttft)
        PyMem_Free(self._stamp)
        PyMem_Free(self._err)
        PyMem_Free(self._err_stamp)
        PyMem_Free(self._inflight)
        PyMem_Free(self._consecutive)
        PyMem_Free(self._state)
        PyMem_Free(self._weight)
        PyMem_Free(self._price)
        PyMem_Free(self._quality)
        PyMem_Free(self._load)

    def __len__(self):
        return self._n

    cdef int _grow(self) except -1:
        # Doubles every array. Each one is stored as soon as it is reallocated: if a later
        # one fails, the earlier ones are merely larger than _cap says.
        cdef Py_ssize_t cap = self._cap * 2 if self._cap else 8
        cdef size_t d, u
        if cap > <Py_ssize_t>(<size_t>-1 >> 1) // <Py_ssize_t>sizeof(double):
            raise MemoryError()
        d = <size_t>cap * sizeof(double)
        u = <size_t>cap * sizeof(uint32_t)
        _resize(<void**>&self._rtt, d)
        _resize(<void**>&self._ttft, d)
        _resize(<void**>&self._stamp, d)
        _resize(<void**>&self._err, d)
        _resize(<void**>&self._err_stamp, d)
        _resize(<void**>&self._inflight, u)
        _resize(<void**>&self._consecutive, u)
        _resize(<void**>&self._state, <size_t>cap * sizeof(uint8_t))
        _resize(<void**>&self._weight, d)
        _resize(<void**>&self._price, d)
        _resize(<void**>&self._quality, d)
        _resize(<void**>&self._load, d)
        self._cap = cap
        return 0

    def add(self, weight=1.0, price=0.0, quality=0.5):
        """A new endpoint row; returns its index."""
        cdef double w, p, q
        cdef Py_ssize_t k
        w = _finite("weight", weight, 0.0)
        if w <= 0.0:
            raise ValueError("weight must be > 0")
        p = _finite("price", price, 0.0)
        q = _finite("quality", quality, 0.0)
        if q > 1.0:
            raise ValueError("quality must be between 0 and 1")
        if self._n == self._cap:
            self._grow()
        k = self._n
        self._rtt[k] = self._default_rtt_us
        self._ttft[k] = self._default_rtt_us
        self._stamp[k] = -1.0
        self._err[k] = 0.0
        self._err_stamp[k] = -1.0
        self._inflight[k] = 0
        self._consecutive[k] = 0
        self._state[k] = STATE_HEALTHY
        self._weight[k] = w
        self._price[k] = p
        self._quality[k] = q
        self._update_load(k)
        self._n = k + 1
        return k

    # --- rows ---

    cdef Py_ssize_t _row(self, object i) except -2:
        # scoring_py._check_index and the list subscript after it. Returns the row, or -1
        # when i passes `0 <= i < n` but is no list index (1.0): the caller raises
        # _not_an_index(i) where the twin's subscript would, after any check in between.
        cdef int overflow = 0
        cdef long long v
        cdef Py_ssize_t r
        if PyLong_CheckExact(i):
            # The hot path: no Python calls. Ints beyond 64 bits are out of range too.
            v = PyLong_AsLongLongAndOverflow(i, &overflow)
            if overflow == 0 and 0 <= v < self._n:
                return <Py_ssize_t>v
            raise IndexError("endpoint index out of range")
        # bool, numpy ints, floats, anything else: the twin's comparisons, its errors included.
        if not 0 <= i < self._n:
            raise IndexError("endpoint index out of range")
        if not PyIndex_Check(i):
            return -1
        r = PyNumber_AsSsize_t(i, IndexError)
        if not 0 <= r < self._n:    # an __index__ that disagrees with its comparisons
            raise IndexError("endpoint index out of range")
        return r

    cdef Py_ssize_t _row_item(self, PyObject* p) except -1:
        # _row() for an item (a borrowed reference) of a list or tuple in rank(), raising
        # _not_an_index at once. Its loop reads small ints inline (see llmedge_small_index)
        # and comes here for anything else, out of range included.
        # Holds its own reference: Python code run by comparisons may change that list.
        cdef object item = <object>p
        cdef Py_ssize_t v = self._row(item)
        if v < 0:
            raise _not_an_index(item)
        return v

    cdef bint _is_available(self, Py_ssize_t row) noexcept nogil:
        return _usable(self._state, self._inflight, row)

    @cython.cdivision(True)     # weight > 0: no division by zero to check for
    cdef void _update_load(self, Py_ssize_t row) noexcept nogil:
        # EndpointTable._load: rtt * (inflight + 1) / weight, left to right; the twin's int
        # (inflight + 1) converts to the same double. Computed when an input changes rather
        # than when read, so that pick() and rank() only load it: the same value either way.
        self._load[row] = self._rtt[row] * (<double>self._inflight[row] + 1.0) / self._weight[row]

    cdef inline double _load_of(self, Py_ssize_t row) noexcept nogil:
        return self._load[row]

    # --- feeding ---

    def start(self, i):
        """A request was sent to endpoint ``i``."""
        cdef Py_ssize_t k = self._row(i)
        if k < 0:
            raise _not_an_index(i)
        if self._inflight[k] < UINT32_MAX:
            self._inflight[k] += 1
            self._update_load(k)

    @cython.cdivision(True)     # error_decay_s >= 1e-9
    def record(self, i, now_s, rtt_us, ttft_us, failed):
        """A request to ``i`` finished: its latency, time to first token (< 0: none) and
        whether it failed (a failure's latency still counts: a timeout is slow)."""
        cdef Py_ssize_t k = self._row(i)
        cdef double rtt = _finite("rtt_us", rtt_us, 0.0)
        cdef double now, stamp, err_stamp, ttft = 0.0, sample, w, elapsed
        cdef bint use_ttft, bad
        if k < 0:
            raise _not_an_index(i)
        # The twin never checks now_s; it must be a real number here (a float or int, or
        # anything with __float__/__index__), converted before anything changes.
        now = now_s
        stamp = self._stamp[k]
        if self._inflight[k] > 0:
            self._inflight[k] -= 1
        self._rtt[k] = _peak_ewma(self._rtt[k], stamp, now, rtt, self._decay_s)
        self._update_load(k)
        # ttft_us is not validated by the twin: NaN is "none", inf gets in, and a non-number
        # fails in its `>= 0.0` after the latency above was recorded (so here too).
        if PyFloat_CheckExact(ttft_us):
            ttft = PyFloat_AS_DOUBLE(ttft_us)
            use_ttft = ttft >= 0.0
        else:
            use_ttft = ttft_us >= 0.0
            if use_ttft:
                ttft = ttft_us
        if use_ttft:
            self._ttft[k] = _peak_ewma(self._ttft[k], stamp, now, ttft, self._decay_s)
        self._stamp[k] = now
        bad = failed
        sample = 1.0 if bad else 0.0
        err_stamp = self._err_stamp[k]
        if err_stamp < 0.0:
            self._err[k] = sample
        else:
            elapsed = now - err_stamp
            if 0.0 > elapsed:       # max(elapsed, 0.0), NaN kept
                elapsed = 0.0
            w = exp(-elapsed / self._error_decay_s)
            self._err[k] = self._err[k] * w + sample * (1.0 - w)
        self._err_stamp[k] = now
        if not bad:
            self._consecutive[k] = 0
        elif self._consecutive[k] < UINT32_MAX:
            self._consecutive[k] += 1

    def cancel(self, i):
        """A request to ``i`` ended without a result worth learning from (client left)."""
        cdef Py_ssize_t k = self._row(i)
        if k < 0:
            raise _not_an_index(i)
        if self._inflight[k] > 0:
            self._inflight[k] -= 1
            self._update_load(k)

    def set_state(self, i, state):
        """Set endpoint ``i``'s state to one of the ``EP_*`` constants."""
        cdef Py_ssize_t k = self._row(i)
        cdef int s = _member(state, 4)
        if s < 0:
            raise ValueError("unknown endpoint state")
        if k < 0:
            raise _not_an_index(i)
        self._state[k] = <uint8_t>s

    # --- reading ---

    def state(self, i):
        """Endpoint ``i``'s state, one of the ``EP_*`` constants."""
        cdef Py_ssize_t k = self._row(i)
        if k < 0:
            raise _not_an_index(i)
        return self._state[k]

    def available(self, i):
        """Whether ``pick`` may choose endpoint ``i``: healthy, or half-open and idle."""
        cdef Py_ssize_t k = self._row(i)
        if k < 0:
            raise _not_an_index(i)
        return self._is_available(k)

    def load(self, i):
        """Endpoint ``i``'s load: ``rtt_us × (inflight + 1) / weight``."""
        cdef Py_ssize_t k = self._row(i)
        if k < 0:
            raise _not_an_index(i)
        return self._load_of(k)

    def inflight(self, i):
        """Requests in flight at endpoint ``i`` (what ``stats(i)["inflight"]`` says,
        without building the dict)."""
        cdef Py_ssize_t k = self._row(i)
        if k < 0:
            raise _not_an_index(i)
        return self._inflight[k]

    def stats(self, i):
        """Endpoint ``i``'s row, as a dict."""
        cdef Py_ssize_t k = self._row(i)
        if k < 0:
            raise _not_an_index(i)
        return {"rtt_us": self._rtt[k], "ttft_us": self._ttft[k], "error_rate": self._err[k],
                "inflight": self._inflight[k], "consecutive_failures": self._consecutive[k],
                "state": self._state[k], "weight": self._weight[k], "price": self._price[k],
                "quality": self._quality[k]}

    # --- choosing ---

    def pick(self, candidates, rnd):
        """Power of two choices among the available ``candidates``: two distinct ones drawn
        at random, the one with the lower load wins (the first on a tie). -1 when none is
        available. ``rnd`` is called twice when two or more are available, else not at all."""
        cdef Py_ssize_t stack[_PICK_STACK]
        cdef Py_ssize_t* usable = stack
        cdef Py_ssize_t cap = _PICK_STACK, count = 0, size, j, k, pa, pb
        cdef double a, b
        cdef bint keep
        # The candidate objects that are not exact ints (True, numpy ints), by position in
        # `usable`: pick() returns the object given, as the twin does. None until one is seen.
        originals = None
        # A list or tuple is read in place; any other iterable is listed first (the only
        # difference: an error raised by that iterator itself comes before the candidates').
        seq = (candidates if PyList_CheckExact(candidates) or PyTuple_CheckExact(candidates)
               else list(candidates))
        try:
            size = PySequence_Fast_GET_SIZE(seq)
            if size > cap:
                usable = <Py_ssize_t*>_spill(usable, stack, 0, size, sizeof(Py_ssize_t))
                cap = size
            j = 0
            while True:
                # The common case, small ints in range, in a tight C loop (_scan); it stops
                # at anything else, or when `usable` is full.
                j = _scan(PySequence_Fast_ITEMS(seq), j, size, self._n, self._state,
                          self._inflight, usable, &count, cap)
                if j >= size:
                    break
                # The general path for item j, with a reference of our own: Python code may
                # run in its comparisons and change the list or the table (add() reallocates),
                # which is why _scan gets everything afresh from self and seq.
                item = <object>PySequence_Fast_ITEMS(seq)[j]
                k = self._row(item)
                if k < 0:
                    raise _not_an_index(item)
                keep = not PyLong_CheckExact(item)
                size = PySequence_Fast_GET_SIZE(seq)
                j += 1
                if self._is_available(k):
                    if count == cap:    # only a list grown by an item's comparisons
                        usable = <Py_ssize_t*>_spill(usable, stack, count, 2 * cap,
                                                     sizeof(Py_ssize_t))
                        cap *= 2
                    if keep:
                        if originals is None:
                            originals = {}
                        originals[count] = item
                    usable[count] = k
                    count += 1
            if count == 0:
                return -1
            if count == 1:
                return usable[0] if originals is None else originals.get(0, usable[0])
            # linkerd's gen_pair: a from 0..count-1, b from the others. The draws are
            # computed as the twin's `min(int(rnd() * n), n - 1)`; see _int_min, _subscript.
            # rnd() may run any Python code, even on this table: only `usable` (ours) and
            # rows below _n (which never shrinks) are used after it.
            _int_min(<double>rnd() * <double>count, <double>(count - 1), &a)
            _int_min(<double>rnd() * <double>(count - 1), <double>(count - 2), &b)
            if b >= a:
                b += 1.0
            pb = _subscript(b, count)
            pa = _subscript(a, count)
            if self._load_of(usable[pb]) < self._load_of(usable[pa]):
                pa = pb
            return usable[pa] if originals is None else originals.get(pa, usable[pa])
        finally:
            if usable != stack:
                PyMem_Free(usable)

    @cython.cdivision(True)     # divides only by spans > 0
    def rank(self, groups, policy, weights=(0.0, 0.0, 0.0, 0.0)):
        """Groups (deployments: lists of endpoint rows) best first; those with no available
        endpoint come last, in their given order.

        A group's price and quality are its first row's; its latency and load are those of
        its best available row (the one ``pick`` would favour). ``policy`` POLICY_COST orders
        by price, then latency; POLICY_LATENCY by load (latency × (inflight + 1)); POLICY_SCORE
        by ``weights`` = (cost, latency, quality, load) over features normalised to 0..1 across
        the available groups: lower cost, latency and load and higher quality score better.
        Ties keep the given order.
        """
        cdef _Live live_stack[_RANK_STACK]
        cdef Py_ssize_t dead_stack[_RANK_STACK]
        cdef _Live* live = live_stack
        cdef Py_ssize_t* dead = dead_stack
        cdef _Live* item
        cdef double w[4]
        cdef double best_rtt, best_load, load, v
        cdef double low[4]
        cdef double span[4]
        cdef double feature[4]
        cdef Py_ssize_t cap = _RANK_STACK, g, j, f, k, first, size, m = 0, nd = 0
        cdef PyObject** items
        cdef bint reread
        cdef int pol = _member(policy, 3)
        if pol < 0:
            raise ValueError("unknown policy")
        if len(weights) != 4:
            raise ValueError("weights must be (cost, latency, quality, load)")
        w[0] = w[1] = w[2] = w[3] = 0.0
        j = 0
        for x in weights:       # all validated, as the twin's list comprehension does
            v = _finite("weight", x, 0.0)
            if j < 4:
                w[j] = v
            j += 1
        # A list or tuple is walked in place; any other iterable is listed first (the only
        # difference: an error raised by that iterator itself comes before the groups' own).
        seq = groups if PyList_CheckExact(groups) or PyTuple_CheckExact(groups) else list(groups)
        try:
            g = PySequence_Fast_GET_SIZE(seq)
            if g > cap:
                live = <_Live*>_spill(live, live_stack, 0, g, sizeof(_Live))
                dead = <Py_ssize_t*>_spill(dead, dead_stack, 0, g, sizeof(Py_ssize_t))
                cap = g
            # The size is read afresh each time, as a list iterator does: Python code run by
            # an item's comparisons may change the list.
            g = 0
            while g < PySequence_Fast_GET_SIZE(seq):
                if g == cap:
                    live = <_Live*>_spill(live, live_stack, m, 2 * cap, sizeof(_Live))
                    dead = <Py_ssize_t*>_spill(dead, dead_stack, nd, 2 * cap,
                                               sizeof(Py_ssize_t))
                    cap *= 2
                rows = <object>PySequence_Fast_GET_ITEM(seq, g)
                if PyList_CheckExact(rows) or PyTuple_CheckExact(rows):
                    if PySequence_Fast_GET_SIZE(rows) == 0:
                        raise ValueError("a group needs at least one endpoint")
                    rseq = rows
                    reread = False
                else:
                    if not rows:
                        raise ValueError("a group needs at least one endpoint")
                    rseq = list(rows)
                    reread = True   # the twin iterates rows, then reads rows[0] again
                best_rtt = best_load = INFINITY
                first = -1
                size = PySequence_Fast_GET_SIZE(rseq)
                items = PySequence_Fast_ITEMS(rseq)
                j = 0
                while j < size:     # as in pick()
                    if not (llmedge_small_index(items[j], &k) and <size_t>k < <size_t>self._n):
                        k = self._row_item(items[j])
                        size = PySequence_Fast_GET_SIZE(rseq)
                        items = PySequence_Fast_ITEMS(rseq)
                        reread = reread or PyList_CheckExact(rseq)
                    j += 1
                    if first < 0:
                        first = k
                    if self._is_available(k):
                        load = self._load_of(k)
                        if load < best_load:
                            best_load = load
                        if self._rtt[k] < best_rtt:
                            best_rtt = self._rtt[k]
                if best_load == INFINITY:
                    dead[nd] = g
                    nd += 1
                    g += 1
                    continue
                if reread:
                    # rows[0], as the twin reads it: it fails on a set or a generator, and
                    # may differ from the first row seen if Python code changed the list.
                    head = rows[0]
                    first = self._row(head)
                    if first < 0:
                        raise _not_an_index(head)
                item = &live[m]
                item.group = g
                item.price = self._price[first]
                item.rtt = best_rtt
                item.quality = self._quality[first]
                item.load = best_load
                m += 1
                g += 1
            if pol == RANK_COST:
                for j in range(m):
                    live[j].key1 = live[j].price
                    live[j].key2 = live[j].rtt
            elif pol == RANK_LATENCY:
                for j in range(m):
                    live[j].key1 = live[j].load
                    live[j].key2 = 0.0
            elif m:
                # The twin's spans: min() and max() over the live groups (a strict < or >
                # replaces, so the first of equal values stands), span = high - low.
                for f in range(4):
                    low[f] = span[f] = _feature(&live[0], f)
                    for j in range(1, m):
                        v = _feature(&live[j], f)
                        if v < low[f]:
                            low[f] = v
                        if v > span[f]:
                            span[f] = v
                    span[f] = span[f] - low[f]
                for j in range(m):
                    for f in range(4):
                        v = _feature(&live[j], f)
                        feature[f] = (v - low[f]) / span[f] if span[f] > 0.0 else 0.0
                    # Summed left to right, as the twin's expression.
                    live[j].key1 = (w[0] * feature[0] + w[1] * feature[1]
                                    + w[2] * (1.0 - feature[2]) + w[3] * feature[3])
                    live[j].key2 = 0.0
            _sort_live(live, m)
            result = PyList_New(m + nd)
            for j in range(m):
                _set_item(result, j, live[j].group)
            for j in range(nd):
                _set_item(result, m + j, dead[j])
            return result
        finally:
            if live != live_stack:
                PyMem_Free(live)
            if dead != dead_stack:
                PyMem_Free(dead)


cdef inline double _feature(const _Live* item, Py_ssize_t f) noexcept nogil:
    # The twin's item[1..4]: price, latency, quality, load.
    if f == 0:
        return item.price
    if f == 1:
        return item.rtt
    if f == 2:
        return item.quality
    return item.load


cdef inline int _set_item(list result, Py_ssize_t j, Py_ssize_t value) except -1:
    obj = value
    Py_INCREF(obj)      # PyList_SET_ITEM steals a reference
    PyList_SET_ITEM(result, j, obj)
    return 0
