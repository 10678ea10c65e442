"""Cache GC rules for persistent cache tasks: never LRU-evicted before their TTL, always gone after it."""

from __future__ import annotations

import dataclasses
import os
import zlib
from pathlib import Path

from damselfly.config import DaemonGCConfig
from damselfly.daemon.gc import CacheGC, GCPolicy, TaskUsage, plan_eviction
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.domain import PieceInfo

NOW = 10_000.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def tid(n: int) -> str:
    return f"{n:064x}"


def t(task_id: str, size: int, idle: float, **kw: object) -> TaskUsage:
    return TaskUsage(task_id=task_id, size=size, accessed_at=NOW - idle, **kw)  # type: ignore[arg-type]


def test_persistent_copies_survive_the_watermark_and_the_idle_ttl() -> None:
    policy = GCPolicy(task_ttl=100, capacity=1000, high_threshold=80, low_threshold=10, recent_window=0)
    tasks = [
        t("p", 600, 5000, persistent=True, expires_at=NOW + 1),
        t("n", 300, 50),
        t("old", 100, 90),
    ]
    plan = plan_eviction(tasks, now=NOW, policy=policy)
    assert [e.task_id for e in plan] == ["old", "n"]  # LRU order; the persistent copy stays


def test_at_expiry_every_copy_goes_even_if_just_used_but_not_while_in_use() -> None:
    policy = GCPolicy(task_ttl=0, capacity=0, high_threshold=80, low_threshold=60, recent_window=60)
    tasks = [
        t("p", 10, 0, persistent=True, expires_at=NOW),
        t("copy", 10, 1, expires_at=NOW - 1),
        t("busy", 10, 1000, persistent=True, expires_at=NOW - 1, in_use=True),
        t("later", 10, 1000, persistent=True, expires_at=NOW + 1),
    ]
    plan = plan_eviction(tasks, now=NOW, policy=policy)
    assert {e.task_id: e.reason for e in plan} == {"p": "ttl", "copy": "ttl"}


def add_task(store: PieceStore, task_id: str, data: bytes) -> None:
    store.create_task(task_id)
    store.set_content_length(task_id, len(data), len(data))
    fd = store.open_write_fd(task_id)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)
    store.finish_piece(task_id, PieceInfo(0, 0, len(data), f"crc32:{zlib.crc32(data)}"))
    store.mark_succeeded(task_id)


async def test_ttl_expiry_removes_a_replica_with_an_injected_clock(tmp_path: Path) -> None:
    clock = Clock()
    store = PieceStore(tmp_path / "store", clock=clock)
    add_task(store, tid(1), b"r" * 5000)
    add_task(store, tid(2), b"n" * 5000)
    store.set_persistent_cache(tid(1), persistent=True, expires_at=clock.now + 3600)
    forgotten: list[str] = []

    async def forget(task_id: str) -> None:
        forgotten.append(task_id)

    # A tiny capacity (always over the watermark) and an idle TTL of 1 s: everything else goes.
    config = DaemonGCConfig(interval=1, task_ttl=1, capacity=1, high_threshold=1, low_threshold=0)
    gc = CacheGC(store, config, clock=clock, forget=forget)
    gc.policy = dataclasses.replace(gc.policy, recent_window=0.0)
    clock.now += 3599
    evicted = await gc.run_once()
    assert [e.task_id for e in evicted] == [tid(2)]
    assert store.get(tid(1)) is not None

    clock.now += 1  # the TTL is up
    evicted = await gc.run_once()
    assert [(e.task_id, e.reason) for e in evicted] == [(tid(1), "ttl")]
    assert store.get(tid(1)) is None and not store.content_path(tid(1)).exists()
    assert forgotten == [tid(2), tid(1)]


def test_persistent_cache_fields_survive_a_restart(tmp_path: Path) -> None:
    store = PieceStore(tmp_path / "store")
    add_task(store, tid(3), b"x" * 100)
    store.set_persistent_cache(tid(3), persistent=True, expires_at=1234.5)
    store.set_persistent_cache(tid(3), persistent=False, expires_at=1234.5)  # never downgraded
    meta = PieceStore(tmp_path / "store").get(tid(3))
    assert meta is not None and meta.state == "succeeded" and meta.is_complete
    assert (meta.persistent_cache, meta.persistent, meta.expires_at) == (True, True, 1234.5)
    plain = PieceStore(tmp_path / "store")
    add_task(plain, tid(4), b"y")
    m4 = PieceStore(tmp_path / "store").get(tid(4))
    assert m4 is not None and (m4.persistent_cache, m4.persistent, m4.expires_at) == (False, False, 0.0)
