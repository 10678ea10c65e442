"""The service's message handling without sockets: requests in, answers queued per stream."""

from __future__ import annotations

from typing import Any

from sched_world import FakeClock

from damselfly.api import common_pb2, scheduler_pb2
from damselfly.config import SchedulerConfig
from damselfly.domain import HostInfo
from damselfly.scheduler.resources import PeerState
from damselfly.scheduler.service import SchedulerService
from damselfly.scheduler.stream import END, PeerStream

TASK = "f" * 64


def request(host: str, peer: str, **kw: Any) -> Any:
    return scheduler_pb2.AnnouncePeerRequest(host_id=host, task_id=TASK, peer_id=peer, **kw)


def register(host: str, peer: str, **download: Any) -> Any:
    return request(
        host,
        peer,
        register_peer_request=scheduler_pb2.RegisterPeerRequest(
            download=common_pb2.Download(url="http://o/f", **download)
        ),
    )


def make_service(seed_host: bool = False, topology: str = "mesh") -> tuple[SchedulerService, FakeClock]:
    """A service on the mesh topology unless told (waiting and "more parents" are the mesh's
    rules; the chain gives a peer its predecessor at once, even one that has not started)."""
    clock = FakeClock()
    cfg = SchedulerConfig()
    cfg.scheduler.topology = topology
    svc = SchedulerService(cfg, clock=clock)
    for name in ("a", "b", "c"):
        svc.res.upsert_host(
            HostInfo(id=name, hostname=name, ip="127.0.0.1", port=1, download_port=2),
            clock(),
        )
    return svc, clock


def kinds(stream: PeerStream) -> list[str]:
    return [m.WhichOneof("response") for m in stream.pending()]  # type: ignore[attr-defined]


async def test_register_with_actual_sizes_sizes_the_task_and_is_scheduled_as_usual() -> None:
    # Dragonfly's rule: actual_* size a new task; the peer is scheduled (here: first peer, no
    # seed host, so the origin). A Finished report then ends the call.
    svc, _ = make_service()
    s = PeerStream()
    svc.handle(register("a", "pa", actual_content_length=123, actual_piece_count=1, actual_piece_length=4), s)
    assert kinds(s) == ["need_back_to_source_response"]
    task = svc.res.task(TASK)
    assert (task.content_length, task.piece_count, task.piece_length) == (123, 1, 4)
    assert svc.res.peer("pa").state is PeerState.PENDING
    done = svc.handle(
        request("a", "pa", download_peer_finished_request=scheduler_pb2.DownloadPeerFinishedRequest()), s
    )
    assert done and s.pending() == [END]
    assert svc.res.peer("pa").state is PeerState.SUCCEEDED


async def test_a_known_length_is_not_changed_by_a_later_register() -> None:
    svc, _ = make_service()
    svc.handle(register("a", "pa", actual_content_length=123, actual_piece_count=1), PeerStream())
    svc.handle(register("b", "pb", actual_content_length=999, actual_piece_count=9), PeerStream())
    task = svc.res.task(TASK)
    assert (task.content_length, task.piece_count) == (123, 1)


async def test_metadata_only_register_is_answered_metadata_only_and_stays_succeeded() -> None:
    svc, _ = make_service()
    s = PeerStream()
    svc.handle(
        register(
            "a",
            "pa",
            metadata_only=True,
            actual_content_length=8,
            actual_piece_count=1,
            actual_piece_length=4,
        ),
        s,
    )
    assert kinds(s) == ["metadata_only_response"]
    assert svc.res.peer("pa").state is PeerState.SUCCEEDED
    assert svc.seeds.running == 0 and not svc.res.task(TASK).source_peers
    started = scheduler_pb2.DownloadPeerStartedRequest()
    assert not svc.handle(request("a", "pa", download_peer_started_request=started), s)
    assert svc.res.peer("pa").state is PeerState.SUCCEEDED
    finished = scheduler_pb2.DownloadPeerFinishedRequest()
    assert svc.handle(request("a", "pa", download_peer_finished_request=finished), s)
    assert s.pending() == [END] and svc.res.peer("pa").state is PeerState.SUCCEEDED


async def test_waiting_peer_is_answered_when_the_source_peer_starts() -> None:
    svc, _ = make_service()
    sa, sb = PeerStream(), PeerStream()
    svc.handle(register("a", "pa"), sa)
    assert kinds(sa) == ["need_back_to_source_response"]
    svc.handle(register("b", "pb"), sb)
    assert kinds(sb) == []
    svc.handle(
        request(
            "a",
            "pa",
            download_peer_back_to_source_started_request=scheduler_pb2.DownloadPeerBackToSourceStartedRequest(),
        ),
        sa,
    )
    assert kinds(sb) == ["normal_task_response"]


async def test_temporary_piece_failure_blocks_the_parent_and_permanent_does_not() -> None:
    # Dragonfly's rule (G:scheduler/service/service_v2.go:1788-1814).
    svc, _ = make_service()
    s = PeerStream()
    svc.handle(register("a", "pa"), PeerStream())
    svc.handle(register("b", "pb"), s)
    failed = scheduler_pb2.DownloadPieceFailedRequest
    svc.handle(request("b", "pb", download_piece_failed_request=failed(piece_number=1, parent_id="pa")), s)
    assert svc.res.peer("pb").blocked == set()
    svc.handle(
        request(
            "b", "pb", download_piece_failed_request=failed(piece_number=1, parent_id="pa", temporary=True)
        ),
        s,
    )
    assert svc.res.peer("pb").blocked == {"pa"}


async def test_piece_costs_are_recorded_against_the_parent() -> None:
    svc, _ = make_service()
    svc.handle(register("a", "pa"), PeerStream())
    svc.handle(register("b", "pb"), PeerStream())
    piece = common_pb2.Piece(number=0, length=10, parent_id="pa")
    piece.cost.FromMilliseconds(250)
    svc.handle(
        request(
            "b", "pb", download_piece_finished_request=scheduler_pb2.DownloadPieceFinishedRequest(piece=piece)
        ),
        PeerStream(),
    )
    assert list(svc.res.peer("pa").served_costs) == [0.25]
    assert svc.res.peer("pb").state is PeerState.RUNNING
    assert svc.res.peer("pb").finished_pieces == {0}


async def test_backstop_retry_sends_a_long_waiting_peer_to_source() -> None:
    svc, clock = make_service()
    sa, sb = PeerStream(), PeerStream()
    svc.handle(register("a", "pa"), sa)
    svc.handle(register("b", "pb"), sb)
    svc.retry_waiting()
    assert kinds(sb) == []
    clock.advance(svc.cfg.back_to_source_after + 1)
    svc.retry_waiting()
    assert kinds(sb) == ["need_back_to_source_response"]


async def test_gc_of_a_silent_source_host_sends_a_waiting_peer_to_source_at_once() -> None:
    svc, clock = make_service()
    sa, sb = PeerStream(), PeerStream()
    svc.handle(register("a", "pa"), sa)
    svc.handle(register("b", "pb"), sb)
    assert kinds(sb) == []
    clock.advance(svc.config.gc.host_ttl / 2)
    svc.res.upsert_host(svc.res.hosts["b"].info, clock())  # b keeps announcing, a went silent
    clock.advance(svc.config.gc.host_ttl / 2 + 1)
    svc.run_gc()
    assert "a" not in svc.res.hosts and "pa" not in svc.res.peers
    assert kinds(sb) == ["need_back_to_source_response"]


class FromLoopback:
    """A servicer context of a plaintext call from 127.0.0.1 (an admin by default)."""

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}


async def test_delete_task_removes_only_that_hosts_peer() -> None:
    svc, _ = make_service()
    svc.handle(register("a", "pa"), PeerStream())
    svc.handle(register("b", "pb"), PeerStream())
    await svc.DeleteTask(scheduler_pb2.DeleteTaskRequest(host_id="a", task_id=TASK), FromLoopback())
    assert set(svc.res.task(TASK).peers) == {"pb"}
    req = scheduler_pb2.DeletePeerRequest(host_id="b", task_id=TASK, peer_id="pb")
    await svc.DeletePeer(req, FromLoopback())
    assert svc.res.task(TASK).peers == {}


async def test_partial_piece_report_does_not_set_the_content_length() -> None:
    # A peer that resumed and reported pieces 2-4 only must not make the task 3 pieces long.
    svc, _ = make_service()
    s = PeerStream()
    svc.handle(register("a", "pa"), s)
    svc.handle(
        request(
            "a",
            "pa",
            download_peer_back_to_source_started_request=scheduler_pb2.DownloadPeerBackToSourceStartedRequest(),
        ),
        s,
    )
    for n in (2, 3, 4):
        piece = common_pb2.Piece(number=n, offset=n * 4, length=4, digest="crc32:1")
        svc.handle(
            request(
                "a",
                "pa",
                download_piece_back_to_source_finished_request=scheduler_pb2.DownloadPieceBackToSourceFinishedRequest(
                    piece=piece
                ),
            ),
            s,
        )
    svc.handle(
        request(
            "a",
            "pa",
            download_peer_back_to_source_finished_request=scheduler_pb2.DownloadPeerBackToSourceFinishedRequest(),
        ),
        s,
    )
    assert svc.res.peer("pa").state is PeerState.SUCCEEDED
    assert svc.res.task(TASK).content_length is None


def _started(svc: SchedulerService, host: str, peer: str) -> PeerStream:
    s = PeerStream()
    svc.handle(register(host, peer), s)
    svc.handle(
        request(host, peer, download_peer_started_request=scheduler_pb2.DownloadPeerStartedRequest()), s
    )
    return s


async def test_more_parents_reschedule_adds_parents_without_blocking_or_counting() -> None:
    svc, _ = make_service()
    src = PeerStream()
    svc.handle(register("a", "pa"), src)  # no seed host: pa goes to the origin
    svc.handle(
        request(
            "a",
            "pa",
            download_peer_back_to_source_started_request=scheduler_pb2.DownloadPeerBackToSourceStartedRequest(),
        ),
        src,
    )
    sb = _started(svc, "b", "pb")
    assert set(svc.res.peer("pb").parents) == {"pa"}
    _started(svc, "c", "pc")  # a third peer now downloads too
    sb.pending()
    svc.handle(request("b", "pb", reschedule_peer_request=scheduler_pb2.ReschedulePeerRequest()), sb)
    (answer,) = sb.pending()
    got = {p.id for p in answer.normal_task_response.candidate_parents}
    assert got == {"pa", "pc"}  # kept the old parent, added the new one
    peer = svc.res.peer("pb")
    assert peer.reschedule_count == 0 and not peer.blocked


async def test_mesh_lets_peers_be_each_others_parents_and_dag_does_not() -> None:
    for topology, expect_cycle in (("mesh", True), ("dag", False)):
        clock = FakeClock()
        cfg = SchedulerConfig()
        cfg.scheduler.topology = topology
        svc = SchedulerService(cfg, clock=clock)
        for name in ("a", "b", "c"):
            svc.res.upsert_host(
                HostInfo(id=name, hostname=name, ip="127.0.0.1", port=1, download_port=2), clock()
            )
        src = PeerStream()
        svc.handle(register("a", "pa"), src)
        svc.handle(
            request(
                "a",
                "pa",
                download_peer_back_to_source_started_request=scheduler_pb2.DownloadPeerBackToSourceStartedRequest(),
            ),
            src,
        )
        _started(svc, "b", "pb")  # pb's parent: pa
        sc = _started(svc, "c", "pc")  # pc's parents: pa, pb
        assert "pb" in svc.res.peer("pc").parents
        sb = PeerStream()
        svc.handle(request("b", "pb", reschedule_peer_request=scheduler_pb2.ReschedulePeerRequest()), sb)
        # pc descends from pb: only the mesh lets pb download from pc as well.
        assert ("pc" in svc.res.peer("pb").parents) is expect_cycle, topology
        del sc


async def test_the_default_topology_lines_peers_up_behind_the_origin_fetcher() -> None:
    assert SchedulerConfig().scheduler.topology == "chain"
    svc, _ = make_service(topology="chain")
    src = PeerStream()
    svc.handle(register("a", "pa"), src)  # no seed host: pa goes to the origin
    assert kinds(src) == ["need_back_to_source_response"]
    sb = PeerStream()
    svc.handle(register("b", "pb"), sb)  # at once, behind pa (which has not started yet)
    assert kinds(sb) == ["normal_task_response"]
    sc = _started(svc, "c", "pc")
    assert kinds(sc) == ["normal_task_response"]
    assert [list(svc.res.peer(p).parents) for p in ("pb", "pc")] == [["pa"], ["pb"]]


async def test_stat_peer_and_stat_task_describe_the_peer_its_task_and_host() -> None:
    svc, _ = make_service()
    svc.handle(register("a", "pa", tag="t"), PeerStream())
    peer = await svc.StatPeer(scheduler_pb2.StatPeerRequest(host_id="a", task_id=TASK, peer_id="pa"), None)
    assert (peer.id, peer.host.id, peer.host.download_port) == ("pa", "a", 2)
    assert (peer.task.id, peer.task.url, peer.task.tag, peer.task.peer_count) == (TASK, "http://o/f", "t", 1)
    assert not peer.task.HasField("digest")  # none was given
    task = await svc.StatTask(scheduler_pb2.StatTaskRequest(task_id=TASK), None)
    assert task == peer.task
    assert task.content_length == 2**64 - 1 and task.size_scope == 4  # unknown, as Dragonfly says it
