"""The scheduler over real gRPC on loopback, driven by stubs acting as daemons."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from scheduler_harness import URL, FakePeer, RunningScheduler, announce_host, host_pb, running_scheduler

from damselfly.api import dfdaemon_pb2, dfdaemon_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from damselfly.ids import task_id as make_task_id
from damselfly.scheduler.metrics import PREFIX
from helpers.metrics import sample
from helpers.wait import TIMEOUT, until

pytestmark = pytest.mark.integration

TASK = make_task_id(URL)
PIECE = 4 * 1024 * 1024


# Peers here wait on events only: the fallback to the origin after a long wait never fires.
PATIENT = {"backToSourceAfter": 3600}


def which(answer: Any) -> str:
    return str(answer.WhichOneof("response"))


async def counted(s: RunningScheduler, name: str, **labels: str) -> float:
    """A counter of the scheduler's (``back_to_source_total``, ``schedule_decision_total``...)."""
    return await sample(s.metrics_port, PREFIX + name, **labels)


async def registered(s: RunningScheduler, peer: FakePeer) -> bool:
    """The scheduler has handled the peer's registration (and so decided its first answer)."""
    try:
        await s.stub.StatPeer(
            scheduler_pb2.StatPeerRequest(host_id=peer.host_id, task_id=peer.task_id, peer_id=peer.peer_id)
        )
    except grpc.aio.AioRpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True


async def register_in_order(s: RunningScheduler, peers: list[FakePeer]) -> None:
    """Register ``peers`` one after another: each stream is its own, so only waiting for the
    scheduler to have each one makes the order of registration the order given."""
    for p in peers:
        p.register()
        await until(lambda p=p: registered(s, p), f"{p.peer_id} is registered")


async def test_first_peer_goes_to_source_then_second_gets_it_as_parent(tmp_path: Path) -> None:
    # The mesh's rule: a peer waits until someone can serve. (The default chain lines B up
    # behind A at once: test_scheduler_service_logic.py.)
    async with running_scheduler(tmp_path, scheduler={"topology": "mesh", **PATIENT}) as s:
        ha, hb = host_pb("a"), host_pb("b")
        await announce_host(s.stub, ha)
        await announce_host(s.stub, hb)

        a = FakePeer(s.stub, ha.id, TASK, "peer-a")
        a.register()
        assert which(await a.answer()) == "need_back_to_source_response"

        # B registers while nobody can serve: it waits, and is answered when A starts.
        b = FakePeer(s.stub, hb.id, TASK, "peer-b")
        b.register()
        b_answer = asyncio.ensure_future(b.answer(timeout=TIMEOUT))
        await until(lambda: registered(s, b), "B is registered")
        # B's first answer was decided with its registration: to wait, not to go to the origin too.
        assert await counted(s, "back_to_source_total") == 1  # A only
        assert await counted(s, "schedule_decision_total", kind="Wait") >= 1
        assert not b_answer.done()

        a.send(
            download_peer_back_to_source_started_request=scheduler_pb2.DownloadPeerBackToSourceStartedRequest()
        )
        answer = await b_answer
        assert which(answer) == "normal_task_response"
        parents = answer.normal_task_response.candidate_parents
        assert [p.id for p in parents] == ["peer-a"]
        assert parents[0].host.id == ha.id and parents[0].host.port == 4000

        for n in range(3):
            a.piece(n, PIECE, back_to_source=True)
        a.send(
            download_peer_back_to_source_finished_request=scheduler_pb2.DownloadPeerBackToSourceFinishedRequest()
        )
        await a.done()
        assert await a.call.code() == grpc.StatusCode.OK

        task = await s.stub.StatTask(scheduler_pb2.StatTaskRequest(task_id=TASK))
        assert task.content_length == 3 * PIECE
        assert task.piece_count == 3
        assert task.state == "Succeeded"
        assert task.peer_count == 2
        assert task.has_available_peer

        b.send(download_peer_started_request=scheduler_pb2.DownloadPeerStartedRequest())
        b.piece(0, PIECE, parent_id="peer-a")
        # A parent failing for good gets blocked; with no other parent, B goes to the origin.
        b.send(
            reschedule_peer_request=scheduler_pb2.ReschedulePeerRequest(
                candidate_parents=[parents[0]], description="parent gone"
            )
        )
        assert which(await b.answer()) == "need_back_to_source_response"

        peer = await s.stub.StatPeer(
            scheduler_pb2.StatPeerRequest(host_id=hb.id, task_id=TASK, peer_id="peer-b")
        )
        assert peer.state == "Running"

        await s.stub.DeleteHost(scheduler_pb2.DeleteHostRequest(host_id=ha.id))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await s.stub.StatPeer(
                scheduler_pb2.StatPeerRequest(host_id=ha.id, task_id=TASK, peer_id="peer-a")
            )
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        hosts = await s.stub.ListHosts(scheduler_pb2.ListHostsRequest())
        assert [h.id for h in hosts.hosts] == [hb.id]
        task = await s.stub.StatTask(scheduler_pb2.StatTaskRequest(task_id=TASK))
        assert task.peer_count == 1
        b.close()


async def test_finished_task_answers_new_peer_at_once_and_stream_break_fails_peer(tmp_path: Path) -> None:
    async with running_scheduler(tmp_path) as s:
        hosts = [host_pb(n) for n in ("a", "b", "c")]
        for h in hosts:
            await announce_host(s.stub, h)
        a = FakePeer(s.stub, hosts[0].id, TASK, "peer-a")
        a.register()
        assert which(await a.answer()) == "need_back_to_source_response"
        a.send(
            download_peer_back_to_source_started_request=scheduler_pb2.DownloadPeerBackToSourceStartedRequest()
        )
        a.piece(0, 1000, back_to_source=True)
        a.send(
            download_peer_back_to_source_finished_request=scheduler_pb2.DownloadPeerBackToSourceFinishedRequest()
        )
        await a.done()

        c = FakePeer(s.stub, hosts[2].id, TASK, "peer-c")
        c.register()
        answer = await c.answer()
        assert which(answer) == "normal_task_response"
        parent = answer.normal_task_response.candidate_parents[0]
        assert parent.id == "peer-a"
        assert parent.state == "Succeeded"
        assert parent.task.content_length == 1000 and parent.task.piece_count == 1

        # A daemon that vanishes mid-download leaves a Failed peer behind.
        c.call.cancel()

        async def c_failed() -> bool:
            peer = await s.stub.StatPeer(
                scheduler_pb2.StatPeerRequest(host_id=hosts[2].id, task_id=TASK, peer_id="peer-c")
            )
            return bool(peer.state == "Failed")

        await until(c_failed, "peer-c is Failed once its stream broke")


async def test_empty_task_and_restore_register(tmp_path: Path) -> None:
    async with running_scheduler(tmp_path) as s:
        ha, hb, hc = host_pb("a"), host_pb("b"), host_pb("c")
        for h in (ha, hb, hc):
            await announce_host(s.stub, h)
        empty_task = make_task_id(URL + "?empty")
        a = FakePeer(s.stub, ha.id, empty_task, "peer-a")
        a.register(URL + "?empty")
        assert which(await a.answer()) == "need_back_to_source_response"
        a.send(
            download_peer_back_to_source_started_request=scheduler_pb2.DownloadPeerBackToSourceStartedRequest()
        )
        a.send(
            download_peer_back_to_source_finished_request=scheduler_pb2.DownloadPeerBackToSourceFinishedRequest()
        )
        await a.done()
        b = FakePeer(s.stub, hb.id, empty_task, "peer-b")
        b.register(URL + "?empty")
        assert which(await b.answer()) == "empty_task_response"
        b.close()

        # A restore as Damselfly daemons send it before they speak metadata_only: a register
        # with actual_* (scheduled as any register: the answer is read, not acted on) and at
        # once Finished, after which the scheduler ends the call.
        restored = make_task_id(URL + "?restored")
        r = FakePeer(s.stub, hb.id, restored, "peer-r")
        r.register(
            URL + "?restored",
            actual_content_length=10 * PIECE,
            actual_piece_count=3,
            actual_piece_length=PIECE,
        )
        r.send(download_peer_finished_request=scheduler_pb2.DownloadPeerFinishedRequest())
        assert which(await r.answer()) == "need_back_to_source_response"
        assert await r.answer() is grpc.aio.EOF
        await r.done()
        assert await r.call.code() == grpc.StatusCode.OK
        task = await s.stub.StatTask(scheduler_pb2.StatTaskRequest(task_id=restored))
        assert (task.content_length, task.piece_count, task.state) == (10 * PIECE, 3, "Succeeded")

        c = FakePeer(s.stub, hc.id, restored, "peer-c")
        c.register(URL + "?restored")
        answer = await c.answer()
        assert [p.id for p in answer.normal_task_response.candidate_parents] == ["peer-r"]
        c.close()


async def test_disable_back_to_source_fails_with_failed_precondition(tmp_path: Path) -> None:
    async with running_scheduler(tmp_path, scheduler={"backToSourceAfter": 0.3, "retryInterval": 0.05}) as s:
        ha = host_pb("a")
        await announce_host(s.stub, ha)
        a = FakePeer(s.stub, ha.id, TASK, "peer-a")
        a.register(disable_back_to_source=True)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await a.answer()
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_unknown_host_and_the_cache_task_stub(tmp_path: Path) -> None:
    async with running_scheduler(tmp_path) as s:
        a = FakePeer(s.stub, "nobody", TASK, "peer-a")
        a.register()
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await a.answer()
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert e.value.details() == "host nobody not found"
        # Dragonfly's scheduler answers the cache task RPCs with empty stubs (docs/INTEROP.md §2.1).
        task = await s.stub.StatCacheTask(scheduler_pb2.StatCacheTaskRequest(host_id="h", task_id=TASK))
        assert task.ByteSize() == 0


async def test_metrics_and_healthy(tmp_path: Path) -> None:
    async with running_scheduler(tmp_path) as s:
        await announce_host(s.stub, host_pb("a"))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{s.metrics_port}/healthy") as r:
                assert r.status == 200 and await r.text() == "OK"
            async with http.get(f"http://127.0.0.1:{s.metrics_port}/metrics") as r:
                text = await r.text()
        assert "damselfly_scheduler_hosts 1.0" in text
        # Dragonfly's name and labels: what the host reports of itself.
        host = {"os": "linux", "platform": "debian", "platform_family": "debian", "platform_version": "12"}
        assert await sample(s.metrics_port, "dragonfly_scheduler_announce_host_total", **host) == 1


class FakeSeedDaemon(dfdaemon_pb2_grpc.DfdaemonUploadServicer):  # type: ignore[misc]
    """A seed daemon's DfdaemonUpload that records DownloadTask calls and streams nothing."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.called = asyncio.Event()
        self.release = asyncio.Event()

    async def DownloadTask(self, request: Any, context: Any) -> Any:
        self.calls.append(request)
        self.called.set()
        await self.release.wait()
        yield dfdaemon_pb2.DownloadTaskResponse(task_id=TASK)


@contextlib.asynccontextmanager
async def fake_seed() -> AsyncIterator[tuple[FakeSeedDaemon, int]]:
    """A FakeSeedDaemon served on a free loopback port: (the servicer, its port)."""
    seed_daemon = FakeSeedDaemon()
    server = grpc.aio.server()
    dfdaemon_pb2_grpc.add_DfdaemonUploadServicer_to_server(seed_daemon, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield seed_daemon, port
    finally:
        await server.stop(None)


async def all_registered(s: RunningScheduler, peers: list[FakePeer]) -> bool:
    return all(await asyncio.gather(*(registered(s, p) for p in peers)))


async def test_seed_trigger_once_for_twenty_concurrent_peers(tmp_path: Path) -> None:
    async with (
        fake_seed() as (seed_daemon, seed_port),
        running_scheduler(tmp_path, scheduler={"topology": "mesh", **PATIENT}) as s,
    ):
        seed_host = host_pb("seed", port=seed_port, seed=True)
        await announce_host(s.stub, seed_host)
        hosts = [host_pb(f"h{i}") for i in range(20)]
        await asyncio.gather(*(announce_host(s.stub, h) for h in hosts))

        peers = [FakePeer(s.stub, h.id, TASK, f"peer-{i}") for i, h in enumerate(hosts)]
        for p in peers:
            p.register(request_header={"Authorization": "Bearer x"}, output_path="/tmp/out")
        answers = [asyncio.ensure_future(p.answer(timeout=TIMEOUT)) for p in peers]
        await asyncio.wait_for(seed_daemon.called.wait(), TIMEOUT)
        # Every registration decided (each peer's first answer comes with its registration):
        # one seed download triggered for the twenty, nobody sent to the origin or to a parent.
        await until(lambda: all_registered(s, peers), "the scheduler handled the twenty registrations")
        assert await counted(s, "seed_trigger_total", result="triggered") == 1
        assert await counted(s, "back_to_source_total") == 0
        assert await counted(s, "schedule_decision_total", kind="Parents") == 0
        assert len(seed_daemon.calls) == 1
        download = seed_daemon.calls[0].download
        assert download.url == URL
        assert dict(download.request_header) == {"Authorization": "Bearer x"}
        assert not download.output_path
        assert not any(a.done() for a in answers), "peers wait for the seed instead of the origin"

        # The seed daemon registers its own peer: it goes to the origin, and everyone else gets it.
        sp = FakePeer(s.stub, seed_host.id, TASK, "peer-seed")
        sp.register()
        assert which(await sp.answer()) == "need_back_to_source_response"
        sp.send(
            download_peer_back_to_source_started_request=scheduler_pb2.DownloadPeerBackToSourceStartedRequest()
        )
        results = await asyncio.gather(*answers)
        assert all(which(r) == "normal_task_response" for r in results)
        assert all("peer-seed" in [c.id for c in r.normal_task_response.candidate_parents] for r in results)
        assert len(seed_daemon.calls) == 1
        seed_daemon.release.set()
        for p in [*peers, sp]:
            p.close()


async def test_chain_triggers_the_seed_once_and_lines_twenty_peers_up_behind_it(tmp_path: Path) -> None:
    async with (
        fake_seed() as (seed_daemon, seed_port),
        running_scheduler(tmp_path, scheduler=PATIENT) as s,
    ):  # the default topology: chain
        seed_host = host_pb("seed", port=seed_port, seed=True)
        await announce_host(s.stub, seed_host)
        hosts = [host_pb(f"h{i}") for i in range(20)]
        await asyncio.gather(*(announce_host(s.stub, h) for h in hosts))
        peers = [FakePeer(s.stub, h.id, TASK, f"peer-{i}") for i, h in enumerate(hosts)]
        await register_in_order(s, peers)  # the line's order is the registration order
        answers = [asyncio.ensure_future(p.answer(timeout=TIMEOUT)) for p in peers]
        # Everyone but the head is answered at once, with the peer registered before it.
        rest = await asyncio.gather(*answers[1:])
        assert [[c.id for c in r.normal_task_response.candidate_parents] for r in rest] == [
            [f"peer-{i}"] for i in range(19)
        ]
        await asyncio.wait_for(seed_daemon.called.wait(), TIMEOUT)
        # Every registration was decided (each one before the next was sent): the head waits
        # for the seed, which was triggered once; nobody went to the origin.
        assert await counted(s, "seed_trigger_total", result="triggered") == 1
        assert await counted(s, "back_to_source_total") == 0
        assert await counted(s, "schedule_decision_total", kind="Parents") == 19
        assert len(seed_daemon.calls) == 1 and not answers[0].done()
        sp = FakePeer(s.stub, seed_host.id, TASK, "peer-seed")
        sp.register()
        assert which(await sp.answer()) == "need_back_to_source_response"
        sp.send(
            download_peer_back_to_source_started_request=scheduler_pb2.DownloadPeerBackToSourceStartedRequest()
        )
        head = await answers[0]
        assert [c.id for c in head.normal_task_response.candidate_parents] == ["peer-seed"]
        assert len(seed_daemon.calls) == 1
        seed_daemon.release.set()
        for p in [*peers, sp]:
            p.close()


async def test_unreachable_seed_host_falls_back_to_one_origin_fetch(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    async with running_scheduler(tmp_path, scheduler={"topology": "mesh", **PATIENT}) as s:
        seed_host = host_pb("seed", port=dead_port, seed=True)
        await announce_host(s.stub, seed_host)
        hosts = [host_pb(f"h{i}") for i in range(3)]
        for h in hosts:
            await announce_host(s.stub, h)
        seeds = await s.stub.ListHosts(scheduler_pb2.ListHostsRequest(type=1))
        assert [h.id for h in seeds.hosts] == [seed_host.id]

        peers = [FakePeer(s.stub, h.id, TASK, f"peer-{i}") for i, h in enumerate(hosts)]
        await register_in_order(s, peers)
        # The seed download fails at once; the first peer is sent to the origin, the others wait for it.
        first = await peers[0].answer(timeout=TIMEOUT)
        assert which(first) == "need_back_to_source_response"
        others = [asyncio.ensure_future(p.answer(timeout=TIMEOUT)) for p in peers[1:]]
        # The failure woke every waiting peer and each was decided again: one to the origin.
        assert await counted(s, "seed_trigger_total", result="failed") == 1
        assert await counted(s, "back_to_source_total") == 1
        assert await counted(s, "schedule_decision_total", kind="Parents") == 0
        assert not any(o.done() for o in others)
        peers[0].send(
            download_peer_back_to_source_started_request=scheduler_pb2.DownloadPeerBackToSourceStartedRequest()
        )
        for o in others:
            answer = await o
            assert [c.id for c in answer.normal_task_response.candidate_parents] == ["peer-0"]
        # Streams still open when the scheduler stops end with UNAVAILABLE, not a hang. (Read
        # while the client channel is open: closing it would cancel a call whose status had not
        # been taken in yet, which a loaded machine showed as CANCELLED.)
        s.stop.set()
        await asyncio.wait_for(s.task, 10)
        for p in peers:
            assert await asyncio.wait_for(p.call.code(), 5) == grpc.StatusCode.UNAVAILABLE


async def test_run_in_a_process_writes_ready_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    overrides = {"server": {"ip": "127.0.0.1", "port": 0}, "metrics": {"ip": "127.0.0.1", "port": 0}}
    code = (
        "from pathlib import Path; from damselfly.config import load_scheduler_config;"
        "from damselfly.scheduler.app import run;"
        f"run(load_scheduler_config(overrides={overrides!r}), ready_file=Path({str(ready)!r}))"
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    try:
        await until(lambda: ready.exists() or proc.returncode is not None, "the scheduler is ready")
        info = json.loads(ready.read_text())
        assert info["pid"] == proc.pid and info["grpc_port"] > 0 and info["metrics_port"] > 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{info['grpc_port']}") as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            await announce_host(stub, host_pb("a"))
            hosts = await stub.ListHosts(scheduler_pb2.ListHostsRequest())
            assert len(hosts.hosts) == 1
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
