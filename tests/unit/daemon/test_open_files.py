"""The piece server's per-connection open file: closing it never blocks the event loop."""

from __future__ import annotations

import threading
from pathlib import Path

from damselfly.daemon.store.piece_store import PieceStore
from damselfly.daemon.transfer.open_files import OpenFiles
from helpers.wait import until


class _Recorder:
    """Stands in for the open content file: notes which thread closes it."""

    def __init__(self) -> None:
        self.closed_in: list[int] = []

    def close(self) -> None:
        self.closed_in.append(threading.get_ident())


async def test_a_file_switched_away_from_is_closed_in_a_worker_thread(tmp_path: Path) -> None:
    # The last reference to a deleted task's content frees all its blocks in close(): on
    # an ext4 mounted with discard, 0.3-0.5 s for 1 GiB, which must not stall the loop.
    store = PieceStore(tmp_path)
    tid = "b" * 64
    store.create_task(tid)
    store.set_content_length(tid, 10, 4)
    files = OpenFiles(store)
    old = _Recorder()
    files._file = old  # type: ignore[assignment]
    files._task_id = "a" * 64
    new = files.get(tid)  # another task on the same connection: the old file goes
    assert new.fileno() >= 0
    await until(lambda: bool(old.closed_in), "the old file was closed")
    assert old.closed_in[0] != threading.get_ident()
    files.close()


def test_without_a_running_loop_the_file_is_closed_at_once(tmp_path: Path) -> None:
    files = OpenFiles(PieceStore(tmp_path))
    rec = _Recorder()
    files._file = rec  # type: ignore[assignment]
    files.close()
    assert rec.closed_in == [threading.get_ident()]
