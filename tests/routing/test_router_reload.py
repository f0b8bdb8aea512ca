"""A reload builds its router in a thread while the previous one serves: building must
change nothing the previous router shares (endpoint table, kept endpoints) until ``adopt``,
and a router that is rejected must have changed nothing at all."""

from __future__ import annotations

import threading

import pytest

from proxy.config import parse
from proxy.errors import ConfigError
from proxy.routing.router import Router

BEFORE = """\
upstream: {pool_max_idle: 8}
deployments:
  - {name: a, base_url: "http://127.0.0.1:9001/v1"}
routes:
  - {name: r, deployments: [a]}
"""
AFTER = """\
upstream: {pool_max_idle: 3}
deployments:
  - {name: a, base_url: "http://127.0.0.1:9001/v1"}
  - {name: b, endpoints: ["http://127.0.0.1:9002/v1", "http://127.0.0.1:9003/v1"]}
routes:
  - {name: r, deployments: [a, b]}
"""
# Passes the file's checks; only building the weighted policy finds it unusable.
REJECTED = """\
deployments:
  - {name: a, base_url: "http://127.0.0.1:9001/v1"}
  - {name: b, base_url: "http://127.0.0.1:9004/v1"}
routes:
  - {name: r, deployments: [a, b], policy: weighted, weights: {a: 0, b: 0}}
"""


def test_building_changes_nothing_shared_until_adopt():
    old = Router(parse(BEFORE), None)
    kept = old.targets["a"].endpoints[0]
    rows_before = len(old.table)
    built: list[Router] = []
    worker = threading.Thread(target=lambda: built.append(
        Router(parse(AFTER), None, previous=old)))
    worker.start()
    worker.join(timeout=60)
    new, = built
    assert len(old.table) == rows_before
    assert kept.max_idle == 8
    assert new.targets["a"].endpoints[0] is kept
    assert new.changes == (1, 2, 0)

    new.adopt()
    assert len(new.table) == rows_before + 2
    assert kept.max_idle == 3
    for row in new.targets["b"].rows:
        assert new.table.stats(row)["inflight"] == 0   # a real row of the shared table
        assert new.table.available(row)


def test_a_rejected_router_leaves_the_shared_table_as_it_was():
    old = Router(parse(BEFORE), None)
    rows_before = len(old.table)
    with pytest.raises(ConfigError) as info:
        Router(parse(REJECTED), None, previous=old)
    assert "at least one weight must be > 0" in info.value.problems[0]
    assert len(old.table) == rows_before
    # And the next router still gets the rows it reserves.
    new = Router(parse(AFTER), None, previous=old)
    new.adopt()
    assert len(new.table) == rows_before + 2
