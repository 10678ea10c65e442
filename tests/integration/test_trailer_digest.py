"""A piece still arriving from the origin goes on at once, its digest after its content.

Real loopback sockets and the real piece server and client. The parent's store
holds piece 0 as *landing* (what the conductor records while the origin's bytes
arrive: daemon/receiving.py with an empty digest); the test plays the origin by
writing the bytes in steps. A child that asks with the trailer request
(vortex.Tag.DOWNLOAD_PIECE_TRAILER) gets the bytes as they land and the digest
after them; a plain child (any Dragonfly client) gets the whole piece once it
is recorded, digest first.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from damselfly.daemon import vortex
from damselfly.daemon.piece_client import PieceClient, PieceConnectionPool
from damselfly.daemon.piece_server import PieceServer
from damselfly.daemon.storage import PieceStore
from damselfly.domain import PieceInfo
from damselfly.errors import DigestMismatch, PeerError
from damselfly.ids import task_id

pytestmark = pytest.mark.integration

TID = task_id("http://example.com/from-the-origin")
PL = 1024 * 1024
DATA = os.urandom(PL)
CRC = f"crc32:{zlib.crc32(DATA)}"


@pytest.fixture
async def parent(tmp_path: Path) -> AsyncIterator[tuple[PieceStore, int]]:
    store = PieceStore(tmp_path / "parent")
    store.create_task(TID)
    store.set_content_length(TID, len(DATA), PL)
    server = PieceServer(store)
    port = await server.start("127.0.0.1", 0)
    yield store, port
    await server.close()
    store.close()


def land(store: PieceStore, start: int, end: int) -> None:
    fd = store.open_write_fd(TID)
    try:
        os.pwrite(fd, DATA[start:end], start)
    finally:
        os.close(fd)


async def fetch(port: int, out_path: Path, *, trailer: bool) -> tuple[asyncio.Future[PieceInfo], int]:
    client = await PieceClient.connect("127.0.0.1", port)
    client.trailer = trailer
    out = os.open(out_path, os.O_RDWR | os.O_CREAT, 0o644)

    async def go() -> PieceInfo:
        try:
            return await client.download_piece(TID, 0, out, 0, PL, timeout=10)
        finally:
            await client.close()

    return asyncio.ensure_future(go()), out


async def test_a_landing_piece_reaches_a_trailer_child_before_its_digest_is_known(
    parent: tuple[PieceStore, int], tmp_path: Path
) -> None:
    store, port = parent
    entry = store.receiving.start(TID, 0, 0, PL, "")
    fetching, out = await fetch(port, tmp_path / "child", trailer=True)
    try:
        for step in range(1, 5):
            land(store, (step - 1) * PL // 4, step * PL // 4)
            entry.advance(step * PL // 4)
            await asyncio.sleep(0.05)
        # All but the held-back tail went on while the piece's digest was still unknown.
        assert not fetching.done()
        assert os.fstat(out).st_size >= PL - 64 * 1024
        entry.digest = CRC  # the origin's piece ended: its crc32 is known
        store.finish_piece(TID, PieceInfo(0, 0, PL, CRC))
        store.receiving.end(entry, ok=True)
        info = await asyncio.wait_for(fetching, 10)
        assert info.digest == CRC and os.pread(out, PL, 0) == DATA
    finally:
        os.close(out)


async def test_a_plain_child_gets_the_landing_piece_whole_with_its_digest_first(
    parent: tuple[PieceStore, int], tmp_path: Path
) -> None:
    store, port = parent
    entry = store.receiving.start(TID, 0, 0, PL, "")
    fetching, out = await fetch(port, tmp_path / "child", trailer=False)
    try:
        land(store, 0, PL)
        entry.advance(PL)
        await asyncio.sleep(0.1)
        assert not fetching.done() and os.fstat(out).st_size == 0  # nothing before its digest
        entry.digest = CRC
        store.finish_piece(TID, PieceInfo(0, 0, PL, CRC))
        store.receiving.end(entry, ok=True)
        info = await asyncio.wait_for(fetching, 10)
        assert info.digest == CRC and os.pread(out, PL, 0) == DATA
    finally:
        os.close(out)


async def test_a_trailer_that_does_not_match_the_bytes_fails_the_piece(
    parent: tuple[PieceStore, int], tmp_path: Path
) -> None:
    """The child checks the bytes it got against the trailer, as against a header digest."""
    store, port = parent
    entry = store.receiving.start(TID, 0, 0, PL, "")
    fetching, out = await fetch(port, tmp_path / "child", trailer=True)
    try:
        corrupt = bytes([DATA[0] ^ 0xFF]) + DATA[1:]
        fd = store.open_write_fd(TID)
        os.pwrite(fd, corrupt, 0)  # the bytes on the parent's disk went bad
        os.close(fd)
        entry.advance(PL)
        entry.digest = CRC  # what the origin's stream summed to
        store.finish_piece(TID, PieceInfo(0, 0, PL, CRC))
        store.receiving.end(entry, ok=True)
        with pytest.raises(DigestMismatch):
            await asyncio.wait_for(fetching, 10)
    finally:
        os.close(out)


async def test_a_failed_origin_fetch_never_completes_the_childs_piece(
    parent: tuple[PieceStore, int], tmp_path: Path
) -> None:
    store, port = parent
    entry = store.receiving.start(TID, 0, 0, PL, "")
    fetching, out = await fetch(port, tmp_path / "child", trailer=True)
    try:
        land(store, 0, PL // 2)
        entry.advance(PL // 2)
        await asyncio.sleep(0.05)
        store.receiving.end(entry, ok=False)  # the origin's connection broke mid-piece
        with pytest.raises(PeerError):
            await asyncio.wait_for(fetching, 10)
    finally:
        os.close(out)


async def test_a_parent_that_does_not_know_the_trailer_request_gets_plain_ones(tmp_path: Path) -> None:
    """Like an older piece server: an unknown tag is answered Error (packet 0) and the
    connection closed. The pool then asks that parent plainly, and keeps doing so."""
    tags: list[int] = []

    async def old_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(vortex.HEADER_SIZE)
                header = vortex.HEADER.unpack(head)
                tags.append(header[1])
                value = await reader.readexactly(header[2])
                if header[1] != vortex.Tag.DOWNLOAD_PIECE:
                    writer.write(vortex.encode_error(0, vortex.ErrorCode.INVALID_ARGUMENT, "unknown tag"))
                    await writer.drain()
                    return
                request = vortex.decode_download_piece(header[0], value)
                writer.write(vortex.encode_piece_header(request.packet_id, 0, 0, PL, CRC) + DATA)
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(old_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = PieceConnectionPool()
    out = os.open(tmp_path / "child", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for _ in range(2):
            info = await pool.download_piece("127.0.0.1", port, TID, 0, out, 0, PL, timeout=10)
            assert info.digest == CRC and os.pread(out, PL, 0) == DATA
        plain, trailer = vortex.Tag.DOWNLOAD_PIECE, vortex.Tag.DOWNLOAD_PIECE_TRAILER
        assert tags == [trailer, plain, plain]
    finally:
        os.close(out)
        await pool.close()
        server.close()
        await server.wait_closed()
