"""Garbage collection with a fake clock."""

from __future__ import annotations

from sched_world import World

from damselfly.config import GCConfig
from damselfly.scheduler import gc
from damselfly.scheduler.resources import PeerState


def test_silent_hosts_go_with_their_peers_and_empty_tasks_go() -> None:
    w = World()
    cfg = GCConfig(host_ttl=60, peer_ttl=3600, pending_peer_ttl=600, task_ttl=7200)
    w.peer("old", "h-old", state=PeerState.SUCCEEDED, task_id="a" * 64)
    w.clock.advance(30)
    fresh = w.host("h-fresh")
    w.peer("fresh", fresh, state=PeerState.SUCCEEDED, task_id="b" * 64)
    w.clock.advance(40)  # h-old silent for 70 s, h-fresh for 40 s
    plan = gc.plan(w.res, cfg, w.clock())
    assert plan.host_ids == ["10.0.0.1-h-old"]
    assert plan.task_ids == ["a" * 64]
    gc.collect(w.res, plan)
    assert set(w.res.hosts) == {"10.0.0.1-h-fresh"}
    assert set(w.res.peers) == {"fresh"}
    assert set(w.res.tasks) == {"b" * 64}
    assert not gc.plan(w.res, cfg, w.clock())


def test_peer_ttls_and_failed_peers() -> None:
    w = World()
    cfg = GCConfig(host_ttl=10**6, peer_ttl=3600, pending_peer_ttl=600, task_ttl=10**6)
    w.peer("pending", "h1")
    w.peer("running", "h2", state=PeerState.RUNNING)
    w.peer("failed", "h3", state=PeerState.FAILED)
    w.peer("failed-open", "h4", state=PeerState.FAILED)
    plan = gc.plan(w.res, cfg, w.clock(), keep={"failed-open"})
    assert plan.peer_ids == ["failed"]
    w.clock.advance(601)
    assert gc.plan(w.res, cfg, w.clock(), keep={"failed-open"}).peer_ids == ["failed", "pending"]
    w.clock.advance(3000)
    plan = gc.plan(w.res, cfg, w.clock(), keep={"failed-open"})
    assert plan.peer_ids == ["failed", "pending", "running"]
    gc.collect(w.res, plan)
    assert set(w.res.peers) == {"failed-open"}
    assert w.res.hosts["10.0.0.1-h2"].peers == {}
