"""Peers on Dragonfly's wire alone (``Peer.plain``) beside Damselfly ones.

A plain peer serves a piece only once it holds it whole and never asks for more
parents: in the chain it gets a fixed place with the other plain peers, behind the
Damselfly peers; in the mesh it gets several parents at once, and Damselfly children
prefer parents that pass pieces on as they land.
"""

from __future__ import annotations

from sched_world import World

from damselfly.config import SchedulingConfig
from damselfly.scheduler.line import MOVABLE_PIECES, line_of
from damselfly.scheduler.resources import Peer, PeerState
from damselfly.scheduler.scheduling import Parents, TriggerSeed, Wait, refresh


def parent_ids(d: object) -> list[str]:
    assert isinstance(d, Parents), d
    return [p.id for p in d.parents]


def plain(w: World, name: str, **kw: object) -> Peer:
    p = w.peer(name, f"h{name}", **kw)  # type: ignore[arg-type]
    p.plain = p.task.mixed_wire = True
    return p


def chain_world() -> World:
    return World(cfg=SchedulingConfig(topology="chain"))


def test_a_flash_crowd_puts_the_plain_peers_together_behind_the_damselfly_ones() -> None:
    w = chain_world()
    w.peer("seedpeer", w.host("s", seed=True), state=PeerState.BACK_TO_SOURCE)
    got: dict[str, list[str]] = {}
    peers: list[Peer] = []
    for i in range(8):  # registered turn about, as in a flash crowd
        name = f"p{i}"
        p = plain(w, name) if i % 2 else w.peer(name, f"h{name}")
        peers.append(p)
        got[name] = parent_ids(w.decide(p))
    # Each plain peer is answered once, and never moved: behind the one before it of its kind.
    assert got["p1"] == ["p0"] and got["p3"] == ["p1"] and got["p5"] == ["p3"] and got["p7"] == ["p5"]
    assert [p.id for p in line_of(w.task())] == ["p2", "p4", "p6", "p0", "p1", "p3", "p5", "p7"]
    # The Damselfly peers follow the line when they ask for more parents.
    more = {p.id: parent_ids(refresh(p, w.res, w.cfg, w.evaluator, w.clock(), w.rng)) for p in peers[::2]}
    assert more == {"p2": ["seedpeer"], "p4": ["p2"], "p6": ["p4"], "p0": ["p6"]}
    # One store-and-forward hop into the plain peers, three among them, none out of them.
    for p in peers[::2]:
        w.decide(p)
    edges = [(next(iter(p.parents)), p.id) for p in peers]
    plain_ids = {p.id for p in peers if p.plain}
    assert sum(1 for a, b in edges if a in plain_ids or b in plain_ids) == 4


def test_a_plain_peer_still_waiting_for_its_first_parent_goes_behind_damselfly_ones() -> None:
    w = chain_world()
    seed_host = w.host("s", seed=True)
    first = plain(w, "x")
    assert isinstance(w.decide(first), TriggerSeed)  # no seed peer yet: it waits
    a = w.peer("a", "ha")
    assert isinstance(w.decide(a), Wait)
    b = w.peer("b", "hb")
    assert parent_ids(w.decide(b)) == ["a"]
    w.peer("seedpeer", seed_host, state=PeerState.BACK_TO_SOURCE)
    assert parent_ids(w.decide(a)) == ["seedpeer"]
    assert parent_ids(w.decide(first)) == ["b"]


def test_damselfly_peers_already_under_way_are_not_moved() -> None:
    w = chain_world()
    w.peer("seedpeer", w.host("s", seed=True), state=PeerState.BACK_TO_SOURCE)
    a = w.peer("a", "ha", state=PeerState.RUNNING, pieces=MOVABLE_PIECES + 1)
    assert parent_ids(w.decide(a)) == ["seedpeer"]
    x = plain(w, "x")
    assert parent_ids(w.decide(x)) == ["a"]
    # a holds too much to follow a newcomer put before it: the newcomer goes to the end.
    b = w.peer("b", "hb")
    assert parent_ids(w.decide(b)) == ["x"]
    assert [p.id for p in line_of(w.task())] == ["a", "x", "b"]
    # A later plain peer joins x rather than stand behind b, which may still move.
    y = plain(w, "y")
    assert parent_ids(w.decide(y)) == ["x"]
    assert [p.id for p in line_of(w.task())] == ["a", "x", "y", "b"]
    assert parent_ids(refresh(b, w.res, w.cfg, w.evaluator, w.clock(), w.rng)) == ["y"]


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


def test_plain_peers_leading_the_line_do_not_push_damselfly_ones_back() -> None:
    # The first plain peer was answered before any Damselfly peer registered: it leads.
    w = chain_world()
    w.peer("seedpeer", w.host("s", seed=True), state=PeerState.BACK_TO_SOURCE)
    x = plain(w, "x")
    assert parent_ids(w.decide(x)) == ["seedpeer"]
    a = w.peer("a", "ha")
    assert parent_ids(w.decide(a)) == ["x"]
    b = w.peer("b", "hb")
    assert parent_ids(w.decide(b)) == ["a"]
    # Later plain peers go to the end: a and b stay behind one store-and-forward hop, not more.
    y = plain(w, "y")
    assert parent_ids(w.decide(y)) == ["b"]
    z = plain(w, "z")
    assert parent_ids(w.decide(z)) == ["y"]
    assert [p.id for p in line_of(w.task())] == ["x", "a", "b", "y", "z"]
