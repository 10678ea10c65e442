"""send_span: bytes in order as pieces land, the last chunk held until the digest matches."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from damselfly.daemon.proxy import stream
from damselfly.daemon.proxy.stream import CHUNK, ResponseSink, Span, send_span, wait_until_held
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.errors import DigestMismatch
from helpers.store import put_piece as store_piece
from helpers.wait import parked_on, until

PIECE = 4 * 1024 * 1024


class Sink(ResponseSink):
    """The proxy's sink, writing into a bytearray instead of a response."""

    def __init__(self) -> None:
        super().__init__(self, chunk=256 * 1024)
        self.data = bytearray()

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data  # copied at once, like a transport that could send it all


def put_piece(store: PieceStore, task_id: str, data: bytes, number: int) -> None:
    store_piece(store, task_id, data, number, PIECE)


async def test_streams_pieces_as_they_land_and_checks_the_digest(tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    data = os.urandom(3 * PIECE + 12345)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    tid = digest.removeprefix("sha256:")
    store.create_task(tid)
    store.set_content_length(tid, len(data), PIECE)
    job: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    sink = Sink()
    sending = asyncio.ensure_future(
        send_span(store, tid, job, Span(0, len(data) - 1, len(data)), PIECE, sink, digest=digest)
    )
    put_piece(store, tid, data, 0)
    await until(lambda: len(sink.data) >= PIECE, "the first piece went out")
    assert bytes(sink.data) == data[:PIECE]  # the first piece went out before the others landed
    for n in (2, 1, 3):  # out of order: still sent in order
        put_piece(store, tid, data, n)
    await asyncio.wait_for(sending, 10)
    assert bytes(sink.data) == data
    job.cancel()
    store.close()


async def test_wrong_bytes_keep_the_last_chunk_back(tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    data = os.urandom(2 * PIECE)
    digest = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    tid = digest.removeprefix("sha256:")
    store.create_task(tid)
    store.set_content_length(tid, len(data), PIECE)
    for n in range(2):
        put_piece(store, tid, data, n)
    job: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    sink = Sink()
    with pytest.raises(DigestMismatch):
        await send_span(store, tid, job, Span(0, len(data) - 1, len(data)), PIECE, sink, digest=digest)
    assert len(sink.data) == len(data) - CHUNK  # the client never gets the whole body
    # A range (no digest to check) goes out whole.
    ranged = Sink()
    await send_span(store, tid, job, Span(0, PIECE + 9, len(data)), PIECE, ranged)
    assert bytes(ranged.data) == data[: PIECE + 10]
    job.cancel()
    store.close()


async def test_a_range_not_in_the_page_cache_is_read_in_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3 * 256 * 1024 + 7)
    path = tmp_path / "content"
    path.write_bytes(data)
    real = os.preadv
    where: list[str] = []

    def preadv(fd: int, buffers: list[memoryview], offset: int, flags: int = 0) -> int:
        if flags:  # RWF_NOWAIT: say the pages are on the disk
            raise BlockingIOError
        where.append("loop" if asyncio._get_running_loop() is not None else "thread")
        return real(fd, buffers, offset)

    monkeypatch.setattr(stream.os, "preadv", preadv)
    sink = Sink()
    with path.open("rb", buffering=0) as f:
        await sink.send_range(f, 5, len(data) - 5)
    assert bytes(sink.data) == data[5:]
    assert where and set(where) == {"thread"}


class KeepingWriter:
    """A transport that keeps the views it was given, as asyncio's does (3.12+) for what it
    could not send at once; the bytes are read only at the end."""

    def __init__(self) -> None:
        self.held: list[memoryview] = []

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self.held.append(memoryview(data))


async def test_a_buffer_a_transport_still_holds_is_not_reused(tmp_path: Path) -> None:
    data = os.urandom(5 * 64 * 1024 + 99)
    path = tmp_path / "content"
    path.write_bytes(data)
    writer = KeepingWriter()
    sink = ResponseSink(writer, chunk=64 * 1024)
    with path.open("rb", buffering=0) as f:
        await sink.send_range(f, 0, len(data))
    assert b"".join(bytes(v) for v in writer.held) == data


async def test_buffers_the_transport_let_go_of_are_reused(tmp_path: Path) -> None:
    data = os.urandom(5 * 64 * 1024 + 99)
    path = tmp_path / "content"
    path.write_bytes(data)
    sink = Sink()
    sink._chunk = 64 * 1024
    with path.open("rb", buffering=0) as f:
        await sink.send_range(f, 0, len(data))
    assert bytes(sink.data) == data
    assert len(sink._pool) == 1  # every chunk went through the same buffer


async def test_held_means_every_piece_even_before_the_task_exists(tmp_path: Path) -> None:
    # The read-ahead waits on this right after starting the download: the task may not exist yet.
    store = PieceStore(tmp_path)
    data = os.urandom(PIECE + 10)
    tid = hashlib.sha256(data).hexdigest()
    job: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    looked: list[object] = []
    get = store.get

    def counting_get(task_id: str) -> object:
        looked.append(meta := get(task_id))
        return meta

    store.get = counting_get  # type: ignore[method-assign]
    waiting = asyncio.ensure_future(wait_until_held(store, tid, job))  # type: ignore[arg-type]
    await until(lambda: len(looked) >= 2, "the waiter looked for the task twice")
    assert not waiting.done() and looked[-1] is None  # no task yet is not a held task
    store.create_task(tid)
    store.set_content_length(tid, len(data), PIECE)
    put_piece(store, tid, data, 0)
    await until(lambda: parked_on(store, tid), "the waiter saw the first piece land")
    assert not waiting.done()  # one piece of two
    put_piece(store, tid, data, 1)
    await asyncio.wait_for(waiting, 5)
    job.cancel()
    store.close()
