"""Cut-through: a parent serves a piece it is still receiving, and never a whole unverified one.

Real loopback sockets: a piece server over a store in which one piece is
"receiving" (its header came from the parent's own parent, so its digest is
known); the test plays that upstream transfer by writing the bytes in steps.
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

from damselfly.daemon.piece_client import PieceClient
from damselfly.daemon.piece_server import PieceServer
from damselfly.daemon.receiving import Receiving
from damselfly.daemon.storage import PieceStore
from damselfly.domain import PieceInfo
from damselfly.errors import NotFound, PeerError
from damselfly.ids import task_id

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

    def size(self) -> int:
        return os.fstat(self.out).st_size


@contextlib.asynccontextmanager
async def child_fetching(store: PieceStore, port: int, out_path: Path) -> AsyncIterator[Child]:
    entry = store.receiving.start(TID, 0, 0, PL, CRC0)
    client = await PieceClient.connect("127.0.0.1", port)
    out = os.open(out_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fetch = asyncio.ensure_future(client.download_piece(TID, 0, out, 0, PL, timeout=10))
        yield Child(entry, out, fetch)
    finally:
        os.close(out)
        await client.close()


def write(store: PieceStore, start: int, end: int) -> None:
    fd = store.open_write_fd(TID)
    try:
        os.pwrite(fd, DATA[start:end], start)
    finally:
        os.close(fd)


async def test_a_piece_is_served_while_it_lands(parent: tuple[PieceStore, int], tmp_path: Path) -> None:
    store, port = parent
    async with child_fetching(store, port, tmp_path / "child") as child:
        for step in range(1, 5):  # the upstream transfer, a quarter at a time
            write(store, (step - 1) * PL // 4, step * PL // 4)
            child.entry.advance(step * PL // 4)
            await asyncio.sleep(0.05)
        # Everything but the held-back tail has reached the child before our copy is verified.
        assert not child.fetch.done()
        assert child.size() >= PL - 64 * 1024
        store.finish_piece(TID, PieceInfo(0, 0, PL, CRC0))
        store.receiving.end(child.entry, ok=True)
        info = await asyncio.wait_for(child.fetch, 10)
        assert info.digest == CRC0
        assert os.pread(child.out, PL, 0) == DATA[:PL]


async def test_a_slow_upstream_is_passed_on_within_tens_of_milliseconds(
    parent: tuple[PieceStore, int], tmp_path: Path
) -> None:
    """Small arrivals go on at the next look (every 5-40 ms), never held back for a batch:
    on a slow link 256 KiB can take most of a second to gather, at every hop."""
    store, port = parent
    async with child_fetching(store, port, tmp_path / "child") as child:
        write(store, 0, 32 * 1024)
        child.entry.advance(32 * 1024)
        for _ in range(50):  # up to 1 s; a look comes every 40 ms at most
            await asyncio.sleep(0.02)
            if child.size() >= 32 * 1024:
                break
        assert child.size() >= 32 * 1024
        assert not child.fetch.done()
        write(store, 32 * 1024, PL)
        child.entry.advance(PL)
        store.finish_piece(TID, PieceInfo(0, 0, PL, CRC0))
        store.receiving.end(child.entry, ok=True)
        info = await asyncio.wait_for(child.fetch, 10)
        assert info.digest == CRC0 and os.pread(child.out, PL, 0) == DATA[:PL]


async def test_a_failed_upstream_transfer_never_completes_the_childs_piece(
    parent: tuple[PieceStore, int], tmp_path: Path
) -> None:
    store, port = parent
    async with child_fetching(store, port, tmp_path / "child") as child:
        write(store, 0, PL)  # every byte landed, but our own check will fail
        child.entry.advance(PL)
        await asyncio.sleep(0.1)
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
