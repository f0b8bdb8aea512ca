"""The compiled hot path, or its pure-Python twins: all of one kind, never mixed.

``LLMEDGE_NO_EXTENSIONS=1`` (or a non-CPython interpreter) selects the twins; so does a
missing or partial build.
"""

import os
import sys

NO_EXTENSIONS = bool(os.environ.get("LLMEDGE_NO_EXTENSIONS")) or sys.implementation.name != "cpython"

if not NO_EXTENSIONS:
    try:
        from .weighted import WeightedOrder
    except ImportError:
        NO_EXTENSIONS = True

if NO_EXTENSIONS:
    from .weighted_py import WeightedOrder  # type: ignore[assignment]

IMPLEMENTATION = "py" if NO_EXTENSIONS else "c"

__all__ = ("IMPLEMENTATION", "NO_EXTENSIONS", "WeightedOrder")
