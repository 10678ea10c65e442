"""Peers on Dragonfly's wire alone (``Peer.plain``) beside Damselfly ones.

A plain peer serves a piece only once it holds it whole and never asks for more
parents: in the chain it gets a fixed place with the other plain peers, ahead of the
Damselfly peers; in the mesh it gets several parents at once, and Damselfly children
prefer parents that pass pieces on as they land.
"""

from __future__ import annotations

from sched_world import World

from damselfly.config import SchedulingConfig
from damselfly.scheduler.line import MOVABLE_PIECES, line_of
from damselfly.scheduler.resources import Peer, PeerState
from damselfly.scheduler.scheduling import Parents, TriggerSeed, move_follower, refresh


def parent_ids(d: object) -> list[str]:
    assert isinstance(d, Parents), d
    return [p.id for p in d.parents]


def plain(w: World, name: str, **kw: object) -> Peer:
    p = w.peer(name, f"h{name}", **kw)  # type: ignore[arg-type]
    p.plain = p.task.mixed_wire = True
    return p


def chain_world() -> World:
    return World(cfg=SchedulingConfig(topology="chain"))


def test_a_flash_crowd_puts_the_plain_peers_together_ahead_of_the_damselfly_ones() -> None:
    w = chain_world()
    w.peer("seedpeer", w.host("s", seed=True), state=PeerState.BACK_TO_SOURCE)
    got: dict[str, list[str]] = {}
    told: dict[str, list[str]] = {}
    peers: list[Peer] = []
    for i in range(8):  # registered turn about, as in a flash crowd
        name = f"p{i}"
        p = plain(w, name) if i % 2 else w.peer(name, f"h{name}")
        peers.append(p)
        got[name] = parent_ids(w.decide(p))
        moved = move_follower(p, w.res, w.cfg, w.evaluator, w.clock(), w.rng)
        if moved is not None:  # the service sends it unasked; here it is applied as sent
            told.setdefault(moved[0].id, []).extend(parent_ids(moved[1]))
            w.res.set_parents(moved[0], moved[1].parents)
    # Each plain peer is answered once and never moved: behind the one before it of its kind.
    assert got["p1"] == ["seedpeer"] and got["p3"] == ["p1"] and got["p5"] == ["p3"] and got["p7"] == ["p5"]
    assert [p.id for p in line_of(w.task())] == ["p1", "p3", "p5", "p7", "p0", "p2", "p4", "p6"]
    # Damselfly newcomers go to the end; the one behind the plain peers follows each newcomer.
    assert got["p2"] == ["p0"] and got["p4"] == ["p2"] and got["p6"] == ["p4"]
    assert told == {"p0": ["p1", "p3", "p5", "p7"]}
    # Asked again, everybody keeps its place.
    more = {p.id: parent_ids(refresh(p, w.res, w.cfg, w.evaluator, w.clock(), w.rng)) for p in peers[::2]}
    assert more == {"p0": ["p7"], "p2": ["p0"], "p4": ["p2"], "p6": ["p4"]}
    # One edge from a plain parent to a Damselfly child; none from a Damselfly parent to a plain one.
    edges = [(next(iter(p.parents)), p.id) for p in peers]
    plain_ids = {p.id for p in peers if p.plain}
    assert [(a, b) for a, b in edges if a in plain_ids and b not in plain_ids] == [("p7", "p0")]
    assert not [(a, b) for a, b in edges if b in plain_ids and a not in plain_ids | {"seedpeer"}]


def test_a_plain_peer_that_came_first_leads_and_damselfly_peers_follow_it() -> None:
    w = chain_world()
    seed_host = w.host("s", seed=True)
    first = plain(w, "x")
    assert isinstance(w.decide(first), TriggerSeed)  # no seed peer yet: it waits
    a = w.peer("a", "ha")
    assert parent_ids(w.decide(a)) == ["x"]  # pending parents count: in a flash crowd all are
    w.peer("seedpeer", seed_host, state=PeerState.BACK_TO_SOURCE)
    assert parent_ids(w.decide(first)) == ["seedpeer"]
    y = plain(w, "y")  # a holds nothing yet: y joins x at the head, a moves behind y
    assert parent_ids(w.decide(y)) == ["x"]
    moved = move_follower(y, w.res, w.cfg, w.evaluator, w.clock(), w.rng)
    assert moved is not None and moved[0] is a and parent_ids(moved[1]) == ["y"]
    assert [p.id for p in line_of(w.task())] == ["x", "y", "a"]


def test_damselfly_peers_already_under_way_are_not_moved() -> None:
    w = chain_world()
    w.peer("seedpeer", w.host("s", seed=True), state=PeerState.BACK_TO_SOURCE)
    a = w.peer("a", "ha", state=PeerState.RUNNING, pieces=MOVABLE_PIECES + 1)
    assert parent_ids(w.decide(a)) == ["seedpeer"]
    # a holds too much to wait for a newcomer put before it: a late plain peer goes to the end.
    x = plain(w, "x")
    assert parent_ids(w.decide(x)) == ["a"]
    assert move_follower(x, w.res, w.cfg, w.evaluator, w.clock(), w.rng) is None
    b = w.peer("b", "hb")
    assert parent_ids(w.decide(b)) == ["x"]
    y = plain(w, "y")
    assert parent_ids(w.decide(y)) == ["b"]
    assert [p.id for p in line_of(w.task())] == ["a", "x", "b", "y"]
    assert parent_ids(refresh(b, w.res, w.cfg, w.evaluator, w.clock(), w.rng)) == ["x"]


def test_a_damselfly_peer_put_behind_a_newcomer_is_told_its_new_parent_at_once() -> None:
    # a holds nothing yet when the plain peer x comes: x goes before it, and a must hear of x
    # now, not at its next request for more parents, or a and x would share the seed's upload
    # meanwhile and x's lag would stay with everyone behind it.
    w = chain_world()
    w.peer("seedpeer", w.host("s", seed=True), state=PeerState.BACK_TO_SOURCE)
    a = w.peer("a", "ha")
    assert parent_ids(w.decide(a)) == ["seedpeer"]
    assert move_follower(a, w.res, w.cfg, w.evaluator, w.clock(), w.rng) is None  # a Damselfly newcomer
    x = plain(w, "x")
    assert parent_ids(w.decide(x)) == ["seedpeer"]
    moved = move_follower(x, w.res, w.cfg, w.evaluator, w.clock(), w.rng)
    assert moved is not None
    told, answer = moved
    assert told is a and parent_ids(answer) == ["x"]
    # Once a follows x, nothing more is to be told.
    w.res.set_parents(a, [x])
    assert move_follower(x, w.res, w.cfg, w.evaluator, w.clock(), w.rng) is None


def test_without_plain_peers_the_line_is_the_order_of_registration() -> None:
    w = chain_world()
    peers = [w.peer(f"p{i}", f"h{i}") for i in range(4)]
    assert line_of(w.task()) == peers
    assert all(p.line_key is None for p in peers)


def mesh_world() -> World:
    return World(cfg=SchedulingConfig(topology="mesh", candidate_parent_limit=4))


def test_a_plain_peer_gets_several_parents_at_once() -> None:
    w = mesh_world()
    for i in range(6):
        w.peer(f"h{i}", f"h{i}", state=PeerState.RUNNING, pieces=3)
    child = plain(w, "c")
    assert len(parent_ids(w.decide(child))) == 4


def test_damselfly_children_prefer_damselfly_parents() -> None:
    w = mesh_world()
    for i in range(3):  # plain parents further along than the Damselfly ones
        plain(w, f"plain{i}", state=PeerState.RUNNING, pieces=8)
    for i in range(3):
        w.peer(f"dfly{i}", f"dfly{i}", state=PeerState.RUNNING, pieces=2)
    got = parent_ids(w.decide(w.peer("c", "hc")))
    assert {g[:4] for g in got[:3]} == {"dfly"}
    # A plain peer that holds the whole task forwards nothing late: it ranks as any other.
    done = plain(w, "done", state=PeerState.SUCCEEDED, pieces=8)
    got = parent_ids(w.decide(w.peer("c2", "hc2")))
    assert done.id in got


def test_without_plain_peers_nobody_is_told_unasked() -> None:
    w = chain_world()
    w.peer("seedpeer", w.host("s", seed=True), state=PeerState.BACK_TO_SOURCE)
    a = w.peer("a", "ha")
    assert parent_ids(w.decide(a)) == ["seedpeer"]
    b = w.peer("b", "hb")
    assert parent_ids(w.decide(b)) == ["a"]
    assert move_follower(a, w.res, w.cfg, w.evaluator, w.clock(), w.rng) is None
    assert move_follower(b, w.res, w.cfg, w.evaluator, w.clock(), w.rng) is None
