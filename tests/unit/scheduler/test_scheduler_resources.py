"""The resource model: DAG edges, cycle refusal, same-host exclusion, upload slots."""

from __future__ import annotations

import random

import pytest
from sched_world import World

from damselfly.domain import SizeScope
from damselfly.errors import InvalidArgument, NotFound
from damselfly.scheduler.resources import IndexedSet, PeerState


def test_edge_that_makes_a_cycle_is_refused() -> None:
    w = World()
    a = w.peer("a", "ha", state=PeerState.RUNNING)
    b = w.peer("b", "hb", state=PeerState.RUNNING)
    c = w.peer("c", "hc", state=PeerState.RUNNING)
    w.res.add_parent(b, a)  # b downloads from a
    w.res.add_parent(c, b)  # c downloads from b
    assert w.res.is_ancestor(c, a) is False
    assert w.res.is_ancestor(a, c) is True
    with pytest.raises(InvalidArgument):
        w.res.add_parent(a, c)  # a -> c -> b -> a
    with pytest.raises(InvalidArgument):
        w.res.add_parent(a, b)
    assert "c" not in a.parents and "b" not in a.parents


def test_peers_of_one_host_never_parent_each_other() -> None:
    w = World()
    a = w.peer("a", "h", state=PeerState.RUNNING)
    b = w.peer("b", "h")
    assert not w.res.can_add_edge(b, a)
    with pytest.raises(InvalidArgument):
        w.res.add_parent(b, a)


def test_upload_slots_follow_edges_and_free_when_child_finishes() -> None:
    w = World()
    w.res.peer_upload_limit = 2
    parent_host = w.host("p")
    assert parent_host.upload_limit == 2
    p = w.peer("p", parent_host, state=PeerState.SUCCEEDED)
    c1, c2 = w.peer("c1", "h1"), w.peer("c2", "h2")
    w.res.set_parents(c1, [p])
    w.res.set_parents(c2, [p])
    assert parent_host.children == 2 and parent_host.free_upload_slots == 0
    w.res.set_state(c1, PeerState.SUCCEEDED, w.clock())
    assert parent_host.children == 1 and c1.parents == {}
    w.res.delete_peer("c2")
    assert parent_host.children == 0
    c3 = w.peer("c3", "h3")
    w.res.set_parents(c3, [p])
    w.res.set_state(p, PeerState.FAILED, w.clock())  # a failed parent frees its slots and children
    assert parent_host.children == 0 and c3.parents == {}


def test_seed_hosts_get_the_seed_upload_limit() -> None:
    w = World()
    assert w.host("s", seed=True).upload_limit == 2000
    assert w.host("n").upload_limit == 200


def test_deleting_a_host_drops_its_peers_and_their_edges_only() -> None:
    w = World()
    a = w.peer("a", "ha", state=PeerState.SUCCEEDED)
    b = w.peer("b", "hb", state=PeerState.RUNNING)
    c = w.peer("c", "hc")
    w.res.set_parents(c, [a, b])
    removed = w.res.delete_host("10.0.0.1-ha")
    assert [p.id for p in removed] == ["a"]
    assert set(c.parents) == {"b"}
    assert a not in w.task().available and b in w.task().available
    with pytest.raises(NotFound):
        w.res.peer("a")
    assert w.res.peer("b") is b


def test_task_state_and_counts_follow_peer_states() -> None:
    w = World()
    a = w.peer("a", "ha")
    assert w.task().state == "Pending"
    w.res.set_state(a, PeerState.BACK_TO_SOURCE, w.clock())
    assert w.task().state == "Running"
    w.res.set_state(a, PeerState.FAILED, w.clock())
    assert w.task().state == "Failed"
    b = w.peer("b", "hb", state=PeerState.SUCCEEDED)
    assert w.task().state == "Succeeded"
    w.res.delete_peer(b.id)
    assert w.task().succeeded == 0 and w.task().failed == 1


def test_indexed_set_samples_without_repeats_and_removes_in_place() -> None:
    s: IndexedSet[int] = IndexedSet()
    for i in range(100):
        s.add(i)
    s.add(5)
    s.discard(0)
    s.discard(1000)
    assert len(s) == 99 and 0 not in s and 99 in s
    sample = s.sample(15, random.Random(1))
    assert len(set(sample)) == 15 and all(x in s for x in sample)
    assert sorted(s.sample(500, random.Random(1))) == list(range(1, 100))


def test_a_task_learns_its_sizes_once_and_says_its_size_scope_as_dragonfly() -> None:
    # Size scopes: G:scheduler/resource/standard/task.go:601-623 (dragonflyoss/dragonfly 66db4564).
    task = World().task()
    assert task.size_scope is None  # unknown: Dragonfly's UNKNOW
    task.learn_sizes(10 * 4 * 1024 * 1024 + 1, 4 * 1024 * 1024, None)
    assert (task.piece_count, task.size_scope) == (11, SizeScope.NORMAL)  # the count derived
    task.learn_sizes(5, 4, 2)  # a known length is never changed
    assert task.content_length == 10 * 4 * 1024 * 1024 + 1
    for length, count, scope in (
        (0, 0, SizeScope.EMPTY),
        (128, 1, SizeScope.TINY),
        (129, 1, SizeScope.SMALL),
    ):
        t = World().task()
        t.learn_sizes(length, 4 * 1024 * 1024, count)
        assert t.size_scope is scope
