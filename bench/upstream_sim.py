"""Run the upstream simulator from a checkout: ``python bench/upstream_sim.py --port 9001 ...``.

The same as ``python -m proxy.sim``; see that module's docstring for the flags.
"""

import sys
from pathlib import Path

# Lets benchmarks use the simulator from a plain checkout, without installing llmedge.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.sim.server import main  # noqa: E402

if __name__ == "__main__":
    main()
