# C-level layout of the endpoint table, for ``scoring.pyx`` and for any extension that wants to
# cimport it and read rows without Python dispatch. The spec is ``scoring_py.py``.

from cpython.object cimport PyObject
from libc.stdint cimport uint8_t, uint32_t


# The EP_* and POLICY_* values of scoring_py.py. scoring.pyx exports them to Python as plain
# ints under those names; these C names only exist for cimporting code.
cdef enum EndpointState:
    STATE_HEALTHY = 0
    STATE_EJECTED = 1       # health probes or outlier detection took it out
    STATE_OPEN = 2          # circuit open
    STATE_HALF_OPEN = 3     # circuit half-open: admits one request at a time

cdef enum RankPolicy:
    RANK_COST = 0
    RANK_LATENCY = 1
    RANK_SCORE = 2


cdef class EndpointTable:
    # --- configuration (set by __init__; __cinit__ gives the same defaults) ---
    cdef double _decay_s            # latency EWMA time constant, seconds, finite, >= 1e-9
    cdef double _default_rtt_us     # rtt/ttft of a row before its first sample, us, finite, >= 0
    cdef double _error_decay_s      # error-rate EWMA time constant, seconds, finite, >= 1e-9

    # --- rows: one entry per endpoint in each array below, index 0 <= row < _n ---
    cdef Py_ssize_t _n              # rows in use, 0 <= _n <= _cap; rows are never removed
    cdef Py_ssize_t _cap            # rows allocated in every array; doubles when full, 0 before
                                    # the first add() (all pointers NULL then)
    cdef double* _rtt               # peak-EWMA latency, us, >= 0 (NaN only after a NaN now_s)
    cdef double* _ttft              # peak-EWMA time to first token, us; any double: ttft_us is
                                    # not validated by the twin (inf and NaN can get in)
    cdef double* _stamp             # now_s of the last record(), seconds; -1.0 before the first
                                    # (any value < 0 means "no sample yet", as in the twin)
    cdef double* _err               # EWMA of failures (1.0 failed, 0.0 succeeded), 0..1
    cdef double* _err_stamp         # now_s of the last error sample; equals _stamp except after
                                    # a record() that raised half-way (kept apart as in the twin)
    cdef uint32_t* _inflight        # start() minus record()/cancel(), floored at 0; saturates at
                                    # UINT32_MAX (the twin's int is unbounded)
    cdef uint32_t* _consecutive     # failures since the last success; saturates at UINT32_MAX
    cdef uint8_t* _state            # EndpointState, 0..3
    cdef double* _weight            # relative capacity, finite, > 0 (may be subnormal)
    cdef double* _price             # USD per 1M tokens (input + output), finite, >= 0 (or -0.0)
    cdef double* _quality           # prior quality score, finite, 0..1 (or -0.0)
    cdef double* _load              # _rtt * (_inflight + 1) / _weight, us per unit of weight,
                                    # computed as the twin's _load() (>= 0; inf if it overflows,
                                    # NaN with a NaN _rtt); kept current by add, start, record
                                    # and cancel, the only writers of those three arrays

    # --- row-level helpers; rows must be in 0 <= row < _n ---
    cdef Py_ssize_t _row(self, object i) except -2          # index check; -1: not an index
    cdef Py_ssize_t _row_item(self, PyObject* p) except -1  # the same for a list/tuple item
    cdef int _grow(self) except -1
    cdef bint _is_available(self, Py_ssize_t row) noexcept nogil
    cdef void _update_load(self, Py_ssize_t row) noexcept nogil
    cdef double _load_of(self, Py_ssize_t row) noexcept nogil
