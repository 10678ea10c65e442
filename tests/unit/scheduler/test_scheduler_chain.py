"""The ``chain`` topology: each peer is fed by the one registered before it, the first by the seed."""

from __future__ import annotations

import itertools

import pytest
from sched_world import World

from damselfly.config import SchedulingConfig
from damselfly.domain import PieceInfo
from damselfly.scheduler import scheduling
from damselfly.scheduler.resources import Peer, PeerState
from damselfly.scheduler.scheduling import (
    SLOW_LINK_WINDOW_S,
    Parents,
    TriggerSeed,
    Wait,
    is_slow_link,
    refresh,
    slow_link_window,
)


def chain_world() -> World:
    return World(cfg=SchedulingConfig(topology="chain"))


def parent_ids(d: object) -> list[str]:
    assert isinstance(d, Parents), d
    return [p.id for p in d.parents]


def running_line(w: World, *names: str) -> tuple[Peer, list[Peer]]:
    """A fetching seed peer and running peers ``names`` lined up behind it in that order."""
    seed = w.peer("seedpeer", w.host("s", seed=True), state=PeerState.BACK_TO_SOURCE)
    peers = [w.peer(n, f"h{n}", state=PeerState.RUNNING) for n in names]
    for p in peers:
        w.decide(p)
    return seed, peers


def refreshed(w: World, peer: Peer) -> list[str]:
    """The parents a "more parents" reschedule gives ``peer`` now."""
    return parent_ids(refresh(peer, w.res, w.cfg, w.evaluator, w.clock(), w.rng))


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
    assert refreshed(w, peers[3]) == ["p2"]
    # The mesh would have added every other usable peer.
    w.cfg = SchedulingConfig(topology="mesh")
    more = refresh(peers[3], w.res, w.cfg, w.evaluator, w.clock(), w.rng)
    assert isinstance(more, Parents) and len(more.parents) > 1


def run_for(w: World, seconds: float, pieces_per_s: dict[Peer, float]) -> None:
    """Let the peers finish pieces at their rates (10 bytes each) for ``seconds``."""
    owed = dict.fromkeys(pieces_per_s, 0.0)
    for _ in range(int(seconds / 0.25)):
        w.clock.advance(0.25)
        for p, rate in pieces_per_s.items():
            owed[p] += rate * 0.25
            while owed[p] >= 1:
                owed[p] -= 1
                n = len(p.finished_pieces)
                w.res.record_piece(p, PieceInfo(number=n, offset=n * 10, length=10), w.clock())


def test_a_peer_on_a_slow_link_is_left_out_of_the_line_once_its_pace_shows() -> None:
    w = chain_world()
    seed, (a, slow, c) = running_line(w, "a", "slow", "c")
    assert [list(p.parents) for p in (a, slow, c)] == [["seedpeer"], ["a"], ["slow"]]
    # Too early to judge anyone: the line stays as it is.
    run_for(w, 6, {seed: 8, a: 8, slow: 2, c: 2})
    assert not is_slow_link(slow, w.clock())
    assert refreshed(w, c) == ["slow"]
    # Now "slow" has finished a quarter of what its parent did over the window: c goes round it.
    run_for(w, 8, {seed: 8, a: 8, slow: 2, c: 2})
    assert is_slow_link(slow, w.clock())
    assert not is_slow_link(c, w.clock())  # c only keeps pace with its parent
    assert not is_slow_link(a, w.clock())
    assert refreshed(w, c) == ["a"]
    # A newcomer on a fast link joins behind c, not behind the slow peer.
    d = w.peer("d", "hd", state=PeerState.RUNNING)
    assert parent_ids(w.decide(d)) == ["c"]


def test_pieces_finishing_in_bursts_do_not_make_a_peer_slow() -> None:
    # Four pieces in flight from one parent at a quarter of the link each finish together:
    # none for four piece-times, then four. Over the window that is the parent's pace.
    w = chain_world()
    seed, (a,) = running_line(w, "a")
    for second in range(40):
        run_for(w, 1, {seed: 1})
        if second % 4 == 3:
            run_for(w, 0.25, {a: 16})  # four pieces at once
        assert not is_slow_link(a, w.clock()), second


def test_a_slow_peer_may_follow_another_slow_peer() -> None:
    w = chain_world()
    seed, (a, slow1, slow2) = running_line(w, "a", "slow1", "slow2")
    w.res.set_parents(slow2, [a])  # slow2 was moved off slow1's line ...
    run_for(w, 14, {seed: 8, a: 8, slow1: 2, slow2: 2})
    assert is_slow_link(slow1, w.clock()) and is_slow_link(slow2, w.clock())
    # ... and, being as slow, may go back behind slow1 (it takes nothing from a's upload).
    assert refreshed(w, slow2) == ["slow1"]


def test_a_slow_head_is_passed_for_the_seed() -> None:
    # The seed then sends to two: the slow head what its link takes, the next peer the rest.
    w = chain_world()
    seed, (head, b) = running_line(w, "head", "b")
    assert refreshed(w, b) == ["head"]
    run_for(w, 14, {seed: 8, head: 2, b: 2})
    assert is_slow_link(head, w.clock())
    assert refreshed(w, b) == ["seedpeer"]


def test_a_finished_or_stalled_parent_makes_nobody_slow() -> None:
    w = chain_world()
    seed, (a,) = running_line(w, "a")
    run_for(w, 14, {seed: 8, a: 2})
    assert is_slow_link(a, w.clock())
    w.res.set_state(seed, PeerState.SUCCEEDED, w.clock())  # a late joiner behind a finished seed
    assert not is_slow_link(a, w.clock())


def test_a_piece_served_slowly_once_does_not_break_the_line() -> None:
    # The mesh drops a parent whose newest served piece is an outlier; in a line a piece's cost
    # swings with its upstream, and moving the child would make its grandparent feed two.
    w = chain_world()
    w.peer("seedpeer", w.host("s", seed=True), state=PeerState.BACK_TO_SOURCE)
    a = w.peer("a", "ha", state=PeerState.RUNNING, pieces=3)
    b = w.peer("b", "hb", state=PeerState.RUNNING)
    a.served_costs.extend([0.1] * 40 + [30.0])
    assert w.evaluator.is_bad_parent(a)
    assert parent_ids(w.decide(b)) == ["a"]


def test_the_slow_link_window_spans_many_piece_times_at_the_parents_pace() -> None:
    # 4 MiB pieces at 100 mbit: a piece-time of 0.34 s, the fixed window rules.
    assert slow_link_window([100e6 / 8], 4 << 20) == SLOW_LINK_WINDOW_S
    # At 5 mbit a piece-time is 6.7 s: sixteen of them.
    assert slow_link_window([5e6 / 8, 1e3], 4 << 20) == pytest.approx(16 * (4 << 20) / (5e6 / 8))
    assert slow_link_window([], 4 << 20) == SLOW_LINK_WINDOW_S
    assert slow_link_window([5e6 / 8], None) == SLOW_LINK_WINDOW_S


def verdicts(w: World, seed: Peer, a: Peer, every: int, seconds: int = 300) -> list[bool]:
    """The seed finishes a piece every 4 s, ``a`` one every ``every`` s: ``a``'s slow-link
    verdict at each second."""
    out = []
    for second in range(seconds):
        run_for(w, 1, {})
        if second % 4 == 3:
            run_for(w, 0.25, {seed: 4})
        if second % every == every - 1:
            run_for(w, 0.25, {a: 4})
        out.append(is_slow_link(a, w.clock()))
    return out


def flips(seen: list[bool]) -> int:
    return sum(1 for x, y in itertools.pairwise(seen) if x != y)


def test_a_child_at_half_a_slow_parents_pace_is_never_judged_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pieces every 4 s at the parent, every 8 s at the child: over a window of a few pieces each
    # finished piece swings the child's rate across the line, and children behind it would
    # move away and back at every piece.
    w = chain_world()
    seed, (a,) = running_line(w, "a")
    assert not any(verdicts(w, seed, a, every=8))
    assert seed.task.longest_piece == 10  # learnt from the reports
    monkeypatch.setattr(scheduling, "SLOW_LINK_PIECE_TIMES", 0)  # the fixed window alone
    w = chain_world()
    seed, (a,) = running_line(w, "a")
    assert flips(verdicts(w, seed, a, every=8)) > 10


def test_a_slow_peer_behind_a_slow_parent_is_still_found_out() -> None:
    w = chain_world()
    seed, (a, b) = running_line(w, "a", "b")
    seen = verdicts(w, seed, a, every=20)  # a fifth of the parent's pace
    assert seen[-1] and flips(seen) == 1  # judged once, and for good
    assert seen.index(True) < 120
    assert refreshed(w, b) == ["seedpeer"]
