"""PieceStore.changes: a reader's cursor over a task's changes, which never misses one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from damselfly.daemon.store.changes import ChangeWaiters, TaskChanges
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.domain import PieceInfo
from damselfly.ids import task_id
from helpers.store import put_piece

TID = task_id("http://example.com/changes")
PL = 4096
DATA = bytes(range(256)) * (2 * PL // 256)  # two pieces

# Every wait that should return at once is bounded, so a lost wake-up fails the test
# instead of hanging it; a correct store never comes near the bound.
BOUND = 10.0


def sized_store(tmp_path: Path) -> PieceStore:
    store = PieceStore(tmp_path)
    store.create_task(TID)
    store.set_content_length(TID, len(DATA), PL)
    return store


def piece(store: PieceStore, number: int, *, record: bool = True) -> PieceInfo:
    return put_piece(store, TID, DATA, number, PL, record=record)


async def test_a_change_before_the_wait_is_not_lost(tmp_path: Path) -> None:
    store = sized_store(tmp_path)
    changes = store.changes(TID)
    piece(store, 0)  # lands after the reader looked, before it waits
    assert await changes.wait(timeout=0) is True
    # That return counted the change as seen: with nothing new, the next wait times out.
    assert await changes.wait(timeout=0) is False


async def test_a_change_between_the_look_and_the_registration_is_not_lost(tmp_path: Path) -> None:
    # The narrowest window: the change (and its wake, which finds nobody) happens after the
    # wait's own look and before its future is registered.
    store = sized_store(tmp_path)
    info = piece(store, 0, record=False)

    class RacingWaiters(ChangeWaiters):
        def add(self, task_id: str) -> asyncio.Future[None]:
            store.finish_piece(TID, info)
            return super().add(task_id)

    racing = RacingWaiters()
    store._waiters = racing
    changes = TaskChanges(store.get, racing, TID)
    assert await asyncio.wait_for(changes.wait(), BOUND) is True
    assert len(racing) == 0


async def test_every_reader_is_woken_and_none_is_left_behind(tmp_path: Path) -> None:
    store = sized_store(tmp_path)
    cursors = [store.changes(TID) for _ in range(20)]
    waits = [asyncio.ensure_future(c.wait()) for c in cursors]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waits)
    piece(store, 0)
    assert await asyncio.wait_for(asyncio.gather(*waits), BOUND) == [True] * 20
    assert len(store._waiters) == 0


@pytest.mark.parametrize("end", ["succeeded", "failed", "deleted"])
async def test_the_end_of_the_task_ends_the_wait(tmp_path: Path, end: str) -> None:
    store = sized_store(tmp_path)
    piece(store, 0)
    piece(store, 1)  # complete, so it may succeed
    changes = store.changes(TID)
    waiting = asyncio.ensure_future(changes.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    if end == "succeeded":
        await asyncio.to_thread(store.mark_succeeded, TID)  # as the conductor does, off the loop
    elif end == "failed":
        store.mark_failed(TID, "origin 500")
    else:
        store.delete_task(TID)
    assert await asyncio.wait_for(waiting, BOUND) is True
    meta = store.get(TID)
    assert (meta.state if meta is not None else "deleted") == end


async def test_the_end_of_the_download_ends_the_wait(tmp_path: Path) -> None:
    store = sized_store(tmp_path)
    job: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    changes = store.changes(TID, until=job)
    waiting = asyncio.ensure_future(changes.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    job.set_result(None)
    assert await asyncio.wait_for(waiting, BOUND) is False  # ended, not changed
    assert await changes.wait() is False  # already over: returns at once
    assert len(store._waiters) == 0


async def test_timeout(tmp_path: Path) -> None:
    store = sized_store(tmp_path)
    changes = store.changes(TID)
    assert await changes.wait(timeout=0.01) is False
    assert len(store._waiters) == 0


async def test_a_task_not_created_yet_is_waited_for(tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    changes = store.changes(TID)
    waiting = asyncio.ensure_future(changes.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    store.create_task(TID)
    assert await asyncio.wait_for(waiting, BOUND) is True
    assert store.get(TID) is not None


async def test_a_task_deleted_and_created_again_counts_as_changed(tmp_path: Path) -> None:
    store = sized_store(tmp_path)
    changes = store.changes(TID)
    store.delete_task(TID)
    store.create_task(TID)  # a new record with version 0 again
    assert await changes.wait(timeout=0) is True


async def test_woken_from_another_thread(tmp_path: Path) -> None:
    store = sized_store(tmp_path)
    info = piece(store, 0, record=False)
    changes = store.changes(TID)
    waiting = asyncio.ensure_future(changes.wait())
    await asyncio.sleep(0)
    await asyncio.to_thread(store.finish_piece, TID, info)
    assert await asyncio.wait_for(waiting, BOUND) is True


async def test_a_cancelled_wait_leaves_nothing_behind(tmp_path: Path) -> None:
    store = sized_store(tmp_path)
    waiting = asyncio.ensure_future(store.changes(TID).wait())
    await asyncio.sleep(0)
    assert len(store._waiters) == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert len(store._waiters) == 0
