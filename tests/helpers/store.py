"""Putting pieces into a PieceStore by hand, as a download would (bytes written, then recorded),
and laying finished tasks into a store dir as a daemon leaves them."""

from __future__ import annotations

import os
import time
import zlib
from pathlib import Path

from damselfly.daemon.store.files import CONTENT, task_dir
from damselfly.daemon.store.metadata import TaskMeta, save_meta
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.domain import DownloadSpec, PieceInfo, TrafficType
from damselfly.ids import download_task_id


def put_piece(
    store: PieceStore,
    task_id: str,
    data: bytes,
    number: int,
    piece_length: int,
    traffic: TrafficType = TrafficType.REMOTE_PEER,
    *,
    record: bool = True,
) -> PieceInfo:
    """Write piece ``number`` of ``data`` at its offset and (unless ``record`` is false: bytes
    on disk, metadata not yet written, as after a crash) record it with its crc32."""
    offset = number * piece_length
    chunk = data[offset : offset + piece_length]
    fd = store.open_write_fd(task_id)
    try:
        os.pwrite(fd, chunk, offset)
    finally:
        os.close(fd)
    info = PieceInfo(number, offset, len(chunk), f"crc32:{zlib.crc32(chunk)}", traffic_type=traffic)
    if record:
        store.finish_piece(task_id, info)
    return info


def write_held_task(root: Path, url: str, data: bytes, piece_length: int = 4 * 1024 * 1024) -> str:
    """Lay a finished, flushed task for ``url`` into a store dir as a daemon leaves it (the
    store's own layout and codec), without a daemon; returns its task ID."""
    tid = download_task_id(DownloadSpec(url=url))
    where = task_dir(root, tid)
    where.mkdir(parents=True)
    (where / CONTENT).write_bytes(data)
    pieces = {}
    for number, offset in enumerate(range(0, len(data), piece_length)):
        chunk = data[offset : offset + piece_length]
        pieces[number] = PieceInfo(
            number, offset, len(chunk), f"crc32:{zlib.crc32(chunk)}", traffic_type=TrafficType.BACK_TO_SOURCE
        )
    meta = TaskMeta(
        task_id=tid, url=url, content_length=len(data), piece_length=piece_length, state="succeeded",
        pieces=pieces, created_at=time.time(), updated_at=time.time(), accessed_at=time.time(),
    )  # fmt: skip
    save_meta(where, meta, with_pieces=True)
    return tid


def rot(path: Path, data: bytes, offset: int) -> None:
    """``data`` replaces a content file's bytes at ``offset`` as bit rot would: no write the
    file system records (its mtime, the store's stamp on sealed content, stays as it was)."""
    st = os.stat(path)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
