"""SyncPieces with Dragonfly's Rust dfdaemon, both ways, over real gRPC and piece sockets.

The Rust parent (C:dragonfly-client/src/grpc/dfdaemon_upload.rs:924-1142, ``dragonflyoss/client``
commit ff17c0b771f69aa801910ba96b7058abad24dbf2) announces only the pieces a child lists in
``interested_piece_numbers`` (an empty list: nothing) and only finished ones, each with the
``ip``/``tcp_port`` of its piece server; its ``Host.download_port`` is its gRPC port
(C:dragonfly-client/src/announcer/mod.rs:256-285). The Rust child
(C:dragonfly-client/src/resource/piece_collector.rs:214-330) lists the pieces it lacks and dials
``ip:tcp_port`` from the answers (C:dragonfly-client/src/resource/piece.rs:399-440). Damselfly's
extensions are offered only to a child that asks for them (docs/PROTOCOL.md, "The piece data path").
"""

from __future__ import annotations

import asyncio
import random
import types
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from damselfly.api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc
from damselfly.daemon.download.conductor import ConductorDeps
from damselfly.daemon.download.parents import ParentTable
from damselfly.daemon.download.piece_loop import PieceLoop
from damselfly.daemon.service import UploadService
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.daemon.transfer import vortex
from damselfly.daemon.transfer.peer_rpc import EXTENSIONS_METADATA, PeerRPC
from damselfly.daemon.transfer.piece_client import PieceConnectionPool
from damselfly.daemon.transfer.piece_server import PieceServer
from damselfly.domain import CandidateParent, HostInfo, PieceInfo
from damselfly.ids import task_id
from damselfly.pieces import piece_count, piece_span
from helpers.rust_peer import (
    RustPieceServer,
    RustSyncPieces,
    rust_client_download,
    rust_piece_server,
    rust_upload_server,
)
from helpers.store import put_piece

TID = task_id("http://example.com/sync-conformance")
PL = 64 * 1024
DATA = random.Random(8).randbytes(5 * PL - 333)
PIECES = piece_count(len(DATA), PL)


def rust_host(grpc_port: int) -> HostInfo:
    # A Rust host announces download_port = its upload gRPC port (announcer/mod.rs:256-285).
    return HostInfo(
        id="127.0.0.1-rust", hostname="rust", ip="127.0.0.1", port=grpc_port, download_port=grpc_port
    )


# --------------------------------------------------------------------------- Damselfly child, Rust parent


async def test_a_damselfly_child_lists_the_pieces_it_wants_and_learns_the_piece_address() -> None:
    spans = [piece_span(n, len(DATA), PL) for n in range(PIECES)]
    pieces = {s.number: (s.offset, s.length) for s in spans}
    rust = RustSyncPieces(TID, {n: pieces[n] for n in (0, 2, 3)}, "127.0.0.1", 4005, finished=True)
    rpc = PeerRPC()
    try:
        async with rust_upload_server(rust) as port:
            got = [p async for p in rpc.sync_pieces(rust_host(port), "me", TID, [3, 0, 1], extensions=True)]
    finally:
        await rpc.close()
    interested, metadata = rust.requests[0]
    assert interested == [0, 1, 3]  # the explicit list (an empty one would get nothing)
    assert metadata.get(EXTENSIONS_METADATA) == "1"  # asked for; a Rust parent does not answer it
    assert [(p.number, p.offset, p.length) for p in got] == [(0, *pieces[0]), (3, *pieces[3])]
    assert {(p.ip, p.port, p.extensions) for p in got} == {("127.0.0.1", 4005, False)}


async def test_a_damselfly_child_fetches_a_task_from_a_rust_parent(tmp_path: Path) -> None:
    """The piece loop, with the real PeerRPC and connection pool, against a Rust parent whose
    pieces are at the SyncPieces address, not at its Host.download_port (its gRPC port)."""
    run = await child_fetches_from_rust(
        tmp_path, lambda pieces, port: RustSyncPieces(TID, pieces, "127.0.0.1", port, finished=True)
    )
    assert run.done and run.content == DATA
    assert run.sync.requests[0][0] == list(range(PIECES))
    assert sorted(run.reports.finished) == list(range(PIECES)) and not run.reports.failed
    # Dragonfly's piece request, one connection each, nothing more on it.
    assert run.pieces.requests == [(c, vortex.Tag.DOWNLOAD_PIECE) for c in range(1, PIECES + 1)]


@dataclass
class ChildRun:
    """How a child's piece loop fared against one Rust parent."""

    done: bool
    content: bytes
    reports: Reports
    sync: RustSyncPieces
    pieces: RustPieceServer


async def child_fetches_from_rust(
    tmp_path: Path,
    sync_for: Callable[[dict[int, tuple[int, int]], int], RustSyncPieces],
    *,
    length_known: bool = True,
) -> ChildRun:
    """A Damselfly child's piece loop (real PeerRPC and connection pool) fetching DATA from a Rust
    parent holding all of it, whose gRPC side ``sync_for(pieces, piece_port)`` makes; the candidate
    carries the task's length when ``length_known``."""
    spans = [piece_span(n, len(DATA), PL) for n in range(PIECES)]
    held = {s.number: (s.offset, DATA[s.offset : s.offset + s.length]) for s in spans}
    store = PieceStore(tmp_path / "child")
    store.create_task(TID)
    rpc, pool = PeerRPC(), PieceConnectionPool()
    try:
        async with rust_piece_server(held) as (pieces, piece_port):
            sync = sync_for({s.number: (s.offset, s.length) for s in spans}, piece_port)
            async with rust_upload_server(sync) as grpc_port:
                deps = ConductorDeps(
                    store=store, pool=pool, source=None, peer_rpc=rpc, scheduler=None,  # type: ignore[arg-type]
                    host_id="127.0.0.1-me", host_ip="127.0.0.1", hostname="me", is_seed=False,
                )  # fmt: skip
                loop = PieceLoop(deps, TID, PL, ParentTable(concurrent_piece_count=4))
                sizes = (len(DATA), PIECES) if length_known else (None, None)
                loop.add_parents([CandidateParent("127.0.0.1-rust-1", rust_host(grpc_port), TID, *sizes)])
                reports = Reports()
                try:
                    done = await asyncio.wait_for(loop.run(reports, None, idle), 30)  # type: ignore[arg-type]
                finally:
                    loop.stop()
        content = store.content_path(TID).read_bytes() if done else b""
        return ChildRun(done, content, reports, sync, pieces)
    finally:
        await pool.close()
        await rpc.close()
        store.close()


class Reports:
    """What the piece loop tells the scheduler."""

    def __init__(self) -> None:
        self.finished: list[int] = []
        self.failed: list[int] = []

    def piece_finished(self, info: PieceInfo) -> None:
        self.finished.append(info.number)

    def piece_failed(self, number: int, parent_id: str, *, temporary: bool) -> None:
        self.failed.append(number)


async def idle() -> None:
    await asyncio.Event().wait()


# --------------------------------------------------------------------------- Rust child, Damselfly parent


class DamselflyParent:
    def __init__(self, store: PieceStore, upload_port: int, piece_port: int) -> None:
        self.store, self.upload_port, self.piece_port = store, upload_port, piece_port


@pytest.fixture
async def damselfly_parent(tmp_path: Path) -> AsyncIterator[DamselflyParent]:
    store = PieceStore(tmp_path / "parent")
    store.create_task(TID)
    store.set_content_length(TID, len(DATA), PL)
    pieces = PieceServer(store)
    piece_port = await pieces.start("127.0.0.1", 0)
    downloads: Any = types.SimpleNamespace(store=store)
    server = grpc.aio.server()
    dfdaemon_pb2_grpc.add_DfdaemonUploadServicer_to_server(
        UploadService(downloads, "127.0.0.1", piece_port), server
    )
    upload_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield DamselflyParent(store, upload_port, piece_port)
    finally:
        await server.stop(None)
        await pieces.close()
        store.close()


async def rust_child_sync(
    port: int, task: str, interested: list[int], metadata: tuple[tuple[str, str], ...] = ()
) -> tuple[list[dfdaemon_pb2.SyncPiecesResponse], dict[str, Any]]:
    """SyncPieces as the Rust child calls it (piece_collector.rs:250-287): its host id, the task, the
    pieces it lacks; no Damselfly metadata. Returns the answers and the parent's initial metadata."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = dfdaemon_pb2_grpc.DfdaemonUploadStub(channel).SyncPieces(
            dfdaemon_pb2.SyncPiecesRequest(
                host_id="127.0.0.2-rust", task_id=task, interested_piece_numbers=interested
            ),
            metadata=metadata,
        )
        answers = [r async for r in call]
        return answers, dict(await call.initial_metadata())


async def test_a_rust_child_gets_the_pieces_it_lists_at_the_piece_address(
    damselfly_parent: DamselflyParent,
) -> None:
    parent = damselfly_parent
    for n in range(PIECES):
        put_piece(parent.store, TID, DATA, n, PL)
    answers, metadata = await asyncio.wait_for(rust_child_sync(parent.upload_port, TID, [4, 1]), 10)
    assert sorted(a.number for a in answers) == [1, 4]
    for a in answers:
        span = piece_span(a.number, len(DATA), PL)
        assert (a.offset, a.length, a.ip, a.tcp_port) == (
            span.offset,
            span.length,
            "127.0.0.1",
            parent.piece_port,
        )
    assert EXTENSIONS_METADATA not in metadata  # offered only to a child that asked
    # Then the piece, from the address the answer gave, as the Rust client pulls it.
    tag, event, content, _ = await rust_child_download_first(answers[0])
    assert tag == vortex.Tag.PIECE_CONTENT and isinstance(event, vortex.PieceHeader)
    span = piece_span(answers[0].number, len(DATA), PL)
    assert content == DATA[span.offset : span.offset + span.length]


async def rust_child_download_first(
    answer: dfdaemon_pb2.SyncPiecesResponse,
) -> tuple[int, vortex.Event, bytes, bytes]:
    return await asyncio.wait_for(rust_client_download(answer.tcp_port, TID, answer.number), 10)


async def test_a_rust_child_hears_of_a_piece_only_once_it_is_finished(
    damselfly_parent: DamselflyParent,
) -> None:
    """A Rust parent announces finished pieces only; Damselfly's cut-through announcements of
    pieces still arriving are for Damselfly children."""
    parent = damselfly_parent
    put_piece(parent.store, TID, DATA, 0, PL)
    entry = parent.store.receiving.start(TID, 1, PL, PL, "crc32:1")
    sync = asyncio.ensure_future(rust_child_sync(parent.upload_port, TID, [0, 1]))
    damselfly = asyncio.ensure_future(
        rust_child_sync(parent.upload_port, TID, [0, 1], ((EXTENSIONS_METADATA, "1"),))
    )
    await asyncio.sleep(0.2)
    assert not sync.done() and not damselfly.done()
    put_piece(parent.store, TID, DATA, 1, PL)
    parent.store.receiving.end(entry, ok=True)
    answers, metadata = await asyncio.wait_for(sync, 10)
    assert [a.number for a in answers] == [0, 1] and EXTENSIONS_METADATA not in metadata
    # The Damselfly child heard of piece 1 while it arrived, and again once held.
    answers, metadata = await asyncio.wait_for(damselfly, 10)
    assert [a.number for a in answers] == [0, 1, 1] and metadata.get(EXTENSIONS_METADATA) == "1"


async def test_a_rust_child_asking_for_an_unknown_task_gets_internal(
    damselfly_parent: DamselflyParent,
) -> None:
    # dfdaemon_upload.rs:962-1010: Status::internal("task <id> not found").
    other = task_id("http://example.com/elsewhere")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(rust_child_sync(damselfly_parent.upload_port, other, [0]), 10)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == f"task {other} not found"


async def test_two_damselfly_daemons_agree_on_the_extensions(damselfly_parent: DamselflyParent) -> None:
    parent = damselfly_parent
    put_piece(parent.store, TID, DATA, 2, PL)
    rpc = PeerRPC()
    host = HostInfo(
        id="127.0.0.1-d",
        hostname="d",
        ip="127.0.0.1",
        port=parent.upload_port,
        download_port=parent.piece_port,
    )
    try:
        # Between Damselfly daemons the child asks on the piece port first (announce.py) ...
        on_port = [p async for p in rpc.sync_pieces(host, "me", TID, [2], extensions=True)]
        assert not rpc.plain_sync
        # ... and over gRPC where the port did not take it, where the metadata agrees on them.
        rpc.plain_sync.add(("127.0.0.1", parent.piece_port))
        on = [p async for p in rpc.sync_pieces(host, "me", TID, [2], extensions=True)]
        off = [p async for p in rpc.sync_pieces(host, "me", TID, [2], extensions=False)]
    finally:
        await rpc.close()
    expected = [(2, "127.0.0.1", parent.piece_port, True)]
    assert [(p.number, p.ip, p.port, p.extensions) for p in on_port] == expected
    assert [(p.number, p.ip, p.port, p.extensions) for p in on] == expected
    assert [(p.number, p.port, p.extensions) for p in off] == [(2, parent.piece_port, False)]


# --------------------------------------------------------------------------- the content length, Rust parent
# A child that does not know the content length asks its parent. A Rust parent answers
# StatTask with its SCHEDULER's view (C:dragonfly-client/src/grpc/dfdaemon_upload.rs:692-740 calls
# C:dragonfly-client/src/resource/task.rs:2397-2409): a scheduler's error, NOT_FOUND included, becomes
# INTERNAL (a local TaskNotFound alone is NOT_FOUND), and the Go scheduler sends an unknown length as
# uint64(-1) (G:scheduler/service/service_v2.go:455-516, docs/INTEROP.md 2.1, 3.1). StatLocalTask is the
# parent's own store (dfdaemon_upload.rs:742-787, task.rs:2411-2436): content_length as held, NOT_FOUND
# "local task not found: <id>" for a task it does not hold.

UNKNOWN = 2**64 - 1


class RustStat(RustSyncPieces):
    """A Rust parent's SyncPieces (:class:`RustSyncPieces`), StatTask answered with its scheduler's
    view as ``stat`` says ("scheduler": the length known; "internal": the scheduler's NOT_FOUND
    as INTERNAL; "unknown": 2^64-1), StatLocalTask from its store unless ``local`` is False
    (then left unimplemented, as a parent without it)."""

    def __init__(self, pieces: dict[int, tuple[int, int]], tcp_port: int, *, stat: str, local: bool) -> None:
        super().__init__(TID, pieces, "127.0.0.1", tcp_port, finished=True)
        self.stat, self.local = stat, local
        self.asked: list[str] = []

    async def StatTask(self, request: dfdaemon_pb2.StatTaskRequest, context: Any) -> Any:
        self.asked.append("StatTask")
        if self.stat == "internal":
            # tonic::Status's Display of the scheduler's answer, as Status::internal(err.to_string()).
            await context.abort(
                grpc.StatusCode.INTERNAL, f'status: NotFound, message: "task {request.task_id} not found"'
            )
        length = len(DATA) if self.stat == "scheduler" else UNKNOWN
        return common_pb2.Task(
            id=request.task_id, content_length=length, piece_count=PIECES if length != UNKNOWN else 0
        )

    async def StatLocalTask(self, request: dfdaemon_pb2.StatLocalTaskRequest, context: Any) -> Any:
        self.asked.append("StatLocalTask")
        if not self.local:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        if request.task_id != TID:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"local task not found: {request.task_id}")
        return dfdaemon_pb2.StatLocalTaskResponse(task_id=TID, piece_length=PL, content_length=len(DATA))


@pytest.mark.parametrize("stat", ["scheduler", "internal", "unknown"])
async def test_a_child_without_the_length_fetches_from_a_rust_parent_whatever_its_stat_task_says(
    tmp_path: Path, stat: str
) -> None:
    """The candidate carries no length (the scheduler did not say it): the child asks the Rust
    parent, takes its own store's word (StatLocalTask) and does not drop it for a StatTask that
    cannot say; the download completes from it."""
    run = await child_fetches_from_rust(
        tmp_path, lambda pieces, port: RustStat(pieces, port, stat=stat, local=True), length_known=False
    )
    assert run.done and run.content == DATA
    assert sorted(run.reports.finished) == list(range(PIECES)) and not run.reports.failed
    assert [r[0] for r in run.sync.requests] == [list(range(PIECES))]  # one SyncPieces, all pieces listed


@pytest.mark.parametrize(
    ("stat", "local", "expected"),
    [
        ("scheduler", False, len(DATA)),  # the scheduler's view, when it knows, is the task's length
        ("internal", False, None),
        ("unknown", False, None),
        ("internal", True, len(DATA)),  # the parent's own store answers first
        ("unknown", True, len(DATA)),
    ],
)
async def test_what_a_rust_parents_stat_answers_tell_a_child_of_the_length(
    stat: str, local: bool, expected: int | None
) -> None:
    rust = RustStat({}, 4005, stat=stat, local=local)
    rpc = PeerRPC()
    try:
        async with rust_upload_server(rust) as port:
            length = await asyncio.wait_for(rpc.stat_task_length(rust_host(port), TID), 10)
            asked, rust.asked = rust.asked, []
            # A task the parent does not hold: its store says NOT_FOUND, its scheduler's view decides.
            other = await asyncio.wait_for(rpc.stat_task_length(rust_host(port), task_id("http://x/y")), 10)
    finally:
        await rpc.close()
    assert length == expected
    assert other == (len(DATA) if stat == "scheduler" else None)
    assert asked == (["StatLocalTask"] if local else ["StatLocalTask", "StatTask"])
    assert rust.asked == ["StatLocalTask", "StatTask"]
