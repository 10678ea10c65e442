"""The scheduler's persistent cache policy: where replicas go, who serves an export, TTL expiry."""

from __future__ import annotations

import pytest

from damselfly.api import scheduler_pb2
from damselfly.domain import HostInfo, HostType
from damselfly.errors import InvalidArgument, NotFound
from damselfly.scheduler.cachestore.memory import MemoryStore
from damselfly.scheduler.dfcache.service import PersistentCacheService
from damselfly.scheduler.dfcache.state import (
    FAILED,
    SUCCEEDED,
    CacheTask,
    candidate_parents,
    expired_tasks,
    replica_hosts,
)
from damselfly.scheduler.resources import Resources

TASK = "c" * 64
T0 = 1.7e9


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def world(*names: str, seeds: tuple[str, ...] = ()) -> Resources:
    res = Resources()
    for i, name in enumerate(names):
        res.upsert_host(
            HostInfo(
                id=name, hostname=name, ip="127.0.0.1", port=4000 + i, download_port=5000 + i,
                type=HostType.SUPER_SEED if name in seeds else HostType.NORMAL,
            ),
            0.0,
        )  # fmt: skip
    return res


def service_of(res: Resources, clock: FakeClock | None = None) -> PersistentCacheService:
    clock = clock or FakeClock()
    return PersistentCacheService(res, store=MemoryStore(clock=clock), wall_clock=clock)


def started(host: str, *, replicas: int = 2, ttl: float = 3600.0, size: int = 10_000) -> object:
    return scheduler_pb2.UploadPersistentCacheTaskStartedRequest(
        host_id=host, task_id=TASK, peer_id=f"{host}-peer", persistent_replica_count=replicas,
        piece_length=4096, content_length=size, piece_count=3, ttl={"seconds": int(ttl)},
    )  # fmt: skip


async def imported(
    svc: PersistentCacheService,
    host: str = "a",
    *,
    replicas: int = 2,
    ttl: float = 3600.0,
    finish: bool = True,
) -> CacheTask:
    await svc.upload_started(started(host, replicas=replicas, ttl=ttl))  # type: ignore[arg-type]
    task, peer = await svc.peer(f"{host}-peer")
    if finish:
        await svc.set_state(task, peer, SUCCEEDED)
    return await svc.task(TASK)


async def test_no_replica_before_the_import_finished_then_the_missing_ones() -> None:
    res = world("a", "b", "c", "d")
    svc = service_of(res)
    task = await imported(svc, replicas=3, finish=False)
    assert replica_hosts(task, res.hosts) == []  # nothing to copy yet
    task = await imported(svc, replicas=3)
    chosen = [h.id for h in replica_hosts(task, res.hosts)]
    assert len(chosen) == 2 and "a" not in chosen
    # With one replication in flight, only one more is wanted; never a host already busy.
    again = [h.id for h in replica_hosts(task, res.hosts, busy={chosen[0]})]
    assert len(again) == 1 and again[0] not in ("a", chosen[0])


async def test_replicas_prefer_free_hosts_and_seeds_and_skip_hosts_with_a_copy() -> None:
    res = world("a", "b", "busy", "seed", seeds=("seed",))
    res.hosts["busy"].children = res.hosts["busy"].upload_limit  # no free upload slots
    svc = service_of(res)
    task = await imported(svc, replicas=2)
    assert [h.id for h in replica_hosts(task, res.hosts)] == ["seed"]
    peer = await svc.add_peer(task, "seed-peer", "seed", persistent=True, state="Running")
    task = await svc.task(TASK)  # as stored
    assert replica_hosts(task, res.hosts) == []  # running replica counts
    await svc.set_state(task, peer, FAILED)
    task = await svc.task(TASK)
    assert [h.id for h in replica_hosts(task, res.hosts)] == ["b"]  # the failed host is not retaken at once


async def test_a_lost_importer_is_replaced_by_the_repair_step() -> None:
    res = world("a", "b", "c")
    svc = service_of(res)
    task = await imported(svc, replicas=2)
    await svc.add_peer(task, "b-peer", "b", persistent=True, state=SUCCEEDED)
    assert replica_hosts(await svc.task(TASK), res.hosts) == []
    res.delete_host("a")  # the importer is gone; its peer is not counted any more
    assert [h.id for h in replica_hosts(await svc.task(TASK), res.hosts)] == ["c"]


async def test_candidate_parents_are_live_complete_copies_on_other_hosts() -> None:
    res = world("a", "b", "c")
    svc = service_of(res)
    task = await imported(svc)
    b = await svc.add_peer(task, "b-peer", "b", persistent=False, state="Running")
    child = await svc.add_peer(task, "c-peer", "c", persistent=False, state="Pending")
    assert [p.id for p in candidate_parents(task, child, res.hosts)] == ["a-peer"]  # b is not complete
    await svc.set_state(task, b, SUCCEEDED)
    task = await svc.task(TASK)
    parents = [p.id for p in candidate_parents(task, child, res.hosts)]
    assert parents == ["a-peer", "b-peer"]  # persistent first
    child.blocked.add("a-peer")
    assert [p.id for p in candidate_parents(task, child, res.hosts)] == ["b-peer"]
    res.delete_host("b")
    assert candidate_parents(task, child, res.hosts) == []


async def test_a_second_import_with_other_sizes_is_refused_and_a_host_that_left_is_forgotten() -> None:
    res = world("a", "b")
    svc = service_of(res)
    await imported(svc, replicas=2)
    with pytest.raises(InvalidArgument):
        await svc.upload_started(started("b", size=9_999, ttl=60))  # type: ignore[arg-type]
    await svc.upload_started(started("b", replicas=3, ttl=60))  # type: ignore[arg-type]
    again = await svc.task(TASK)
    assert again.replica_count == 3 and again.ttl == 3600.0  # the first import's TTL stands
    await svc._forget_host("a")
    with pytest.raises(NotFound):
        await svc.peer("a-peer")
    assert set((await svc.task(TASK)).peers) == {"b-peer"}


async def test_a_host_known_only_to_the_store_counts_as_alive() -> None:
    """Another scheduler sharing the store heard from host b: its copy counts here too."""
    res = world("a")
    svc = service_of(res)
    task = await imported(svc)
    await svc.add_peer(task, "b-peer", "b", persistent=True, state=SUCCEEDED)
    stat = await svc.stat_task(scheduler_pb2.StatPersistentCacheTaskRequest(task_id=TASK))
    assert stat.current_replica_count == 1  # b is unknown: not counted
    await svc.store.put_host(
        HostInfo(id="b", hostname="b", ip="127.0.0.1", port=4001, download_port=5001), 60.0
    )
    stat = await svc.stat_task(scheduler_pb2.StatPersistentCacheTaskRequest(task_id=TASK))
    assert (stat.current_replica_count, stat.current_persistent_replica_count) == (2, 2)


async def test_ttl_expiry_forgets_the_task_with_an_injected_clock() -> None:
    clock = FakeClock(T0)
    res = world("a")
    svc = service_of(res, clock)
    await imported(svc, ttl=3600.0)
    res.delete_host("a")  # the host is gone: no delete RPC to send
    await svc.store.delete_host("a")
    clock.now = T0 + 3599
    assert expired_tasks(await svc.store.tasks(), clock()) == []
    await svc.tick()
    assert (await svc.task(TASK)).id == TASK
    clock.now = T0 + 3600
    with pytest.raises(NotFound):  # past its TTL: not answered any more
        await svc.task(TASK)
    await svc.tick()
    assert await svc.store.get_task(TASK) is None  # and gone from the store
    await svc.close()


async def test_stat_message_counts_live_replicas() -> None:
    res = world("a", "b")
    svc = service_of(res)
    task = await imported(svc, replicas=2)
    await svc.add_peer(task, "b-peer", "b", persistent=False, state=SUCCEEDED)
    pb = await svc.stat_task(scheduler_pb2.StatPersistentCacheTaskRequest(task_id=TASK))
    assert (pb.persistent_replica_count, pb.current_persistent_replica_count, pb.current_replica_count) == (
        2,
        1,
        2,
    )
    assert pb.state == SUCCEEDED and pb.content_length == 10_000 and pb.piece_length == 4096
    assert pb.ttl.seconds == 3600 and pb.created_at.seconds == 1_700_000_000
