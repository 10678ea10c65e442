"""PieceStore: pieces, restart reload, crash consistency, path safety, waiters."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import pytest

from damselfly.daemon.store.piece_store import PieceStore
from damselfly.domain import PieceInfo
from damselfly.errors import InvalidArgument, NotFound
from damselfly.ids import task_id
from helpers.store import put_piece

TID = task_id("http://example.com/file")
PL = 4096


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def content(n: int, seed: int = 1) -> bytes:
    return bytes((i * 31 + seed) & 0xFF for i in range(n))


def write_piece(store: PieceStore, tid: str, data: bytes, number: int, *, record: bool = True) -> PieceInfo:
    return put_piece(store, tid, data, number, PL, record=record)


def fill(store: PieceStore, tid: str, data: bytes) -> None:
    store.create_task(tid, url="http://example.com/file")
    store.set_content_length(tid, len(data), PL, {"Content-Type": "application/octet-stream"})
    store.mark_running(tid)
    for n in range((len(data) + PL - 1) // PL):
        write_piece(store, tid, data, n)


def read_content(store: PieceStore, tid: str) -> bytes:
    return store.content_path(tid).read_bytes()


def test_create_is_idempotent_and_resets_failed(tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    a = store.create_task(TID, url="u", tag="t")
    assert store.create_task(TID) is a
    assert (a.state, a.url, a.tag) == ("pending", "u", "t")
    store.mark_failed(TID, "origin 500")
    assert store.get(TID) is not None and store.get(TID).state == "failed"  # type: ignore[union-attr]
    assert store.create_task(TID).state == "pending"


def test_pieces_complete_and_version(tmp_path: Path) -> None:
    clock = FakeClock()
    store = PieceStore(tmp_path, clock=clock)
    data = content(3 * PL + 100)
    store.create_task(TID)
    store.set_content_length(TID, len(data), PL)
    meta = store.get(TID)
    assert meta is not None and meta.piece_count == 4 and not meta.is_complete
    assert os.path.getsize(store.content_path(TID)) == len(data)
    v = meta.version
    for n in range(4):
        write_piece(store, TID, data, n)
        assert store.has_piece(TID, n)
    assert meta.version == v + 4
    assert meta.is_complete
    clock.now = 2000.0
    store.mark_succeeded(TID)
    assert meta.state == "succeeded" and meta.updated_at == 2000.0
    assert read_content(store, TID) == data
    assert store.usage() >= len(data)


def test_finish_piece_refuses_wrong_geometry(tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    store.create_task(TID)
    store.set_content_length(TID, 2 * PL + 10, PL)
    with pytest.raises(InvalidArgument):
        store.finish_piece(TID, PieceInfo(1, PL + 1, PL, "crc32:0"))  # offset off the grid
    with pytest.raises(InvalidArgument):
        store.finish_piece(TID, PieceInfo(2, 2 * PL, PL, "crc32:0"))  # last piece is 10 bytes
    with pytest.raises(InvalidArgument):
        store.finish_piece(TID, PieceInfo(3, 3 * PL, 1, "crc32:0"))  # out of range
    with pytest.raises(InvalidArgument):
        store.mark_succeeded(TID)  # not complete


def test_set_content_length_refuses_new_geometry_with_pieces(tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    data = content(2 * PL)
    fill(store, TID, data)
    with pytest.raises(InvalidArgument):
        store.set_content_length(TID, len(data), 2 * PL)
    with pytest.raises(InvalidArgument):
        store.set_content_length(TID, len(data) + 1, PL)
    store.set_content_length(TID, len(data), PL)  # same numbers: fine


def test_restart_reloads_finished_tasks(tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    data = content(5 * PL + 7)
    fill(store, TID, data)
    store.mark_succeeded(TID)
    store.close()

    again = PieceStore(tmp_path)
    meta = again.get(TID)
    assert meta is not None
    assert meta.state == "succeeded" and meta.is_complete
    assert meta.response_header == {"Content-Type": "application/octet-stream"}
    assert meta.pieces == store.get(TID).pieces  # type: ignore[union-attr]
    fd = again.open_read_fd(TID)
    try:
        assert os.pread(fd, len(data), 0) == data
    finally:
        os.close(fd)


def test_restart_of_a_running_task_reverifies_and_drops_bad_pieces(tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    data = content(4 * PL)
    store.create_task(TID)
    store.set_content_length(TID, len(data), PL)
    store.mark_running(TID)
    for n in range(3):
        write_piece(store, TID, data, n)
    # Piece 1's bytes rot after being recorded (e.g. lost in a crash before writeback).
    fd = store.open_write_fd(TID)
    os.pwrite(fd, b"\x00\x00", PL + 5)
    os.close(fd)
    journal = store.content_path(TID).parent / "pieces.journal"
    # A crash in the middle of appending a line leaves it torn.
    with open(journal, "ab") as f:
        f.write(b'{"n":3,"o":12288,"l":40')
    # A line for bytes that were never written.
    store.close()

    again = PieceStore(tmp_path)
    meta = again.get(TID)
    assert meta is not None
    assert sorted(meta.pieces) == [0, 2]
    assert meta.state == "pending"  # nobody is downloading it any more
    assert not meta.is_complete
    # The journal was rewritten with only the verified pieces.
    lines = [json.loads(x) for x in journal.read_text().splitlines()]
    assert [x["n"] for x in lines] == [0, 2]
    # Resume: the missing pieces can be written and the task finished.
    for n in (1, 3):
        write_piece(again, TID, data, n)
    again.mark_succeeded(TID)
    assert read_content(again, TID) == data
    assert not journal.exists()


def test_journaled_piece_with_unwritten_bytes_is_dropped(tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    data = content(2 * PL)
    store.create_task(TID)
    store.set_content_length(TID, len(data), PL)
    write_piece(store, TID, data, 0)
    chunk = data[PL:]
    # Recorded but the bytes never reached the file (sparse zeros remain).
    store.finish_piece(TID, PieceInfo(1, PL, PL, f"crc32:{zlib.crc32(chunk)}"))
    store.close()
    assert sorted(PieceStore(tmp_path).get(TID).pieces) == [0]  # type: ignore[union-attr]


def test_unreadable_metadata_is_dropped(tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    fill(store, TID, content(PL))
    store.mark_succeeded(TID)
    (store.content_path(TID).parent / "metadata.json").write_text("{not json")
    assert PieceStore(tmp_path).get(TID) is None


@pytest.mark.parametrize(
    "bad", ["../../etc/passwd", "a" * 63, "A" * 64, "../" + "a" * 61, "", "a" * 64 + "/x", "a" * 64 + "\n"]
)
def test_path_traversal_is_refused(tmp_path: Path, bad: str) -> None:
    store = PieceStore(tmp_path)
    with pytest.raises(InvalidArgument):
        store.create_task(bad)
    with pytest.raises(InvalidArgument):
        store.content_path(bad)
    with pytest.raises(InvalidArgument):
        store.open_read_fd(bad)
    assert store.get(bad) is None
    assert not store.has_piece(bad, 0)


def test_unknown_task(tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    with pytest.raises(NotFound):
        store.open_read_fd(TID)
    with pytest.raises(NotFound):
        store.finish_piece(TID, PieceInfo(0, 0, 1, "crc32:0"))


def test_delete(tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    fill(store, TID, content(PL))
    store.mark_succeeded(TID)
    task_dir = store.content_path(TID).parent
    store.delete_task(TID)
    assert store.get(TID) is None and not task_dir.exists()
    assert PieceStore(tmp_path).get(TID) is None
    store.delete_task(TID)  # twice is fine


def test_touch_is_persisted(tmp_path: Path) -> None:
    clock = FakeClock()
    store = PieceStore(tmp_path, clock=clock)
    fill(store, TID, content(PL))
    store.mark_succeeded(TID)
    clock.now = 5000.0
    store.touch(TID)
    assert PieceStore(tmp_path).get(TID).accessed_at == 5000.0  # type: ignore[union-attr]


def test_only_durable_metadata_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An fsync on the event loop waits for other files' dirty data (ext4 journal
    # commit): the hot path of a download must not fsync; a durable success must.
    store = PieceStore(tmp_path)
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    fill(store, TID, content(3 * PL))
    store.mark_succeeded(TID, durable=False)
    meta_before = (store.content_path(TID).parent / "metadata.json").read_bytes()
    store.touch(TID)
    assert synced == []
    assert (store.content_path(TID).parent / "metadata.json").read_bytes() == meta_before
    store.make_durable(TID)
    assert len(synced) >= 2  # the content, then the metadata (and its directory)
    assert PieceStore(tmp_path).get(TID).durable  # type: ignore[union-attr]


def test_chunked_task_sets_length_at_the_end(tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    data = content(2 * PL + 3)
    store.create_task(TID)
    store.set_piece_length(TID, PL)
    for n in range(3):
        write_piece(store, TID, data, n)
    assert store.get(TID).piece_count is None  # type: ignore[union-attr]
    store.set_content_length(TID, len(data), PL)
    assert store.get(TID).is_complete  # type: ignore[union-attr]


def test_chunked_task_refuses_a_length_its_pieces_do_not_fit(tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    data = content(3 * PL)
    store.create_task(TID)
    for n in range(3):
        write_piece(store, TID, data, n)  # cut at PL before any length was known
    with pytest.raises(InvalidArgument, match="do not fit"):
        store.set_content_length(TID, len(data), 2 * PL)
    store.set_content_length(TID, len(data), PL)
    assert store.get(TID).is_complete  # type: ignore[union-attr]
