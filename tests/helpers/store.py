"""Putting pieces into a PieceStore by hand, as a download would (bytes written, then recorded)."""

from __future__ import annotations

import os
import zlib

from damselfly.daemon.store.piece_store import PieceStore
from damselfly.domain import PieceInfo, TrafficType


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
