"""Which implementation of the hot path is in use: all compiled or all twins, never mixed,
and the one the environment asks for (CI requires the compiled build for its main run)."""

import importlib
import os

import _fastpath

MODULES = ("cachekey", "classify", "hashing", "scoring", "weighted")


def _kind(name: str) -> str:
    """Where the exported ``name`` comes from: "c" (an extension module) or "py" (a twin)."""
    value = getattr(_fastpath, name)
    module = getattr(value, "__module__", None) or ""
    if not module.startswith("_fastpath."):   # a constant: ask the module that defines it
        module = next("_fastpath." + m for m in MODULES
                      if hasattr(importlib.import_module("_fastpath." + m + "_py"), name))
        if _fastpath.IMPLEMENTATION == "py":
            module += "_py"
    path = getattr(importlib.import_module(module), "__file__", "") or ""
    return "py" if path.endswith(".py") else "c"


def test_every_export_comes_from_the_implementation_in_use():
    kinds = {name: _kind(name) for name in _fastpath.__all__
             if name not in ("IMPLEMENTATION", "NO_EXTENSIONS")}
    assert set(kinds.values()) == {_fastpath.IMPLEMENTATION}, kinds
    assert _fastpath.NO_EXTENSIONS == (_fastpath.IMPLEMENTATION == "py")


def test_the_environment_gets_the_implementation_it_asks_for():
    if os.environ.get("LLMEDGE_NO_EXTENSIONS"):
        assert _fastpath.IMPLEMENTATION == "py"
    elif os.environ.get("LLMEDGE_REQUIRE_EXTENSIONS"):
        # A broken build must not pass silently on the twins alone.
        assert _fastpath.IMPLEMENTATION == "c"
        for name in MODULES:
            assert importlib.import_module("_fastpath." + name).__file__.endswith(".so")
    else:
        # Nothing asked: compiled when every extension imports, else the twins throughout.
        compiled = all(importlib.util.find_spec("_fastpath." + m).origin.endswith(".so")
                       for m in MODULES)
        assert _fastpath.IMPLEMENTATION == ("c" if compiled else "py")
