"""Sealed content: a succeeded task's content is read-only and stamped; a write to it through a
hard link (dfget's output, edited in place by root) is caught by every reader and drops the task."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from damselfly.daemon.store.piece_store import PieceStore
from damselfly.daemon.transfer.open_files import OpenFiles
from damselfly.errors import NotFound
from damselfly.ids import task_id
from helpers.store import put_piece

TID = task_id("http://example.com/sealed")
PL = 4096
DATA = bytes(range(256)) * 40  # three pieces, the last one short


def every_piece(root: Path) -> PieceStore:
    """A store holding every piece of the task, not yet marked succeeded."""
    store = PieceStore(root)
    store.create_task(TID, url="http://example.com/sealed")
    store.set_content_length(TID, len(DATA), PL)
    store.mark_running(TID)
    for n in range((len(DATA) + PL - 1) // PL):
        put_piece(store, TID, DATA, n, PL)
    return store


def finished(root: Path) -> PieceStore:
    store = every_piece(root)
    store.mark_succeeded(TID)
    return store


def edit(path: Path, offset: int = 100) -> None:
    fd = os.open(path, os.O_WRONLY)  # root may write a read-only file, as a user editing in place
    try:
        os.pwrite(fd, b"edited", offset)
    finally:
        os.close(fd)


def test_a_succeeded_task_is_read_only_and_stamped(tmp_path: Path) -> None:
    store = finished(tmp_path)
    st = os.stat(store.content_path(TID))
    assert stat.S_IMODE(st.st_mode) & 0o222 == 0
    meta = store.get(TID)
    assert meta is not None and meta.sealed_ns == st.st_mtime_ns != 0
    os.close(store.open_read_fd(TID))  # untouched: served
    store.check_unchanged(TID)


def test_a_stat_taken_as_the_task_completed_does_not_drop_it(tmp_path: Path) -> None:
    # A piece connection took the content's stat while the task completed in another thread
    # (stamped, then recorded as succeeded): the stale stat is not an edit.
    store = every_piece(tmp_path)
    os.utime(store.content_path(TID), ns=(0, 10**9))  # the last write's mtime, before the seal
    before_seal = os.stat(store.content_path(TID))
    store.mark_succeeded(TID)
    store.check_unchanged(TID, before_seal)
    assert store.get(TID) is not None
    os.close(store.open_read_fd(TID))


@pytest.mark.skipif(os.geteuid() != 0, reason="writing a read-only file needs root")
def test_an_edit_through_a_link_drops_the_task_at_the_next_open(tmp_path: Path) -> None:
    store = finished(tmp_path / "store")
    output = tmp_path / "output"
    os.link(store.content_path(TID), output)
    edit(output)
    with pytest.raises(NotFound, match="changed on disk"):
        store.open_read_fd(TID)
    assert store.get(TID) is None
    assert output.read_bytes()[100:106] == b"edited"  # the user's file is theirs


@pytest.mark.skipif(os.geteuid() != 0, reason="writing a read-only file needs root")
def test_the_stamp_outlives_a_restart(tmp_path: Path) -> None:
    finished(tmp_path).close()
    store = PieceStore(tmp_path)
    store.check_unchanged(TID)  # loaded as sealed, still unchanged
    edit(store.content_path(TID))
    with pytest.raises(NotFound):
        store.check_unchanged(TID)
    assert store.get(TID) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="writing a read-only file needs root")
async def test_the_piece_port_stops_serving_content_edited_while_open(tmp_path: Path) -> None:
    store = finished(tmp_path)
    files = OpenFiles(store)
    first = files.get(TID)
    assert os.pread(first.fileno(), 6, 100) == DATA[100:106]
    assert files.get(TID) is first  # kept open between pieces
    edit(store.content_path(TID))
    with pytest.raises(NotFound):
        files.get(TID)
    assert store.get(TID) is None
    await asyncio.sleep(0)  # the file is closed in the executor
