"""Shared fixtures: three upstream simulators for the whole session, llmedge processes on
top of them, and a per-test reset of the simulators' behaviour and counters.

Processes are reused and reconfigured at runtime (``POST /_sim/config``); a test that needs
its own llmedge configuration starts one with ``start_edge`` and it is stopped afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import Llmedge, Simulator, free_port  # noqa: E402

SIM_NAMES = ("alpha", "beta", "gamma")
REPLIES = {
    "alpha": "Alpha answers: the quick brown fox jumps over the lazy dog.",
    "beta": "Beta answers: pack my box with five dozen liquor jugs.",
    "gamma": "Gamma answers: sphinx of black quartz, judge my vow.",
}
KEYS = {
    "LLMEDGE_TEST_ALPHA_KEY": "sk-alpha-upstream-key",
    "LLMEDGE_TEST_BETA_KEY": "sk-beta-upstream-key",
}
UNSET_KEY = "LLMEDGE_TEST_UNSET_KEY"
# None removes the variable from the child's environment.
EDGE_ENV: dict[str, str | None] = {**KEYS, UNSET_KEY: None, "LLMEDGE_LOG_LEVEL": "info"}

# Small enough to test 413/431 cheaply, large enough for every ordinary request.
MAX_BODY_BYTES = 32768
MAX_HEADER_BYTES = 8192
MAX_HEADERS = 40
ALPHA_FIRST_BYTE_S = 0.5
ALPHA_IDLE_S = 1.0
# Below procs.STOP_TIMEOUT, so a request a test leaves hanging cannot turn a clean SIGTERM
# into a kill.
DRAIN_TIMEOUT_S = 5.0


class Sims:
    """The session's simulators, by name: ``sims.alpha`` or ``sims["alpha"]``."""

    def __init__(self, procs: dict[str, Simulator]) -> None:
        self._procs = procs
        for name, proc in procs.items():
            setattr(self, name, proc)

    def __getitem__(self, name: str) -> Simulator:
        return self._procs[name]

    def __iter__(self):
        return iter(self._procs.values())


def edge_config(sims: Sims, dead_port: int, server: str = "") -> str:
    """The main llmedge config: a route with a fallback, one through a closed port, one whose
    first deployment has no key, a weighted one (the _fastpath code). ``server`` adds lines
    to the server section."""
    return f"""\
server:
  http: 127.0.0.1:0
  max_body_bytes: {MAX_BODY_BYTES}
  max_header_bytes: {MAX_HEADER_BYTES}
  max_headers: {MAX_HEADERS}
  drain_timeout_s: {DRAIN_TIMEOUT_S}
{server}
deployments:
  - name: alpha
    base_url: {sims.alpha.url}
    model: alpha-model
    api_key_env: LLMEDGE_TEST_ALPHA_KEY
    timeouts: {{first_byte_s: {ALPHA_FIRST_BYTE_S}, idle_s: {ALPHA_IDLE_S}}}
  - name: beta
    base_url: {sims.beta.url}
    model: beta-model
    api_key_env: LLMEDGE_TEST_BETA_KEY
  - name: gamma
    base_url: {sims.gamma.url}
    model: gamma-model
  - name: dead
    base_url: http://127.0.0.1:{dead_port}/v1
    model: dead-model
    timeouts: {{connect_s: 5}}
  - name: locked
    base_url: {sims.alpha.url}
    model: locked-model
    api_key_env: {UNSET_KEY}
routes:
  - name: auto
    deployments: [alpha, beta]
    fallbacks: [gamma]
  - name: via-dead
    deployments: [dead, beta]
  - name: via-locked
    deployments: [locked, beta]
  - name: split
    deployments: [beta, alpha, gamma]
    policy: weighted
    weights: {{beta: 0, alpha: 3, gamma: 1}}
"""


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("procs")


@pytest.fixture(scope="session")
def sim_procs(workdir):
    started: dict[str, Simulator] = {}
    try:
        for name in SIM_NAMES:
            started[name] = Simulator(workdir, name, "--reply", REPLIES[name],
                                      "--model", "%s-default" % name)
        yield Sims(started)
    finally:
        codes = {name: sim.stop() for name, sim in started.items()}
    assert all(code == 0 for code in codes.values()), codes


@pytest.fixture
def sims(sim_procs: Sims) -> Sims:
    """The simulators, with their startup behaviour and zeroed counters."""
    for sim in sim_procs:
        sim.reset(config=True)
    return sim_procs


@pytest.fixture(scope="session")
def dead_port() -> int:
    return free_port()


def exit_problems(proc: Llmedge, code: int, expect_exit: int | None,
                  tracebacks: bool = False) -> list[str]:
    """Why an llmedge that was stopped fails its test: it exited otherwise than expected, or
    logged a traceback (an error nobody handled), which a client never sees."""
    problems = []
    if expect_exit is not None and code != expect_exit:
        problems.append("%s exited with %s, not %s" % (proc.label, code, expect_exit))
    if not tracebacks and "Traceback" in proc.stderr():
        problems.append("%s logged a traceback" % proc.label)
    if problems:
        problems.append("stderr of %s:\n%s" % (proc.label, proc.stderr()[-20000:]))
    return problems


@pytest.fixture
def edge(sim_procs, dead_port, tmp_path_factory):
    """A fresh llmedge per test over the session's simulators: llmedge learns from traffic
    (latency, open circuits), so one test's failures must not steer the next."""
    workdir = tmp_path_factory.mktemp("edge")
    proc = Llmedge(workdir, edge_config(sim_procs, dead_port), env=EDGE_ENV)
    try:
        yield proc
    finally:
        code = proc.stop()
    problems = exit_problems(proc, code, 0)
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def start_edge(tmp_path):
    """Start an llmedge of its own for one test: ``start_edge(config_text, env=..., args=...)``.
    Every one started is stopped (SIGTERM, then kill) when the test ends, and the test
    fails if one exited with another code than ``expect_exit`` (None: any) or logged a
    traceback (unless ``tracebacks=True``)."""
    started: list[tuple[Llmedge, int | None, bool]] = []

    def start(config_text: str, env: dict[str, str | None] | None = None, args=(),
              ready_lines: int = 1, expect_exit: int | None = 0,
              tracebacks: bool = False) -> Llmedge:
        proc = Llmedge(tmp_path, config_text, env={**EDGE_ENV, **(env or {})}, args=args,
                       name="llmedge-%d" % len(started), ready_lines=ready_lines)
        started.append((proc, expect_exit, tracebacks))
        return proc

    yield start
    problems = []
    for proc, expect_exit, tracebacks in started:
        problems += exit_problems(proc, proc.stop(), expect_exit, tracebacks)
    if problems:
        pytest.fail("\n".join(problems))
