"""send_span: bytes in order as pieces land, the last chunk held until the digest matches."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import BinaryIO

import pytest

from damselfly import ids
from damselfly.daemon.proxy.stream import CHUNK, Span, send_span
from damselfly.daemon.storage import PieceStore
from damselfly.errors import DigestMismatch
from helpers.store import put_piece as store_piece

PIECE = 4 * 1024 * 1024


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    async def sendfile(self, file: BinaryIO, offset: int, count: int) -> None:
        assert offset == len(self.data)  # in order, no gap, no overlap
        self.data += os.pread(file.fileno(), count, offset)


def put_piece(store: PieceStore, task_id: str, data: bytes, number: int) -> None:
    store_piece(store, task_id, data, number, PIECE)


async def test_streams_pieces_as_they_land_and_checks_the_digest(tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    data = os.urandom(3 * PIECE + 12345)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    tid = ids.blob_task_id(digest)
    store.create_task(tid)
    store.set_content_length(tid, len(data), PIECE)
    job: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    sink = Sink()
    sending = asyncio.ensure_future(
        send_span(store, tid, job, Span(0, len(data) - 1, len(data)), PIECE, sink, digest=digest)
    )
    put_piece(store, tid, data, 0)
    for _ in range(100):
        if len(sink.data) >= PIECE:
            break
        await asyncio.sleep(0.01)
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
    tid = ids.blob_task_id(digest)
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
