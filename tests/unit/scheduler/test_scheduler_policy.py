"""Scheduling rules (docs/PROTOCOL.md steps 1 and 4) on an in-memory world with a fake clock."""

from __future__ import annotations

from sched_world import World

from damselfly.scheduler.resources import PeerState, SeedState
from damselfly.scheduler.scheduling import BackToSource, Empty, Fail, Parents, TriggerSeed, Wait


def parent_ids(d: object) -> list[str]:
    assert isinstance(d, Parents), d
    return [p.id for p in d.parents]


def test_first_peer_without_seed_host_goes_to_source_and_the_rest_wait() -> None:
    w = World()
    a, b = w.peer("a", "ha"), w.peer("b", "hb")
    assert isinstance(w.decide(a), BackToSource)
    assert w.task().source_peers == {"a"}
    assert isinstance(w.decide(b), Wait)
    assert b.waiting_since == w.clock() and "b" in w.task().waiting
    w.res.set_state(a, PeerState.BACK_TO_SOURCE, w.clock())
    assert parent_ids(w.decide(b)) == ["a"]
    assert "b" not in w.res.waiting and b.parents.keys() == {"a"}


def test_when_the_source_peer_fails_a_waiting_peer_takes_over() -> None:
    w = World()
    a, b = w.peer("a", "ha"), w.peer("b", "hb")
    w.decide(a)
    assert isinstance(w.decide(b), Wait)
    w.res.set_state(a, PeerState.FAILED, w.clock())
    assert isinstance(w.decide(b), BackToSource)


def test_seed_is_triggered_once_and_peers_wait_for_it() -> None:
    w = World()
    seed_host = w.host("s", seed=True)
    peers = [w.peer(f"p{i}", f"h{i}") for i in range(5)]
    decisions = [w.decide(p) for p in peers]
    assert isinstance(decisions[0], TriggerSeed) and decisions[0].host is seed_host
    assert all(isinstance(d, Wait) for d in decisions[1:])
    assert w.task().seed_state is SeedState.TRIGGERED


def test_a_starting_scheduler_waits_for_holders_before_it_triggers_a_seed() -> None:
    # Just after a (re)start nobody is known to hold the task: the peer waits, neither the seed
    # nor the origin is asked; a seed that registers what it holds then is the parent.
    w = World()
    seed_host = w.host("s", seed=True)
    a = w.peer("a", "ha")
    assert isinstance(w.decide(a, starting=True), Wait)
    assert w.task().seed_state is SeedState.NONE
    held = w.peer("held", seed_host, state=PeerState.SUCCEEDED)
    assert parent_ids(w.decide(a, starting=True)) == [held.id]
    # Without a seed host, the first peer is not sent to the origin while starting either.
    w2 = World()
    b = w2.peer("b", "hb")
    assert isinstance(w2.decide(b, starting=True), Wait)
    assert isinstance(w2.decide(b), BackToSource)  # once the grace is over


def test_the_startup_grace_does_not_count_toward_giving_up() -> None:
    # A peer that arrived during the grace and waited it out gets the seed triggered, and then
    # waits for it a whole back_to_source_after from the end of the grace, not from its arrival.
    w = World()
    seed_host = w.host("s", seed=True)
    a, b = w.peer("a", "ha"), w.peer("b", "hb")
    grace_until = w.clock() + 2.0
    assert isinstance(w.decide(a, starting=True, grace_until=grace_until), Wait)
    assert isinstance(w.decide(b, starting=True, grace_until=grace_until), Wait)
    w.clock.advance(2.0 + w.cfg.back_to_source_after - 0.5)  # past arrival + give-up time
    d = w.decide(a, grace_until=grace_until)
    assert isinstance(d, TriggerSeed) and d.host is seed_host
    assert isinstance(w.decide(b, grace_until=grace_until), Wait)  # the seed fetches for it
    w.clock.advance(1.0)  # now a whole back_to_source_after after the grace
    assert isinstance(w.decide(b, grace_until=grace_until), BackToSource)


def test_seed_host_peer_goes_to_source_unless_another_seed_started() -> None:
    w = World()
    s1 = w.peer("s1", w.host("seed1", seed=True))
    assert isinstance(w.decide(s1), BackToSource)
    s2 = w.peer("s2", w.host("seed2", seed=True))
    assert isinstance(w.decide(s2), BackToSource)  # s1 has not started yet
    w.res.set_state(s1, PeerState.BACK_TO_SOURCE, w.clock())
    assert parent_ids(w.decide(s2)) == ["s1"]


def test_failed_seed_trigger_sends_the_first_waiting_peer_to_source() -> None:
    w = World()
    w.host("s", seed=True)
    a, b = w.peer("a", "ha"), w.peer("b", "hb")
    assert isinstance(w.decide(a), TriggerSeed)
    assert isinstance(w.decide(b), Wait)
    w.task().seed_state = SeedState.FAILED
    assert isinstance(w.decide(a), BackToSource)
    assert isinstance(w.decide(b), Wait)


def test_need_back_to_source_wins() -> None:
    w = World()
    w.peer("s", "hs", state=PeerState.SUCCEEDED)
    assert isinstance(w.decide(w.peer("a", "ha", need_back_to_source=True)), BackToSource)


def test_waiting_too_long_goes_to_source_or_fails_when_disabled() -> None:
    w = World()
    w.cfg.back_to_source_after = 5.0
    w.seed_trigger = False
    w.decide(w.peer("src", "hsrc"))  # someone else fetches, so these two wait
    a = w.peer("a", "ha")
    b = w.peer("b", "hb", disable_back_to_source=True)
    assert isinstance(w.decide(a), Wait) and isinstance(w.decide(b), Wait)
    w.clock.advance(4.9)
    assert isinstance(w.decide(a), Wait)
    w.clock.advance(0.2)
    assert isinstance(w.decide(a), BackToSource)
    d = w.decide(b)
    assert isinstance(d, Fail)
    assert b.state is PeerState.FAILED


def test_disabled_back_to_source_first_peer_waits_instead_of_fetching() -> None:
    w = World()
    a = w.peer("a", "ha", disable_back_to_source=True)
    assert isinstance(w.decide(a), Wait)
    assert not w.task().source_peers


def test_reschedule_never_returns_blocked_parents() -> None:
    w = World()
    w.peer("p1", "h1", state=PeerState.SUCCEEDED)
    w.peer("p2", "h2", state=PeerState.SUCCEEDED)
    c = w.peer("c", "hc")
    assert sorted(parent_ids(w.decide(c))) == ["p1", "p2"]
    c.blocked.add("p1")
    c.reschedule_count += 1
    assert parent_ids(w.decide(c)) == ["p2"]
    assert c.parents.keys() == {"p2"}
    c.blocked.add("p2")
    c.reschedule_count += 1
    # Every fetcher is blocked for c: nobody useful is coming, so c fetches itself.
    assert isinstance(w.decide(c), BackToSource)


def test_reschedules_are_not_counted_as_in_dragonfly() -> None:
    # Dragonfly's scheduler counts rounds without a parent within one scheduling, never
    # reschedules (G:scheduler/scheduling/scheduling.go:113-243): a peer that asked many
    # times still gets the parents there are.
    w = World()
    w.peer("p1", "h1", state=PeerState.SUCCEEDED)
    c = w.peer("c", "hc")
    c.reschedule_count = 50
    assert parent_ids(w.decide(c)) == ["p1"]


def test_back_to_source_disabled_fails_only_after_waiting_without_parents() -> None:
    w = World()
    c = w.peer("c", "hc", disable_back_to_source=True)
    c.reschedule_count = 50
    p = w.peer("p1", "h1", state=PeerState.SUCCEEDED)
    assert isinstance(w.decide(c), Parents)
    c.blocked.add(p.id)
    assert isinstance(w.decide(c), Wait)
    w.clock.advance(w.cfg.back_to_source_after)
    assert isinstance(w.decide(c), Fail)


def test_candidate_filter() -> None:
    w = World()
    c = w.peer("c", "hc")
    w.peer("same-host", "hc", state=PeerState.SUCCEEDED)
    w.peer("pending", "h1")
    w.peer("failed", "h2", state=PeerState.FAILED)
    w.peer("private", w.host("hp", disable_shared=True), state=PeerState.SUCCEEDED)
    full = w.peer("full", "hf", state=PeerState.SUCCEEDED)
    full.host.children = full.host.upload_limit
    bad = w.peer("bad", "hb", state=PeerState.RUNNING)
    bad.served_costs.extend([0.01, 0.01, 1.0])
    child = w.peer("child-of-c", "hx", state=PeerState.RUNNING)
    w.res.add_parent(child, c)
    grandchild = w.peer("grandchild-of-c", "hy", state=PeerState.RUNNING)
    w.res.add_parent(grandchild, child)
    w.peer("good", "hg", state=PeerState.RUNNING)
    assert parent_ids(w.decide(c)) == ["good"]


def test_best_candidate_parent_limit_of_a_sample() -> None:
    w = World()
    for i in range(40):
        w.peer(f"p{i}", f"h{i}", state=PeerState.SUCCEEDED)
    d = w.decide(w.peer("c", "hc"))
    assert len(parent_ids(d)) == w.cfg.candidate_parent_limit


def test_empty_task() -> None:
    w = World()
    w.task().content_length = 0
    assert isinstance(w.decide(w.peer("a", "ha")), Empty)
