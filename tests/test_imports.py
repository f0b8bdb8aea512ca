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


def test_the_request_core_loads_no_front_end():
    for core in ("proxy.gateway", "proxy.dispatch", "proxy.relay"):
        loaded = _loaded_after(core)
        assert "proxy.responder" in loaded
        assert not {m for m in loaded if m.startswith(("proxy.http", "proxy.grpc"))}, \
            (core, loaded)


def test_the_grpc_front_end_loads_nothing_of_the_http_one():
    loaded = _loaded_after("proxy.grpc.front")
    assert "proxy.grpc.exchange" in loaded
    assert not {m for m in loaded if m.startswith("proxy.http")}, loaded


def test_only_the_server_imports_the_http_front_end():
    """The composition root builds each front end; nothing else under proxy/ knows HTTP's."""
    importers = []
    for path in (ROOT / "proxy").rglob("*.py"):
        relative = path.relative_to(ROOT / "proxy")
        if relative.parts[0] == "http":
            continue
        text = path.read_text()
        if "from .http" in text or "from ..http" in text or "proxy.http" in text:
            importers.append(str(relative))
    assert importers == ["server.py"]


def test_every_package_ships_in_the_wheel():
    # The package list is explicit: a new folder left out of it imports from a checkout
    # (and an editable install) but is missing from `pip install .`.
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for top in ("proxy", "_fastpath") for p in (ROOT / top).rglob("__init__.py")}
    assert found - listed == set()
