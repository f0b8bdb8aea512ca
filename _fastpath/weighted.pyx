# cython: language_level=3, embedsignature=True
"""Weighted ordering of candidates, compiled. The spec is ``weighted_py.py``."""

from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.math cimport isfinite

__all__ = ("WeightedOrder",)


cdef Py_ssize_t _select(const double* weights, Py_ssize_t n, double total,
                        double r) noexcept nogil:
    # Same scan as WeightedOrder._select in weighted_py.py, including the rounding rule.
    cdef double target, acc = 0.0
    cdef Py_ssize_t i, last_positive = -1
    target = r * total
    for i in range(n):
        if weights[i] <= 0.0:
            continue
        last_positive = i
        acc += weights[i]
        if target < acc:
            return i
    return last_positive if last_positive >= 0 else 0


cdef class WeightedOrder:
    """Orders candidate indices by weighted random sampling without replacement.

    The first index is chosen with probability proportional to its weight among all
    candidates, the second among those left, and so on; candidates of weight 0 come last,
    in index order, so they serve only as fallbacks.
    """

    cdef double* _weights   # one weight per candidate, finite and >= 0
    cdef double* _scratch   # reused by order(); the loop is single-threaded
    cdef Py_ssize_t _n      # number of candidates, >= 1

    def __cinit__(self, weights):
        cdef Py_ssize_t i
        cdef double w
        values = [float(w) for w in weights]
        self._n = len(values)
        if self._n == 0:
            raise ValueError("weights must not be empty")
        self._weights = <double*>PyMem_Malloc(self._n * sizeof(double))
        self._scratch = <double*>PyMem_Malloc(self._n * sizeof(double))
        if self._weights is NULL or self._scratch is NULL:
            raise MemoryError()
        for i in range(self._n):
            w = values[i]
            if not isfinite(w) or w < 0.0:
                raise ValueError("weights must be finite and >= 0")
            self._weights[i] = w

    def __dealloc__(self):
        PyMem_Free(self._weights)
        PyMem_Free(self._scratch)

    def __len__(self):
        return self._n

    def pick(self, double r):
        """The index chosen by one draw ``r`` in [0, 1)."""
        cdef double total = 0.0
        cdef Py_ssize_t i
        for i in range(self._n):
            total += self._weights[i]
        return _select(self._weights, self._n, total, r)

    def order(self, rnd):
        """Every index, ordered by successive weighted draws from ``rnd()`` in [0, 1)."""
        cdef double total = 0.0
        cdef Py_ssize_t i, k, positive = 0
        cdef double* remaining = self._scratch
        for i in range(self._n):
            remaining[i] = self._weights[i]
            if remaining[i] > 0.0:
                positive += 1
        result = []
        for k in range(positive):
            # Summed afresh each round, as in weighted_py.py: see the note there.
            total = 0.0
            for i in range(self._n):
                total += remaining[i]
            i = _select(remaining, self._n, total, <double>rnd())
            result.append(i)
            remaining[i] = 0.0
        for i in range(self._n):
            if self._weights[i] == 0.0:
                result.append(i)
        return result
