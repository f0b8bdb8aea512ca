"""proxy.peers on real Unix sockets, under both loops: questions and answers between
workers, and peers that are gone, silent or answer garbage. Whatever a peer does, asking
every peer comes back, with None for the ones that did not answer."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from proxy.loops import loop_factory
from proxy.peers import PeerServer, WorkerSet, ask, ask_all

COUNT = msgspec.msgpack.Decoder(tuple[str | None, int | None])
SHORT_S = 0.3     # for the silent peer: the bound is what is under test, not its size
OUTER_S = 20.0


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    def run(coro):
        with asyncio.Runner(loop_factory=loop_factory(request.param)) as runner:
            return runner.run(asyncio.wait_for(coro, OUTER_S))
    return run


def test_every_peer_answers(run, tmp_path):
    workers = [WorkerSet(str(tmp_path), i, 3) for i in range(3)]

    async def main():
        servers = []
        for w in workers:
            async def later(request, w=w):
                await asyncio.sleep(0)
                return w.index * 100 + len(request.route or "")
            servers.append(PeerServer(w.path(w.index), {
                "count": lambda request, w=w: w.index * 10, "later": later}))
        for server in servers:
            await server.start()
        try:
            return (await ask_all(workers[0], "count", COUNT, 5.0),
                    await ask_all(workers[2], "later", COUNT, 5.0, route="abc"))
        finally:
            for server in servers:
                await server.aclose()

    assert run(main()) == ({1: 10, 2: 20}, {0: 3, 1: 103})


def test_gone_silent_and_garbage_peers_count_as_missing(run, tmp_path):
    me = WorkerSet(str(tmp_path), 0, 5)
    # 1: no socket at all; 2: answers; 3: accepts and never answers; 4: answers garbage.

    async def silent(reader, writer):
        await reader.read()      # until the asker gives up and closes
        writer.close()

    async def garbage(reader, writer):
        await reader.read(4)
        writer.write(b"\x00\x00\x00\x05hello")
        await writer.drain()
        writer.close()

    async def main():
        good = PeerServer(me.path(2), {"count": lambda request: 7})
        await good.start()
        others = [await asyncio.start_unix_server(silent, path=me.path(3)),
                  await asyncio.start_unix_server(garbage, path=me.path(4))]
        try:
            return await ask_all(me, "count", COUNT, SHORT_S)
        finally:
            await good.aclose()
            for server in others:
                server.close()
                await server.wait_closed()

    assert run(main()) == {1: None, 2: 7, 3: None, 4: None}


def test_unknown_ops_and_failing_handlers_answer_with_an_error(run, tmp_path):
    me = WorkerSet(str(tmp_path), 0, 2)

    def broken(request):
        raise RuntimeError("bug")

    async def main():
        server = PeerServer(me.path(1), {"broken": broken, "count": lambda request: 1})
        await server.start()
        try:
            answers = []
            for op in ("nope", "broken", "count"):
                try:
                    answers.append(await ask(me.path(1), op, COUNT, 5.0))
                except Exception as exc:
                    answers.append(str(exc))
            return answers
        finally:
            await server.aclose()

    assert run(main()) == ["unknown op 'nope'", "RuntimeError: bug", 1]


def test_closing_ends_a_question_still_being_answered(run, tmp_path):
    me = WorkerSet(str(tmp_path), 0, 2)

    async def main():
        started = asyncio.Event()

        async def forever(request):
            started.set()
            await asyncio.Event().wait()

        server = PeerServer(me.path(1), {"forever": forever})
        await server.start()
        asking = asyncio.ensure_future(ask_all(me, "forever", COUNT, OUTER_S))
        await started.wait()
        await server.aclose()          # must not wait for the answer
        return await asking

    assert run(main()) == {1: None}
