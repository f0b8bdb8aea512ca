"""The body of ``POST /v1/route``: a routing decision, explained, without an upstream call."""

from __future__ import annotations

import orjson

from ..endpoint_states import STATE_NAMES
from .router import Decision, RoutePlan, Router


def explain_body(router: Router, plan: RoutePlan, decision: Decision) -> bytes:
    deployments = []
    for target in decision.targets:
        rows = []
        for row in target.rows:
            stats = router.table.stats(row)
            stats["state"] = STATE_NAMES.get(stats["state"], stats["state"])
            rows.append(stats)
        deployments.append({"name": target.name, "price": target.price,
                            "quality": target.quality, "usable": target.unusable is None,
                            "endpoints": rows})
    explain = decision.explain or {"path": [plan.name]}
    return orjson.dumps({"object": "route.decision", "route": plan.name,
                         "policy": plan.policy.name, "reason": decision.reason,
                         "deployments": [t.name for t in decision.targets],
                         "path": explain["path"], "classification": decision.explain,
                         "scores": deployments})
