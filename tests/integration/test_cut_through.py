"""Cut-through: a parent serves a piece it is still receiving, and never a whole unverified one.

Real loopback sockets: a piece server over a store in which one piece is
"receiving": its header came from the parent's own parent (its digest known),
or it is landing from the origin (its digest not known yet: a Damselfly child,
which asks with the trailer tag, gets the digest after the content). A plain
child, as any Dragonfly client, gets the piece whole once it is held, as from a
Dragonfly parent. The test plays that upstream transfer by writing the bytes in
steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from damselfly.daemon.store.piece_store import PieceStore
from damselfly.daemon.store.receiving import Receiving
from damselfly.daemon.transfer import vortex
from damselfly.daemon.transfer.piece_client import PieceClient, PieceConnectionPool
from damselfly.daemon.transfer.piece_server import HOLD_BYTES as HOLD
from damselfly.daemon.transfer.piece_server import PieceServer
from damselfly.domain import PieceInfo
from damselfly.errors import DigestMismatch, NotFound, PeerError
from damselfly.ids import task_id
from helpers.wait import until

pytestmark = pytest.mark.integration

TID = task_id("http://example.com/forwarded")
PL = 1024 * 1024
DATA = os.urandom(2 * PL)
CRC0 = f"crc32:{zlib.crc32(DATA[:PL])}"


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


@dataclass
class Child:
    """A child fetching piece 0 from the parent while the parent still receives it."""

    entry: Receiving
    out: int  # the child's output fd
    fetch: asyncio.Future[PieceInfo]

    def received(self, n: int) -> bool:
        """The first ``n`` bytes of the piece are in the child's file (as they came from the parent)."""
        return n <= 0 or os.pread(self.out, n, 0) == DATA[:n]


@contextlib.asynccontextmanager
async def child_fetching(
    store: PieceStore, port: int, out_path: Path, *, digest: str = CRC0, damselfly: bool = True
) -> AsyncIterator[Child]:
    """Piece 0 arriving at the parent (its digest known from the parent's own parent, or ""
    while it lands from the origin); a child asking for it (``damselfly``: with Damselfly's
    request, the trailer tag; else as Dragonfly's client asks)."""
    entry = store.receiving.start(TID, 0, 0, PL, digest)
    client = await PieceClient.connect("127.0.0.1", port)
    client.damselfly = damselfly
    out = os.open(out_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fetch = asyncio.ensure_future(client.download_piece(TID, 0, out, 0, PL, timeout=10))
        yield Child(entry, out, fetch)
    finally:
        os.close(out)
        await client.close()


def write(store: PieceStore, start: int, end: int, data: bytes = DATA) -> None:
    fd = store.open_write_fd(TID)
    try:
        os.pwrite(fd, data[start:end], start)
    finally:
        os.close(fd)


async def got_piece_zero(child: Child) -> None:
    """The child's fetch completes with piece 0, its digest and its bytes right."""
    info = await asyncio.wait_for(child.fetch, 10)
    assert info.digest == CRC0
    assert os.pread(child.out, PL, 0) == DATA[:PL]


def holds_back(entry: Receiving) -> bool:
    """The parent's server sent what it may and now waits for its own copy's verdict
    (:meth:`Receiving.ended`): the causal point for "the rest did not go out"."""
    return bool(entry._waiters)


def record(store: PieceStore, entry: Receiving) -> None:
    """The parent's own copy of piece 0 passed its check: its digest is known, it is held."""
    entry.digest = CRC0
    store.finish_piece(TID, PieceInfo(0, 0, PL, CRC0))
    store.receiving.end(entry, ok=True)


async def test_a_piece_is_served_while_it_lands(parent: tuple[PieceStore, int], tmp_path: Path) -> None:
    store, port = parent
    async with child_fetching(store, port, tmp_path / "child") as child:
        for step in range(1, 5):  # the upstream transfer, a quarter at a time
            write(store, (step - 1) * PL // 4, step * PL // 4)
            child.entry.advance(step * PL // 4)
            await until(
                lambda step=step: child.received(min(step * PL // 4, PL - HOLD)), f"quarter {step} went on"
            )
        # Everything but the held-back tail has reached the child before our copy is verified.
        await until(lambda: holds_back(child.entry), "the parent waits for its verdict")
        assert not child.fetch.done()
        record(store, child.entry)
        await got_piece_zero(child)


async def test_a_slow_upstream_is_passed_on_without_waiting_for_a_batch(
    parent: tuple[PieceStore, int], tmp_path: Path
) -> None:
    """Small arrivals go on at the next look, never held back for a batch: on a slow link
    256 KiB can take most of a second to gather, at every hop. (Nothing more lands until the
    child has the first 32 KiB; how soon a look comes is the server's poll interval.)"""
    store, port = parent
    async with child_fetching(store, port, tmp_path / "child") as child:
        write(store, 0, 32 * 1024)
        child.entry.advance(32 * 1024)
        await until(lambda: child.received(32 * 1024), "32 KiB went on alone")
        assert not child.fetch.done()
        write(store, 32 * 1024, PL)
        child.entry.advance(PL)
        record(store, child.entry)
        await got_piece_zero(child)


async def test_a_failed_upstream_transfer_never_completes_the_childs_piece(
    parent: tuple[PieceStore, int], tmp_path: Path
) -> None:
    store, port = parent
    async with child_fetching(store, port, tmp_path / "child") as child:
        write(store, 0, PL)  # every byte landed, but our own check will fail
        child.entry.advance(PL)
        await until(lambda: holds_back(child.entry), "the parent waits for its verdict")
        assert not child.fetch.done()  # the tail waits for the verdict
        store.receiving.end(child.entry, ok=False)
        with pytest.raises(PeerError):
            await asyncio.wait_for(child.fetch, 10)
    # Once the failure is known, the piece is simply not held.
    again = await PieceClient.connect("127.0.0.1", port)
    out = os.open(tmp_path / "child2", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with pytest.raises(NotFound):
            await again.download_piece(TID, 0, out, 0, PL, timeout=10)
    finally:
        os.close(out)
        await again.close()


async def test_a_landing_piece_reaches_a_trailer_child_before_its_digest_is_known(
    parent: tuple[PieceStore, int], tmp_path: Path
) -> None:
    store, port = parent
    async with child_fetching(store, port, tmp_path / "child", digest="") as child:
        for step in range(1, 5):
            write(store, (step - 1) * PL // 4, step * PL // 4)
            child.entry.advance(step * PL // 4)
            await until(
                lambda step=step: child.received(min(step * PL // 4, PL - HOLD)), f"quarter {step} went on"
            )
        # All but the held-back tail went on while the piece's digest was still unknown.
        await until(lambda: holds_back(child.entry), "the parent waits for its verdict")
        assert not child.fetch.done()
        record(store, child.entry)  # the origin's piece ended: its crc32 is known
        await got_piece_zero(child)


@pytest.mark.parametrize("digest", ["", CRC0], ids=["from-the-origin", "from-a-parent"])
async def test_a_plain_child_gets_the_landing_piece_whole_with_its_digest_first(
    parent: tuple[PieceStore, int], tmp_path: Path, digest: str
) -> None:
    """Any Dragonfly client: a Rust parent serves a piece once it is finished, and so do we."""
    store, port = parent
    async with child_fetching(store, port, tmp_path / "child", digest=digest, damselfly=False) as child:
        write(store, 0, PL)
        child.entry.advance(PL)
        await until(lambda: holds_back(child.entry), "the parent waits for the piece to be whole")
        assert not child.fetch.done() and not child.received(1)  # nothing before its digest
        record(store, child.entry)
        await got_piece_zero(child)


async def test_a_trailer_that_does_not_match_the_bytes_fails_the_piece(
    parent: tuple[PieceStore, int], tmp_path: Path
) -> None:
    """The child checks the bytes it got against the trailer, as against a header digest."""
    store, port = parent
    async with child_fetching(store, port, tmp_path / "child", digest="") as child:
        corrupt = bytes([DATA[0] ^ 0xFF]) + DATA[1:]
        write(store, 0, PL, corrupt)  # the bytes on the parent's disk went bad
        child.entry.advance(PL)
        record(store, child.entry)  # what the origin's stream summed to
        with pytest.raises(DigestMismatch):
            await asyncio.wait_for(child.fetch, 10)


async def test_a_failed_origin_fetch_never_completes_a_trailer_childs_piece(
    parent: tuple[PieceStore, int], tmp_path: Path
) -> None:
    store, port = parent
    async with child_fetching(store, port, tmp_path / "child", digest="") as child:
        write(store, 0, PL // 2)
        child.entry.advance(PL // 2)
        await until(lambda: child.received(PL // 2), "the first half went on")
        store.receiving.end(child.entry, ok=False)  # the origin's connection broke mid-piece
        with pytest.raises(PeerError):
            await asyncio.wait_for(child.fetch, 10)


async def test_a_parent_that_does_not_take_the_trailer_request_gets_plain_ones(tmp_path: Path) -> None:
    """A parent that said it speaks Damselfly's extensions but closes on tag 224 without an
    answer (as Dragonfly's server, or ours with wire.extensions off, does with a tag it does
    not serve): the pool asks it again plainly, and plainly from then on."""
    tags: list[int] = []

    async def plain_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readexactly(vortex.HEADER_SIZE)
            header = vortex.HEADER.unpack(head)
            tags.append(header[1])
            value = await reader.readexactly(header[2])
            if header[1] == vortex.Tag.DOWNLOAD_PIECE:
                request = vortex.decode_download_piece(header[0], value)
                writer.write(vortex.encode_piece_header(request.packet_id, 0, 0, PL, CRC0) + DATA[:PL])
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(plain_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = PieceConnectionPool()
    out = os.open(tmp_path / "child", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for _ in range(2):
            info = await pool.download_piece(
                "127.0.0.1", port, TID, 0, out, 0, PL, timeout=10, damselfly=True
            )
            assert info.digest == CRC0 and os.pread(out, PL, 0) == DATA[:PL]
        plain, trailer = vortex.Tag.DOWNLOAD_PIECE, vortex.Tag.DOWNLOAD_PIECE_TRAILER
        assert tags == [trailer, plain, plain]
    finally:
        os.close(out)
        await pool.close()
        server.close()
        await server.wait_closed()
