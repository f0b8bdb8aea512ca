"""The package's import structure: what may depend on what."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _loaded_after(module: str) -> set[str]:
    """The proxy modules a fresh interpreter has loaded after importing ``module``."""
    code = ("import sys, %s; print('\\n'.join(m for m in sys.modules if m.startswith('proxy')))"
            % module)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    return set(done.stdout.split())


def test_the_configuration_imports_nothing_from_routing():
    loaded = _loaded_after("proxy.config")
    assert "proxy.config.classify" in loaded
    assert not {m for m in loaded if m.startswith("proxy.routing")}, loaded


def test_serving_loads_no_offline_evaluation():
    loaded = _loaded_after("proxy.server")
    assert "proxy.routing.outcomes" in loaded   # what complexity routes train on
    assert "proxy.evaluate" not in loaded
