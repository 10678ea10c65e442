"""A Damselfly daemon against Dragonfly's Go scheduler, played message by message.

The scheduler here is a fake ``scheduler.v2.Scheduler`` in-process that answers
as the Go scheduler does (docs/INTEROP.md §2.2; G = dragonflyoss/dragonfly
``scheduler/service/service_v2.go`` at 66db456409d6) and runs the
protoc-gen-validate rules Go's server runs on every request (docs/INTEROP.md
§2.0; A = dragonflyoss/api ``pkg/apis/{common,scheduler}/v2/*.proto`` at
9e1d31ac6323), ending the stream with INVALID_ARGUMENT on a violation, as Go's
validator interceptor does. Its health service knows ``""`` only, so
``damselfly.v1.Extensions`` is NOT_FOUND there, as on a Dragonfly server.

Against it run real Damselfly daemons in-process (tests/swarm/harness.py), each
downloading from a real HTTP origin on loopback that records what it is asked.
The sequences asserted are the ones Dragonfly's Rust client sends
(docs/INTEROP.md §3.4-3.5; C = dragonflyoss/client at ff17c0b771f6).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
from aiohttp import web
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from damselfly.api import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from damselfly.daemon.download.tasks import task_id_for
from damselfly.domain import DownloadSpec
from damselfly.pieces import piece_count, piece_length_for
from damselfly.units import MiB
from swarm.harness import Swarm, corrupt, sha256_file

# ---------------------------------------------------------------- the PGV rules (docs/INTEROP.md §2.0)

# A:pkg/apis/common/v2/common.proto:248-251 (Task.digest), :631-634 (Download.digest), :842-845 (Piece.digest)
_DIGEST = re.compile(
    r"^(md5:[a-fA-F0-9]{32}|sha1:[a-fA-F0-9]{40}|sha256:[a-fA-F0-9]{64}|sha512:[a-fA-F0-9]{128}"
    r"|blake3:[a-fA-F0-9]{64}|crc32:[a-fA-F0-9]+)$"
)
_PRIORITIES = set(common_pb2.Priority.values())
_TASK_TYPES = set(common_pb2.TaskType.values())


def _uri(value: str) -> bool:
    parts = urlsplit(value)
    return bool(parts.scheme) and bool(parts.netloc or parts.path)


def _ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def host_violations(h: common_pb2.Host) -> list[str]:
    """A:pkg/apis/common/v2/common.proto:408-427 (Host)."""
    bad = []
    if not h.id:
        bad.append("host.id empty")
    if h.type > 3:
        bad.append("host.type > 3")
    if not h.hostname:
        bad.append("host.hostname empty")
    if not _ip(h.ip):
        bad.append(f"host.ip {h.ip!r} not an IP")
    for name in ("port", "download_port"):
        if not 1024 <= getattr(h, name) < 65535:
            bad.append(f"host.{name} {getattr(h, name)} outside [1024, 65535)")
    return bad


def piece_violations(p: common_pb2.Piece) -> list[str]:
    """A:pkg/apis/common/v2/common.proto:829-857 (Piece): cost and created_at required."""
    bad = []
    if p.HasField("parent_id") and not p.parent_id:
        pass  # ignore_empty
    if p.digest and not _DIGEST.match(p.digest):
        bad.append(f"piece.digest {p.digest!r}")
    if not p.HasField("cost"):
        bad.append("piece.cost required")
    if not p.HasField("created_at"):
        bad.append("piece.created_at required")
    return bad


def task_violations(t: common_pb2.Task) -> list[str]:
    """A:pkg/apis/common/v2/common.proto:235-285 (Task)."""
    bad = []
    if not t.id:
        bad.append("task.id empty")
    if t.type not in _TASK_TYPES:
        bad.append("task.type undefined")
    if not _uri(t.url):
        bad.append(f"task.url {t.url!r} not a URI")
    if t.HasField("digest") and t.digest and not _DIGEST.match(t.digest):
        bad.append("task.digest")
    if not t.state:
        bad.append("task.state empty")
    for ts in ("created_at", "updated_at"):
        if not t.HasField(ts):
            bad.append(f"task.{ts} required")
    return bad


def peer_violations(p: common_pb2.Peer) -> list[str]:
    """A:pkg/apis/common/v2/common.proto:123-151 (Peer): a full peer, task and host included."""
    bad = []
    if not p.id:
        bad.append("peer.id empty")
    if p.priority not in _PRIORITIES:
        bad.append("peer.priority undefined")
    if not p.state:
        bad.append("peer.state empty")
    for name in ("cost", "created_at", "updated_at", "task", "host"):
        if not p.HasField(name):
            bad.append(f"peer.{name} required")
    if p.HasField("task"):
        bad += task_violations(p.task)
    if p.HasField("host"):
        bad += host_violations(p.host)
    return bad


def download_violations(d: common_pb2.Download) -> list[str]:
    """A:pkg/apis/common/v2/common.proto:627-705 (Download)."""
    bad = []
    if not _uri(d.url):
        bad.append(f"download.url {d.url!r} not a URI")
    if d.HasField("digest") and d.digest and not _DIGEST.match(d.digest):
        bad.append("download.digest")
    if d.type not in _TASK_TYPES or d.priority not in _PRIORITIES:
        bad.append("download.type/priority undefined")
    if d.HasField("piece_length") and d.piece_length and not 4 * MiB <= d.piece_length <= 64 * MiB:
        bad.append(f"download.piece_length {d.piece_length} outside [4 MiB, 64 MiB]")
    if d.HasField("remote_ip") and d.remote_ip and not _ip(d.remote_ip):
        bad.append("download.remote_ip")
    return bad


def request_violations(r: scheduler_pb2.AnnouncePeerRequest) -> list[str]:
    """A:pkg/apis/scheduler/v2/scheduler.proto:28-155 (AnnouncePeerRequest and its requests)."""
    bad = [f"{n} empty" for n in ("host_id", "task_id", "peer_id") if not getattr(r, n)]
    kind = r.WhichOneof("request")
    if kind is None:
        return [*bad, "request oneof required"]
    msg = getattr(r, kind)
    if kind == "register_peer_request":
        if not msg.HasField("download"):
            bad.append("download required")
        else:
            bad += download_violations(msg.download)
    elif kind in ("download_piece_finished_request", "download_piece_back_to_source_finished_request"):
        bad += ["piece required"] if not msg.HasField("piece") else piece_violations(msg.piece)
    elif kind == "download_piece_failed_request":
        if not msg.parent_id:
            bad.append("parent_id empty")
    elif kind == "download_piece_back_to_source_failed_request":
        if msg.WhichOneof("response") is None:
            bad.append("backend/unknown oneof required")
    elif kind == "reschedule_peer_request":
        for p in msg.candidate_parents:
            bad += peer_violations(p)
    return bad


# ---------------------------------------------------------------- the Go scheduler, played


@dataclass
class Call:
    """One AnnouncePeer call as the scheduler saw it."""

    requests: list[scheduler_pb2.AnnouncePeerRequest] = field(default_factory=list)
    answers: list[scheduler_pb2.AnnouncePeerResponse] = field(default_factory=list)
    ended: str = ""  # "finished" (the server returned after Finished/Failed), "eof", or "violation: ..."
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def kinds(self) -> list[str]:
        return [str(r.WhichOneof("request")) for r in self.requests]

    def of(self, kind: str) -> list[scheduler_pb2.AnnouncePeerRequest]:
        return [r for r in self.requests if r.WhichOneof("request") == kind]

    @property
    def download(self) -> common_pb2.Download:
        return self.requests[0].register_peer_request.download


# After these the Go scheduler returns from AnnouncePeer: the call ends OK (G:service_v2.go:216-260).
ENDING = {
    "download_peer_finished_request",
    "download_peer_back_to_source_finished_request",
    "download_peer_failed_request",
    "download_peer_back_to_source_failed_request",
}

Answer = Callable[[Call], scheduler_pb2.AnnouncePeerResponse]


def need_back_to_source(_: Call) -> scheduler_pb2.AnnouncePeerResponse:
    # What Go answers a peer with no candidate parent after retryBackToSourceLimit rounds
    # (G:scheduler/scheduling/scheduling.go:113-243), here without the ~2 s of rounds.
    return scheduler_pb2.AnnouncePeerResponse(
        need_back_to_source_response=scheduler_pb2.NeedBackToSourceResponse(
            description="scheduling exceeded RetryBackToSourceLimit"
        )
    )


class GoScheduler(scheduler_pb2_grpc.SchedulerServicer):
    """AnnounceHost, ListHosts, DeleteHost and AnnouncePeer as the Go scheduler serves them.

    ``on_register`` answers a register that is not metadata-only and not of an empty
    task; ``on_reschedule`` answers a ReschedulePeerRequest. Tasks are sized by the
    first register's ``actual_*`` (G:service_v2.go:1839-1890).
    """

    def __init__(self) -> None:
        self.hosts: dict[str, common_pb2.Host] = {}
        self.tasks: dict[str, tuple[int, int, int]] = {}  # id -> content length, piece length, count
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self.on_register: Answer = need_back_to_source
        self.on_reschedule: Answer = need_back_to_source
        self.events: list[tuple[str, ...]] = []  # shared with the origin: the order of what happened

    async def AnnounceHost(self, request, context):  # type: ignore[no-untyped-def]
        bad = ["host required"] if not request.HasField("host") else host_violations(request.host)
        if bad:
            self.violations += bad
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(bad))
        self.hosts[request.host.id] = request.host
        return empty_pb2.Empty()

    async def ListHosts(self, request, context):  # type: ignore[no-untyped-def]
        return scheduler_pb2.ListHostsResponse(hosts=list(self.hosts.values()))

    async def DeleteHost(self, request, context):  # type: ignore[no-untyped-def]
        if self.hosts.pop(request.host_id, None) is None:  # G:service_v2.go:1210-1221
            await context.abort(grpc.StatusCode.NOT_FOUND, f"host {request.host_id} not found")
        return empty_pb2.Empty()

    async def AnnouncePeer(self, request_iterator, context):  # type: ignore[no-untyped-def]
        call = Call()
        self.calls.append(call)
        try:
            # Each request is handled before the next is read (G:service_v2.go:121-291).
            while True:
                req = await context.read()
                if req is grpc.aio.EOF:
                    call.ended = "eof"
                    return
                call.requests.append(req)
                bad = request_violations(req)
                if bad:
                    call.ended = "violation: " + "; ".join(bad)
                    self.violations += bad
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(bad))
                kind = req.WhichOneof("request")
                answer = None
                if kind == "register_peer_request":
                    answer = self._register(req, call)
                elif kind == "reschedule_peer_request":
                    answer = self.on_reschedule(call)
                if answer is not None:
                    call.answers.append(answer)
                    await context.write(answer)
                if kind in ENDING:
                    call.ended = "finished"
                    return
        finally:
            call.done.set()

    def _register(
        self, req: scheduler_pb2.AnnouncePeerRequest, call: Call
    ) -> scheduler_pb2.AnnouncePeerResponse:
        d = req.register_peer_request.download
        self.events.append(("register", req.peer_id))
        # A new task takes the register's actual_* sizes, unset ones read as 0
        # (G:service_v2.go:1851,1865-1866); an existing one keeps its own.
        sizes = (d.actual_content_length, d.actual_piece_length, d.actual_piece_count)
        self.tasks.setdefault(req.task_id, sizes)
        if d.metadata_only:  # G:service_v2.go:1317-1359
            return scheduler_pb2.AnnouncePeerResponse(
                metadata_only_response=scheduler_pb2.MetadataOnlyResponse()
            )
        if self.tasks[req.task_id][0] == 0:  # size scope EMPTY (G:scheduler/resource/standard/task.go:601)
            return scheduler_pb2.AnnouncePeerResponse(empty_task_response=scheduler_pb2.EmptyTaskResponse())
        return self.on_register(call)

    def offer(self, call: Call) -> common_pb2.Peer:
        """The peer of ``call`` as a candidate parent, built as Go builds one
        (constructSuccessNormalTaskResponse, G:scheduler/scheduling/scheduling.go:1059-1186)."""
        first = call.requests[0]
        length, _, count = self.tasks[first.task_id]
        now = time.time()
        peer = common_pb2.Peer(id=first.peer_id, priority=common_pb2.LEVEL0, state="Succeeded")
        peer.cost.FromNanoseconds(250_000_000)
        peer.created_at.FromNanoseconds(int((now - 5) * 1e9))
        peer.updated_at.FromNanoseconds(int(now * 1e9))
        task = peer.task
        task.id, task.type, task.url = first.task_id, common_pb2.STANDARD, call.download.url
        task.tag, task.application = "", ""
        task.content_length, task.piece_count = length, count
        task.size_scope, task.state, task.peer_count = common_pb2.NORMAL, "Succeeded", 1
        task.created_at.FromNanoseconds(int((now - 5) * 1e9))
        task.updated_at.FromNanoseconds(int(now * 1e9))
        peer.host.CopyFrom(self.hosts[first.host_id])
        return peer


def normal_task(*parents: common_pb2.Peer) -> scheduler_pb2.AnnouncePeerResponse:
    return scheduler_pb2.AnnouncePeerResponse(
        normal_task_response=scheduler_pb2.NormalTaskResponse(candidate_parents=list(parents))
    )


# ---------------------------------------------------------------- the origin


class Origin:
    """Serves a directory over HTTP (Range, HEAD) and records each request's method and Range."""

    def __init__(self, root: Path, events: list[tuple[str, ...]]) -> None:
        self.root = root
        self.events = events
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{name}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.events.append(("origin", request.method, request.headers.get("Range", "")))
        return web.FileResponse(self.root / request.match_info["name"])

    def file(self, name: str, size: int) -> tuple[str, Path]:
        path = self.root / name
        path.write_bytes(__import__("random").Random(size).randbytes(size))
        return f"http://127.0.0.1:{self.port}/{name}", path

    def asked(self, name: str = "") -> list[tuple[str, ...]]:
        return [e for e in self.events if e[0] == "origin"]


# ---------------------------------------------------------------- the world


@dataclass
class World:
    scheduler: GoScheduler
    swarm: Swarm
    origin: Origin
    tmp: Path

    def calls_of(self, daemon: str) -> list[Call]:
        host_id = self.swarm.daemons[daemon].host_id
        return [c for c in self.scheduler.calls if c.requests and c.requests[0].host_id == host_id]

    async def ended(self, call_index: int) -> Call:
        """The scheduler's ``call_index``-th AnnouncePeer call, once it has ended."""
        for _ in range(1000):
            if len(self.scheduler.calls) > call_index:
                break
            await asyncio.sleep(0.01)
        call = self.scheduler.calls[call_index]
        await asyncio.wait_for(call.done.wait(), 30)
        return call


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    scheduler = GoScheduler()
    server = grpc.aio.server()
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(scheduler, server)
    health = HealthServicer()  # G:pkg/rpc/scheduler/server/server.go:89-99: "" only
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    (tmp_path / "origin").mkdir()
    origin = Origin(tmp_path / "origin", scheduler.events)
    await origin.start()
    swarm = Swarm(tmp_path)
    swarm.scheduler_port = port
    try:
        yield World(scheduler, swarm, origin, tmp_path)
    finally:
        await swarm.close()
        await origin.close()
        await server.stop(grace=None)


SIZE = 9 * MiB  # 3 pieces of 4 MiB; larger than 4 MiB, which Dragonfly's client would not even register
PIECE = piece_length_for(SIZE)
PIECES = piece_count(SIZE, PIECE)


def assert_register_has_the_origins_size(call: Call) -> None:
    # C:dragonfly-client/src/grpc/dfdaemon_download.rs:441-443: every Rust register carries all three.
    d = call.download
    assert (d.HasField("actual_content_length"), d.HasField("actual_piece_length")) == (True, True)
    assert (d.actual_content_length, d.actual_piece_length, d.actual_piece_count) == (SIZE, PIECE, PIECES)
    assert not d.metadata_only


async def test_a_download_learns_the_size_from_the_origin_registers_it_and_goes_back_to_source(
    world: World,
) -> None:
    url, src = world.origin.file("a.bin", SIZE)
    await world.swarm.add_daemon("a")
    result = await world.swarm.download("a", url, world.tmp / "out")

    assert result.ok, result.details
    assert sha256_file(world.tmp / "out") == sha256_file(src)
    call = await world.ended(0)
    assert world.scheduler.violations == []
    assert_register_has_the_origins_size(call)
    # The size came from a GET of one byte before the register
    # (C:dragonfly-client-backend/src/http.rs:386-655).
    register_at = world.scheduler.events.index(("register", call.requests[0].peer_id))
    assert world.scheduler.events[:register_at] == [("origin", "GET", "bytes=0-0")]
    # NeedBackToSource -> BackToSourceStarted, the pieces, BackToSourceFinished (C:task.rs:949-1078).
    assert call.kinds() == [
        "register_peer_request",
        "download_peer_back_to_source_started_request",
        *["download_piece_back_to_source_finished_request"] * PIECES,
        "download_peer_back_to_source_finished_request",
    ]
    pieces = [r.download_piece_back_to_source_finished_request.piece for r in call.requests[2:-1]]
    assert sorted(p.number for p in pieces) == list(range(PIECES))
    assert all(p.traffic_type == common_pb2.BACK_TO_SOURCE and p.digest.startswith("crc32:") for p in pieces)
    # The scheduler ended the call after the last Finished; the daemon took that as the normal end.
    assert call.ended == "finished"


async def test_a_download_from_a_parent_reports_each_piece_with_cost_and_created_at(world: World) -> None:
    url, src = world.origin.file("b.bin", SIZE)
    await world.swarm.add_daemon("a")
    assert (await world.swarm.download("a", url, world.tmp / "out-a")).ok
    first = await world.ended(0)
    await world.swarm.add_daemon("b")
    world.scheduler.on_register = lambda call: normal_task(world.scheduler.offer(first))
    started = time.time()
    result = await world.swarm.download("b", url, world.tmp / "out-b")

    assert result.ok, result.details
    assert sha256_file(world.tmp / "out-b") == sha256_file(src)
    call = await world.ended(1)
    assert world.scheduler.violations == []
    assert_register_has_the_origins_size(call)
    # NormalTask -> Started, a DownloadPieceFinished per piece, Finished (C:task.rs:666-948); no
    # empty reschedule ("more parents"), which Dragonfly's client never sends.
    assert call.kinds() == [
        "register_peer_request",
        "download_peer_started_request",
        *["download_piece_finished_request"] * PIECES,
        "download_peer_finished_request",
    ]
    pieces = [r.download_piece_finished_request.piece for r in call.requests[2:-1]]
    assert sorted(p.number for p in pieces) == list(range(PIECES))
    for p in pieces:
        assert p.parent_id == first.requests[0].peer_id and p.traffic_type == common_pb2.REMOTE_PEER
        assert p.HasField("cost") and p.HasField("created_at")
        assert started - 1 <= p.created_at.ToNanoseconds() / 1e9 <= time.time() + 1
    assert call.ended == "finished"
    # b asked the origin for the size only, never for content.
    b_asked = world.origin.asked()[-1:]
    assert b_asked == [("origin", "GET", "bytes=0-0")]


async def test_a_corrupt_parent_is_reported_temporary_and_named_whole_in_the_reschedule(world: World) -> None:
    url, src = world.origin.file("c.bin", SIZE)
    a = await world.swarm.add_daemon("a")
    assert (await world.swarm.download("a", url, world.tmp / "out-a")).ok
    first = await world.ended(0)
    corrupt(a.store.content_path(task_id_for(DownloadSpec(url=url))), PIECE + 10)  # piece 1
    await world.swarm.add_daemon("b")
    offered = world.scheduler.offer(first)
    world.scheduler.on_register = lambda call: normal_task(offered)
    # Go blocks every candidate named in a reschedule and schedules again; with no other
    # parent it ends with NeedBackToSource (G:service_v2.go:1546-1566).
    world.scheduler.on_reschedule = need_back_to_source
    result = await world.swarm.download("b", url, world.tmp / "out-b")

    assert result.ok, result.details
    assert sha256_file(world.tmp / "out-b") == sha256_file(src)
    call = await world.ended(1)
    assert world.scheduler.violations == []
    # The parent that sent a corrupt piece is to be avoided: temporary=true, what the Go scheduler
    # blocks a parent on (G:service_v2.go:1788-1814) and what the Rust client sends (C:task.rs:1548).
    (failed,) = [r.download_piece_failed_request for r in call.of("download_piece_failed_request")]
    assert (failed.piece_number, failed.parent_id, failed.temporary) == (1, offered.id, True)
    # The reschedule names it with the very Peer message it was offered in.
    (reschedule,) = [r.reschedule_peer_request for r in call.of("reschedule_peer_request")]
    assert [p.SerializeToString() for p in reschedule.candidate_parents] == [offered.SerializeToString()]
    kinds = call.kinds()
    assert kinds.index("download_piece_failed_request") < kinds.index("reschedule_peer_request")
    assert kinds[kinds.index("reschedule_peer_request") + 1] == "download_peer_back_to_source_started_request"
    # Piece 1 came from the origin; the good pieces, from the parent, were not told twice.
    numbers = [r.download_piece_back_to_source_finished_request.piece.number
               for r in call.of("download_piece_back_to_source_finished_request")]  # fmt: skip
    assert numbers == [1]
    assert kinds[-1] == "download_peer_back_to_source_finished_request" and call.ended == "finished"


async def test_a_restarted_daemon_reports_what_it_holds_as_a_metadata_only_register(world: World) -> None:
    url, _ = world.origin.file("d.bin", SIZE)
    await world.swarm.add_daemon("a")
    assert (await world.swarm.download("a", url, world.tmp / "out-a")).ok
    await world.ended(0)
    await world.swarm.stop_daemon("a")
    await world.swarm.add_daemon("a")  # same data dir: the task is restored

    call = await world.ended(1)
    assert world.scheduler.violations == []
    # C:dragonfly-client/src/resource/task.rs:1099-1218: register with metadata_only=true and
    # need_back_to_source=false, MetadataOnlyResponse first, then Started and Finished.
    d = call.download
    assert d.metadata_only and not d.need_back_to_source
    assert (d.actual_content_length, d.actual_piece_length, d.actual_piece_count) == (SIZE, PIECE, PIECES)
    assert [a.WhichOneof("response") for a in call.answers] == ["metadata_only_response"]
    assert call.kinds() == [
        "register_peer_request",
        "download_peer_started_request",
        "download_peer_finished_request",
    ]
    assert call.ended == "finished"
