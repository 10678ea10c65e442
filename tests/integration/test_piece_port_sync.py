"""SyncPieces on the piece port between Damselfly daemons, over real sockets.

A child follows a parent's pieces with one Vortex frame of Damselfly's own on the
parent's piece port (daemon/transfer/announce.py): the parent echoes it, then
announces each piece it holds or receives, and closes once every piece asked for
is held. A parent that does not take the frame (wire extensions off, a Dragonfly
daemon, another server behind the port) sends the child back to gRPC, and the
child remembers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import pytest

from damselfly.daemon.ratelimit import RequestLimiter
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.daemon.transfer import vortex
from damselfly.daemon.transfer.announce import PlainParent, sync_on_piece_port
from damselfly.daemon.transfer.peer_rpc import ParentPiece, PeerRPC
from damselfly.daemon.transfer.piece_client import PieceConnectionPool
from damselfly.daemon.transfer.piece_server import PieceServer
from damselfly.daemon.transfer.send_guard import SendLimits
from damselfly.domain import HostInfo
from damselfly.errors import PeerError, ProtocolError
from damselfly.ids import task_id
from helpers.store import put_piece
from helpers.wait import parked_on, until

pytestmark = pytest.mark.integration

TID = task_id("http://example.com/announced")
PL = 4096
DATA = os.urandom(4 * PL)


def hold(store: PieceStore, number: int) -> None:
    put_piece(store, TID, DATA, number, PL)


def host(port: int) -> HostInfo:
    return HostInfo(id="parent", hostname="parent", ip="127.0.0.1", port=1, download_port=port)


@contextlib.asynccontextmanager
async def parent(
    tmp_path: Path, *, extensions: bool = True
) -> AsyncIterator[tuple[PieceStore, PieceServer, int]]:
    store = PieceStore(tmp_path / "parent")
    server = PieceServer(store, extensions=extensions)
    port = await server.start("127.0.0.1", 0)
    try:
        yield store, server, port
    finally:
        await server.close()


async def test_held_then_arriving_then_finished_pieces_are_announced_and_the_stream_ends(
    tmp_path: Path,
) -> None:
    async with parent(tmp_path) as (store, server, port):
        store.create_task(TID)
        store.set_content_length(TID, len(DATA), PL)
        hold(store, 0)
        incoming = store.receiving.start(TID, 2, 2 * PL, PL, "crc32:1")
        stream = sync_on_piece_port(host(port), TID, [0, 2, 3])
        async with contextlib.aclosing(stream):
            first = await asyncio.wait_for(anext(stream), 5)
            second = await asyncio.wait_for(anext(stream), 5)
            assert (first.number, second.number) == (0, 2)
            assert (first.offset, first.length, second.offset, second.length) == (0, PL, 2 * PL, PL)
            # Nothing more until piece 2 is held (announced again) and piece 3 arrives.
            pending = asyncio.ensure_future(anext(stream))
            await until(lambda: parked_on(store, TID), "the parent looked at the task")
            assert not pending.done()
            hold(store, 2)
            store.receiving.end(incoming, ok=True)
            assert (await asyncio.wait_for(pending, 5)).number == 2
            hold(store, 1)  # not asked for: never announced
            hold(store, 3)
            assert (await asyncio.wait_for(anext(stream), 5)).number == 3
            # Every piece asked for is held: the parent closes the stream.
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(anext(stream), 5)
        await until(lambda: server.active_connections == 0, "the parent let the connection go")


async def test_an_unknown_task_is_a_peer_error_not_a_plain_parent(tmp_path: Path) -> None:
    async with parent(tmp_path) as (_, _, port):
        stream = sync_on_piece_port(host(port), TID, [0])
        with pytest.raises(PeerError, match="not found") as caught:
            await asyncio.wait_for(anext(stream), 5)
        assert not isinstance(caught.value, PlainParent)


async def following(store: PieceStore, port: int) -> AsyncGenerator[ParentPiece, None]:
    """A child's stream of a task whose piece 0 of 4 the parent holds, that piece announced."""
    store.create_task(TID)
    store.set_content_length(TID, len(DATA), PL)
    hold(store, 0)
    stream = sync_on_piece_port(host(port), TID, [0, 1])
    assert (await asyncio.wait_for(anext(stream), 5)).number == 0
    return stream


async def test_a_task_that_fails_while_followed_ends_the_stream_with_an_error(tmp_path: Path) -> None:
    async with parent(tmp_path) as (store, _, port):
        stream = await following(store, port)
        store.mark_failed(TID, "the origin went away")
        with pytest.raises(PeerError, match="failed"):
            await asyncio.wait_for(anext(stream), 5)


async def test_a_child_that_hangs_up_ends_the_parents_answer(tmp_path: Path) -> None:
    async with parent(tmp_path) as (store, server, port):
        stream = await following(store, port)
        await until(lambda: parked_on(store, TID), "the parent waits for piece 1")
        await stream.aclose()
        await until(lambda: server.active_connections == 0, "the parent stopped answering")
        await until(lambda: not parked_on(store, TID), "nobody follows the task any more")


async def test_a_parent_with_the_extensions_off_closes_and_the_child_asks_over_grpc_from_then_on(
    tmp_path: Path,
) -> None:
    class GrpcRecorded(PeerRPC):
        """gRPC SyncPieces recorded, not sent (the upload service's side has tests of its own)."""

        def __init__(self) -> None:
            super().__init__()
            self.asked: list[tuple[list[int], bool]] = []

        async def _grpc_sync_pieces(
            self, host: HostInfo, host_id: str, task_id: str, wanted: list[int], *, extensions: bool
        ) -> AsyncGenerator[ParentPiece, None]:
            self.asked.append((wanted, extensions))
            for n in wanted:
                yield ParentPiece(n, n * PL, PL, host.ip, host.download_port, False)

    async with parent(tmp_path, extensions=False) as (store, _, port):
        store.create_task(TID)
        store.set_content_length(TID, len(DATA), PL)
        hold(store, 0)
        with pytest.raises(PlainParent):
            await asyncio.wait_for(anext(sync_on_piece_port(host(port), TID, [0])), 5)
        rpc = GrpcRecorded()
        for _ in range(2):
            got = [p.number async for p in rpc.sync_pieces(host(port), "child", TID, [1, 0], extensions=True)]
            assert got == [0, 1]
        # Asked over gRPC both times, still saying it speaks the extensions (the piece requests'
        # own); the piece port was tried only the first time.
        assert rpc.asked == [([0, 1], True), ([0, 1], True)]
        assert rpc.plain_sync == {("127.0.0.1", port)}


async def test_a_damselfly_parent_is_followed_on_its_piece_port_and_a_persistent_cache_task_over_grpc(
    tmp_path: Path,
) -> None:
    class Recorded(PeerRPC):
        def __init__(self) -> None:
            super().__init__()
            self.grpc_calls = 0

        async def _grpc_sync_pieces(
            self, host: HostInfo, host_id: str, task_id: str, wanted: list[int], *, extensions: bool
        ) -> AsyncGenerator[ParentPiece, None]:
            self.grpc_calls += 1
            for n in wanted:
                yield ParentPiece(n, n * PL, PL, host.ip, host.download_port, False)

    class CacheRecorded(Recorded):
        SYNC_ON_PIECE_PORT = False  # as CachePeerRPC: SyncPersistentCachePieces

    async with parent(tmp_path) as (store, _, port):
        store.create_task(TID)
        store.set_content_length(TID, len(DATA), PL)
        for n in range(4):
            hold(store, n)
        rpc = Recorded()
        got = [
            (p.number, p.extensions)
            async for p in rpc.sync_pieces(host(port), "c", TID, [2, 3], extensions=True)
        ]
        assert got == [(2, True), (3, True)] and rpc.grpc_calls == 0 and not rpc.plain_sync
        # Without the extensions (wire.extensions: false), gRPC as Dragonfly's child asks.
        assert [p.number async for p in rpc.sync_pieces(host(port), "c", TID, [1])] == [1]
        assert rpc.grpc_calls == 1
        cache = CacheRecorded()
        assert [p.number async for p in cache.sync_pieces(host(port), "c", TID, [1], extensions=True)] == [1]
        assert cache.grpc_calls == 1


@pytest.mark.parametrize(
    "answer",
    [
        # A Dragonfly daemon's Host.download_port may be its gRPC port: HTTP/2's GOAWAY.
        bytes.fromhex("000008070000000000000000000000000001"),
        # A Vortex server of another kind refusing the unknown tag with an Error frame.
        vortex.encode_error(1, vortex.ErrorCode.INVALID_ARGUMENT, "unsupported tag 226"),
    ],
    ids=["http2-goaway", "vortex-error"],
)
async def test_a_port_that_answers_anything_but_the_echo_is_a_plain_parent(answer: bytes) -> None:
    async def other(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(other, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(PlainParent):
            await asyncio.wait_for(anext(sync_on_piece_port(host(port), TID, [0])), 5)
    finally:
        server.close()
        await server.wait_closed()


def test_the_frames_round_trip() -> None:
    raw = (
        vortex.encode_sync_pieces(7, TID, [3, 1])
        + vortex.encode_piece_announce(7, 3, 3 * PL, PL, arriving=True)
        + vortex.encode_piece_announce(7, 1, PL, PL, arriving=False)
    )
    parser = vortex.FrameParser()
    parser.feed(raw)
    assert parser.next_event() == vortex.SyncPieces(7, TID, (3, 1))
    assert parser.next_event() == vortex.PieceAnnounce(7, 3, 3 * PL, PL, True)
    assert parser.next_event() == vortex.PieceAnnounce(7, 1, PL, PL, False)
    assert parser.next_event() is None
    traced = vortex.encode_sync_pieces(7, TID, [2], "00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    parser = vortex.FrameParser()
    parser.feed(traced)
    event = parser.next_event()
    assert isinstance(event, vortex.SyncPieces) and event.numbers == (2,)
    assert event.traceparent.endswith("-01")
    bad = bytearray(vortex.encode_sync_pieces(7, TID, [3]))
    bad[6 + 64 + 3] = 2  # the count says two numbers where the value holds one
    parser = vortex.FrameParser()
    parser.feed(bytes(bad))
    with pytest.raises(ProtocolError):
        parser.next_event()


async def test_streams_neither_count_toward_nor_give_way_to_piece_connections_and_have_a_cap_of_their_own(
    tmp_path: Path,
) -> None:
    store = PieceStore(tmp_path / "parent")
    server = PieceServer(store, limits=SendLimits(per_address=1))
    port = await server.start("127.0.0.1", 0)
    pool = PieceConnectionPool()
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        store.create_task(TID)
        store.set_content_length(TID, len(DATA), PL)
        hold(store, 0)
        stream = sync_on_piece_port(host(port), TID, [0, 1])
        assert (await asyncio.wait_for(anext(stream), 5)).number == 0
        # A piece connection from the same address: neither refused nor taking the stream's place.
        await pool.download_piece("127.0.0.1", port, TID, 0, fd, 0, PL)
        assert os.pread(fd, PL, 0) == DATA[:PL]
        assert (server.evicted, server.refused_connections) == (0, 0)
        # A second stream from that address is over the cap: no answer, the child asks over gRPC.
        with pytest.raises(PlainParent):
            await asyncio.wait_for(anext(sync_on_piece_port(host(port), TID, [1])), 5)
        # The first goes on.
        hold(store, 1)
        assert (await asyncio.wait_for(anext(stream), 5)).number == 1
        assert server.sync_streams.answered == 1
        await stream.aclose()
        await until(lambda: server.sync_streams.open_from("127.0.0.1") == 0, "the stream was let go")
    finally:
        os.close(fd)
        await pool.close()
        await server.close()


async def test_a_stream_over_the_ports_request_rate_is_refused_busy(tmp_path: Path) -> None:
    """The port's request-rate limit (``storage.server.requestRateLimit``) counts a stream as a
    request, as the upload service counted gRPC SyncPieces against its own."""
    store = PieceStore(tmp_path / "parent")
    server = PieceServer(store, request_limiter=RequestLimiter(rate=0.001, burst=1))
    port = await server.start("127.0.0.1", 0)
    try:
        store.create_task(TID)
        store.set_content_length(TID, len(DATA), PL)
        for n in range(4):
            hold(store, n)
        first = [p.number async for p in sync_on_piece_port(host(port), TID, [3])]
        assert first == [3]
        with pytest.raises(PeerError, match="too many requests") as caught:
            await asyncio.wait_for(anext(sync_on_piece_port(host(port), TID, [3])), 5)
        assert not isinstance(caught.value, PlainParent)  # a Damselfly parent, busy: not asked over gRPC
        assert server.sync_streams.answered == 1
    finally:
        await server.close()
