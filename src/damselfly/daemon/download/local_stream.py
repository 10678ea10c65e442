"""What a local DownloadTask stream adds for its caller: the started message's pieces, and piece bytes.

dfget in a pod cannot see the daemon's files, so with ``need_piece_content``
each piece message carries the piece's bytes, read from the store's content
with one ``pread`` per piece (the bytes were verified when stored). Only one
piece is held at a time: the stream never holds the whole content.
"""

from __future__ import annotations

import asyncio
import os

from ...domain import ByteRange, PieceInfo
from ...errors import StorageError
from ..store.metadata import TaskMeta
from ..store.piece_store import PieceStore


def started_pieces(meta: TaskMeta | None, wanted: ByteRange | None) -> list[tuple[PieceInfo, bool]]:
    """The pieces a DownloadTaskStartedResponse lists, each with whether it is held already.

    As Dragonfly's dfdaemon lists its "interested pieces" (dragonfly-client/src/resource/task.rs
    at ff17c0b, "Construct the pieces for the download task started response"): every piece of
    the content (of the range, when one was asked); Rust's dfget awaits each of them. A held
    piece is described as stored (digest, cost), the others by number, offset and length.
    """
    if meta is None or meta.content_length is None or not meta.piece_length:
        return []
    first, end = 0, meta.content_length
    if wanted is not None:
        first, end = wanted.start, min(meta.content_length, wanted.start + wanted.length)
    pieces = []
    for number in range(first // meta.piece_length, (end + meta.piece_length - 1) // meta.piece_length):
        held = meta.pieces.get(number)
        if held is not None:
            pieces.append((held, True))
            continue
        offset = number * meta.piece_length
        pieces.append(
            (PieceInfo(number, offset, min(meta.piece_length, meta.content_length - offset)), False)
        )
    return pieces


class PieceReader:
    """Reads finished pieces' bytes from a task's content for ``need_piece_content`` (one fd, lazily)."""

    def __init__(self, store: PieceStore, task_id: str) -> None:
        self.store = store
        self.task_id = task_id
        self.fd: int | None = None

    async def read(self, offset: int, length: int) -> bytes:
        if self.fd is None:
            self.fd = self.store.open_read_fd(self.task_id)
        data = await asyncio.to_thread(os.pread, self.fd, length, offset)
        if len(data) != length:
            raise StorageError(f"task {self.task_id}: short read of {length} bytes at {offset}")
        return data

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
