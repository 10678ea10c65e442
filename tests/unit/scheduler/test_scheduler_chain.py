"""The ``chain`` topology: each peer is fed by the one registered before it, the first by the seed."""

from __future__ import annotations

from sched_world import World

from damselfly.config import SchedulingConfig
from damselfly.scheduler.resources import PeerState
from damselfly.scheduler.scheduling import Parents, TriggerSeed, Wait, refresh


def chain_world() -> World:
    return World(cfg=SchedulingConfig(topology="chain"))


def parent_ids(d: object) -> list[str]:
    assert isinstance(d, Parents), d
    return [p.id for p in d.parents]


def test_a_flash_crowd_forms_a_line_behind_the_seed() -> None:
    w = chain_world()
    seed_host = w.host("s", seed=True)
    peers = [w.peer(f"p{i}", f"h{i}") for i in range(5)]
    first = w.decide(peers[0])
    assert isinstance(first, TriggerSeed) and first.host is seed_host
    # The others join the line at once, behind peers that have not started yet.
    for i in range(1, 5):
        assert parent_ids(w.decide(peers[i])) == [f"p{i - 1}"]
    # The head waits for the seed peer, then gets it (and only it).
    assert isinstance(w.decide(peers[0]), Wait)
    w.peer("seedpeer", seed_host, state=PeerState.BACK_TO_SOURCE)
    assert parent_ids(w.decide(peers[0])) == ["seedpeer"]
    assert [list(p.parents) for p in peers] == [["seedpeer"], ["p0"], ["p1"], ["p2"], ["p3"]]


def test_failed_blocked_and_same_host_predecessors_are_skipped() -> None:
    w = chain_world()
    w.peer("seedpeer", w.host("s", seed=True), state=PeerState.BACK_TO_SOURCE)
    a = w.peer("a", "ha", state=PeerState.RUNNING)
    b = w.peer("b", "hb", state=PeerState.RUNNING)
    c = w.peer("c", "hc", state=PeerState.RUNNING)
    d = w.peer("d", "hc")  # another peer on c's host
    assert parent_ids(w.decide(d)) == ["b"]
    w.res.set_state(b, PeerState.FAILED, w.clock())
    e = w.peer("e", "he")
    assert parent_ids(w.decide(e)) == ["d"]
    d.blocked.add("d")
    e.blocked.add("d")
    assert parent_ids(w.decide(e)) == ["c"]
    e.blocked.update({"c", "a"})
    assert parent_ids(w.decide(e)) == ["seedpeer"]
    # A peer that finished still serves its place in the line.
    w.res.set_state(a, PeerState.SUCCEEDED, w.clock())
    e.blocked.discard("a")
    assert parent_ids(w.decide(e)) == ["a"]
    assert c.state is PeerState.RUNNING


def test_more_parents_keeps_the_line() -> None:
    w = chain_world()
    w.peer("seedpeer", w.host("s", seed=True), state=PeerState.BACK_TO_SOURCE)
    peers = [w.peer(f"p{i}", f"h{i}", state=PeerState.RUNNING, pieces=3) for i in range(4)]
    for p in peers:
        w.decide(p)
    more = refresh(peers[3], w.res, w.cfg, w.evaluator, w.clock(), w.rng)
    assert parent_ids(more) == ["p2"]
    # The mesh would have added every other usable peer.
    w.cfg = SchedulingConfig(topology="mesh")
    more = refresh(peers[3], w.res, w.cfg, w.evaluator, w.clock(), w.rng)
    assert isinstance(more, Parents) and len(more.parents) > 1
