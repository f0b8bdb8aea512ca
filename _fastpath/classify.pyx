# cython: language_level=3, embedsignature=True
"""Hashed n-gram features and a linear softmax model, compiled.

The spec is ``classify_py.py``: same features, weights and probabilities, same errors. The
inference path touches only C arrays: a per-model scratch table (one double per bucket)
collects counts and a list of touched buckets keeps first-occurrence order, so nothing is
sorted and nothing is allocated per feature. The scratch makes a model single-threaded: it is
used from the event loop only.
"""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.math cimport exp, log2, sqrt, isfinite
from libc.stdint cimport int32_t, uint32_t, uint64_t
from libc.string cimport memset

import operator
from array import array

__all__ = ("LinearModel", "features", "log_length", "softmax", "train_softmax")

cdef enum:
    MAX_DIM = 1 << 24
    STACK_BYTES = 4096

cdef uint32_t PRIME = 0x01000193
cdef uint32_t WORD_BASIS = 0x811C9DC5
cdef uint64_t CHAR_SEED = 0x5851F42D4C957F2DULL
cdef uint32_t GOLDEN = 0x9E3779B1

cdef unsigned char WORD_BYTE[256]
cdef unsigned char LOWER[256]


cdef void _init_tables() noexcept:
    cdef int b
    for b in range(256):
        WORD_BYTE[b] = 1 if (0x61 <= b <= 0x7A or 0x30 <= b <= 0x39 or b >= 0x80) else 0
        LOWER[b] = b + 32 if 0x41 <= b <= 0x5A else b


_init_tables()


cdef inline uint32_t fmix32(uint32_t h) noexcept nogil:
    h ^= h >> 16
    h *= 0x85EBCA6BU
    h ^= h >> 13
    h *= 0xC2B2AE35U
    return h ^ (h >> 16)


cdef inline uint64_t fmix64(uint64_t k) noexcept nogil:
    k ^= k >> 33
    k *= 0xFF51AFD7ED558CCDULL
    k ^= k >> 33
    k *= 0xC4CEB9FE1A85EC53ULL
    return k ^ (k >> 33)


# === text -> buckets =========================================================

@cython.final
cdef class _Counter:
    # Weighted counts per bucket in first-occurrence order. Three passes, so that no step
    # waits on the one before: hash every feature of a turn into ``keys``; add the turn's
    # weight to ``acc`` per key; then walk ``keys`` once, emitting each bucket's total at its
    # first occurrence and zeroing it (a later occurrence finds 0 and is skipped). A single
    # pass that tests "new bucket?" per feature chains every step on a cache miss.
    cdef double* acc          # dim entries, all 0.0 between uses
    cdef uint32_t* keys       # every feature's bucket, in emission order
    cdef Py_ssize_t n_keys
    cdef uint32_t* touched    # distinct buckets in first-occurrence order (after finish)
    cdef double* vals         # their weighted counts
    cdef Py_ssize_t n_touched
    cdef Py_ssize_t last_size # bytes of the last turn counted, after the cut; -1: none
    cdef Py_ssize_t cap       # of keys, touched and vals
    cdef uint32_t mask
    cdef unsigned char* norm  # normalised stream scratch, 10 bytes beyond the text
    cdef Py_ssize_t norm_cap

    def __cinit__(self, uint32_t dim):
        self.mask = dim - 1
        self.acc = <double*>PyMem_Malloc(dim * sizeof(double))
        self.cap = 1024
        self.keys = <uint32_t*>PyMem_Malloc(self.cap * sizeof(uint32_t))
        self.touched = <uint32_t*>PyMem_Malloc(self.cap * sizeof(uint32_t))
        self.vals = <double*>PyMem_Malloc(self.cap * sizeof(double))
        self.norm_cap = STACK_BYTES + 10
        self.norm = <unsigned char*>PyMem_Malloc(self.norm_cap)
        if (self.acc is NULL or self.keys is NULL or self.touched is NULL
                or self.vals is NULL or self.norm is NULL):
            raise MemoryError()
        memset(self.acc, 0, dim * sizeof(double))
        self.n_keys = 0
        self.n_touched = 0
        self.last_size = -1

    def __dealloc__(self):
        PyMem_Free(self.acc)
        PyMem_Free(self.keys)
        PyMem_Free(self.touched)
        PyMem_Free(self.vals)
        PyMem_Free(self.norm)

    cdef inline void add(self, uint32_t k) noexcept:
        # add_turn reserved room for every feature of the turn beforehand.
        self.keys[self.n_keys] = k
        self.n_keys += 1

    cdef int reserve(self, Py_ssize_t more) except -1:
        cdef Py_ssize_t cap = self.cap
        cdef uint32_t* grown
        cdef double* grown_vals
        if self.n_keys + more <= cap:
            return 0
        while cap < self.n_keys + more:
            cap *= 2
        grown = <uint32_t*>PyMem_Realloc(self.keys, cap * sizeof(uint32_t))
        if grown is NULL:
            raise MemoryError()
        self.keys = grown
        grown = <uint32_t*>PyMem_Realloc(self.touched, cap * sizeof(uint32_t))
        if grown is NULL:
            raise MemoryError()
        self.touched = grown
        grown_vals = <double*>PyMem_Realloc(self.vals, cap * sizeof(double))
        if grown_vals is NULL:
            raise MemoryError()
        self.vals = grown_vals
        self.cap = cap
        return 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void finish(self) noexcept:
        cdef Py_ssize_t i, nt = 0
        cdef uint32_t k
        cdef double a
        cdef double* acc = self.acc
        cdef uint32_t* touched = self.touched
        cdef double* vals = self.vals
        for i in range(self.n_keys):
            # Branch-free: whether a key repeats an earlier one is a coin toss to the CPU.
            k = self.keys[i]
            a = acc[k]
            touched[nt] = k
            vals[nt] = a
            nt += a != 0.0
            acc[k] = 0.0
        self.n_touched = nt
        self.n_keys = 0

    cdef void clear(self) noexcept:
        cdef Py_ssize_t i
        for i in range(self.n_keys):
            self.acc[self.keys[i]] = 0.0
        self.n_keys = 0
        self.n_touched = 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int add_turn(self, const unsigned char* data, Py_ssize_t size, double weight,
                      int char_lo, int char_hi) except -1:
        # classify_py._normalise, then the word and character loops of classify_py.features.
        cdef Py_ssize_t n = 1, i, j, start, first = self.n_keys
        cdef bint prev_space, is_word
        cdef double* acc = self.acc
        cdef unsigned char b
        cdef uint32_t h, prev = 0
        cdef bint have_prev = False
        cdef unsigned char* s
        cdef uint64_t word, key
        cdef Py_ssize_t m, top
        if size + 10 > self.norm_cap:
            s = <unsigned char*>PyMem_Realloc(self.norm, size + 10)
            if s is NULL:
                raise MemoryError()
            self.norm = s
            self.norm_cap = size + 10
        s = self.norm
        s[0] = 0x20
        # Branch-free (word boundaries are too frequent to predict): a byte is written
        # always and kept when it is a word byte or the first separator of a run.
        prev_space = True
        for i in range(size):
            b = LOWER[data[i]]
            is_word = WORD_BYTE[b]
            s[n] = b if is_word else 0x20
            n += is_word | (not prev_space)
            prev_space = not is_word
        if s[n - 1] != 0x20:
            s[n] = 0x20
            n += 1
        # At most two word features per byte and one per n-gram length per position.
        self.reserve(n * (char_hi - char_lo + 3) + 1)
        # Words: the runs between spaces.
        i = 1
        while i < n:
            start = i
            h = WORD_BASIS
            while s[i] != 0x20:
                h = (h ^ s[i]) * PRIME
                i += 1
            if i > start:
                self.add(fmix32(h) & self.mask)
                if have_prev:
                    self.add(fmix32(prev * GOLDEN + h + 1) & self.mask)
                prev = h
                have_prev = True
            i += 1
        # n-grams: the position's next 8 bytes as one little-endian word (the stream buffer
        # has 8 spare zero bytes past its end), masked to each length.
        for j in range(8):
            s[n + j] = 0
        for i in range(n - char_lo + 1):
            word = (<uint64_t>s[i] | (<uint64_t>s[i + 1] << 8) | (<uint64_t>s[i + 2] << 16)
                    | (<uint64_t>s[i + 3] << 24) | (<uint64_t>s[i + 4] << 32)
                    | (<uint64_t>s[i + 5] << 40) | (<uint64_t>s[i + 6] << 48))
            top = char_hi if char_hi <= n - i else n - i
            for m in range(char_lo, top + 1):
                key = (word & ((<uint64_t>1 << (8 * m)) - 1)) | (<uint64_t>m << 56)
                self.add(<uint32_t>(fmix64(key ^ CHAR_SEED) & self.mask))
        for i in range(first, self.n_keys):
            acc[self.keys[i]] += weight
        return 0

    cdef int count(self, list turns, Py_ssize_t max_bytes, double context_weight,
                   int char_lo, int char_hi) except -1:
        cdef Py_ssize_t t, last = len(turns) - 1, size
        cdef double weight
        cdef bytes data
        self.last_size = -1
        cdef uint32_t k
        for t in range(last + 1):
            turn = turns[t]
            if isinstance(turn, str):
                data = str.encode(turn, "utf-8", "replace")
            elif isinstance(turn, bytes):
                data = <bytes>turn
            else:
                self.clear()
                raise TypeError("turns must be str or bytes, not %r" % type(turn).__name__)
            weight = 1.0 if t == last else context_weight
            if weight == 0.0:
                continue
            size = len(data)
            if size > max_bytes:
                size = max_bytes
            self.last_size = size
            self.add_turn(<const unsigned char*><char*>data, size, weight, char_lo, char_hi)
        self.finish()
        return 0


cdef int _check_options(Py_ssize_t dim, Py_ssize_t char_lo, Py_ssize_t char_hi,
                        double context_weight, Py_ssize_t max_bytes) except -1:
    if dim < 2 or dim > MAX_DIM or dim & (dim - 1):
        raise ValueError("dim must be a power of two between 2 and %d" % MAX_DIM)
    if char_lo < 1 or char_hi < char_lo or char_hi > 7:
        raise ValueError("need 1 <= char_lo <= char_hi <= 7")
    if not 0.0 <= context_weight <= 1.0:
        raise ValueError("context_weight must be between 0 and 1")
    if max_bytes < 1:
        raise ValueError("max_bytes must be >= 1")
    return 0


cdef list _turn_list(object turns):
    if isinstance(turns, (str, bytes)):
        raise TypeError("turns must be a sequence of texts, not a single text")
    return list(turns)


def features(turns, dim=1 << 18, char_lo=3, char_hi=5, context_weight=0.5, max_bytes=4096):
    """Bucket -> weighted count, in first-occurrence order."""
    cdef Py_ssize_t d = operator.index(dim), lo = operator.index(char_lo)
    cdef Py_ssize_t hi = operator.index(char_hi), mb = operator.index(max_bytes)
    cdef double cw = float(context_weight)
    _check_options(d, lo, hi, cw, mb)
    cdef list items = _turn_list(turns)
    cdef _Counter counter = _Counter(<uint32_t>d)
    counter.count(items, mb, cw, <int>lo, <int>hi)
    cdef dict out = {}
    cdef Py_ssize_t i
    for i in range(counter.n_touched):
        out[counter.touched[i]] = counter.vals[i]
    counter.n_touched = 0
    return out


cdef inline double _log_length(Py_ssize_t size) noexcept:
    return log2(1.0 + <double>size) if size >= 0 else 0.0


def log_length(turns, max_bytes=4096):
    """log2(1 + bytes of the last turn, after the cut); 0.0 without turns."""
    cdef Py_ssize_t mb = operator.index(max_bytes), size
    if mb < 1:
        raise ValueError("max_bytes must be >= 1")
    cdef list items = _turn_list(turns)
    if not items:
        return 0.0
    turn = items[-1]
    if isinstance(turn, str):
        size = len(str.encode(turn, "utf-8", "replace"))
    elif isinstance(turn, bytes):
        size = len(<bytes>turn)
    else:
        raise TypeError("turns must be str or bytes, not %r" % type(turn).__name__)
    return _log_length(size if size < mb else mb)


cdef void _softmax_into(double* z, Py_ssize_t n, double temperature) noexcept nogil:
    # classify_py.softmax, in place.
    cdef Py_ssize_t c
    cdef double top, total = 0.0
    for c in range(n):
        z[c] = z[c] / temperature
    top = z[0]
    for c in range(1, n):
        if z[c] > top:
            top = z[c]
    for c in range(n):
        z[c] = exp(z[c] - top)
        total += z[c]
    for c in range(n):
        z[c] = z[c] / total


def softmax(logits, double temperature=1.0):
    """Probabilities from logits divided by ``temperature`` (> 0)."""
    if not temperature > 0.0:
        raise ValueError("temperature must be > 0")
    cdef list values = [float(item) for item in logits]
    cdef Py_ssize_t n = len(values), c
    if n == 0:
        return []
    cdef double* z = <double*>PyMem_Malloc(n * sizeof(double))
    if z is NULL:
        raise MemoryError()
    try:
        for c in range(n):
            z[c] = values[c]
        _softmax_into(z, n, temperature)
        return [z[c] for c in range(n)]
    finally:
        PyMem_Free(z)


# === the model ===============================================================

@cython.final
cdef class LinearModel:
    """A multinomial logistic-regression model over hashed features."""

    cdef readonly Py_ssize_t dim
    cdef readonly Py_ssize_t n_classes
    cdef readonly int char_lo
    cdef readonly int char_hi
    cdef readonly double context_weight
    cdef readonly Py_ssize_t max_bytes
    cdef readonly double length_scale
    cdef readonly double length_offset
    cdef readonly double default_idf
    cdef Py_ssize_t n_rows
    cdef int32_t* row_of      # dim entries: the bucket's row, or -1
    cdef float* idf           # n_rows
    cdef float* weights       # n_rows * n_classes, row-major
    cdef double* bias         # n_classes
    cdef double* lcoef        # length_coef: n_classes, or NULL for no length term
    cdef double* z            # n_classes scratch
    cdef float* zf            # n_classes scratch: float sums vectorise (SSE) where doubles halve the lanes
    cdef _Counter counter

    def __cinit__(self):
        self.row_of = NULL
        self.idf = NULL
        self.weights = NULL
        self.bias = NULL
        self.lcoef = NULL
        self.z = NULL
        self.zf = NULL

    def __init__(self, dim, n_classes, buckets, idf, weights, bias, default_idf=1.0,
                 char_lo=3, char_hi=5, context_weight=0.5, max_bytes=4096, length_coef=(),
                 length_scale=1.0, length_offset=0.0):
        cdef Py_ssize_t d = operator.index(dim), nc = operator.index(n_classes)
        cdef Py_ssize_t lo = operator.index(char_lo), hi = operator.index(char_hi)
        cdef Py_ssize_t mb = operator.index(max_bytes)
        cdef double cw = float(context_weight)
        cdef double l_scale = float(length_scale), l_offset = float(length_offset)
        _check_options(d, lo, hi, cw, mb)
        if nc < 1:
            raise ValueError("n_classes must be >= 1")
        cdef list coef = [float(c) for c in length_coef]
        if coef and len(coef) != nc:
            raise ValueError("length_coef needs one value per class, or none")
        if not all(isfinite(c) for c in coef):
            raise ValueError("length_coef must be finite")
        if not (isfinite(l_scale) and isfinite(l_offset)):
            raise ValueError("length_scale and length_offset must be finite")
        cdef list bucket_list = [operator.index(b) for b in buckets]
        cdef Py_ssize_t n = len(bucket_list), i, row
        if len(idf) != n:
            raise ValueError("idf needs one value per bucket")
        if len(weights) != n * nc:
            raise ValueError("weights needs n_classes values per bucket")
        if len(bias) != nc:
            raise ValueError("bias needs one value per class")
        # array('f') rounds to float32 exactly as the pure-Python twin stores them.
        cdef float[::1] idf_f = array("f", idf)
        cdef float[::1] w_f = array("f", weights)
        cdef float[::1] default_f = array("f", [default_idf])
        self.row_of = <int32_t*>PyMem_Malloc(d * sizeof(int32_t))
        self.idf = <float*>PyMem_Malloc((n + 1) * sizeof(float))
        self.weights = <float*>PyMem_Malloc((n * nc + 1) * sizeof(float))
        self.bias = <double*>PyMem_Malloc(nc * sizeof(double))
        self.z = <double*>PyMem_Malloc(nc * sizeof(double))
        self.zf = <float*>PyMem_Malloc(nc * sizeof(float))
        # __init__ may run again on the same object: nothing of a previous call survives.
        PyMem_Free(self.lcoef)
        self.lcoef = NULL
        if coef:
            self.lcoef = <double*>PyMem_Malloc(nc * sizeof(double))
            if self.lcoef is NULL:
                raise MemoryError()
            for i in range(nc):
                self.lcoef[i] = coef[i]
        if self.zf is NULL or (self.row_of is NULL or self.idf is NULL or self.weights is NULL
                or self.bias is NULL or self.z is NULL):
            raise MemoryError()
        for i in range(d):
            self.row_of[i] = -1
        for row in range(n):
            b = bucket_list[row]
            if not 0 <= b < d:
                raise ValueError("bucket %d is outside 0..dim-1" % b)
            if self.row_of[<Py_ssize_t>b] >= 0:
                raise ValueError("bucket %d is listed twice" % b)
            self.row_of[<Py_ssize_t>b] = <int32_t>row
            self.idf[row] = idf_f[row]
        for i in range(n * nc):
            self.weights[i] = w_f[i]
        for i in range(nc):
            self.bias[i] = float(bias[i])
        self.dim = d
        self.n_classes = nc
        self.n_rows = n
        self.char_lo = <int>lo
        self.char_hi = <int>hi
        self.context_weight = cw
        self.max_bytes = mb
        self.length_scale = l_scale
        self.length_offset = l_offset
        self.default_idf = default_f[0]
        self.counter = _Counter(<uint32_t>d)

    def __dealloc__(self):
        PyMem_Free(self.row_of)
        PyMem_Free(self.idf)
        PyMem_Free(self.weights)
        PyMem_Free(self.bias)
        PyMem_Free(self.lcoef)
        PyMem_Free(self.z)
        PyMem_Free(self.zf)

    def features(self, turns):
        return features(turns, self.dim, self.char_lo, self.char_hi, self.context_weight,
                        self.max_bytes)

    @property
    def length_coef(self):
        if self.lcoef is NULL:
            return []
        return [self.lcoef[c] for c in range(self.n_classes)]

    cdef int _count(self, object turns) except -1:
        self.counter.count(_turn_list(turns), self.max_bytes, self.context_weight,
                           self.char_lo, self.char_hi)
        return 0

    def vector(self, turns):
        """The L2-normalised tf-idf vector: (bucket, value) in first-occurrence order."""
        self._count(turns)
        cdef _Counter counter = self.counter
        cdef Py_ssize_t i
        cdef uint32_t k
        cdef int32_t row
        cdef double v, norm2 = 0.0, norm
        values = []
        for i in range(counter.n_touched):
            k = counter.touched[i]
            row = self.row_of[k]
            v = counter.vals[i] * (<double>self.idf[row] if row >= 0 else self.default_idf)
            norm2 += v * v
            values.append(v)
        if norm2 == 0.0:
            counter.clear()
            return []
        norm = sqrt(norm2)
        out = [(counter.touched[i], values[i] / norm) for i in range(counter.n_touched)]
        counter.clear()
        return out

    @cython.boundscheck(False)
    @cython.wraparound(False)
    @cython.cdivision(True)
    cdef double _logits(self) noexcept:
        # classify_py.LinearModel.logits over the counted buckets; clears the counter. The
        # class sums run in float32 (the twin sums in float64): the twins agree to ~1e-6.
        cdef _Counter counter = self.counter
        cdef Py_ssize_t i, c, nc = self.n_classes
        cdef uint32_t k
        cdef int32_t row
        cdef double v, norm2 = 0.0
        cdef float vf
        cdef float* zf = self.zf
        cdef double* z = self.z
        cdef const float* w
        cdef const float* pending = NULL   # a known row waiting for a partner
        cdef float pending_v = 0.0
        cdef double length_x
        for c in range(nc):
            zf[c] = 0.0
        for i in range(counter.n_touched):
            k = counter.touched[i]
            row = self.row_of[k]
            if row >= 0:
                v = counter.vals[i] * <double>self.idf[row]
                vf = <float>v
                w = self.weights + <Py_ssize_t>row * nc
                if pending is NULL:
                    pending = w
                    pending_v = vf
                else:
                    # Two rows per sweep halve the loads and stores of the class sums.
                    for c in range(nc):
                        zf[c] += pending_v * pending[c] + vf * w[c]
                    pending = NULL
            else:
                v = counter.vals[i] * self.default_idf
            norm2 += v * v
        if pending is not NULL:
            for c in range(nc):
                zf[c] += pending_v * pending[c]
        counter.n_touched = 0
        if norm2 == 0.0:
            for c in range(nc):
                z[c] = self.bias[c]
        else:
            norm2 = sqrt(norm2)
            for c in range(nc):
                z[c] = self.bias[c] + <double>zf[c] / norm2
        if self.lcoef is not NULL:
            length_x = self.length_scale * _log_length(counter.last_size) + self.length_offset
            for c in range(nc):
                z[c] += self.lcoef[c] * length_x
        return norm2

    def logits(self, turns):
        self._count(turns)
        self._logits()
        return [self.z[c] for c in range(self.n_classes)]

    def proba(self, turns, double temperature=1.0):
        """Class probabilities: softmax of the logits divided by ``temperature``."""
        if not temperature > 0.0:
            raise ValueError("temperature must be > 0")
        self._count(turns)
        self._logits()
        _softmax_into(self.z, self.n_classes, temperature)
        return [self.z[c] for c in range(self.n_classes)]


# === training ================================================================

cdef inline uint64_t _xorshift(uint64_t* state) noexcept nogil:
    cdef uint64_t x = state[0]
    x ^= x >> 12
    x ^= x << 25
    x ^= x >> 27
    state[0] = x
    return x * 0x2545F4914F6CDD1DULL


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
def train_softmax(rows, labels, n_rows, n_classes, epochs=30, l2=1e-4, lr=0.5, seed=0,
                  weights=None):
    """Fit a multinomial logistic regression by SGD; return (weights, bias).

    See ``classify_py.train_softmax`` for the algorithm; the arithmetic runs in the same order.
    """
    cdef Py_ssize_t nr = operator.index(n_rows), nc = operator.index(n_classes)
    cdef Py_ssize_t n_epochs = operator.index(epochs)
    cdef list ys = [operator.index(item) for item in labels]
    cdef double c_l2 = float(l2), c_lr = float(lr)
    cdef uint64_t seed_v = <uint64_t>(operator.index(seed) & 0xFFFFFFFFFFFFFFFF)
    if nc < 1 or nr < 0:
        raise ValueError("n_classes must be >= 1 and n_rows >= 0")
    if len(rows) != len(ys):
        raise ValueError("need one label per example")
    cdef list ws = [1.0] * len(ys) if weights is None else [float(w) for w in weights]
    if len(ws) != len(ys):
        raise ValueError("need one weight per example")
    for w in ws:
        if not (w >= 0.0 and isfinite(w)):
            raise ValueError("example weights must be numbers >= 0")
    if n_epochs < 0:
        raise ValueError("epochs must be >= 0")
    if not (c_l2 >= 0.0 and isfinite(c_l2)) or not (c_lr > 0.0 and isfinite(c_lr)):
        raise ValueError("need l2 >= 0 and lr > 0")
    # CSR copy of the examples.
    cdef Py_ssize_t n_ex = len(ys), nnz = 0, i, e, c, k, pos
    cdef list ptr_list = [0]
    cdef list idx_list = []
    cdef list val_list = []
    for example, label in zip(rows, ys):
        if not 0 <= label < nc:
            raise ValueError("label %d is outside 0..n_classes-1" % label)
        for row, value in example:
            row = operator.index(row)
            if not 0 <= row < nr:
                raise ValueError("row %d is outside 0..n_rows-1" % row)
            idx_list.append(row)
            val_list.append(float(value))
        ptr_list.append(len(idx_list))
    nnz = len(idx_list)
    cdef Py_ssize_t* ptr = <Py_ssize_t*>PyMem_Malloc((n_ex + 1) * sizeof(Py_ssize_t))
    cdef Py_ssize_t* idx = <Py_ssize_t*>PyMem_Malloc((nnz + 1) * sizeof(Py_ssize_t))
    cdef double* val = <double*>PyMem_Malloc((nnz + 1) * sizeof(double))
    cdef Py_ssize_t* y = <Py_ssize_t*>PyMem_Malloc((n_ex + 1) * sizeof(Py_ssize_t))
    cdef double* ew = <double*>PyMem_Malloc((n_ex + 1) * sizeof(double))
    cdef Py_ssize_t* order = <Py_ssize_t*>PyMem_Malloc((n_ex + 1) * sizeof(Py_ssize_t))
    cdef double* v = <double*>PyMem_Malloc((nr * nc + 1) * sizeof(double))
    cdef double* bias = <double*>PyMem_Malloc(nc * sizeof(double))
    cdef double* z = <double*>PyMem_Malloc(nc * sizeof(double))
    cdef double scale = 1.0, eta, step, g, x
    cdef double t = 0.0
    cdef uint64_t state = (seed_v * 0x9E3779B97F4A7C15ULL + 1)
    cdef Py_ssize_t j, tmp, base, ep
    try:
        if (ptr is NULL or idx is NULL or val is NULL or y is NULL or ew is NULL
                or order is NULL
                or v is NULL or bias is NULL or z is NULL):
            raise MemoryError()
        if state == 0:
            state = 1
        for i in range(n_ex + 1):
            ptr[i] = ptr_list[i]
        for i in range(nnz):
            idx[i] = idx_list[i]
            val[i] = val_list[i]
        for i in range(n_ex):
            y[i] = ys[i]
            ew[i] = ws[i]
            order[i] = i
        for i in range(nr * nc):
            v[i] = 0.0
        for c in range(nc):
            bias[c] = 0.0
        with nogil:
            for ep in range(n_epochs):
                i = n_ex - 1
                while i > 0:
                    j = <Py_ssize_t>(_xorshift(&state) % <uint64_t>(i + 1))
                    tmp = order[i]
                    order[i] = order[j]
                    order[j] = tmp
                    i -= 1
                for k in range(n_ex):
                    e = order[k]
                    eta = c_lr / (1.0 + c_lr * c_l2 * t)
                    t += 1.0
                    for c in range(nc):
                        z[c] = 0.0
                    for pos in range(ptr[e], ptr[e + 1]):
                        x = val[pos]
                        base = idx[pos] * nc
                        for c in range(nc):
                            z[c] += x * v[base + c]
                    for c in range(nc):
                        z[c] = z[c] * scale + bias[c]
                    _softmax_into(z, nc, 1.0)
                    z[y[e]] -= 1.0
                    for c in range(nc):
                        z[c] *= ew[e]
                    scale *= 1.0 - eta * c_l2
                    step = eta / scale
                    for pos in range(ptr[e], ptr[e + 1]):
                        base = idx[pos] * nc
                        g = step * val[pos]
                        for c in range(nc):
                            v[base + c] -= g * z[c]
                    for c in range(nc):
                        bias[c] -= eta * z[c]
                    if scale < 1e-9:
                        for i in range(nr * nc):
                            v[i] *= scale
                        scale = 1.0
        return [v[i] * scale for i in range(nr * nc)], [bias[c] for c in range(nc)]
    finally:
        PyMem_Free(ptr)
        PyMem_Free(idx)
        PyMem_Free(val)
        PyMem_Free(y)
        PyMem_Free(ew)
        PyMem_Free(order)
        PyMem_Free(v)
        PyMem_Free(bias)
        PyMem_Free(z)
