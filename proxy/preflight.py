"""What a start-up would refuse, found before one: ``llmedge check`` and ``llmedge serve`` run
the same checks, so a file that passes check does not fail at start-up.

Beyond the file's own checks (``config.load``) this builds what a worker builds before it
serves: every classify route's classifier (examples, outcomes and model files read and
trained, signals and LLM tiers wired), the routes, the upstream TLS context, and the
settings read from the environment. Nothing opens a network connection or listens, and no
file is written.
"""

from __future__ import annotations

import os
import ssl

from .config import Config
from .errors import ConfigError
from .routing.classify_route import prepare as prepare_classifiers
from .routing.router import Router
from .upstream.pool import ssl_context


def problems(config: Config, workers: int = 1) -> list[str]:
    """Every reason a start-up with ``config`` would fail, each with its path. Blocking
    (training, file reads): not for a running event loop. A worker started afterwards in
    this process (or forked from it) finds the classifiers already trained."""
    found: list[str] = []
    if workers > 1:
        for field in ("http", "grpc"):
            address = getattr(config.server, field)
            if address is not None and address.endswith(":0"):
                found.append("server.%s: %d workers need a fixed port, not %s"
                             % (field, workers, address))
    var = config.server.admin_token_env
    if var and not os.environ.get(var):
        found.append("server.admin_token_env: %s is not set" % var)
    try:
        context = ssl_context(config)
    except (OSError, ssl.SSLError) as exc:
        found.append("upstream.ca_file: cannot be loaded: %s" % exc)
        context = None
    prepare_classifiers(config)
    try:
        router = Router(config, context)
    except ConfigError as exc:
        found += exc.problems
    else:
        router.close()
    return found
