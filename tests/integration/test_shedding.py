"""Load shedding: past max_inflight llmedge answers at once with Retry-After, per deployment
(moving to the next candidate first) and for the whole server."""

from __future__ import annotations

from procs import RawConn, request_bytes, wait_for

STREAM = {"stream": True, "messages": [{"role": "user", "content": "hold"}]}


def _config(sims, server_extra: str = "") -> str:
    return f"""\
server:
  http: 127.0.0.1:0
{server_extra}
deployments:
  - name: alpha
    base_url: {sims.alpha.url}
    max_inflight: 2
  - name: beta
    base_url: {sims.beta.url}
    max_inflight: 1
routes:
  - name: auto
    deployments: [alpha]
    fallbacks: [beta]
"""


def _hold(edge, model: str, count: int) -> list[RawConn]:
    """Streams that stay open (the simulators stall after one chunk)."""
    conns = []
    for _ in range(count):
        conn = RawConn(edge.port)
        conn.send(request_bytes("POST", "/v1/chat/completions", {"model": model, **STREAM}))
        assert conn.read_head()[0] == 200
        conns.append(conn)
    return conns


def test_a_full_deployment_sheds_to_the_next_then_429(start_edge, sims):
    for sim in sims:
        sim.configure(stall_after=1)
    edge = start_edge(_config(sims))
    held = _hold(edge, "auto", 2)          # alpha is full
    try:
        spill = _hold(edge, "auto", 1)     # so this one went to beta
        held += spill
        assert sims.beta.stats()["streams_started"] == 1
        resp = edge.call("POST", "/v1/chat/completions",
                         {"model": "auto", "messages": STREAM["messages"]})
        assert resp.status == 429, resp
        assert resp.json()["error"]["code"] == "deployments_saturated"
        assert resp.headers["retry-after"] == "1"
        assert sims.alpha.stats()["chat"] == 2 and sims.beta.stats()["chat"] == 1
    finally:
        for conn in held:
            conn.close()
    # Capacity comes back as the streams end.
    sims.alpha.configure(stall_after=None)
    wait_for(lambda: edge.call("POST", "/v1/chat/completions",
                               {"model": "auto", "messages": STREAM["messages"]}).status == 200,
             message="capacity to return")


def test_the_server_sheds_past_its_max_inflight(start_edge, sims):
    for sim in sims:
        sim.configure(stall_after=1)
    edge = start_edge(_config(sims, "  max_inflight: 2").replace("    max_inflight: 2\n", ""))
    held = _hold(edge, "alpha", 2)
    try:
        resp = edge.call("POST", "/v1/chat/completions",
                         {"model": "alpha", "messages": STREAM["messages"]})
        assert resp.status == 503, resp
        assert resp.json()["error"]["code"] == "overloaded"
        assert resp.headers["retry-after"] == "1"
        assert edge.call("GET", "/healthz").status == 200  # only proxied requests are shed
    finally:
        for conn in held:
            conn.close()
