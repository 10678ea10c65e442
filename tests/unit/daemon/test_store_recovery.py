"""The store's recovery at start, as functions over a directory (daemon/store/recovery.py)."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import pytest

from damselfly.daemon.store import recovery
from damselfly.daemon.store.files import CONTENT, JOURNAL, META, TRASH, dir_usage, task_dir
from damselfly.daemon.store.metadata import TaskMeta, journal_line, journal_lines, save_meta
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.daemon.store.recovery import Plan
from damselfly.domain import PieceInfo
from damselfly.ids import task_id

PL = 4096
TID = task_id("http://example.com/recovery")
OTHER = task_id("http://example.com/other")


def content(n: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(n))


def piece_of(data: bytes, number: int) -> PieceInfo:
    chunk = data[number * PL : (number + 1) * PL]
    return PieceInfo(number, number * PL, len(chunk), f"crc32:{zlib.crc32(chunk)}")


def lay_out(root: Path, tid: str, data: bytes, **fields: Any) -> Path:
    """A task dir as a crash left it: content, metadata with ``fields``; no journal yet."""
    where = task_dir(root, tid)
    where.mkdir(parents=True)
    (where / CONTENT).write_bytes(data)
    meta = TaskMeta(tid, content_length=len(data), piece_length=PL, **fields)
    save_meta(where, meta, with_pieces=True)
    return where


def test_a_journal_with_a_torn_last_line_keeps_the_whole_lines() -> None:
    data = content(3 * PL)
    raw = journal_line(piece_of(data, 0)) + journal_line(piece_of(data, 1)) + b'{"n":2,"o":8192,"l":40'
    assert [p.number for p in recovery.read_journal(raw)] == [0, 1]
    assert recovery.read_journal(b"") == []
    assert recovery.read_journal(b"\n\nnot json\n") == []


def test_a_torn_journal_is_recovered_and_rewritten(tmp_path: Path) -> None:
    data = content(3 * PL)
    where = lay_out(tmp_path, TID, data, state="running")
    (where / JOURNAL).write_bytes(journal_lines({n: piece_of(data, n) for n in (0, 1)}) + b'{"n":2,"o":81')
    [meta] = recovery.recover(tmp_path)
    assert sorted(meta.pieces) == [0, 1]
    assert meta.state == "pending"  # nobody downloads it after a restart
    assert (where / JOURNAL).read_bytes() == journal_lines(meta.pieces)


def test_a_piece_that_does_not_fit_is_dropped_though_its_bytes_match(tmp_path: Path) -> None:
    data = content(2 * PL + 100)
    where = lay_out(tmp_path, TID, data, state="pending")
    good = piece_of(data, 0)
    tail = piece_of(data, 2)
    off_grid = PieceInfo(1, PL + 1, PL, f"crc32:{zlib.crc32(data[PL + 1 : 2 * PL + 1])}")
    too_long = PieceInfo(2, 2 * PL, 200, f"crc32:{zlib.crc32(data[2 * PL :] + bytes(100))}")
    past_end = PieceInfo(3, 3 * PL, 1, f"crc32:{zlib.crc32(b'')}")
    meta = TaskMeta(TID, content_length=len(data), piece_length=PL)
    assert meta.fits(good) and meta.fits(tail)
    assert not any(meta.fits(p) for p in (off_grid, too_long, past_end))
    (where / JOURNAL).write_bytes(
        b"".join(journal_line(p) for p in (good, off_grid, too_long, past_end, tail))
    )
    assert sorted(recovery.recover_pieces(meta, where)) == [0, 2]
    assert [json.loads(x)["n"] for x in (where / JOURNAL).read_text().splitlines()] == [0, 2]


def test_a_journaled_piece_whose_bytes_never_landed_is_dropped(tmp_path: Path) -> None:
    data = content(2 * PL)
    where = lay_out(tmp_path, TID, data[:PL] + bytes(PL), state="pending")  # piece 1: sparse zeros
    meta = TaskMeta(TID, content_length=len(data), piece_length=PL)
    (where / JOURNAL).write_bytes(journal_lines({n: piece_of(data, n) for n in (0, 1)}))
    assert sorted(recovery.recover_pieces(meta, where)) == [0]


def test_a_task_dir_without_metadata_is_left_alone(tmp_path: Path) -> None:
    data = content(PL)
    lay_out(tmp_path, OTHER, data, state="succeeded", pieces={0: piece_of(data, 0)})
    bare = task_dir(tmp_path, TID)  # a crash inside create_task, before the metadata
    bare.mkdir(parents=True)
    (bare / CONTENT).write_bytes(data)
    assert [m.task_id for m in recovery.recover(tmp_path)] == [OTHER]
    assert (bare / CONTENT).exists()
    store = PieceStore(tmp_path)
    assert store.get(TID) is None
    store.create_task(TID)  # and the ID can be used again
    assert store.get(TID) is not None


def test_unreadable_or_misnamed_metadata(tmp_path: Path) -> None:
    data = content(PL)
    torn = lay_out(tmp_path, TID, data, state="pending")
    (torn / META).write_text('{"task_id": ')
    misnamed = lay_out(tmp_path, OTHER, data, state="pending")
    (misnamed / META).write_text(json.dumps({"task_id": TID}))
    assert recovery.recover(tmp_path) == []
    assert not torn.exists()  # unreadable: removed
    assert misnamed.exists()  # names another task: not ours to remove


def test_a_succeeded_task_not_yet_durable_is_confirmed(tmp_path: Path) -> None:
    data = content(2 * PL)
    pieces = {n: piece_of(data, n) for n in (0, 1)}
    where = lay_out(tmp_path, TID, data, state="succeeded", durable=False, pieces=pieces)
    [meta] = recovery.recover(tmp_path)
    assert (meta.state, meta.durable, sorted(meta.pieces)) == ("succeeded", True, [0, 1])
    assert not (where / JOURNAL).exists()
    assert json.loads((where / META).read_bytes())["durable"] is True


def test_the_trash_is_emptied(tmp_path: Path) -> None:
    leftover = tmp_path / TRASH / f"{TID}.1.2"
    leftover.mkdir(parents=True)
    (leftover / CONTENT).write_bytes(b"x")
    assert recovery.recover(tmp_path) == []
    assert list((tmp_path / TRASH).iterdir()) == []


@pytest.mark.parametrize(
    ("state", "durable", "complete", "has_content", "expected"),
    [
        ("pending", True, False, True, Plan.RESUME),
        ("running", True, False, True, Plan.RESUME),
        ("failed", True, False, True, Plan.RESUME),
        ("succeeded", False, True, True, Plan.CONFIRM),
        ("succeeded", True, False, True, Plan.REPAIR),
        ("succeeded", True, True, False, Plan.REPAIR),
        ("succeeded", True, True, True, Plan.TRUST),
    ],
)
def test_plan(state: str, durable: bool, complete: bool, has_content: bool, expected: Plan) -> None:
    data = content(2 * PL)
    pieces = {n: piece_of(data, n) for n in ((0, 1) if complete else (0,))}
    meta = TaskMeta(
        TID, content_length=len(data), piece_length=PL, state=state, durable=durable, pieces=pieces
    )
    assert recovery.plan(meta, has_content=has_content) is expected


def test_usage_is_the_sum_of_the_tasks(tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    for tid in (TID, OTHER):
        store.create_task(tid)
        store.set_content_length(tid, PL, PL)
        fd = store.open_write_fd(tid)
        try:
            os.pwrite(fd, content(PL), 0)
        finally:
            os.close(fd)
    assert store.task_usage(TID) >= PL
    assert store.usage() == store.task_usage(TID) + store.task_usage(OTHER)
    assert store.task_usage("not a task id") == 0
    assert dir_usage(tmp_path / "nowhere") == 0
