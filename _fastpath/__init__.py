"""The compiled hot path, or its pure-Python twins: all of one kind, never mixed.

``LLMEDGE_NO_EXTENSIONS=1`` (or a non-CPython interpreter) selects the twins; so does a
missing or partial build.
"""

import os
import sys

NO_EXTENSIONS = bool(os.environ.get("LLMEDGE_NO_EXTENSIONS")) or sys.implementation.name != "cpython"

if not NO_EXTENSIONS:
    try:
        from .answerwire import chunk_bytes, response_bytes
        from .cachekey import cache_key, canonical
        from .classify import LinearModel, features, log_length, softmax, train_softmax
        from .hashing import HashRing
        from .scoring import (EP_EJECTED, EP_HALF_OPEN, EP_HEALTHY, EP_OPEN, POLICY_COST,
                              POLICY_LATENCY, POLICY_SCORE, EndpointTable)
        from .weighted import WeightedOrder
    except ImportError:
        NO_EXTENSIONS = True

if NO_EXTENSIONS:
    from .answerwire_py import chunk_bytes, response_bytes  # type: ignore[assignment]
    from .cachekey_py import cache_key, canonical  # type: ignore[assignment]
    from .classify_py import (LinearModel, features, log_length,  # type: ignore[assignment]
                              softmax, train_softmax)
    from .hashing_py import HashRing  # type: ignore[assignment]
    from .scoring_py import (EP_EJECTED, EP_HALF_OPEN, EP_HEALTHY,  # type: ignore[assignment]
                             EP_OPEN, POLICY_COST, POLICY_LATENCY, POLICY_SCORE, EndpointTable)
    from .weighted_py import WeightedOrder  # type: ignore[assignment]

IMPLEMENTATION = "py" if NO_EXTENSIONS else "c"

__all__ = ("EP_EJECTED", "EP_HALF_OPEN", "EP_HEALTHY", "EP_OPEN", "IMPLEMENTATION",
           "NO_EXTENSIONS", "POLICY_COST", "POLICY_LATENCY", "POLICY_SCORE", "EndpointTable",
           "HashRing", "LinearModel", "WeightedOrder", "cache_key", "canonical", "chunk_bytes",
           "features", "log_length", "response_bytes", "softmax", "train_softmax")
