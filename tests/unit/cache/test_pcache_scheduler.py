"""The scheduler's persistent cache policy: where replicas go, who serves an export, TTL expiry."""

from __future__ import annotations

from typing import Any

import pytest

from damselfly.api import scheduler_pb2
from damselfly.domain import HostInfo, HostType
from damselfly.errors import InvalidArgument, NotFound
from damselfly.scheduler.persistent_cache import (
    FAILED,
    SUCCEEDED,
    PersistentCacheRegistry,
    candidate_parents,
    expired_tasks,
    replica_hosts,
)
from damselfly.scheduler.persistent_cache_service import PersistentCacheService
from damselfly.scheduler.resources import Resources

TASK = "c" * 64


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
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


def imported(reg: PersistentCacheRegistry, host: str = "a", *, replicas: int = 2, ttl: float = 3600.0) -> Any:
    task = reg.upload_started(
        task_id=TASK, host_id=host, peer_id=f"{host}-peer", replica_count=replicas, tag="", application="",
        piece_length=4096, content_length=10_000, piece_count=3, ttl=ttl, now=1000.0, wall=1.7e9,
    )  # fmt: skip
    reg.set_state(f"{host}-peer", SUCCEEDED, 1000.0)
    return task


def test_no_replica_before_the_import_finished_then_the_missing_ones() -> None:
    res = world("a", "b", "c", "d")
    reg = PersistentCacheRegistry()
    task = reg.upload_started(
        task_id=TASK, host_id="a", peer_id="a-peer", replica_count=3, tag="", application="",
        piece_length=4096, content_length=10_000, piece_count=3, ttl=60, now=0.0, wall=0.0,
    )  # fmt: skip
    assert replica_hosts(task, res.hosts) == []  # nothing to copy yet
    reg.set_state("a-peer", SUCCEEDED, 1.0)
    chosen = [h.id for h in replica_hosts(task, res.hosts)]
    assert len(chosen) == 2 and "a" not in chosen
    # With one replication in flight, only one more is wanted; never a host already busy.
    again = [h.id for h in replica_hosts(task, res.hosts, busy={chosen[0]})]
    assert len(again) == 1 and again[0] not in ("a", chosen[0])


def test_replicas_prefer_free_hosts_and_seeds_and_skip_hosts_with_a_copy() -> None:
    res = world("a", "b", "busy", "seed", seeds=("seed",))
    res.hosts["busy"].children = res.hosts["busy"].upload_limit  # no free upload slots
    reg = PersistentCacheRegistry()
    task = imported(reg, replicas=2)
    assert [h.id for h in replica_hosts(task, res.hosts)] == ["seed"]
    reg.add_peer(task, "seed-peer", "seed", persistent=True, state="Running", now=1.0)
    assert replica_hosts(task, res.hosts) == []  # running replica counts
    reg.set_state("seed-peer", FAILED, 2.0)
    assert [h.id for h in replica_hosts(task, res.hosts)] == ["b"]  # the failed host is not retaken at once


def test_a_lost_importer_is_replaced_by_the_repair_step() -> None:
    res = world("a", "b", "c")
    reg = PersistentCacheRegistry()
    task = imported(reg, replicas=2)
    reg.add_peer(task, "b-peer", "b", persistent=True, state=SUCCEEDED, now=1.0)
    assert replica_hosts(task, res.hosts) == []
    res.delete_host("a")  # the importer is gone; its peer is not counted any more
    assert [h.id for h in replica_hosts(task, res.hosts)] == ["c"]


def test_candidate_parents_are_live_complete_copies_on_other_hosts() -> None:
    res = world("a", "b", "c")
    reg = PersistentCacheRegistry()
    task = imported(reg)
    reg.add_peer(task, "b-peer", "b", persistent=False, state="Running", now=1.0)
    child = reg.add_peer(task, "c-peer", "c", persistent=False, state="Pending", now=1.0)
    assert [p.id for p in candidate_parents(task, child, res.hosts)] == ["a-peer"]  # b is not complete
    reg.set_state("b-peer", SUCCEEDED, 2.0)
    assert [p.id for p in candidate_parents(task, child, res.hosts)] == [
        "a-peer",
        "b-peer",
    ]  # persistent first
    child.blocked.add("a-peer")
    assert [p.id for p in candidate_parents(task, child, res.hosts)] == ["b-peer"]
    res.delete_host("b")
    assert candidate_parents(task, child, res.hosts) == []


def test_registry_refuses_a_second_import_with_other_sizes_and_forgets_hosts() -> None:
    reg = PersistentCacheRegistry()
    imported(reg, replicas=2)
    with pytest.raises(InvalidArgument):
        reg.upload_started(
            task_id=TASK, host_id="b", peer_id="b-peer", replica_count=2, tag="", application="",
            piece_length=4096, content_length=9_999, piece_count=3, ttl=60, now=1.0, wall=0.0,
        )  # fmt: skip
    again = reg.upload_started(
        task_id=TASK, host_id="b", peer_id="b-peer", replica_count=3, tag="", application="",
        piece_length=4096, content_length=10_000, piece_count=3, ttl=60, now=1.0, wall=0.0,
    )  # fmt: skip
    assert again.replica_count == 3 and again.ttl == 3600.0  # the first import's TTL stands
    reg.forget_host("a")
    with pytest.raises(NotFound):
        reg.peer("a-peer")
    assert set(again.peers) == {"b-peer"}


async def test_ttl_expiry_forgets_the_task_with_an_injected_clock() -> None:
    clock = FakeClock(1000.0)
    service = PersistentCacheService(Resources(), clock=clock, wall_clock=lambda: 1.7e9)
    imported(service.registry, ttl=3600.0)  # hosts unknown to Resources: no delete RPC to send
    clock.now = 1000.0 + 3599
    assert expired_tasks(service.registry, clock()) == []
    await service.tick()
    assert TASK in service.registry.tasks
    clock.now = 1000.0 + 3600
    await service.tick()
    assert TASK not in service.registry.tasks
    with pytest.raises(NotFound):
        service.registry.task(TASK)
    await service.close()


def test_stat_message_counts_live_replicas() -> None:
    res = world("a", "b")
    service = PersistentCacheService(res, clock=FakeClock(1000.0), wall_clock=lambda: 1.7e9)
    task = imported(service.registry, replicas=2)
    service.registry.add_peer(task, "b-peer", "b", persistent=False, state=SUCCEEDED, now=1000.0)
    pb = service.stat_task(scheduler_pb2.StatPersistentCacheTaskRequest(task_id=task.id))
    assert (pb.persistent_replica_count, pb.current_persistent_replica_count, pb.current_replica_count) == (
        2,
        1,
        2,
    )
    assert pb.state == SUCCEEDED and pb.content_length == 10_000 and pb.piece_length == 4096
    assert pb.ttl.seconds == 3600 and pb.created_at.seconds == 1_700_000_000
