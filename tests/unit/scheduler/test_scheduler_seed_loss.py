"""Several seeds, and losing the one fetching a task: which seed host a task gets, and who
fetches the rest from the origin when its fetcher is gone (docs/PROTOCOL.md, "Several seeds,
and losing one")."""

from __future__ import annotations

from typing import Any

from sched_world import TASK_ID, World
from test_scheduler_service_logic import TASK, kinds, make_service, register, request

from damselfly.api import common_pb2, scheduler_pb2
from damselfly.domain import HostInfo, HostType
from damselfly.scheduler.resources import Peer, PeerState, SeedState
from damselfly.scheduler.scheduling import (
    SEED_BUSY,
    Backfill,
    BackToSource,
    TriggerSeed,
    after_source_lost,
    apply_decision,
    pick_seed_host,
)
from damselfly.scheduler.stream import PeerStream


def everyone(_: Peer) -> bool:
    return True


def swarm_that_lost_its_seed(w: World, held: dict[str, int]) -> Peer:
    """A seed fetching the task (sent to the origin by the scheduler), peers downloading from it
    and each other holding ``held`` pieces each; then the seed fails. Returns the seed's peer."""
    seed = w.peer("seed", w.host("s1", seed=True))
    assert isinstance(w.decide(seed), BackToSource)
    w.res.set_state(seed, PeerState.BACK_TO_SOURCE, w.clock())
    for name, pieces in held.items():
        p = w.peer(name, f"h-{name}", pieces=pieces, state=PeerState.RUNNING)
        w.decide(p)
        assert "seed" in p.parents or w.cfg.topology == "chain"  # a line: p0 <- p1 <- ...
    w.res.set_state(seed, PeerState.FAILED, w.clock())
    return seed


def test_the_peer_holding_most_goes_back_to_source_and_only_it() -> None:
    w = World()
    swarm_that_lost_its_seed(w, {"p0": 3, "p1": 7, "p2": 5, "p3": 0})
    task = w.task()
    d = after_source_lost(task, w.res, reachable=everyone)
    assert isinstance(d, Backfill) and d.peer.id == "p1"
    apply_decision(d.peer, BackToSource("the fetcher is gone"), w.res, w.clock())
    assert task.source_peers == {"p1"}
    # One fetcher again: nobody else is sent; the others keep (and are offered) it as a parent.
    assert after_source_lost(task, w.res, reachable=everyone) is None
    assert "p1" in {p.id for p in w.decide(w.peer("late", "h-late")).parents}  # type: ignore[union-attr]


def test_who_may_not_or_cannot_be_told_is_passed_over() -> None:
    w = World()
    swarm_that_lost_its_seed(w, {"p0": 3, "p1": 7, "p2": 5})
    w.peer("nob2s", "h-nob2s", pieces=9, state=PeerState.RUNNING, disable_back_to_source=True)
    d = after_source_lost(w.task(), w.res, reachable=lambda p: p.id != "p1")  # p1's stream is gone
    assert isinstance(d, Backfill) and d.peer.id == "p2"


def test_nothing_to_do_while_a_peer_holds_it_all_or_another_fetcher_is_at_it() -> None:
    w = World()
    swarm_that_lost_its_seed(w, {"p0": 3, "p1": 7})
    done = w.peer("done", "h-done", pieces=10, state=PeerState.SUCCEEDED)
    assert after_source_lost(w.task(), w.res, reachable=everyone) is None
    w.res.delete_peer(done.id)
    other = w.peer("other", "h-other", need_back_to_source=True)
    assert isinstance(w.decide(other), BackToSource)
    w.res.set_state(other, PeerState.BACK_TO_SOURCE, w.clock())
    assert after_source_lost(w.task(), w.res, reachable=everyone) is None


def test_a_seed_lost_before_anyone_holds_a_piece_is_replaced_by_another_seed() -> None:
    w = World()
    seed = swarm_that_lost_its_seed(w, {"p0": 0, "p1": 0})
    task = w.task()
    task.failed_seed_hosts.add(seed.host.id)
    s2 = w.host("s2", seed=True)
    task.seed_state = SeedState.NONE
    d = after_source_lost(task, w.res, reachable=everyone)
    assert isinstance(d, TriggerSeed) and d.host is s2
    # No seed host left that has not failed the task: the earliest downloading peer fetches it.
    task.failed_seed_hosts.add(s2.id)
    d = after_source_lost(task, w.res, reachable=everyone)
    assert isinstance(d, Backfill) and d.peer.id == "p0"
    # A first peer's seed trigger passes over the seed hosts that failed the task too.
    w2 = World()
    hosts = [w2.host(f"s{i}", seed=True) for i in range(2)]
    favourite = pick_seed_host(w2.res, task_id=TASK_ID)
    assert favourite is not None
    w2.task().failed_seed_hosts.add(favourite.id)
    d = w2.decide(w2.peer("p", "h-p"))
    assert isinstance(d, TriggerSeed) and d.host is not favourite and d.host in hosts


def test_tasks_spread_over_seed_hosts_and_a_busy_one_is_passed_over() -> None:
    w = World()
    hosts = [w.host(f"s{i}", seed=True) for i in range(3)]
    picks = [pick_seed_host(w.res, task_id=f"task-{i}") for i in range(300)]
    share = {h.id: sum(1 for p in picks if p is h) for h in hosts}
    assert all(60 <= n <= 140 for n in share.values()), share
    # The same task gets the same seed host, whatever the order the scheduler learnt them in.
    assert all(pick_seed_host(w.res, task_id=f"task-{i}") is picks[i] for i in range(300))
    # Its choice busy: the task's next seed host in order; all busy: the least loaded.
    first = picks[0]
    assert first is not None
    first.children = int(first.upload_limit * SEED_BUSY)
    second = pick_seed_host(w.res, task_id="task-0")
    assert second is not None and second is not first
    for h in hosts:
        h.children = h.upload_limit
    hosts[2].children = hosts[2].upload_limit - 1
    assert pick_seed_host(w.res, task_id="task-0") is hosts[2]
    assert pick_seed_host(w.res, task_id="task-0", skip={hosts[2].id}) in hosts[:2]
    assert pick_seed_host(w.res, task_id=TASK_ID, skip={h.id for h in hosts}) is None


# -- the service: the loss heard on a stream, the answer pushed to one peer ---------------------


def _piece(n: int, parent: str = "") -> Any:
    return scheduler_pb2.DownloadPieceFinishedRequest(
        piece=common_pb2.Piece(number=n, offset=n * 4, length=4, parent_id=parent, digest="crc32:0")
    )


def test_a_seed_killed_mid_swarm_sends_one_holder_back_to_source() -> None:
    svc, _ = make_service()
    svc.res.upsert_host(
        HostInfo(id="s", hostname="s", ip="127.0.0.1", port=1, download_port=2, type=HostType.SUPER_SEED),
        svc.clock(),
    )
    seed = PeerStream()
    svc.handle(register("s", "ps"), seed)
    assert kinds(seed) == ["need_back_to_source_response"]
    bts = scheduler_pb2.DownloadPeerBackToSourceStartedRequest()
    svc.handle(request("s", "ps", download_peer_back_to_source_started_request=bts), seed)
    streams: dict[str, PeerStream] = {}
    for host, held in (("a", 2), ("b", 4), ("c", 3)):
        s = streams[host] = PeerStream()
        svc.handle(register(host, f"p{host}"), s)
        started = scheduler_pb2.DownloadPeerStartedRequest()
        svc.handle(request(host, f"p{host}", download_peer_started_request=started), s)
        for n in range(held):
            svc.handle(request(host, f"p{host}", download_piece_finished_request=_piece(n, "ps")), s)
        assert kinds(s) == ["normal_task_response"]
    svc._stream_closed("ps", seed)  # the seed's daemon was SIGKILLed: its stream broke

    assert {h: kinds(s) for h, s in streams.items()} == {
        "a": [],
        "b": ["need_back_to_source_response"],
        "c": [],
    }
    task = svc.res.task(TASK)
    assert task.source_peers == {"pb"}
    # The seed's failed DownloadTask call, heard after, changes nothing: a fetcher is at it.
    svc._seed_done(TASK, "s", None, False)
    assert all(kinds(s) == [] for s in streams.values())
    # A child whose pieces from pb were cut off with the seed reports pb failed: pb fetches the
    # rest from the origin now, so it is not blocked (blocked, the child would fetch the same).
    bts = scheduler_pb2.DownloadPeerBackToSourceStartedRequest()
    svc.handle(request("b", "pb", download_peer_back_to_source_started_request=bts), streams["b"])
    failed = scheduler_pb2.ReschedulePeerRequest(candidate_parents=[common_pb2.Peer(id="pb")])
    svc.handle(request("c", "pc", reschedule_peer_request=failed), streams["c"])
    (answer,) = streams["c"].pending()
    assert "pb" in {p.id for p in answer.normal_task_response.candidate_parents}
    assert "pb" not in svc.res.peer("pc").blocked and task.source_peers == {"pb"}


def test_once_peers_hold_pieces_a_parentless_peer_fetches_the_rest_rather_than_a_new_seed() -> None:
    # The head of a line asks again first, before the scheduler heard the seed's stream break:
    # the seed host it lost is blocked; another seed host would fetch the whole task again.
    w = World()
    w.cfg.topology = "chain"
    seed = swarm_that_lost_its_seed(w, {"p0": 4, "p1": 3})
    w.task().failed_seed_hosts.add(seed.host.id)
    w.task().seed_state = SeedState.NONE
    w.host("s2", seed=True)
    head = w.res.peers["p0"]
    head.blocked.add(seed.id)
    w.res.clear_parents(head)
    assert isinstance(w.decide(head), BackToSource)
    assert after_source_lost(w.task(), w.res, reachable=everyone) is None  # one fetcher


def test_the_head_of_a_line_follows_the_peer_sent_in_the_lost_seeds_place() -> None:
    w = World()
    w.cfg.topology = "chain"
    swarm_that_lost_its_seed(w, {"p0": 2, "p1": 5})
    d = after_source_lost(w.task(), w.res, reachable=everyone)
    assert isinstance(d, Backfill) and d.peer.id == "p1"
    apply_decision(d.peer, BackToSource("the fetcher is gone"), w.res, w.clock())
    w.res.set_state(d.peer, PeerState.BACK_TO_SOURCE, w.clock())
    head = w.res.peers["p0"]
    assert [p.id for p in w.decide(head).parents] == ["p1"]  # type: ignore[union-attr]


async def test_a_seed_killed_before_anyone_holds_a_piece_is_replaced_by_the_other_seed() -> None:
    svc, _ = make_service()
    for name in ("s1", "s2"):
        svc.res.upsert_host(
            HostInfo(
                id=name, hostname=name, ip="127.0.0.1", port=1, download_port=2, type=HostType.SUPER_SEED
            ),
            svc.clock(),
        )
    triggered: list[str] = []
    svc.seeds.trigger = lambda task_id, host, download: triggered.append(host.id)  # type: ignore[method-assign]
    waiting = PeerStream()
    svc.handle(register("a", "pa"), waiting)
    assert kinds(waiting) == [] and len(triggered) == 1
    first = triggered[0]
    seed = PeerStream()
    svc.handle(register(first, "ps"), seed)
    assert kinds(seed) == ["need_back_to_source_response"]
    svc._stream_closed("ps", seed)  # killed before it finished a piece
    assert triggered == [first, "s2" if first == "s1" else "s1"]
    assert svc.res.task(TASK).failed_seed_hosts == {first}
    assert kinds(waiting) == []  # pa waits for the new seed, not the origin
