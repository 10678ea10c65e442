"""Finished-but-not-yet-flushed tasks: fast to finish, never trusted blindly after a crash."""

import os
import zlib

from damselfly.daemon.store.piece_store import PieceStore
from damselfly.domain import PieceInfo

TID = "ab" * 32
PLEN = 1024


def fill(store: PieceStore, data: bytes) -> None:
    store.create_task(TID, url="http://x/f")
    store.set_content_length(TID, len(data), PLEN)
    fd = store.open_write_fd(TID)
    try:
        for n in range(0, len(data), PLEN):
            chunk = data[n : n + PLEN]
            os.pwrite(fd, chunk, n)
            store.finish_piece(TID, PieceInfo(n // PLEN, n, len(chunk), f"crc32:{zlib.crc32(chunk)}"))
    finally:
        os.close(fd)


def test_not_durable_task_is_verified_on_load(tmp_path):
    data = os.urandom(4 * PLEN + 7)
    store = PieceStore(tmp_path)
    fill(store, data)
    store.mark_succeeded(TID, durable=False)
    assert store.get(TID).state == "succeeded" and not store.get(TID).durable
    store.close()
    again = PieceStore(tmp_path)  # as after a crash: all pieces still match
    meta = again.get(TID)
    assert meta.state == "succeeded" and meta.is_complete and meta.durable


def test_not_durable_task_with_a_torn_piece_resumes(tmp_path):
    data = os.urandom(4 * PLEN)
    store = PieceStore(tmp_path)
    fill(store, data)
    store.mark_succeeded(TID, durable=False)
    store.close()
    with open(store.content_path(TID), "r+b") as f:  # the crash lost part of piece 2
        f.seek(2 * PLEN + 5)
        f.write(b"\0" * 10)
    again = PieceStore(tmp_path)
    meta = again.get(TID)
    assert meta.state == "pending" and sorted(meta.pieces) == [0, 1, 3]


def test_make_durable_records_it(tmp_path):
    store = PieceStore(tmp_path)
    fill(store, os.urandom(2 * PLEN))
    store.mark_succeeded(TID, durable=False)
    store.make_durable(TID)
    assert store.get(TID).durable
    store.close()
    assert PieceStore(tmp_path).get(TID).durable
