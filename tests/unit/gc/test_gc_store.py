"""Eviction on a real PieceStore: in-use protection, crash consistency, the GC loop's steps."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from damselfly.config import DaemonGCConfig
from damselfly.daemon.gc import CacheGC
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.domain import PieceInfo


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def tid(n: int) -> str:
    return f"{n:064x}"


def add_task(store: PieceStore, task_id: str, data: bytes) -> None:
    store.create_task(task_id, url=f"http://o/{task_id[-4:]}")
    store.set_content_length(task_id, len(data), len(data))
    fd = store.open_write_fd(task_id)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)
    store.finish_piece(task_id, PieceInfo(0, 0, len(data), f"crc32:{zlib.crc32(data)}"))
    store.mark_succeeded(task_id)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> PieceStore:
    return PieceStore(tmp_path / "store", clock=clock)


def test_evict_refuses_pinned_and_busy_tasks(store: PieceStore) -> None:
    add_task(store, tid(1), b"x" * 10_000)
    with store.using(tid(1)):
        assert store.pinned() == {tid(1)}
        assert store.evict(tid(1)) is None
    assert store.evict(tid(1), busy={tid(1)}) is None
    assert store.get(tid(1)) is not None
    trash = store.evict(tid(1))
    assert trash is not None and trash.exists()
    assert store.get(tid(1)) is None
    assert not store.content_path(tid(1)).exists()
    store.purge(trash)
    assert not trash.exists()


def test_crash_after_the_rename_leaves_a_consistent_store(tmp_path: Path, store: PieceStore) -> None:
    add_task(store, tid(1), b"a" * 50_000)
    add_task(store, tid(2), b"b" * 50_000)
    trash = store.evict(tid(1))  # step 1 done, "crash" before step 2 (purge)
    assert trash is not None
    reopened = PieceStore(tmp_path / "store")
    assert reopened.get(tid(1)) is None
    meta = reopened.get(tid(2))
    assert meta is not None and meta.state == "succeeded" and meta.is_complete
    assert not trash.exists()  # leftovers removed on load
    assert list((tmp_path / "store" / "trash").iterdir()) == []


def test_crash_midway_through_the_purge_is_finished_on_load(tmp_path: Path, store: PieceStore) -> None:
    add_task(store, tid(1), b"a" * 50_000)
    trash = store.evict(tid(1))
    assert trash is not None
    (trash / "content").unlink()  # half removed
    reopened = PieceStore(tmp_path / "store")
    assert reopened.tasks() == []
    assert not trash.exists()


def test_crash_before_the_rename_keeps_the_whole_task(tmp_path: Path, store: PieceStore) -> None:
    add_task(store, tid(1), b"a" * 50_000)
    reopened = PieceStore(tmp_path / "store")  # the GC decided but never renamed
    meta = reopened.get(tid(1))
    assert meta is not None and meta.is_complete
    assert reopened.task_usage(tid(1)) >= 50_000


def test_usage_counts_only_the_store_own_files(tmp_path: Path, store: PieceStore) -> None:
    add_task(store, tid(1), os.urandom(100_000))
    (tmp_path / "store" / "not-ours.bin").write_bytes(os.urandom(1_000_000))
    assert 100_000 <= store.usage() < 200_000


async def test_gc_evicts_lru_but_not_busy_or_pinned_tasks(store: PieceStore, clock: Clock) -> None:
    for n in range(1, 5):
        add_task(store, tid(n), os.urandom(100_000))
        clock.now += 100  # tid(1) is the least recently used
    clock.now += 1000
    forgotten: list[str] = []

    async def forget(task_id: str) -> None:
        forgotten.append(task_id)

    config = DaemonGCConfig(capacity=400_000, high_threshold=50, low_threshold=30, task_ttl=0)
    gc = CacheGC(store, config, in_use=lambda: {tid(2)}, forget=forget, clock=clock)
    with store.using(tid(1)):
        evicted = await gc.run_once()
    # ~400 kB held, low watermark 120 kB: evict LRU-first, skipping 1 (pinned) and 2 (downloading).
    assert [e.task_id for e in evicted] == [tid(3), tid(4)]
    assert forgotten == [tid(3), tid(4)]  # the scheduler is told, before the files go
    assert {m.task_id for m in store.tasks()} == {tid(1), tid(2)}
    assert gc.evicted_total == 2


async def test_gc_ttl(store: PieceStore, clock: Clock) -> None:
    add_task(store, tid(1), b"x" * 1000)
    clock.now += 50
    add_task(store, tid(2), b"y" * 1000)
    gc = CacheGC(store, DaemonGCConfig(task_ttl=100, capacity=10**9), clock=clock)
    assert await gc.run_once() == []
    clock.now += 60
    assert [e.task_id for e in await gc.run_once()] == [tid(1)]
    store.note_access(tid(2))  # an upload keeps it alive
    clock.now += 60
    assert await gc.run_once() == []


async def test_a_task_pinned_after_the_plan_is_skipped(store: PieceStore, clock: Clock) -> None:
    add_task(store, tid(1), b"x" * 1000)
    clock.now += 1000
    gc = CacheGC(store, DaemonGCConfig(task_ttl=10, capacity=10**9), clock=clock)
    pins = []

    async def forget(task_id: str) -> None:
        # A download of the task starts while the scheduler is being told.
        cm = store.using(task_id)
        cm.__enter__()
        pins.append(cm)

    gc._forget = forget
    assert await gc.run_once() == []
    assert store.get(tid(1)) is not None
    pins[0].__exit__(None, None, None)
