"""Damselfly's scheduler as a Rust dfdaemon sees it: the AnnouncePeer dialogue and every RPC.

Each test plays messages in the order the Rust client sends them (dragonflyoss/client
``ff17c0b7``, cited ``C:path:line``) to a real ``SchedulerService`` behind a grpc.aio
server on loopback, and expects what Dragonfly's Go scheduler answers (dragonflyoss/dragonfly
``66db4564``, cited ``G:path:line``; the validation rules from dragonflyoss/api ``9e1d31a``,
cited ``A:path:line``). docs/INTEROP.md §2 and §3.5 tell the same story in prose.

The Rust client never half-closes an AnnouncePeer call: after a Finished or Failed report it
waits for the *scheduler* to end the call (``in_stream_tx.closed().await``,
C:dragonfly-client/src/resource/task.rs:756). :meth:`RustPeer.call_ended` waits the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from dragonfly_api import errordetails_pb2

from damselfly.api import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from damselfly.api.convert import UNKNOWN_CONTENT_LENGTH
from damselfly.config import SchedulerConfig
from damselfly.scheduler.service import SchedulerService

MiB = 1024 * 1024
PIECE = 4 * MiB  # the Rust client never registers content of 4 MiB or less (task.rs:512-535)
URL = "https://origin.example/data/model.bin"
TASK = "a" * 64
STEP = 10.0  # seconds: a deadline for answers due at once (a hang guard, not a timing assertion)


# -- the scheduler under test ------------------------------------------------------


@dataclass
class Scheduler:
    stub: Any
    service: SchedulerService


@contextlib.asynccontextmanager
async def scheduler(topology: str = "chain") -> AsyncIterator[Scheduler]:
    """``SchedulerService`` on a grpc.aio server on a free loopback port (no seed trigger:
    the tests play every host themselves, each announcing its own 10.x address)."""
    config = SchedulerConfig()
    config.scheduler.topology = topology
    config.seed_peer.enable = False
    # The tests play hosts of 10.0.0.0/8 from loopback, as hosts behind a NAT would call.
    config.security.trusted_networks = ["127.0.0.0/8"]
    service = SchedulerService(config)
    server = grpc.aio.server()
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    service.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Scheduler(scheduler_pb2_grpc.SchedulerStub(channel), service)
    finally:
        await channel.close()
        await service.close()
        await server.stop(None)


# -- the Rust dfdaemon's messages ----------------------------------------------------


def rust_host(name: str, ip: str) -> common_pb2.Host:
    """A Rust dfdaemon's announced host: ``<ip>-<hostname>``, ``port`` and ``download_port`` both
    the upload gRPC port 4000 (C:dragonfly-client/src/announcer/mod.rs:127-135,256-285)."""
    return common_pb2.Host(
        id=f"{ip}-{name}", type=0, hostname=name, ip=ip, port=4000, download_port=4000, proxy_port=4001
    )


async def announce(stub: Any, host: common_pb2.Host) -> None:
    request = scheduler_pb2.AnnounceHostRequest(host=host)
    request.interval.FromSeconds(
        300
    )  # scheduler.announceInterval (C:dragonfly-client-config/src/dfdaemon.rs:234)
    await stub.AnnounceHost(request, timeout=STEP)


def rust_download(content_length: int, **extra: Any) -> common_pb2.Download:
    """What dfget asks (C:dragonfly-client/src/bin/dfget/main.rs:948-987) with the sizes the
    daemon learnt before it registers (C:dragonfly-client/src/grpc/dfdaemon_download.rs:441-443)."""
    d = common_pb2.Download(
        url=URL,
        type=common_pb2.STANDARD,
        tag="",
        application="",
        output_path="/tmp/model.bin",
        actual_content_length=content_length,
        actual_piece_length=PIECE,
        actual_piece_count=-(-content_length // PIECE),
        **extra,
    )
    d.timeout.FromSeconds(7200)
    return d


def rust_piece(number: int, *, parent_id: str = "") -> common_pb2.Piece:
    """A finished piece as the Rust client reports it: ``crc32:<decimal>``, traffic type, cost
    and creation time (C:dragonfly-client/src/resource/task.rs:1362-1371, 1664-1673)."""
    piece = common_pb2.Piece(
        number=number,
        offset=number * PIECE,
        length=PIECE,
        digest="crc32:3421780262",
        traffic_type=common_pb2.REMOTE_PEER if parent_id else common_pb2.BACK_TO_SOURCE,
    )
    if parent_id:
        piece.parent_id = parent_id
    piece.cost.FromMilliseconds(40)
    piece.created_at.FromSeconds(1_760_000_000)
    return piece


class RustPeer:
    """One AnnouncePeer call driven as ``download_partial_with_scheduler`` drives it
    (C:dragonfly-client/src/resource/task.rs:666-1092): requests go in as they are sent,
    the request side is never closed by the client."""

    def __init__(self, stub: Any, host: common_pb2.Host, peer_id: str, task_id: str = TASK) -> None:
        self.host, self.peer_id, self.task_id = host, peer_id, task_id
        self._requests: asyncio.Queue[Any] = asyncio.Queue()
        self.call = stub.AnnouncePeer(self._iterate())

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            item = await self._requests.get()
            if item is None:
                return
            yield item

    def send(self, **request: Any) -> None:
        self._requests.put_nowait(
            scheduler_pb2.AnnouncePeerRequest(
                host_id=self.host.id, task_id=self.task_id, peer_id=self.peer_id, **request
            )
        )

    def register(self, download: common_pb2.Download) -> None:
        self.send(register_peer_request=scheduler_pb2.RegisterPeerRequest(download=download))

    def started(self) -> None:
        self.send(download_peer_started_request=scheduler_pb2.DownloadPeerStartedRequest())

    def back_to_source_started(self) -> None:
        self.send(
            download_peer_back_to_source_started_request=scheduler_pb2.DownloadPeerBackToSourceStartedRequest()
        )

    def piece_finished(self, number: int, parent_id: str) -> None:
        piece = rust_piece(number, parent_id=parent_id)
        self.send(download_piece_finished_request=scheduler_pb2.DownloadPieceFinishedRequest(piece=piece))

    def piece_back_to_source_finished(self, number: int) -> None:
        self.send(
            download_piece_back_to_source_finished_request=scheduler_pb2.DownloadPieceBackToSourceFinishedRequest(
                piece=rust_piece(number)
            )
        )

    def piece_failed(self, number: int, parent_id: str, *, temporary: bool) -> None:
        self.send(
            download_piece_failed_request=scheduler_pb2.DownloadPieceFailedRequest(
                piece_number=number, parent_id=parent_id, temporary=temporary
            )
        )

    def reschedule(self, candidate_parents: list[common_pb2.Peer], description: str) -> None:
        self.send(
            reschedule_peer_request=scheduler_pb2.ReschedulePeerRequest(
                candidate_parents=candidate_parents, description=description
            )
        )

    def finished(self) -> None:
        self.send(download_peer_finished_request=scheduler_pb2.DownloadPeerFinishedRequest())

    async def answer(self) -> scheduler_pb2.AnnouncePeerResponse:
        message = await asyncio.wait_for(self.call.read(), STEP)
        assert message is not grpc.aio.EOF, "the scheduler ended the call instead of answering"
        return message

    async def kind(self) -> str:
        return str((await self.answer()).WhichOneof("response"))

    async def call_ended(self) -> grpc.StatusCode:
        """Wait, without half-closing, for the scheduler to end the call; no answer may come first."""
        message = await asyncio.wait_for(self.call.read(), STEP)
        assert message is grpc.aio.EOF, f"an answer instead of the end of the call: {message}"
        code: grpc.StatusCode = await asyncio.wait_for(self.call.code(), STEP)
        return code

    async def error(self) -> grpc.aio.AioRpcError:
        """The error the scheduler ended the call with."""
        with pytest.raises(grpc.aio.AioRpcError) as e:
            while True:
                message = await asyncio.wait_for(self.call.read(), STEP)
                assert message is not grpc.aio.EOF, "the call ended with OK"
        return e.value

    def close(self) -> None:
        self._requests.put_nowait(None)
        self.call.cancel()


@contextlib.asynccontextmanager
async def peers(*items: RustPeer) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for p in items:
            p.close()


def ids(answer: scheduler_pb2.AnnouncePeerResponse) -> list[str]:
    return [p.id for p in answer.normal_task_response.candidate_parents]


async def new_peer(stub: Any, name: str, ip: str) -> RustPeer:
    """A Rust dfdaemon's host, announced, and one AnnouncePeer call of it."""
    host = rust_host(name, ip)
    await announce(stub, host)
    return RustPeer(stub, host, f"{ip}-{name}-1")


async def back_to_source_peer(stub: Any, name: str, ip: str) -> RustPeer:
    """A Rust peer that registered first and fetches from the origin (no seed host)."""
    peer = await new_peer(stub, name, ip)
    peer.register(rust_download(3 * PIECE))
    assert await peer.kind() == "need_back_to_source_response"
    peer.back_to_source_started()
    return peer


# -- AnnouncePeer ----------------------------------------------------------------------


async def test_register_with_actual_sizes_sizes_a_new_task_and_back_to_source_ends_the_call() -> None:
    # G:scheduler/service/service_v2.go:1851-1866 (actual_* size a new task), :1379-1413 (no seed
    # peer: NeedBackToSource), :225-242 (BackToSourceFinished ends the call); the Rust side:
    # C:dragonfly-client/src/resource/task.rs:949-1078.
    async with scheduler() as s:
        a = await back_to_source_peer(s.stub, "a", "10.0.0.1")
        async with peers(a):
            for n in range(3):
                a.piece_back_to_source_finished(n)
            a.send(
                download_peer_back_to_source_finished_request=scheduler_pb2.DownloadPeerBackToSourceFinishedRequest()
            )
            assert await a.call_ended() == grpc.StatusCode.OK
            # StatTask: the registered sizes and the pieces fetched from the origin
            # (G:scheduler/service/service_v2.go:455-516).
            task = await s.stub.StatTask(scheduler_pb2.StatTaskRequest(host_id=a.host.id, task_id=TASK))
            assert (task.content_length, task.piece_count, task.state) == (3 * PIECE, 3, "Succeeded")
            assert [p.number for p in task.pieces] == [0, 1, 2]
            assert task.size_scope == common_pb2.NORMAL


async def test_a_failed_back_to_source_leaves_the_length_to_the_next_register() -> None:
    # G:scheduler/service/service_v2.go:1645-1672: BackToSourceFailed resets the task's content
    # length and piece count, so the next peer's actual_* (the origin may now say otherwise) size
    # it anew; the call ends (:225-242).
    async with scheduler() as s:
        a = await back_to_source_peer(s.stub, "a", "10.0.0.1")  # registered 3 pieces
        async with peers(a):
            a.piece_back_to_source_finished(0)
            a.send(
                download_peer_back_to_source_failed_request=scheduler_pb2.DownloadPeerBackToSourceFailedRequest(
                    description="origin answered 503"
                )
            )
            assert await a.call_ended() == grpc.StatusCode.OK
        task = await s.stub.StatTask(scheduler_pb2.StatTaskRequest(host_id=a.host.id, task_id=TASK))
        assert task.content_length == UNKNOWN_CONTENT_LENGTH and task.piece_count == 0
        b = await new_peer(s.stub, "b", "10.0.0.2")
        async with peers(b):
            b.register(rust_download(5 * PIECE))
            assert await b.kind() == "need_back_to_source_response"
            task = await s.stub.StatTask(scheduler_pb2.StatTaskRequest(host_id=b.host.id, task_id=TASK))
            assert (task.content_length, task.piece_count) == (5 * PIECE, 5)


async def test_register_with_actual_length_zero_is_an_empty_task() -> None:
    # G:scheduler/service/service_v2.go:1429-1460 (EMPTY -> EmptyTaskResponse); the client then
    # sends Started and Finished and waits for the end (C:dragonfly-client/src/resource/task.rs:764-810).
    async with scheduler() as s:
        a = await new_peer(s.stub, "a", "10.0.0.1")
        async with peers(a):
            a.register(rust_download(0))
            assert await a.kind() == "empty_task_response"
            a.started()
            a.finished()
            assert await a.call_ended() == grpc.StatusCode.OK


async def test_metadata_only_is_answered_first_and_the_peer_then_serves() -> None:
    # A Rust peer holding the whole task: metadata_only, MetadataOnlyResponse first, then Started,
    # Finished, end of call (C:dragonfly-client/src/resource/task.rs:1099-1218;
    # G:scheduler/service/service_v2.go:1317-1359). It is a parent for the next peer.
    async with scheduler() as s:
        holder = await new_peer(s.stub, "holder", "10.0.0.7")
        async with peers(holder):
            holder.register(rust_download(3 * PIECE, metadata_only=True))
            assert await holder.kind() == "metadata_only_response"
            holder.started()
            holder.finished()
            assert await holder.call_ended() == grpc.StatusCode.OK
            stat = await s.stub.StatPeer(
                scheduler_pb2.StatPeerRequest(host_id=holder.host.id, task_id=TASK, peer_id=holder.peer_id)
            )
            assert stat.state == "Succeeded"

            child = await new_peer(s.stub, "child", "10.0.0.8")
            async with peers(child):
                child.register(rust_download(3 * PIECE))
                answer = await child.answer()
                assert ids(answer) == [holder.peer_id]


async def test_normal_task_candidates_say_where_to_reach_the_parent_and_finished_ends_the_call() -> None:
    # NormalTaskResponse: each candidate a common.v2.Peer whose host.ip:host.port the Rust child
    # dials (C:dragonfly-client/src/resource/parent_selector.rs:210-226; G:scheduler/scheduling/
    # scheduling.go:1059-1186). Started, pieces from the parent, Finished, end (task.rs:811-916).
    async with scheduler() as s:
        a = await back_to_source_peer(s.stub, "a", "10.0.0.1")
        b = await new_peer(s.stub, "b", "10.0.0.2")
        async with peers(a, b):
            b.register(rust_download(3 * PIECE))
            answer = await b.answer()
            (parent,) = answer.normal_task_response.candidate_parents
            assert parent.id == a.peer_id
            assert (parent.host.id, parent.host.ip, parent.host.port) == (a.host.id, "10.0.0.1", 4000)
            assert parent.host.download_port == 4000 and parent.task.id == TASK
            b.started()
            for n in range(3):
                b.piece_finished(n, parent.id)
            b.finished()
            assert await b.call_ended() == grpc.StatusCode.OK
            stat = await s.stub.StatPeer(
                scheduler_pb2.StatPeerRequest(host_id=b.host.id, task_id=TASK, peer_id=b.peer_id)
            )
            assert stat.state == "Succeeded"


@pytest.mark.parametrize(("temporary", "offered_again"), [(True, False), (False, True)])
async def test_a_temporary_piece_failure_blocks_the_parent_a_permanent_one_does_not(
    temporary: bool, offered_again: bool
) -> None:
    # The Rust client reports every failed piece with temporary=true
    # (C:dragonfly-client/src/resource/task.rs:1535-1550); Dragonfly's scheduler blocks that parent
    # for the peer then, and only then (G:scheduler/service/service_v2.go:1788-1814). A reschedule
    # with no candidate list schedules again and blocks nothing (:1546-1566).
    async with scheduler() as s:
        a = await back_to_source_peer(s.stub, "a", "10.0.0.1")
        b = await new_peer(s.stub, "b", "10.0.0.2")
        async with peers(a, b):
            b.register(rust_download(3 * PIECE))
            assert ids(await b.answer()) == [a.peer_id]
            b.started()
            b.piece_failed(1, a.peer_id, temporary=temporary)
            b.reschedule([], "more parents")
            again = await b.answer()
            assert (a.peer_id in ids(again)) is offered_again, again


async def test_reschedule_blocks_its_candidate_list_and_the_client_may_then_give_up() -> None:
    # Not all pieces came: the Rust client reschedules with the whole last candidate list
    # (C:dragonfly-client/src/resource/task.rs:918-948), which Dragonfly's scheduler blocks
    # (G:scheduler/service/service_v2.go:1546-1566): the next answer offers other parents. When it
    # gives up (max schedule count) it sends Failed and waits for the end (task.rs:730-760).
    async with scheduler() as s:
        a = await back_to_source_peer(s.stub, "a", "10.0.0.1")
        c = await new_peer(s.stub, "c", "10.0.0.3")
        b = await new_peer(s.stub, "b", "10.0.0.2")
        async with peers(a, b, c):
            c.register(rust_download(3 * PIECE))
            assert ids(await c.answer()) == [a.peer_id]
            c.started()
            b.register(rust_download(3 * PIECE))
            first = await b.answer()
            assert ids(first) == [c.peer_id]  # the default topology lines peers up
            b.started()
            b.reschedule(list(first.normal_task_response.candidate_parents), "not all pieces are downloaded")
            second = await b.answer()
            assert c.peer_id not in ids(second) and ids(second) == [a.peer_id]
            b.send(
                download_peer_failed_request=scheduler_pb2.DownloadPeerFailedRequest(
                    description="max schedule count exceeded"
                )
            )
            assert await b.call_ended() == grpc.StatusCode.OK
            stat = await s.stub.StatPeer(
                scheduler_pb2.StatPeerRequest(host_id=b.host.id, task_id=TASK, peer_id=b.peer_id)
            )
            assert stat.state == "Failed"


FINAL_REPORTS = {
    # G:scheduler/service/service_v2.go:216-260: each ends the call with OK.
    "download_peer_finished_request": scheduler_pb2.DownloadPeerFinishedRequest(),
    "download_peer_back_to_source_finished_request": scheduler_pb2.DownloadPeerBackToSourceFinishedRequest(),
    "download_peer_failed_request": scheduler_pb2.DownloadPeerFailedRequest(description="download failed"),
    "download_peer_back_to_source_failed_request": scheduler_pb2.DownloadPeerBackToSourceFailedRequest(
        description="origin answered 404"
    ),
}


@pytest.mark.parametrize("report", sorted(FINAL_REPORTS))
async def test_every_finished_or_failed_report_ends_the_call(report: str) -> None:
    # The Rust client's read loop then sees the end of the stream
    # (C:dragonfly-client/src/resource/task.rs:756, 809, 915, 1016, 1052, 1077, 1217).
    async with scheduler() as s:
        a = await new_peer(s.stub, "a", "10.0.0.1")
        async with peers(a):
            a.register(rust_download(3 * PIECE))
            assert await a.kind() == "need_back_to_source_response"
            a.back_to_source_started()
            a.send(**{report: FINAL_REPORTS[report]})
            assert await a.call_ended() == grpc.StatusCode.OK


async def test_a_piece_report_of_an_unknown_peer_keeps_the_call_open() -> None:
    # Dragonfly only logs a failed piece report (G:scheduler/service/service_v2.go:261-282).
    async with scheduler() as s:
        a = await new_peer(s.stub, "a", "10.0.0.1")
        async with peers(a):
            a.piece_finished(0, "10.0.0.9-gone-1")
            a.register(rust_download(3 * PIECE))
            assert await a.kind() == "need_back_to_source_response"


async def test_a_report_for_an_unknown_peer_ends_the_call_with_not_found() -> None:
    # G:scheduler/service/service_v2.go:1496-1500 ("peer %s not found"), :170-184 (the call ends with it).
    async with scheduler() as s:
        a = await new_peer(s.stub, "a", "10.0.0.1")
        async with peers(a):
            a.started()
            error = await a.error()
            assert (error.code(), error.details()) == (
                grpc.StatusCode.NOT_FOUND,
                "peer 10.0.0.1-a-1 not found",
            )


BTS_PIECE_FAILED = scheduler_pb2.DownloadPieceBackToSourceFailedRequest
# Messages breaking the rules Dragonfly's validating interceptor applies to every message of
# the stream (G:pkg/rpc/scheduler/server/server.go:71-84): INVALID_ARGUMENT ends the call, in the
# words of the generated validators (A:pkg/apis/scheduler/v2/scheduler.proto:28-175,
# A:pkg/apis/common/v2/common.proto:627-727, 829-857).
INVALID = {
    "no peer id": (
        {"peer_id": ""},
        {"register_peer_request": scheduler_pb2.RegisterPeerRequest(download=rust_download(3 * PIECE))},
        "invalid AnnouncePeerRequest.PeerId: value length must be at least 1 runes",
    ),
    "no request": ({}, {}, "invalid AnnouncePeerRequest.Request: value is required"),
    "relative url": (
        {},
        {
            "register_peer_request": scheduler_pb2.RegisterPeerRequest(
                download=common_pb2.Download(url="data/x")
            )
        },
        "invalid AnnouncePeerRequest.RegisterPeerRequest: embedded message failed validation | caused by: "
        "invalid RegisterPeerRequest.Download: embedded message failed validation | caused by: "
        "invalid Download.Url: value must be absolute",
    ),
    "piece length below 4 MiB": (
        {},
        {
            "register_peer_request": scheduler_pb2.RegisterPeerRequest(
                download=common_pb2.Download(url=URL, piece_length=MiB)
            )
        },
        "invalid Download.PieceLength: value must be inside range [4194304, 67108864]",
    ),
    "digest of the wrong form": (
        {},
        {
            "register_peer_request": scheduler_pb2.RegisterPeerRequest(
                download=common_pb2.Download(url=URL, digest="sha256:abc")
            )
        },
        "invalid Download.Digest: value does not match regex pattern",
    ),
    "piece failure without parent": (
        {},
        {"download_piece_failed_request": scheduler_pb2.DownloadPieceFailedRequest(piece_number=1)},
        "invalid DownloadPieceFailedRequest.ParentId: value length must be at least 1 runes",
    ),
    "back-to-source piece failure without its error": (
        {},
        {"download_piece_back_to_source_failed_request": BTS_PIECE_FAILED(piece_number=1)},
        "invalid DownloadPieceBackToSourceFailedRequest.Response: value is required",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
async def test_messages_breaking_dragonflys_rules_end_the_call_with_invalid_argument(case: str) -> None:
    ids_override, request, words = INVALID[case]
    async with scheduler() as s:
        a = await new_peer(s.stub, "a", "10.0.0.1")
        async with peers(a):
            fields = {"host_id": a.host.id, "task_id": TASK, "peer_id": a.peer_id, **ids_override}
            a._requests.put_nowait(scheduler_pb2.AnnouncePeerRequest(**fields, **request))
            error = await a.error()
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert words in error.details()


async def test_a_back_to_source_piece_failure_as_rust_sends_it_is_valid() -> None:
    # C:dragonfly-client/src/resource/task.rs:1826-1870: with a Backend or Unknown error detail.
    async with scheduler() as s:
        a = await back_to_source_peer(s.stub, "a", "10.0.0.1")
        async with peers(a):
            a.send(
                download_piece_back_to_source_failed_request=BTS_PIECE_FAILED(
                    piece_number=1, unknown=errordetails_pb2.Unknown(message="connection reset")
                )
            )
            a.send(
                download_peer_back_to_source_failed_request=scheduler_pb2.DownloadPeerBackToSourceFailedRequest(
                    description="connection reset"
                )
            )
            assert await a.call_ended() == grpc.StatusCode.OK


# -- DeletePeer, DeleteHost, DeleteTask on unknown IDs -------------------------------------------


async def test_deletes_of_unknown_ids_answer_as_dragonfly() -> None:
    async with scheduler() as s:
        host = rust_host("a", "10.0.0.1")
        # DeletePeer: always OK (G:scheduler/service/service_v2.go:446-452).
        await s.stub.DeletePeer(
            scheduler_pb2.DeletePeerRequest(host_id=host.id, task_id=TASK, peer_id="10.0.0.1-a-1"),
            timeout=STEP,
        )
        # DeleteHost, and DeleteTask from an unknown host: NOT_FOUND "host %s not found"
        # (:519-545, :1210-1221).
        for call in (
            s.stub.DeleteHost(scheduler_pb2.DeleteHostRequest(host_id=host.id), timeout=STEP),
            s.stub.DeleteTask(scheduler_pb2.DeleteTaskRequest(host_id=host.id, task_id=TASK), timeout=STEP),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call
            assert (e.value.code(), e.value.details()) == (
                grpc.StatusCode.NOT_FOUND,
                f"host {host.id} not found",
            )
        # DeleteTask of an unknown task from a known host: OK.
        await announce(s.stub, host)
        await s.stub.DeleteTask(scheduler_pb2.DeleteTaskRequest(host_id=host.id, task_id=TASK), timeout=STEP)
        await s.stub.DeleteHost(scheduler_pb2.DeleteHostRequest(host_id=host.id), timeout=STEP)


# -- every scheduler.v2 RPC ------------------------------------------------------------------------

H, T, P = "10.0.0.1-a", TASK, "10.0.0.1-a-1"
NO_REDIS = (grpc.StatusCode.FAILED_PRECONDITION, "redis is not enabled")
OK_EMPTY = (grpc.StatusCode.OK, "")


def by_peer(cls: Any) -> Any:
    return cls(host_id=H, task_id=T, peer_id=P)


def by_task(cls: Any) -> Any:
    return cls(host_id=H, task_id=T)


def not_found(what: str) -> tuple[grpc.StatusCode, str]:
    return grpc.StatusCode.NOT_FOUND, f"{what} not found"


sp = scheduler_pb2
# RPC -> (request, (code, details)) for the unary RPCs of dragonfly-api 2.3.8, with IDs nobody
# announced. G: is scheduler/service/service_v2.go unless said otherwise.
UNARY: dict[str, tuple[Any, tuple[grpc.StatusCode, str] | None]] = {
    "StatPeer": (by_peer(sp.StatPeerRequest), not_found(f"peer {P}")),  # G:294-299
    "DeletePeer": (by_peer(sp.DeletePeerRequest), OK_EMPTY),  # G:446-452
    "StatTask": (by_task(sp.StatTaskRequest), not_found(f"task {T}")),  # G:455-464
    "DeleteTask": (by_task(sp.DeleteTaskRequest), not_found(f"host {H}")),  # G:519-528
    "AnnounceHost": (sp.AnnounceHostRequest(host=rust_host("b", "10.0.0.2")), OK_EMPTY),  # G:548-
    "ListHosts": (sp.ListHostsRequest(), OK_EMPTY),  # G:1096-
    "DeleteHost": (sp.DeleteHostRequest(host_id=H), not_found(f"host {H}")),  # G:1210-1221
    # Cache tasks: stubs (G:scheduler/rpcserver/scheduler_server_v2.go:178-199).
    "StatCachePeer": (by_peer(sp.StatCachePeerRequest), OK_EMPTY),
    "DeleteCachePeer": (by_peer(sp.DeleteCachePeerRequest), OK_EMPTY),
    "StatCacheTask": (by_task(sp.StatCacheTaskRequest), OK_EMPTY),
    "DeleteCacheTask": (by_task(sp.DeleteCacheTaskRequest), OK_EMPTY),
    # Persistent tasks without redis (G:2708, 2830, 2882, 2937, 3125, 3167, 3208).
    "StatPersistentPeer": (by_peer(sp.StatPersistentPeerRequest), NO_REDIS),
    "DeletePersistentPeer": (by_peer(sp.DeletePersistentPeerRequest), NO_REDIS),
    "UploadPersistentTaskStarted": (by_peer(sp.UploadPersistentTaskStartedRequest), NO_REDIS),
    "UploadPersistentTaskFinished": (by_peer(sp.UploadPersistentTaskFinishedRequest), NO_REDIS),
    "UploadPersistentTaskFailed": (by_peer(sp.UploadPersistentTaskFailedRequest), NO_REDIS),
    "StatPersistentTask": (by_task(sp.StatPersistentTaskRequest), NO_REDIS),
    "DeletePersistentTask": (by_task(sp.DeletePersistentTaskRequest), NO_REDIS),
    # Persistent cache tasks (dfcache) and preheat are Damselfly's own implementations: they
    # answer, in their own words (None: any code but UNIMPLEMENTED).
    "StatPersistentCachePeer": (by_peer(sp.StatPersistentCachePeerRequest), None),
    "DeletePersistentCachePeer": (by_peer(sp.DeletePersistentCachePeerRequest), None),
    "UploadPersistentCacheTaskStarted": (by_peer(sp.UploadPersistentCacheTaskStartedRequest), None),
    "UploadPersistentCacheTaskFinished": (by_peer(sp.UploadPersistentCacheTaskFinishedRequest), None),
    "UploadPersistentCacheTaskFailed": (by_peer(sp.UploadPersistentCacheTaskFailedRequest), None),
    "StatPersistentCacheTask": (by_task(sp.StatPersistentCacheTaskRequest), None),
    "DeletePersistentCacheTask": (by_task(sp.DeletePersistentCacheTaskRequest), None),
    "PreheatFile": (sp.PreheatFileRequest(), None),
    "PreheatImage": (sp.PreheatImageRequest(), None),
    "StatFile": (sp.StatFileRequest(url=URL), None),
    "StatImage": (sp.StatImageRequest(), None),
}
STREAMS = ("AnnouncePeer", "AnnounceCachePeer", "AnnouncePersistentPeer", "AnnouncePersistentCachePeer")


async def test_every_unary_rpc_answers_as_dragonflys_scheduler() -> None:
    methods = {name for name in dir(scheduler_pb2_grpc.SchedulerServicer) if name[:1].isupper()}
    assert len(methods) == 33 and methods == set(UNARY) | set(STREAMS)  # the table covers the API
    wrong = []
    async with scheduler() as s:
        for rpc, (request, expected) in UNARY.items():
            try:
                await getattr(s.stub, rpc)(request, timeout=STEP)
                got = OK_EMPTY
            except grpc.aio.AioRpcError as e:
                got = (e.code(), e.details() or "")
            if expected is None:
                if got[0] == grpc.StatusCode.UNIMPLEMENTED:
                    wrong.append((rpc, got, "anything but UNIMPLEMENTED"))
            elif got != expected:
                wrong.append((rpc, got, expected))
    assert wrong == []


@pytest.mark.parametrize(
    "rpc", ["StatCachePeer", "DeleteCacheTask", "StatPersistentTask", "DeletePeer", "StatPeer", "DeleteHost"]
)
async def test_unary_requests_without_ids_are_invalid_argument_first(rpc: str) -> None:
    # The validator runs before the handler, stub or not (A:pkg/apis/scheduler/v2/scheduler.proto).
    request, _ = UNARY[rpc]
    empty = type(request)()
    async with scheduler() as s:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await getattr(s.stub, rpc)(empty, timeout=STEP)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (
            e.value.details()
            == f"invalid {type(request).__name__}.HostId: value length must be at least 1 runes"
        )


async def test_every_stream_rpc_answers_as_dragonflys_scheduler() -> None:
    async with scheduler() as s:
        # AnnouncePeer from a host nobody announced (G:scheduler/service/service_v2.go:1839-1845).
        peer = RustPeer(s.stub, rust_host("a", "10.0.0.1"), P)
        peer.register(rust_download(3 * PIECE))
        error = await peer.error()
        assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, f"host {H} not found")
        peer.close()
        # AnnounceCachePeer: the stub returns nil, the call ends with OK and no message
        # (G:scheduler/rpcserver/scheduler_server_v2.go:170-172).
        call = s.stub.AnnounceCachePeer(iter(()))
        assert await asyncio.wait_for(call.read(), STEP) is grpc.aio.EOF
        assert await asyncio.wait_for(call.code(), STEP) == grpc.StatusCode.OK
        # AnnouncePersistentPeer: refused before any message (G:scheduler/service/service_v2.go:1969-1972).
        call = s.stub.AnnouncePersistentPeer(iter(()))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await asyncio.wait_for(call.read(), STEP)
        assert (e.value.code(), e.value.details()) == NO_REDIS
        # AnnouncePersistentCachePeer: Damselfly's own (dfcache); a host nobody announced is refused.
        request = scheduler_pb2.AnnouncePersistentCachePeerRequest(
            host_id=H,
            task_id=T,
            peer_id=P,
            register_persistent_cache_peer_request=scheduler_pb2.RegisterPersistentCachePeerRequest(),
        )
        call = s.stub.AnnouncePersistentCachePeer(iter([request]))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await asyncio.wait_for(call.read(), STEP)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
