"""Piece transports over real sockets: the TCP piece server and client, and same-host pieces.

The contract section runs the same promises against each way a child pulls a
piece from a parent: over TCP (PieceServer, PieceConnectionPool) and, between
daemons on one host, as the parent's file handed over an abstract unix socket
(LocalPieceServer, LocalPieces). The rest is about the TCP protocol itself: most of it
uses Damselfly's request (a pooled connection, ``PieceClient.damselfly``);
tests/conformance/test_vortex.py plays Dragonfly's client and server against ours.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import os
import socket
import struct
import threading
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from damselfly.daemon.ratelimit import ByteLimiter, RequestLimiter
from damselfly.daemon.store.digesting import InOrderDigest
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.daemon.store.receiving import Receiving
from damselfly.daemon.transfer import piece_client, vortex
from damselfly.daemon.transfer.local_pieces import LocalPieces, LocalPieceServer
from damselfly.daemon.transfer.piece_client import PieceClient, PieceConnectionPool
from damselfly.daemon.transfer.piece_server import PieceServer
from damselfly.domain import PieceInfo, TrafficType
from damselfly.errors import DigestMismatch, NotFound, PeerError, ProtocolError, ResourceExhausted
from damselfly.ids import task_id
from damselfly.pieces import Digest, piece_count, piece_span
from helpers.store import rot as rot_file
from helpers.wait import TIMEOUT, parked_on, until

pytestmark = pytest.mark.integration

TID = task_id("http://example.com/big")
OTHER = task_id("http://example.com/other")
PL = 64 * 1024


def make_content(n: int) -> bytes:
    # Not periodic in the piece length, so a piece written at the wrong offset shows.
    return b"".join(struct.pack(">I", i) for i in range(n // 4 + 1))[:n]


def seed(store: PieceStore, tid: str, data: bytes, *, pieces: list[int] | None = None) -> None:
    """Put ``data`` into the store as a task with the given finished pieces (all by default)."""
    store.create_task(tid)
    store.set_content_length(tid, len(data), PL)
    fd = store.open_write_fd(tid)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)
    count = piece_count(len(data), PL)
    for n in range(count) if pieces is None else pieces:
        span = piece_span(n, len(data), PL)
        chunk = data[span.offset : span.offset + span.length]
        store.finish_piece(tid, PieceInfo(n, span.offset, span.length, f"crc32:{zlib.crc32(chunk)}"))
    if pieces is None:
        store.mark_succeeded(tid)


@dataclass
class Parent:
    store: PieceStore
    server: PieceServer
    port: int
    uploads: list[tuple[str, int]]
    limiter: ByteLimiter  # the host's upload limit, shared by its servers as in a daemon (none: rate 0)


@pytest.fixture
async def parent(tmp_path: Path) -> AsyncIterator[Parent]:
    store = PieceStore(tmp_path / "parent")
    uploads: list[tuple[str, int]] = []
    limiter = ByteLimiter(0, name="upload")
    server = PieceServer(store, on_upload=lambda t, n: uploads.append((t, n)), limiter=limiter)
    port = await server.start("127.0.0.1", 0)
    yield Parent(store, server, port, uploads, limiter)
    await server.close()
    store.close()


@pytest.fixture
def child(tmp_path: Path) -> PieceStore:
    return PieceStore(tmp_path / "child")


# ----------------------------------------------------------------- the transport contract
# The same promises for every way a child can pull from a parent. Where a promise takes another
# form on one transport, its Transport says which; where it does not apply, the case is skipped
# with the reason.

Fetch = Callable[[str, int, int, int, int], Awaitable[PieceInfo]]


class NoLocalPath(Exception):
    """LocalPieces answered None: nothing from this parent's file; the child asks over TCP."""


@dataclass
class Transport:
    name: str
    fetch: Fetch  # (task, number, fd, offset, length) -> the piece, written at its offset in fd
    served: Callable[[], int]  # pieces the parent handed out this way
    close_parent: Callable[[], Awaitable[None]]
    # The parent is in the middle of a piece the child asked for (given the parent's store and
    # the child's fd): bytes of it reached the child (TCP), or the request waits for it to land.
    mid_piece: Callable[[PieceStore, int], bool]
    not_held: type[Exception]  # what the child gets for a piece the parent does not have
    gone: tuple[type[Exception], str]  # ... (and what it says) when the parent goes away mid-piece
    limited: type[Exception] | None  # ... when an upload limit applies (None: the piece, limited)


@pytest.fixture
async def transport(request: pytest.FixtureRequest, parent: Parent) -> AsyncIterator[Transport]:
    if request.param == "tcp":
        pool = PieceConnectionPool()

        async def over_tcp(tid: str, n: int, fd: int, offset: int, length: int) -> PieceInfo:
            return await pool.download_piece("127.0.0.1", parent.port, tid, n, fd, offset, length)

        try:
            yield Transport(
                "tcp",
                over_tcp,
                lambda: parent.server.pieces_sent,
                parent.server.close,
                mid_piece=lambda _, fd: any(os.pread(fd, PL, 0)),  # sparse until bytes land
                not_held=NotFound,
                gone=(PeerError, "closed the connection mid-piece"),
                limited=None,
            )
        finally:
            await pool.close()
        return
    # The same host: the parent's local server is named after its piece port, as in a daemon.
    on_upload = lambda t, n: parent.uploads.append((t, n))  # noqa: E731
    server = LocalPieceServer(parent.store, on_upload=on_upload, limiter=parent.limiter)
    await server.start("127.0.0.1", parent.port)
    local = LocalPieces()

    async def from_the_file(tid: str, n: int, fd: int, offset: int, length: int) -> PieceInfo:
        info = await local.download_piece("127.0.0.1", parent.port, tid, n, fd, offset, length)
        if info is None:
            raise NoLocalPath(f"no local path to piece {n}")
        return info

    try:
        yield Transport(
            "local",
            from_the_file,
            lambda: server.pieces_shared,
            server.close,
            mid_piece=lambda store, _: parked_on(store, TID),
            not_held=NoLocalPath,
            gone=(NoLocalPath, "no local path"),
            limited=NoLocalPath,  # the TCP path honours the limit; the file would not
        )
    finally:
        await server.close()


BOTH = pytest.mark.parametrize("transport", ["tcp", "local"], indirect=True)


def child_task(child: PieceStore, length: int, piece_length: int = PL) -> int:
    """The task in the child's store, sized; an fd to write its pieces (the caller closes it)."""
    child.create_task(TID)
    child.set_content_length(TID, length, piece_length)
    return child.open_write_fd(TID)


def held_by_parent(parent: Parent, child: PieceStore, size: int) -> tuple[bytes, int]:
    """A task of ``size`` bytes that the parent holds whole; the child's fd for it (to close)."""
    data = make_content(size)
    seed(parent.store, TID, data)
    return data, child_task(child, size)


def land(store: PieceStore, data: bytes, end: int, start: int = 0) -> None:
    """Bytes ``start:end`` of the content reach the parent's file (from its own parent)."""
    fd = store.open_write_fd(TID)
    try:
        os.pwrite(fd, data[start:end], start)
    finally:
        os.close(fd)


def rot(store: PieceStore, data: bytes, offset: int) -> None:
    """``data`` replaces the parent's content at ``offset``: bit rot, not a write."""
    rot_file(store.content_path(TID), data, offset)


async def assert_moves_task(fetch: Fetch, parent: Parent, child: PieceStore, data: bytes) -> None:
    """Every piece of a task fetched at once arrives whole, where it belongs, reported right."""
    seed(parent.store, TID, data)
    fd = child_task(child, len(data))
    try:
        count = piece_count(len(data), PL)
        spans = [piece_span(n, len(data), PL) for n in range(count)]
        infos = await asyncio.gather(*(fetch(TID, s.number, fd, s.offset, s.length) for s in spans))
    finally:
        os.close(fd)
    for info, span in zip(infos, spans, strict=True):
        chunk = data[span.offset : span.offset + span.length]
        assert (info.number, info.offset, info.length) == (span.number, span.offset, span.length)
        assert info.digest == f"crc32:{zlib.crc32(chunk)}"
        assert info.traffic_type is TrafficType.REMOTE_PEER
        assert info.cost_s >= 0
        child.finish_piece(TID, info)
    child.mark_succeeded(TID)
    assert child.content_path(TID).read_bytes() == data
    assert sum(n for _, n in parent.uploads) == len(data)
    assert {t for t, _ in parent.uploads} == {TID}


@BOTH
async def test_contract_pieces_arrive_intact(transport: Transport, parent: Parent, child: PieceStore) -> None:
    data = make_content(20 * PL + 1234)
    await assert_moves_task(transport.fetch, parent, child, data)
    assert transport.served() == piece_count(len(data), PL)


@BOTH
async def test_contract_a_corrupt_piece_is_a_digest_mismatch(
    transport: Transport, parent: Parent, child: PieceStore
) -> None:
    data, fd = held_by_parent(parent, child, 3 * PL)
    bad = bytearray(data)
    bad[PL + 77] ^= 0xFF
    rot(parent.store, bytes(bad[PL + 77 : PL + 78]), PL + 77)  # a byte of piece 1 went bad on its disk
    try:
        with pytest.raises(DigestMismatch):
            await transport.fetch(TID, 1, fd, PL, PL)
        info = await transport.fetch(TID, 2, fd, 2 * PL, PL)  # the parent still serves the others
        assert os.pread(fd, PL, 2 * PL) == data[2 * PL :]
        assert info.digest == f"crc32:{zlib.crc32(data[2 * PL :])}"
    finally:
        os.close(fd)


@BOTH
async def test_contract_a_piece_the_parent_does_not_have_is_refused(
    transport: Transport, parent: Parent, child: PieceStore
) -> None:
    seed(parent.store, OTHER, make_content(2 * PL))  # the parent holds another task only
    fd = child_task(child, 2 * PL)
    try:
        with pytest.raises(transport.not_held):
            await transport.fetch(TID, 0, fd, 0, PL)
        assert os.fstat(fd).st_size == 0 or os.pread(fd, PL, 0) == bytes(PL)  # nothing written
    finally:
        os.close(fd)
    assert transport.served() == 0


@dataclass
class Arriving:
    """Piece 0 of a task at the parent, half of it landed from the parent's own parent (its
    header, and so its crc32, came first); a child asking for it, the parent mid-way through."""

    data: bytes
    length: int
    entry: Receiving
    out: int  # the child's fd
    fetch: asyncio.Future[PieceInfo]


@contextlib.asynccontextmanager
async def half_arrived(transport: Transport, parent: Parent, child: PieceStore) -> AsyncIterator[Arriving]:
    data, length = make_content(8 * PL), 4 * PL
    parent.store.create_task(TID)
    parent.store.set_content_length(TID, len(data), length)
    entry = parent.store.receiving.start(TID, 0, 0, length, f"crc32:{zlib.crc32(data[:length])}")
    land(parent.store, data, length // 2)
    entry.advance(length // 2)
    out = child_task(child, len(data), length)
    fetch = asyncio.ensure_future(transport.fetch(TID, 0, out, 0, length))
    try:
        await until(lambda: transport.mid_piece(parent.store, out) or fetch.done(), "the piece is under way")
        assert not fetch.done()
        yield Arriving(data, length, entry, out, fetch)
    finally:
        if entry.state == "receiving":
            parent.store.receiving.end(entry, ok=False)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(fetch, TIMEOUT)
        os.close(out)


@BOTH
async def test_contract_a_piece_still_arriving_reaches_the_child_once_the_parent_has_it(
    transport: Transport, parent: Parent, child: PieceStore
) -> None:
    # Over TCP it is served while it lands (cut-through); from the file, once it is held.
    async with half_arrived(transport, parent, child) as piece:
        land(parent.store, piece.data, piece.length, piece.length // 2)
        piece.entry.advance(piece.length)
        parent.store.finish_piece(TID, PieceInfo(0, 0, piece.length, piece.entry.digest))
        parent.store.receiving.end(piece.entry, ok=True)
        info = await asyncio.wait_for(piece.fetch, TIMEOUT)
        assert info.digest == piece.entry.digest
        assert os.pread(piece.out, piece.length, 0) == piece.data[: piece.length]


@BOTH
async def test_contract_a_parent_that_goes_away_mid_piece_fails_the_piece(
    transport: Transport, parent: Parent, child: PieceStore
) -> None:
    async with half_arrived(transport, parent, child) as piece:  # the rest never comes
        await transport.close_parent()
        error, says = transport.gone
        with pytest.raises(error, match=says):
            await asyncio.wait_for(piece.fetch, TIMEOUT)
    assert child.get(TID).pieces == {}  # type: ignore[union-attr]


@BOTH
async def test_contract_an_upload_limit_is_honoured(
    transport: Transport, parent: Parent, child: PieceStore
) -> None:
    data, fd = held_by_parent(parent, child, 3 * PL)
    parent.limiter.set_rate(1000 * 1024 * 1024)  # high: this is about the path, not the pace
    try:
        if transport.limited is None:  # the bytes are granted by the limit
            info = await transport.fetch(TID, 1, fd, PL, PL)
            assert os.pread(fd, PL, PL) == data[PL : 2 * PL] and info.length == PL
            assert parent.limiter.bytes_granted == PL
        else:  # refused: the child takes the path that honours it
            with pytest.raises(transport.limited):
                await transport.fetch(TID, 1, fd, PL, PL)
            assert transport.served() == 0 and parent.limiter.bytes_granted == 0
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "transport",
    [
        "tcp",
        pytest.param(
            "local",
            marks=pytest.mark.skip(
                reason="the local path has no request limit or upload slots: a copy from the "
                "parent's file costs it no upload, and an upload limit sends the child to TCP"
            ),
        ),
    ],
    indirect=True,
)
async def test_contract_a_busy_parent_refuses_the_request(
    transport: Transport, parent: Parent, child: PieceStore
) -> None:
    _, fd = held_by_parent(parent, child, 2 * PL)
    parent.server.request_limiter = RequestLimiter(0.001, burst=1)  # one request, then busy
    try:
        await transport.fetch(TID, 0, fd, 0, PL)
        with pytest.raises(ResourceExhausted):
            await transport.fetch(TID, 1, fd, PL, PL)
    finally:
        os.close(fd)
    assert transport.served() == 1


async def damselfly_client(port: int) -> PieceClient:
    """A connection that asks with Damselfly's request, so it carries many."""
    client = await PieceClient.connect("127.0.0.1", port)
    client.damselfly = True
    return client


async def test_one_connection_moves_a_task_sequentially(parent: Parent, child: PieceStore) -> None:
    client = await damselfly_client(parent.port)
    lock = asyncio.Lock()
    try:

        async def fetch(tid: str, n: int, fd: int, offset: int, length: int) -> PieceInfo:
            async with lock:
                return await client.download_piece(tid, n, fd, offset, length)

        await assert_moves_task(fetch, parent, child, make_content(5 * PL + 3))
        assert client.requests == 6 and not client.broken
        assert parent.server.bytes_sent == 5 * PL + 3
    finally:
        await client.close()


async def test_bodies_land_beside_a_busy_default_executor(parent: Parent, child: PieceStore) -> None:
    """A body holds its thread until its last byte (a slow link: tens of seconds); bodies must
    not queue behind the loop's default executor, whose few threads digests and store work
    share: a body not read leaves its parent's send stuck until the parent drops it."""
    data = make_content(2 * PL)
    seed(parent.store, TID, data)
    child_task(child, len(data))
    client = await damselfly_client(parent.port)
    fd = child.open_write_fd(TID)
    loop = asyncio.get_running_loop()
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=1))
    release = threading.Event()
    hog = loop.run_in_executor(None, release.wait)  # the default executor's one thread, taken
    try:
        async with asyncio.timeout(TIMEOUT):
            for n in range(2):
                child.finish_piece(TID, await client.download_piece(TID, n, fd, n * PL, PL))
        assert os.pread(fd, len(data) + 1, 0) == data
    finally:
        release.set()
        await hog
        os.close(fd)
        await client.close()


# ----------------------------------------------------------------- errors answered


async def test_errors_are_answered_and_the_connection_survives(parent: Parent, tmp_path: Path) -> None:
    data = make_content(4 * PL)
    seed(parent.store, OTHER, data, pieces=[0, 2])
    client = await damselfly_client(parent.port)
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(NotFound, match="unknown task"):
            await client.download_piece(TID, 0, fd, 0, PL)
        with pytest.raises(NotFound, match="not held"):
            await client.download_piece(OTHER, 1, fd, PL, PL)
        with pytest.raises(PeerError, match=r"code 1.*>= 4 pieces"):
            await client.download_piece(OTHER, 9, fd, 9 * PL, PL)
        assert not client.broken
        info = await client.download_piece(OTHER, 2, fd, 2 * PL, PL)  # same connection still works
        assert os.pread(fd, PL, 2 * PL) == data[2 * PL : 3 * PL]
        assert info.digest == f"crc32:{zlib.crc32(data[2 * PL : 3 * PL])}"
        assert client.requests == 4
    finally:
        os.close(fd)
        await client.close()


async def read_all(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), 5)


@pytest.mark.parametrize(
    "garbage",
    [
        struct.pack(">BBI", 1, 0, 68) + b"../" * 21 + b"x" + b"\0\0\0\0",
        struct.pack(">BBI", 1, 1, 30) + b"\0" * 30,  # a client must not send PieceContent
        struct.pack(">BBI", 1, 0, 0xFFFFFFF0),
    ],
)
async def test_malformed_frames_get_an_error_then_close(
    parent: Parent, garbage: bytes, tmp_path: Path
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", parent.port)
    try:
        writer.write(garbage)
        await writer.drain()
        answer = await read_all(reader)  # the server closes after answering
    finally:
        writer.close()
        await writer.wait_closed()
    parser = vortex.FrameParser()
    parser.feed(answer)
    event = parser.next_event()
    assert isinstance(event, vortex.Error) and event.code == vortex.ErrorCode.INVALID_ARGUMENT
    assert parser.next_event() is None and parser.buffered == 0
    # The server survives and serves the next peer.
    data = make_content(PL)
    seed(parent.store, TID, data)
    client = await damselfly_client(parent.port)
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
    try:
        await client.download_piece(TID, 0, fd, 0, PL)
        assert os.pread(fd, PL, 0) == data
    finally:
        os.close(fd)
        await client.close()


@pytest.mark.parametrize(
    "frame",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # tag 0x45: reserved
        struct.pack(">BBI", 1, 6, 68) + TID.encode() + b"\0\0\0\0",  # DownloadCachePiece
        vortex.encode_piece_digest(1, "crc32:1"),  # only a parent sends it
    ],
)
async def test_frames_the_server_does_not_serve_close_without_an_answer(parent: Parent, frame: bytes) -> None:
    """As Dragonfly's server does with a tag it does not serve."""
    reader, writer = await asyncio.open_connection("127.0.0.1", parent.port)
    try:
        writer.write(frame)
        await writer.drain()
        assert await read_all(reader) == b""
    finally:
        writer.close()
        await writer.wait_closed()


async def test_close_frame_ends_the_connection(parent: Parent) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", parent.port)
    try:
        writer.write(vortex.encode_close(1))
        assert await read_all(reader) == b""
    finally:
        writer.close()
        await writer.wait_closed()


async def test_corrupted_parent_content_is_a_digest_mismatch(parent: Parent, tmp_path: Path) -> None:
    data = make_content(3 * PL)
    seed(parent.store, TID, data)
    rot(parent.store, bytes([data[PL + 77] ^ 0xFF]), PL + 77)
    client = await damselfly_client(parent.port)
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(DigestMismatch):
            await client.download_piece(TID, 1, fd, PL, PL)
        assert not client.broken  # the frame was read whole; the connection is in sync
        await client.download_piece(TID, 2, fd, 2 * PL, PL)
    finally:
        os.close(fd)
        await client.close()


@pytest.mark.parametrize("threaded", [True, False], ids=["threaded-body", "on-the-loop"])
async def test_pieces_feed_the_content_digest_and_a_corrupt_one_is_taken_back(
    parent: Parent, child: PieceStore, threaded: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The body lands through a worker thread unless a rate limit applies (then on the loop).
    monkeypatch.setattr(piece_client, "THREADED_BODY", threaded)
    data = make_content(3 * PL)
    seed(parent.store, TID, data)
    rot(parent.store, bytes([data[PL + 77] ^ 0xFF]), PL + 77)
    child.create_task(TID)
    child.set_content_length(TID, len(data), PL)
    digester = InOrderDigest(child, TID, Digest("sha256", hashlib.sha256(data).hexdigest()))
    client = await damselfly_client(parent.port)
    fd = child.open_write_fd(TID)
    try:
        child.finish_piece(TID, await client.download_piece(TID, 0, fd, 0, PL, digest=digester))
        with pytest.raises(DigestMismatch):
            await client.download_piece(TID, 1, fd, PL, PL, digest=digester)
        assert digester.fed == PL  # the corrupt piece's bytes went back out of the digest
        rot(parent.store, data[PL + 77 : PL + 78], PL + 77)  # the parent mends its copy
        for number in (1, 2):
            child.finish_piece(
                TID, await client.download_piece(TID, number, fd, number * PL, PL, digest=digester)
            )
        await asyncio.wait_for(digester.check("content"), 5.0)
        assert digester.fed == len(data)  # nothing was read back from the file
    finally:
        os.close(fd)
        await digester.close()
        await client.close()


async def test_client_refuses_a_wrong_piece_request_locally(tmp_path: Path) -> None:
    # A bad task id is refused before anything is sent.
    client_sock, server_sock = socket.socketpair()
    client_sock.setblocking(False)
    client = PieceClient(client_sock, ("pair", 0))
    try:
        with pytest.raises(ProtocolError):
            await client.download_piece("../etc/passwd", 0, 0, 0, 1)
        assert client.broken
    finally:
        await client.close()
        server_sock.close()


# ----------------------------------------------------------------- lying or failing parents


class FakeParent:
    """A raw TCP server answering each DownloadPiece with ``respond(request, writer)``."""

    def __init__(
        self, respond: Callable[[vortex.DownloadPiece, asyncio.StreamWriter], Awaitable[None]]
    ) -> None:
        self.respond = respond
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.get_running_loop().create_task(self.serve(reader, writer))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            raw = await reader.readexactly(vortex.HEADER_SIZE + vortex.DOWNLOAD_PIECE_LENGTH)
            parser = vortex.FrameParser()
            parser.feed(raw)
            request = parser.next_event()
            assert isinstance(request, vortex.DownloadPiece)
            await self.respond(request, writer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


async def pull_from_fake(
    respond: Callable[[vortex.DownloadPiece, asyncio.StreamWriter], Awaitable[None]],
    tmp_path: Path,
    *,
    timeout: float = 5.0,
) -> tuple[Exception, bytes]:
    fake = FakeParent(respond)
    port = await fake.start()
    path = tmp_path / "out"
    path.write_bytes(b"\xee" * (4 * PL))
    fd = os.open(path, os.O_RDWR)
    pool = PieceConnectionPool()
    try:
        with pytest.raises(Exception) as caught:
            await pool.download_piece("127.0.0.1", port, TID, 1, fd, PL, PL, timeout=timeout)
    finally:
        os.close(fd)
        await pool.close()
        await fake.close()
    assert isinstance(caught.value, Exception)
    return caught.value, path.read_bytes()


async def test_parent_lying_about_the_offset_is_a_protocol_error(tmp_path: Path) -> None:
    async def respond(req: vortex.DownloadPiece, writer: asyncio.StreamWriter) -> None:
        payload = b"\x01" * PL
        writer.write(
            vortex.encode_piece_header(req.packet_id, req.number, 0, PL, f"crc32:{zlib.crc32(payload)}")
        )
        writer.write(payload)

    error, out = await pull_from_fake(respond, tmp_path)
    assert isinstance(error, ProtocolError) and "expected piece 1 at 65536" in str(error)
    assert out == b"\xee" * (4 * PL)  # nothing was written anywhere


async def test_parent_answering_another_packet_id_is_a_protocol_error(tmp_path: Path) -> None:
    async def respond(req: vortex.DownloadPiece, writer: asyncio.StreamWriter) -> None:
        writer.write(vortex.encode_piece_header((req.packet_id + 1) % 256, req.number, PL, PL, "crc32:0"))

    error, _ = await pull_from_fake(respond, tmp_path)
    assert isinstance(error, ProtocolError)


async def test_parent_closing_mid_piece_is_a_peer_error(tmp_path: Path) -> None:
    async def respond(req: vortex.DownloadPiece, writer: asyncio.StreamWriter) -> None:
        writer.write(vortex.encode_piece_header(req.packet_id, req.number, PL, PL, "crc32:1"))
        writer.write(b"\x02" * (PL // 2))

    error, _ = await pull_from_fake(respond, tmp_path)
    assert isinstance(error, PeerError) and "closed the connection" in str(error)


async def test_silent_parent_times_out_as_a_peer_error(tmp_path: Path) -> None:
    async def respond(req: vortex.DownloadPiece, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)

    error, _ = await pull_from_fake(respond, tmp_path, timeout=0.2)
    assert isinstance(error, PeerError) and "timed out" in str(error)


async def test_unreachable_parent_is_a_peer_error() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(PeerError, match="cannot connect"):
        await PieceClient.connect("127.0.0.1", port)


async def test_pool_retries_a_connection_the_parent_closed_while_idle(tmp_path: Path) -> None:
    store = PieceStore(tmp_path / "p")
    data = make_content(2 * PL)
    seed(store, TID, data)
    server = PieceServer(store)
    port = await server.start("127.0.0.1", 0)
    pool = PieceConnectionPool()
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
    server2: PieceServer | None = None
    try:
        await pool.download_piece("127.0.0.1", port, TID, 0, fd, 0, PL)
        await server.close()  # drops the pooled idle connection
        server2 = PieceServer(store)
        assert await server2.start("127.0.0.1", port) == port
        await pool.download_piece("127.0.0.1", port, TID, 1, fd, PL, PL)
        assert os.pread(fd, 2 * PL, 0) == data
    finally:
        os.close(fd)
        await pool.close()
        if server2 is not None:
            await server2.close()
        await server.close()


async def test_server_close_ends_open_connections(parent: Parent) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", parent.port)
    try:
        await until(lambda: parent.server.active_connections == 1, "the server took the connection")
        await parent.server.close()
        assert parent.server.active_connections == 0
        assert await read_all(reader) == b""
    finally:
        writer.close()
        await writer.wait_closed()


async def test_idle_connections_are_closed(tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    server = PieceServer(store, idle_timeout=0.05)
    port = await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await read_all(reader) == b""  # closed by the server, not by the 5 s guard
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        await server.close()


async def test_slow_but_steady_parent_is_not_timed_out(tmp_path: Path) -> None:
    # An inactivity timeout is time by definition; the margins are wide so that only a stall of
    # the whole process near the timeout could fail it: the piece takes ~1.6 s, over the 1 s
    # timeout, in 32 steps 50 ms apart.
    payload = bytes(range(256)) * (PL // 256)

    async def respond(req: vortex.DownloadPiece, writer: asyncio.StreamWriter) -> None:
        writer.write(
            vortex.encode_piece_header(req.packet_id, req.number, PL, PL, f"crc32:{zlib.crc32(payload)}")
        )
        for i in range(0, PL, PL // 32):
            writer.write(payload[i : i + PL // 32])
            await writer.drain()
            await asyncio.sleep(0.05)

    fake = FakeParent(respond)
    port = await fake.start()
    path = tmp_path / "out"
    path.write_bytes(b"\xee" * (4 * PL))
    fd = os.open(path, os.O_RDWR)
    pool = PieceConnectionPool()
    try:
        info = await pool.download_piece("127.0.0.1", port, TID, 1, fd, PL, PL, timeout=1.0)
    finally:
        os.close(fd)
        await pool.close()
        await fake.close()
    assert info.digest == f"crc32:{zlib.crc32(payload)}"
    assert path.read_bytes()[PL : 2 * PL] == payload
