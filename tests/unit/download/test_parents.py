"""The parent table: what a download asks of which parent, and its verdicts, on a fake clock."""

from __future__ import annotations

import random

import pytest

from damselfly.daemon.download.parents import (
    ELSEWHERE_RETRY,
    LONE_PARENT_DEPTH,
    PARENT_FAILURE_LIMIT,
    REFRESH_BACKOFF,
    WHOLE_PIECE_LEAD,
    WHOLE_PIECE_LOOKAHEAD_DEPTH,
    Complete,
    Failure,
    Fetch,
    Parent,
    ParentTable,
    ReportFailed,
    Stalled,
    Wait,
)
from damselfly.daemon.download.picker import rarest_first, sequential
from damselfly.domain import CandidateParent, HostInfo

TIMEOUT = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def candidate(name: str) -> CandidateParent:
    host = HostInfo(id=f"10.0.0.1-{name}", hostname=name, ip="10.0.0.1", port=1, download_port=2)
    return CandidateParent(peer_id=f"10.0.0.1-{name}-1", host=host)


def table(clock: Clock, *, picker=rarest_first, **settings) -> ParentTable:
    t = ParentTable(clock=clock, rng=random.Random(7), piece_timeout=TIMEOUT, **settings)
    t.start_round(picker)
    return t


def parents(t: ParentTable, holdings: dict[str, set[int]]) -> dict[str, Parent]:
    """Add a parent per name, each holding the given pieces."""
    out = {}
    for name, pieces in holdings.items():
        (p,) = t.add([candidate(name)])
        for n in pieces:
            t.holds(p, n)
        out[name] = p
    return out


def fetches(actions) -> list[Fetch]:
    return [a for a in actions if isinstance(a, Fetch)]


# ------------------------------------------------------------------ depth


def test_a_lone_parent_gets_lone_parent_depth():
    t = table(Clock(), concurrent_piece_count=16)
    parents(t, {"a": set(range(10))})
    got = fetches(t.plan(set(range(10)), running=0))
    assert len(got) == LONE_PARENT_DEPTH
    assert t.in_flight == {f.number for f in got}


@pytest.mark.parametrize(
    ("count", "depth", "per_parent"),
    [(2, 1, 4), (4, 1, 2), (4, 3, 3)],  # concurrent_piece_count // (2 x parents), at least the depth
)
def test_several_parents_share_the_workers(count, depth, per_parent):
    t = table(Clock(), concurrent_piece_count=16, parent_piece_depth=depth)
    ps = parents(t, {str(i): set(range(40)) for i in range(count)})
    got = fetches(t.plan(set(range(40)), running=0))
    assert len(got) == count * per_parent
    assert all(p.view.in_flight == per_parent for p in ps.values())


def test_a_parent_serving_whole_pieces_gets_one_at_a_time_in_order():
    # A plain parent (no Damselfly extensions) announces a piece only once it holds it whole:
    # several at once would share our link and all land late for our own children.
    t = table(Clock(), concurrent_piece_count=16)
    (p,) = t.add([candidate("plain")])
    for n in (9, 2, 7, 4, 3):
        t.holds(p, n, whole_pieces=True)
    got = fetches(t.plan(set(range(10)), running=0))
    assert [f.number for f in got] == [2]  # the lowest, not one at random
    assert fetches(t.plan(set(range(10)), running=1)) == []  # no cost known yet: no lookahead
    t.piece_done(got[0], 0.4)
    assert [f.number for f in fetches(t.plan(set(range(10)) - {2}, running=0))] == [3]


def test_a_whole_piece_parents_next_piece_is_asked_just_before_the_one_in_flight_lands():
    # Once its costs are known, the next piece goes WHOLE_PIECE_LEAD before the one in flight
    # should land, so the link does not idle between one-request connections.
    clock = Clock()
    t = table(clock, concurrent_piece_count=16)
    (p,) = t.add([candidate("plain")])
    t.holds(p, 0, whole_pieces=True)
    (first,) = fetches(t.plan(set(range(10)), running=0))
    clock.now += 0.36
    t.piece_done(first, 0.36)  # the link's time for a piece
    for n in (1, 2, 3):
        t.holds(p, n, whole_pieces=True)
    missing = set(range(10)) - {0}
    actions = t.plan(missing, running=0)
    assert [f.number for f in fetches(actions)] == [1]
    wait = actions[-1]
    assert isinstance(wait, Wait) and wait.seconds == pytest.approx(0.36 - WHOLE_PIECE_LEAD)
    clock.now += 0.36 - WHOLE_PIECE_LEAD - 0.01
    assert fetches(t.plan(missing, running=1)) == []  # not yet
    clock.now += 0.01
    assert [f.number for f in fetches(t.plan(missing, running=1))] == [2]
    clock.now += 0.01
    assert fetches(t.plan(missing, running=2)) == []  # never a third
    assert WHOLE_PIECE_LOOKAHEAD_DEPTH == 2 < LONE_PARENT_DEPTH


def test_a_damselfly_parent_keeps_the_lone_parent_depth():
    t = table(Clock(), concurrent_piece_count=16)
    (p,) = t.add([candidate("damselfly")])
    for n in (5, 3):
        t.holds(p, n, whole_pieces=False)
    assert len(fetches(t.plan(set(range(10)), running=0))) == 2


def test_never_more_workers_than_concurrent_piece_count():
    t = table(Clock(), concurrent_piece_count=16)
    parents(t, {"a": set(range(10))})
    assert len(fetches(t.plan(set(range(10)), running=14))) == 2
    assert fetches(t.plan(set(range(10)), running=16)) == []


# ------------------------------------------------------------------ stalls


def test_no_progress_for_piece_timeout_with_nothing_in_flight_stalls():
    clock = Clock()
    t = table(clock)
    parents(t, {"a": {0}})  # holds nothing we miss; its sync is still open
    assert isinstance(t.plan({5}, running=0)[-1], Wait)
    clock.now += TIMEOUT
    assert isinstance(t.plan({5}, running=0)[-1], Wait)
    clock.now += 0.5
    assert t.plan({5}, running=0) == [Stalled(TIMEOUT + 0.5, 0)]


def test_a_piece_landing_restarts_the_stall_clock():
    clock = Clock()
    t = table(clock)
    parents(t, {"a": set()})
    t.plan({5, 6}, running=0)
    clock.now += TIMEOUT
    assert isinstance(t.plan({6}, running=0)[-1], Wait)  # piece 5 landed
    clock.now += TIMEOUT
    assert isinstance(t.plan({6}, running=0)[-1], Wait)
    clock.now += 1
    assert isinstance(t.plan({6}, running=0)[0], Stalled)


def test_workers_in_flight_get_twice_piece_timeout_then_the_backstop_stalls():
    clock = Clock()
    t = table(clock)
    parents(t, {"a": {0}})
    assert len(fetches(t.plan({0}, running=0))) == 1
    clock.now += 1.5 * TIMEOUT
    assert t.plan({0}, running=1) == [Wait(1.0)]
    clock.now += TIMEOUT
    assert t.plan({0}, running=1) == [Stalled(2.5 * TIMEOUT, 1)]


def test_all_parents_dead_or_done_syncing_is_stuck_at_once():
    t = table(Clock())
    ps = parents(t, {"a": {0}, "b": {1}})
    t.sync_ended(ps["a"])
    t.drop(ps["b"])
    assert t.plan({5}, running=0) == [Stalled(0.0, 0)]


def test_no_parents_at_all_is_stuck():
    t = table(Clock())
    assert t.plan({0}, running=0) == [Stalled(0.0, 0)]


def test_a_parent_still_syncing_is_waited_for():
    t = table(Clock())
    ps = parents(t, {"a": set(), "b": set()})
    t.sync_ended(ps["a"])
    assert t.plan({5}, running=0) == [Wait(1.0)]


# ------------------------------------------------------------------ failures


def test_errors_go_unreported_until_the_limit_then_the_parent_is_dropped_and_reported_to_avoid():
    t = table(Clock())
    ps = parents(t, {"a": set(range(10)), "b": set(range(10))})
    a = ps["a"]
    reports = []
    for _ in range(PARENT_FAILURE_LIMIT):
        fetch = next(f for f in fetches(t.plan(set(range(10)), running=0)) if f.parent is a)
        reports.append(t.piece_failed(fetch, Failure.ERROR))
        t.end_round()  # free the other picks, so the next plan starts clean
    # Below the limit the parent may serve again: nothing for the scheduler. At the limit it is
    # gone: temporary=true, Dragonfly's "avoid this parent" (the Go scheduler blocks it).
    assert reports[:-1] == [None] * (PARENT_FAILURE_LIMIT - 1)
    assert reports[-1] == ReportFailed(reports[-1].number, a.id, temporary=True)
    assert a.dead
    assert all(f.parent is ps["b"] for f in fetches(t.plan(set(range(10)), running=0)))


def test_pieces_in_flight_together_that_fail_together_count_once():
    # A parent whose own upstream died fails every piece it was cutting through at once: one
    # failure, not the limit; it stays, and failures after that count as usual.
    t = table(Clock())
    (a,) = parents(t, {"a": set(range(10))}).values()
    together = fetches(t.plan(set(range(10)), running=0))
    assert len(together) == LONE_PARENT_DEPTH >= PARENT_FAILURE_LIMIT
    assert [t.piece_failed(f, Failure.ERROR) for f in together] == [None] * len(together)
    assert not a.dead and a.failures == 1
    reports = []
    for _ in range(PARENT_FAILURE_LIMIT - 1):
        f, *_ = fetches(t.plan(set(range(10)), running=0))
        reports.append(t.piece_failed(f, Failure.ERROR))
        t.end_round()
    assert reports[-1] is not None and a.dead


def test_a_piece_that_comes_resets_the_failure_count():
    t = table(Clock())
    (a,) = parents(t, {"a": set(range(10))}).values()
    for _ in range(PARENT_FAILURE_LIMIT - 1):
        f, *_ = fetches(t.plan(set(range(10)), running=0))
        assert t.piece_failed(f, Failure.ERROR) is None
        t.end_round()
    f, *_ = fetches(t.plan(set(range(10)), running=0))
    t.piece_done(f, cost_s=0.5)
    t.end_round()
    f, *_ = fetches(t.plan(set(range(10)), running=0))
    assert t.piece_failed(f, Failure.ERROR) is None  # one failure after a success: not the limit
    assert not a.dead


def test_a_protocol_error_drops_the_parent_at_once():
    t = table(Clock())
    (a,) = parents(t, {"a": {0, 1}}).values()
    f, *_ = fetches(t.plan({0, 1}, running=0))
    assert t.piece_failed(f, Failure.PROTOCOL) == ReportFailed(f.number, a.id, temporary=True)
    assert a.dead and a.view.max_in_flight == 0


def test_a_corrupt_piece_drops_the_parent_and_is_reported_to_avoid():
    t = table(Clock())
    ps = parents(t, {"a": {0}, "b": {0}})
    (f,) = fetches(t.plan({0}, running=0))
    assert t.piece_failed(f, Failure.CORRUPT) == ReportFailed(0, f.parent.id, temporary=True)
    assert f.parent.dead and f.parent.failures == 0
    other = ps["b"] if f.parent is ps["a"] else ps["a"]
    assert fetches(t.plan({0}, running=0)) == [Fetch(0, other)]


def test_a_piece_the_parent_lacks_is_forgotten_there_and_asked_elsewhere():
    t = table(Clock(), picker=sequential)
    ps = parents(t, {"a": {0}, "b": {0}})
    (f,) = fetches(t.plan({0}, running=0))
    assert t.piece_failed(f, Failure.NOT_FOUND) is None  # the parent may hold others
    assert 0 not in f.parent.view.pieces
    other = ps["b"] if f.parent is ps["a"] else ps["a"]
    assert fetches(t.plan({0}, running=0)) == [Fetch(0, other)]


# ------------------------------------------------------------------ busy and elsewhere


def test_a_busy_parent_is_left_alone_until_ready_at():
    clock = Clock()
    t = table(clock)
    (a,) = parents(t, {"a": {0}}).values()
    (f,) = fetches(t.plan({0}, running=0))
    assert t.piece_failed(f, Failure.BUSY) is None  # not a failure: nothing to report
    assert a.failures == 0 and not a.dead
    backoff = a.view.ready_at - clock.now
    assert 0.05 <= backoff <= 0.25
    (wait,) = t.plan({0}, running=0)
    assert wait == Wait(pytest.approx(backoff))  # wake when it is ready, not a second later
    clock.now = a.view.ready_at
    assert fetches(t.plan({0}, running=0)) == [Fetch(0, a)]


def test_a_piece_sent_elsewhere_is_asked_of_the_others_for_a_while():
    clock = Clock()
    t = table(clock)
    (seed,) = parents(t, {"seed": {0}}).values()
    (f,) = fetches(t.plan({0}, running=0))
    assert t.piece_failed(f, Failure.ELSEWHERE) is None  # not a failure: nothing to report
    assert seed.failures == 0
    assert fetches(t.plan({0}, running=0)) == []  # only the seed holds it: wait
    (peer,) = parents(t, {"peer": {0}}).values()
    assert fetches(t.plan({0}, running=0)) == [Fetch(0, peer)]
    t.drop(peer)
    t.end_round()
    clock.now += ELSEWHERE_RETRY
    assert fetches(t.plan({0}, running=0)) == [Fetch(0, seed)]


# ------------------------------------------------------------------ more parents


def test_asks_for_more_parents_later_and_later_while_none_comes():
    t = table(Clock(), refresh_interval=1.0)
    parents(t, {"a": set()})
    delays = []
    for _ in range(6):
        delays.append(t.refresh_delay())
        t.more_parents([candidate("a")])  # nothing new
    bases = [1, 2, 4, 8, 16, 16]
    assert all(0.75 * b <= d <= 1.25 * b for d, b in zip(delays, bases, strict=True))
    assert REFRESH_BACKOFF == 16
    t.more_parents([candidate("b")])  # a new one: soon again
    assert 0.75 <= t.refresh_delay() <= 1.25


def test_a_parent_offered_again_after_it_was_dropped_comes_back_afresh_but_is_not_new():
    t = table(Clock(), refresh_interval=1.0)
    (a,) = parents(t, {"a": {0}}).values()
    t.more_parents([])
    t.drop(a)
    (again,) = t.more_parents([candidate("a")])
    assert again is not a and not again.dead and again.view.pieces == set()
    assert t.refresh_delay() >= 0.75 * 4  # it doubled: no parent this download never had
    assert t.add([candidate("a")]) == []  # a live parent offered again stays as it is


def test_a_parent_left_out_of_an_unasked_answer_is_retired_not_failed():
    # The scheduler moved us in its line: the old parent's upload belongs to the peer behind it.
    t = table(Clock(), concurrent_piece_count=16)
    ps = parents(t, {"old": set(range(10))})
    t.more_parents([candidate("new")], retire=True)
    assert [p.id for p in t.live()] == [candidate("new").peer_id]
    assert fetches(t.plan(set(range(10)), running=0)) == []  # nothing from "old" any more
    assert t.reschedule() == []  # and it is not reported as failed
    t.more_parents([candidate("new"), candidate("old")], retire=True)  # offered again: asked again
    assert ps["old"] in t.live()
    assert len(fetches(t.plan(set(range(10)), running=0))) == LONE_PARENT_DEPTH


def test_an_answer_to_our_own_request_retires_nothing():
    # A scheduler that restarted answers "more parents" without the parents we already use.
    t = table(Clock(), concurrent_piece_count=16)
    ps = parents(t, {"old": set(range(10))})
    t.more_parents([candidate("new")])
    assert ps["old"] in t.live()
    assert fetches(t.plan(set(range(10)), running=0))  # still asked for pieces


def test_wants_more_parents_below_max_parents_counting_live_ones():
    t = table(Clock(), max_parents=2)
    ps = parents(t, {"a": set(), "b": set()})
    assert not t.wants_more_parents()
    t.drop(ps["a"])
    assert t.wants_more_parents()


def test_a_new_round_asks_soon_again():
    t = table(Clock(), refresh_interval=1.0)
    for _ in range(3):
        t.more_parents([])
    t.start_round(rarest_first)
    assert t.refresh_delay() <= 1.25


# ------------------------------------------------------------------ reschedule


def test_reschedule_names_the_dead_parents():
    t = table(Clock())
    ps = parents(t, {"a": set(), "b": set()})
    t.drop(ps["b"])
    assert t.reschedule() == [ps["b"].id]


def test_reschedule_names_all_parents_after_two_stuck_rounds():
    t = table(Clock())
    ps = parents(t, {"a": set(), "b": set()})
    assert t.reschedule() == []
    assert t.reschedule() == []
    assert t.reschedule() == [ps["a"].id, ps["b"].id]


# ------------------------------------------------------------------ the end


def test_the_last_pieces_in_flight_are_waited_for_then_complete():
    t = table(Clock())
    parents(t, {"a": {0, 1}, "b": {0, 1}})
    got = fetches(t.plan({0, 1}, running=0))
    assert sorted(f.number for f in got) == [0, 1]
    assert t.plan({0, 1}, running=2) == [Wait(1.0)]  # nothing asked twice
    first, second = got
    t.piece_done(first, cost_s=0.2)
    assert t.plan({second.number}, running=1) == [Wait(1.0)]
    t.piece_done(second, cost_s=0.4)
    assert t.plan(set(), running=0) == [Complete()]
    assert t.in_flight == set()


def test_a_last_piece_that_failed_is_asked_again():
    t = table(Clock())
    ps = parents(t, {"a": {0}, "b": {0}})
    (f,) = fetches(t.plan({0}, running=0))
    t.piece_failed(f, Failure.ERROR)
    (again,) = fetches(t.plan({0}, running=0))
    assert again.number == 0 and again.parent in ps.values()


def test_mean_cost_follows_the_recent_pieces():
    t = table(Clock(), picker=sequential)
    (a,) = parents(t, {"a": set(range(40))}).values()
    for n in range(20):
        a.view.in_flight += 1  # a Fetch made by hand: count it in flight as the table would
        t.piece_done(Fetch(n, a), cost_s=1.0 if n < 4 else 0.5)
    assert a.view.mean_cost_s == pytest.approx(0.5)  # the first four fell out of the window


def test_an_abandoned_piece_and_a_round_end_free_what_was_in_flight():
    t = table(Clock())
    (a,) = parents(t, {"a": {0, 1, 2}}).values()
    f, *_ = fetches(t.plan({0, 1, 2}, running=0))
    t.piece_abandoned(f)
    assert f.number not in t.in_flight and a.view.in_flight == 2
    t.end_round()  # two workers cancelled before they ran
    assert t.in_flight == set() and a.view.in_flight == 0
