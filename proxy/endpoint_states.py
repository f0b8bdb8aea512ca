"""An endpoint's state (its circuit and its health combined) by the name every view shows:
``/admin/upstreams``, ``/v1/route`` and the ``llmedge_endpoint_state`` metric."""

from __future__ import annotations

from _fastpath import EP_EJECTED, EP_HALF_OPEN, EP_HEALTHY, EP_OPEN

STATE_NAMES = {EP_HEALTHY: "healthy", EP_EJECTED: "ejected", EP_OPEN: "open",
               EP_HALF_OPEN: "half-open"}
