"""proxy.breaker and health-probe verdicts, on a real endpoint table and event loop: any
sequence of request outcomes and probe results leaves a circuit where the rules say.

* A probe that passes right after one that failed half-opens a circuit open for a fault.
* A pass alone changes nothing (a server may answer /models and fail completions).
* A circuit opened by a 429 keeps its Retry-After whatever the probes say.
* Every opening for a fault is announced (``on_open``); a 429 is not.
* No backoff exceeds the configured cap (plus jitter), and the table shows what the
  circuit and probes say.

Timers never fire here: the events of one example run without yielding to the loop, so
the backoffs do not pass and only the events decide.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from _fastpath import EP_EJECTED, EP_HALF_OPEN, EP_HEALTHY, EP_OPEN, EndpointTable
from proxy.breaker import CLOSED, HALF_OPEN, OPEN, Breakers
from proxy.config import BreakerConfig

TABLE_STATE = {CLOSED: EP_HEALTHY, OPEN: EP_OPEN, HALF_OPEN: EP_HALF_OPEN}

EVENTS = st.lists(st.one_of(
    st.just(("success",)),
    st.tuples(st.just("failure"), st.sampled_from(["connect", "timeout", "status"])),
    st.tuples(st.just("429"), st.one_of(st.none(), st.floats(0.5, 120.0))),
    st.tuples(st.just("probe"), st.booleans()),
    st.tuples(st.just("set_probe"), st.booleans()),
), max_size=60)


def run_events(events, config: BreakerConfig):
    async def main():
        table = EndpointTable()
        row = table.add()
        breakers = Breakers(table, config)
        opened: list[int] = []
        breakers.on_open = opened.append
        probe_down = False
        probe_ok = True
        rate_limited = False   # open because of a 429
        try:
            for event in events:
                before = breakers.state(row)
                announced = len(opened)
                kind = event[0]
                if kind == "success":
                    breakers.on_success(row)
                elif kind == "failure":
                    breakers.on_failure(row, event[1])
                elif kind == "429":
                    breakers.on_failure(row, "status", event[1], rate_limited=True)
                elif kind == "probe":
                    breakers.probe_verdict(row, event[1])
                else:
                    breakers.set_probe(row, event[1], "probes say %s" % event[1])
                    probe_ok = event[1]
                after = breakers.state(row)
                info = breakers.describe(row)

                if kind == "probe":
                    ok = event[1]
                    if ok and probe_down and before == OPEN and not rate_limited:
                        assert after == HALF_OPEN, (events, info)
                        assert "health probe" in info["reason"]
                    else:
                        assert after == before, (events, info)
                    probe_down = not ok
                elif kind == "set_probe":
                    assert after == before
                    if event[1]:
                        probe_down = False
                if rate_limited and kind in ("probe", "set_probe"):
                    assert after == OPEN
                opens_for_fault = kind == "failure" and before != OPEN and after == OPEN
                if opens_for_fault:
                    assert opened == opened[:announced] + [row], (events, opened)
                else:
                    assert len(opened) == announced, (events, event, opened)
                if kind == "429":
                    wait = config.cooldown_429_s if event[1] is None else event[1]
                    assert after == OPEN and info["open_for_s"] <= wait + 0.01, (events, info)
                elif opens_for_fault:
                    assert info["open_for_s"] <= config.max_open_s * (1.0 + config.jitter) \
                        + 0.01, (events, info)
                # What the model expects of the next event.
                if kind == "429":
                    rate_limited = True
                elif after != OPEN or opens_for_fault:
                    rate_limited = False
                expected = EP_EJECTED if not probe_ok else TABLE_STATE[after]
                assert table.state(row) == expected, (events, info)
        finally:
            breakers.aclose()

    asyncio.run(main())


@settings(max_examples=300, deadline=None)
@given(EVENTS)
def test_probe_verdicts_and_outcomes_follow_the_rules(events):
    run_events(events, BreakerConfig(consecutive_failures=2))


@settings(max_examples=100, deadline=None)
@given(EVENTS)
def test_default_settings_cap_the_backoff(events):
    run_events(events, BreakerConfig())


def test_default_backoff_is_capped_within_seconds():
    # The cap is what a recovered endpoint nobody can vouch for waits at most: a few
    # seconds, not a minute.
    config = BreakerConfig()
    assert config.max_open_s <= 10.0 and config.open_s <= config.max_open_s

    async def main():
        table = EndpointTable()
        row = table.add()
        breakers = Breakers(table, config, rnd=lambda: 1.0)  # the longest jitter
        waits = []
        for _ in range(config.consecutive_failures):
            breakers.on_failure(row, "connect")
        for _ in range(8):
            waits.append(breakers.describe(row)["open_for_s"])
            # Probes see it down and up: half-open without waiting out the backoff.
            breakers.probe_verdict(row, False)
            breakers.probe_verdict(row, True)
            assert breakers.state(row) == HALF_OPEN
            breakers.on_failure(row, "connect")   # the trial fails
        breakers.aclose()
        return waits

    waits = asyncio.run(main())
    # Doubling from open_s, then flat at the cap.
    assert waits[0] <= config.open_s * (1 + config.jitter) + 0.01
    assert all(b >= a - 0.01 for a, b in zip(waits, waits[1:])), waits
    assert max(waits) <= config.max_open_s * (1 + config.jitter) + 0.01, waits
