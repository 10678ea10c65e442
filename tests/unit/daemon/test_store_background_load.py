"""A store loaded in a thread (the daemon's start with a large store): a held task is found
before its turn, a new task is not mistaken for one, and nothing is lost or loaded twice."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from damselfly.daemon.store import loading
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.ids import task_id
from helpers.store import put_piece

PL = 4096
HELD = [task_id(f"http://example.com/held/{i}") for i in range(5)]
NEW = task_id("http://example.com/new")


def make_store(root: Path) -> dict[str, bytes]:
    store = PieceStore(root)
    data = {}
    for i, tid in enumerate(HELD):
        data[tid] = bytes([i]) * (PL + 10)
        store.create_task(tid, url=f"http://example.com/held/{i}")
        store.set_content_length(tid, len(data[tid]), PL)
        for n in (0, 1):
            put_piece(store, tid, data[tid], n, PL)
        store.mark_succeeded(tid)
    store.close()
    return data


async def test_a_held_task_is_found_on_disk_while_the_store_still_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_store(tmp_path)
    gate = threading.Event()
    real_task_dirs = loading.task_dirs

    def held_back(root: Path) -> list[str]:
        gate.wait(10)
        return real_task_dirs(root)

    monkeypatch.setattr(loading, "task_dirs", held_back)
    store = PieceStore(tmp_path, background_load=True)
    try:
        assert not store.loading.loaded and store.tasks() == []  # the loader has not started its walk
        meta = store.get(HELD[2])
        assert meta is not None and meta.state == "succeeded" and meta.is_complete
        # A download of a held task must not start it over: create_task finds it.
        assert store.create_task(HELD[3]) is store.get(HELD[3])
        assert store.get(HELD[3]).is_complete  # type: ignore[union-attr]
        assert store.get(NEW) is None  # not on disk: not invented
        store.create_task(NEW, url="http://example.com/new")
        gate.set()
        await store.loading.until_loaded()
        assert store.loading.loaded
        assert sorted(m.task_id for m in store.tasks()) == sorted([*HELD, NEW])
        assert store.get(HELD[2]) is meta  # loaded once, not replaced by the walk
        assert store.get(NEW).state == "pending"  # type: ignore[union-attr]
    finally:
        gate.set()
        store.close()


async def test_a_task_deleted_before_the_loader_reached_it_stays_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_store(tmp_path)
    gate = threading.Event()
    real_task_dirs = loading.task_dirs

    def held_back(root: Path) -> list[str]:
        dirs = real_task_dirs(root)  # the walk saw every task...
        gate.wait(10)  # ...and one is deleted before they are read
        return dirs

    monkeypatch.setattr(loading, "task_dirs", held_back)
    store = PieceStore(tmp_path, background_load=True)
    try:
        store.delete_task(HELD[0])
        gate.set()
        await store.loading.until_loaded()
        assert store.get(HELD[0]) is None
        assert sorted(m.task_id for m in store.tasks()) == sorted(HELD[1:])
    finally:
        gate.set()
        store.close()
    again = PieceStore(tmp_path)  # and on disk
    assert sorted(m.task_id for m in again.tasks()) == sorted(HELD[1:])
