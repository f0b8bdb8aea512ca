"""The upstream client: https with certificate verification, and backpressure from a slow
client through llmedge to the upstream (llmedge must not buffer an unbounded stream)."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from procs import Llmedge, RawConn, Simulator, request_bytes, wait_for

CHAT = {"model": "secure", "messages": [{"role": "user", "content": "hi"}]}


def _tls_chat_count(sim) -> int:
    context = ssl.create_default_context(cafile=str(sim.cert))
    conn = http.client.HTTPSConnection("127.0.0.1", sim.port, context=context, timeout=30)
    try:
        conn.request("GET", "/_sim/stats")
        return json.loads(conn.getresponse().read())["chat"]
    finally:
        conn.close()


def _edge_config(url: str, ca_file: Path | None = None) -> str:
    upstream = "upstream:\n  ca_file: %s\n" % ca_file if ca_file else ""
    return ("server:\n  http: 127.0.0.1:0\n%sdeployments:\n  - name: secure\n"
            "    base_url: %s\n" % (upstream, url))


@pytest.fixture(scope="module")
def tls_sim(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    workdir = tmp_path_factory.mktemp("tls")
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    sim = Simulator(workdir, "tls", "--tls-cert", str(cert), "--tls-key", str(key))
    sim.https_url = "https://127.0.0.1:%d/v1" % sim.port
    sim.cert = cert
    sim.workdir = workdir
    try:
        yield sim
    finally:
        sim.stop()


def test_https_upstream_with_trusted_ca(tls_sim):
    edge = Llmedge(tls_sim.workdir, _edge_config(tls_sim.https_url, tls_sim.cert), name="tls-ok")
    try:
        with edge.client() as client:
            reply = client.chat.completions.create(**CHAT)
        assert reply.choices[0].message.content
        stream = edge.call("POST", "/v1/chat/completions", {**CHAT, "stream": True})
        assert stream.status == 200 and stream.body.rstrip().endswith(b"data: [DONE]")
    finally:
        assert edge.stop() == 0


def test_https_upstream_with_untrusted_certificate_is_refused(tls_sim):
    # The system trust store does not know this self-signed certificate: llmedge must not
    # send the request (and its credentials) to it.
    before = _tls_chat_count(tls_sim)
    edge = Llmedge(tls_sim.workdir, _edge_config(tls_sim.https_url), name="tls-untrusted")
    try:
        resp = edge.call("POST", "/v1/chat/completions", CHAT)
        assert resp.status == 502, resp
        error = resp.json()["error"]
        assert error["code"] == "upstream_connect"
        assert "certificate" in error["message"].lower()
        assert _tls_chat_count(tls_sim) == before
    finally:
        assert edge.stop() == 0


def _rss_kib(pid: int) -> int:
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def test_slow_reader_pushes_back_on_the_upstream(sims, tmp_path):
    """A stream of ~60 MB to a client that reads nothing: llmedge's memory stays flat, the
    bytes wait in the upstream instead, and once the client reads, every byte arrives."""
    chunks = 12000  # x 5000 bytes: under the simulator's 64 MB request limit
    reply = "x" * 5000
    sims.alpha.configure(chunks=chunks, reply=reply * chunks, tokens_per_s=None)
    edge = Llmedge(tmp_path, "server:\n  http: 127.0.0.1:0\ndeployments:\n  - name: big\n"
                   "    base_url: %s\n" % sims.alpha.url, name="backpressure")
    try:
        baseline = _rss_kib(edge.pid)
        body = {"model": "big", "stream": True, "messages": [{"role": "user", "content": "x"}]}
        with RawConn(edge.port) as conn:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            conn.send(request_bytes("POST", "/v1/chat/completions", body))
            # The upstream has written the whole stream into its own buffers; with
            # backpressure most of it must still be waiting there, not inside llmedge.
            wait_for(lambda: sims.alpha.stats()["pending_write_bytes"] > 0,
                     message="the upstream to be held back")
            peak = baseline
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                peak = max(peak, _rss_kib(edge.pid))
                time.sleep(0.05)
            held_upstream = sims.alpha.stats()["pending_write_bytes"]
            assert peak - baseline < 24 * 1024, (baseline, peak)
            assert held_upstream > 24 * 1024 * 1024, held_upstream
            parts = []
            tail = b""
            while not tail.endswith(b"0\r\n\r\n"):
                data = conn.sock.recv(1 << 20)
                assert data, "llmedge closed the stream early"
                parts.append(data)
                tail = (tail + data)[-64:]
        received = b"".join(parts)
        assert received.startswith(b"HTTP/1.1 200 ")
        assert received.count(b'"content":"' + reply.encode() + b'"') == chunks
        assert b"data: [DONE]" in received[-200:]
    finally:
        assert edge.stop() == 0

