"""The daemon's side of the scheduler dialogue where Damselfly's and Dragonfly's schedulers differ:
which one is there (health), the restore, reschedules, and the messages' fields."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from damselfly.api import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from damselfly.api.convert import answer_from_pb, candidate_from_pb, piece_to_pb
from damselfly.api.health import DAMSELFLY_EXTENSIONS
from damselfly.daemon.scheduler_client import SchedulerLink
from damselfly.domain import DownloadSpec, MetadataOnly, PieceInfo
from damselfly.errors import SchedulerError

# ---------------------------------------------------------------- messages


def test_every_piece_carries_cost_and_created_at() -> None:
    # Dragonfly's scheduler requires both (api pkg/apis/common/v2/common.proto:854-856).
    pb = piece_to_pb(PieceInfo(number=2, offset=8, length=4, digest="crc32:7"), now=1000.0)
    assert pb.HasField("cost") and pb.HasField("created_at")
    assert pb.cost.ToNanoseconds() == 0 and pb.created_at.ToNanoseconds() == 1000 * 10**9
    pb = piece_to_pb(PieceInfo(number=2, offset=8, length=4, cost_s=0.5), now=1000.0)
    assert pb.cost.ToNanoseconds() == 500_000_000 and pb.created_at.ToNanoseconds() == 999_500_000_000


def _offered(content_length: int, piece_count: int) -> common_pb2.Peer:
    peer = common_pb2.Peer(id="10.0.0.2-b-1", state="Succeeded")
    peer.cost.FromNanoseconds(7)
    peer.task.id, peer.task.url = "t" * 64, "http://o/x"
    peer.task.content_length, peer.task.piece_count = content_length, piece_count
    peer.host.id, peer.host.ip, peer.host.port, peer.host.download_port = "10.0.0.2-b", "10.0.0.2", 4000, 4005
    return peer


def test_a_candidate_of_unknown_length_has_none_and_keeps_its_message() -> None:
    # The Go scheduler sends uint64(-1) for a task length it does not know (scheduling.go:1091).
    c = candidate_from_pb(_offered(2**64 - 1, 2**32 - 1))
    assert c.content_length is None and c.piece_count is None
    assert common_pb2.Peer.FromString(c.wire) == _offered(2**64 - 1, 2**32 - 1)
    known = candidate_from_pb(_offered(10 << 20, 3))
    assert (known.content_length, known.piece_count) == (10 << 20, 3)


def test_a_metadata_only_response_is_an_answer() -> None:
    pb = scheduler_pb2.AnnouncePeerResponse(metadata_only_response=scheduler_pb2.MetadataOnlyResponse())
    assert answer_from_pb(pb) == MetadataOnly()


# ---------------------------------------------------------------- a scheduler in-process


@dataclass
class Scheduler(scheduler_pb2_grpc.SchedulerServicer):
    """Records each AnnouncePeer request; ``answer`` picks what to write for one (None: nothing)."""

    answer: Callable[[scheduler_pb2.AnnouncePeerRequest], scheduler_pb2.AnnouncePeerResponse | None]
    requests: list[scheduler_pb2.AnnouncePeerRequest] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    # Set: after the client's half-close, keep the call open until ``release`` is set.
    linger: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def AnnouncePeer(self, request_iterator, context):  # type: ignore[no-untyped-def]
        try:
            while (req := await context.read()) is not grpc.aio.EOF:
                self.requests.append(req)
                answer = self.answer(req)
                if answer is not None:
                    await context.write(answer)
            self.ended.set()
            if self.linger:
                await self.release.wait()
        finally:
            self.ended.set()

    def kinds(self) -> list[str]:
        return [str(r.WhichOneof("request")) for r in self.requests]


@dataclass
class Server:
    port: int
    health: HealthServicer
    scheduler: Scheduler
    checks: list[str]


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    checks: list[str] = []

    class CountingHealth(HealthServicer):
        async def Check(self, request, context):  # type: ignore[no-untyped-def]
            checks.append(request.service)
            return await super().Check(request, context)

    srv = grpc.aio.server()
    health = CountingHealth()
    health_pb2_grpc.add_HealthServicer_to_server(health, srv)
    scheduler = Scheduler(answer=lambda req: None)
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(scheduler, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        yield Server(port, health, scheduler, checks)
    finally:
        await srv.stop(grace=None)


@pytest.fixture
async def client(server: Server) -> AsyncIterator[SchedulerLink]:
    c = SchedulerLink(f"127.0.0.1:{server.port}")
    try:
        yield c
    finally:
        await c.close()


# ---------------------------------------------------------------- which scheduler is there


async def test_a_damselfly_scheduler_is_asked_once_even_by_many_at_once(server: Server, client) -> None:
    await server.health.set(DAMSELFLY_EXTENSIONS, health_pb2.HealthCheckResponse.SERVING)
    answers = await asyncio.gather(*(client.speaks_extensions() for _ in range(5)))
    assert answers == [True] * 5 and await client.speaks_extensions()
    assert server.checks == [DAMSELFLY_EXTENSIONS]


async def test_a_scheduler_that_does_not_know_the_name_is_dragonflys(server: Server, client) -> None:
    assert not await client.speaks_extensions()
    assert not await client.speaks_extensions()
    assert server.checks == [DAMSELFLY_EXTENSIONS]  # NOT_FOUND is an answer: kept


async def test_with_extensions_off_nothing_is_asked(server: Server) -> None:
    await server.health.set(DAMSELFLY_EXTENSIONS, health_pb2.HealthCheckResponse.SERVING)
    c = SchedulerLink(f"127.0.0.1:{server.port}", extensions=False)
    try:
        assert not await c.speaks_extensions()
    finally:
        await c.close()
    assert server.checks == []


async def test_a_scheduler_that_cannot_be_asked_is_asked_again_later() -> None:
    c = SchedulerLink("127.0.0.1:9")  # nothing listens there
    try:
        assert not await c.speaks_extensions()
        assert c._speaks is None  # not remembered: the next download asks again
    finally:
        await c.close()


# ---------------------------------------------------------------- restore


SPEC = DownloadSpec(url="http://o/x", request_header={"Authorization": "secret"}, need_back_to_source=True)
METADATA_ONLY = scheduler_pb2.AnnouncePeerResponse(
    metadata_only_response=scheduler_pb2.MetadataOnlyResponse()
)


def _metadata_only(req: scheduler_pb2.AnnouncePeerRequest) -> scheduler_pb2.AnnouncePeerResponse | None:
    return METADATA_ONLY if req.WhichOneof("request") == "register_peer_request" else None


async def _restore(client: SchedulerLink, answer_timeout: float | None) -> None:
    stream = client.peer_stream("h", "t" * 64, "p")
    try:
        await stream.restore(SPEC, 10 << 20, 4 << 20, 3, answer_timeout=answer_timeout)
    finally:
        await stream.close()


async def test_a_restore_is_a_metadata_only_register_then_started_and_finished(server, client) -> None:
    server.scheduler.answer = _metadata_only
    await _restore(client, answer_timeout=30)
    await server.scheduler.ended.wait()
    assert server.scheduler.kinds() == [
        "register_peer_request",
        "download_peer_started_request",
        "download_peer_finished_request",
    ]
    d = server.scheduler.requests[0].register_peer_request.download
    assert d.metadata_only and not d.need_back_to_source and not d.request_header
    assert (d.actual_content_length, d.actual_piece_length, d.actual_piece_count) == (10 << 20, 4 << 20, 3)


async def test_a_restore_says_nothing_more_until_the_metadata_only_answer(server: Server, client) -> None:
    # A scheduler that never answers: the restore gives up, having sent the register only.
    with pytest.raises(SchedulerError, match="did not answer"):
        await _restore(client, answer_timeout=0.05)
    await server.scheduler.ended.wait()
    assert server.scheduler.kinds() == ["register_peer_request"]


async def test_a_restore_answered_otherwise_is_an_error(server: Server, client) -> None:
    server.scheduler.answer = lambda req: scheduler_pb2.AnnouncePeerResponse(
        need_back_to_source_response=scheduler_pb2.NeedBackToSourceResponse()
    )
    with pytest.raises(SchedulerError, match="metadata-only"):
        await _restore(client, answer_timeout=30)
    await server.scheduler.ended.wait()
    assert server.scheduler.kinds() == ["register_peer_request"]


async def test_toward_a_damselfly_scheduler_the_restore_does_not_wait(server: Server, client) -> None:
    await _restore(client, answer_timeout=None)  # the scheduler never answers: nothing waits for it
    await server.scheduler.ended.wait()
    assert server.scheduler.kinds() == [
        "register_peer_request",
        "download_peer_started_request",
        "download_peer_finished_request",
    ]


# ---------------------------------------------------------------- register, reschedule


async def test_a_register_carries_the_size_when_given(server: Server, client) -> None:
    stream = client.peer_stream("h", "t" * 64, "p")
    stream.register(SPEC)
    stream.register(SPEC, content_length=9 << 20, piece_length=4 << 20)
    await stream.close()
    await server.scheduler.ended.wait()
    plain, sized = (r.register_peer_request.download for r in server.scheduler.requests)
    assert not plain.HasField("actual_content_length") and not plain.HasField("actual_piece_count")
    assert (sized.actual_content_length, sized.actual_piece_length, sized.actual_piece_count) == (
        9 << 20, 4 << 20, 3,
    )  # fmt: skip
    assert "Authorization" not in sized.request_header


async def test_a_reschedule_sends_back_each_parent_as_offered(server: Server, client) -> None:
    offered = _offered(10 << 20, 3)
    parent = candidate_from_pb(offered)
    stream = client.peer_stream("h", "t" * 64, "p")
    stream.reschedule([parent], "parents cannot finish the task")
    await stream.close()
    await server.scheduler.ended.wait()
    (req,) = server.scheduler.requests
    assert list(req.reschedule_peer_request.candidate_parents) == [offered]


async def test_closing_a_stream_does_not_swallow_the_callers_cancel(server: Server, client) -> None:
    """A daemon stopping cancels its announce loop while a stream closes; the cancel must reach
    the loop, or the loop runs on and the daemon never stops."""
    server.scheduler.linger = True  # the scheduler keeps its side open after the half-close
    stream = client.peer_stream("h", "t" * 64, "p")
    stream.register(SPEC)
    closing = asyncio.ensure_future(stream.close())
    await server.scheduler.ended.wait()  # half-closed: close() now waits for the scheduler's end
    closing.cancel()
    try:
        with pytest.raises(asyncio.CancelledError):
            await closing
    finally:
        server.scheduler.release.set()
