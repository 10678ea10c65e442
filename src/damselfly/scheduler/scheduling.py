"""Scheduling policy: what to tell a peer that needs parents.

Plain synchronous functions over :class:`~.resources.Resources`:
:func:`schedule` decides, :func:`apply_decision` records the decision in the
resources (parent edges, waiting, the task's seed state); the gRPC service
sends the answer and starts the seed download. The rules are those of
docs/PROTOCOL.md, step 1 and 4:

1. ``need_back_to_source`` -> back to source.
2. A peer on a seed host, when no other seed peer of the task has started ->
   back to source (the seed fetches the origin once for everybody).
3. Content length known to be 0 -> empty task.
4. Candidates (sampled, filtered, ranked) -> a normal task with the best few.
5. No candidate: after ``back_to_source_after`` seconds of waiting -> back to
   source (fail when back-to-source is disabled).
   Else, if nobody is fetching the task yet: trigger a seed peer when a seed
   host exists (once per task), otherwise send this peer to the origin (but
   in the scheduler's ``startup_grace`` wait instead: after a restart the
   task's holders are registering again). Else wait for a candidate to appear.

As in Dragonfly's scheduler, reschedules are not counted: each is a fresh
scheduling (with the failed parents blocked), whose only limit is how long the
peer waits without a parent (Dragonfly counts rounds of ``retryInterval`` within
one scheduling, G:scheduler/scheduling/scheduling.go:113-243); the client limits
how often it asks (the Rust dfdaemon's ``scheduler.maxScheduleCount``,
C:dragonfly-client/src/resource/task.rs:730-760).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..config import SchedulingConfig
from .evaluator import Evaluator
from .resources import Host, Peer, PeerState, Resources, SeedState, Task


@dataclass(frozen=True, slots=True)
class Parents:
    """Answer NormalTaskResponse with these candidate parents, best first."""

    parents: list[Peer]


@dataclass(frozen=True, slots=True)
class BackToSource:
    reason: str


@dataclass(frozen=True, slots=True)
class Empty:
    """The task has no content: answer EmptyTaskResponse."""


@dataclass(frozen=True, slots=True)
class Wait:
    """No answer yet; ask again when a candidate may have appeared."""

    reason: str


@dataclass(frozen=True, slots=True)
class TriggerSeed:
    """Wait, and ask ``host`` to download the task first (once per task)."""

    host: Host


@dataclass(frozen=True, slots=True)
class Fail:
    """No parent and back-to-source is disabled: end the peer's stream."""

    reason: str


Decision = Parents | BackToSource | Empty | Wait | TriggerSeed | Fail

# Who may be whose parent (scheduler.topology): "mesh" (any usable peer, cycles allowed),
# "dag" (Dragonfly's rule: never a descendant), "chain" (see chain_parents).
TOPOLOGIES = ("mesh", "dag", "chain")


def candidate_parents(
    peer: Peer, res: Resources, cfg: SchedulingConfig, evaluator: Evaluator, rng: random.Random
) -> list[Peer]:
    """Sample up to ``filter_parent_limit`` serving peers of the task and keep the usable ones."""
    out = []
    # Parents must not be descendants (a cycle); walk the peer's subtree once, not per candidate.
    below = res.descendants(peer) if peer.children and not res.allow_cycles else ()
    for cand in peer.task.available.sample(cfg.filter_parent_limit, rng):
        if (
            cand is peer
            or not cand.state.can_serve
            or cand.host is peer.host
            or cand.id in peer.blocked
            or cand.host.info.disable_shared
            or (cand.host.free_upload_slots <= 0 and cand.id not in peer.parents)
            or cand.id in below
            or evaluator.is_bad_parent(cand)
        ):
            continue
        out.append(cand)
    return out


# The chain's slow-link rule: a peer that finished less than SLOW_LINK_FACTOR of what its
# (still downloading) parents finished over the last SLOW_LINK_WINDOW_S cannot keep up with
# them, so it is nobody's link in the line but its own and that of peers as slow as it.
# The window is long and the factor low because a wrong verdict costs more than a late one:
# it gives a healthy peer's child a second parent's upload to share. Pieces finish in bursts
# (a child with four in flight from one parent can finish none for four piece-times, 5 s at
# 25 mbit with 4 MiB pieces, then all four), which a short window reads as a slow link (the
# first version, 4 s at half the pace, was replaced before it could be judged alone).
SLOW_LINK_WINDOW_S = 12.0
SLOW_LINK_FACTOR = 0.35


def is_slow_link(peer: Peer, now: float) -> bool:
    """Whether ``peer`` receives much slower than its parents deliver (its own link is the
    narrow one): put behind it in a line, every peer after it would go at its pace."""
    if peer.state is not PeerState.RUNNING:
        return False
    mine = peer.recent_rate(now, SLOW_LINK_WINDOW_S)
    if mine is None:
        return False
    theirs = [
        r
        for p in peer.parents.values()
        if p.state in (PeerState.RUNNING, PeerState.BACK_TO_SOURCE)
        and (r := p.recent_rate(now, SLOW_LINK_WINDOW_S)) is not None
    ]
    return bool(theirs) and mine < SLOW_LINK_FACTOR * max(theirs)


# A Damselfly peer holding at most this many pieces may still be moved in the line (it asks
# for parents again within a second or so and follows); one holding more would wait for a
# newcomer put before it to catch up.
MOVABLE_PIECES = 2


def _movable(peer: Peer) -> bool:
    """Whether ``peer`` would follow a change of its parent: a Damselfly peer that holds next
    to nothing yet, or a plain one still waiting for its first parent."""
    if peer.state.is_final or len(peer.finished_pieces) > MOVABLE_PIECES:
        return False
    return not peer.plain or (not peer.parents and peer.id in peer.task.waiting)


def _live(peer: Peer) -> bool:
    return not peer.state.is_final or peer.state is PeerState.SUCCEEDED


def _line_slot(line: list[Peer], peer: Peer) -> int:
    """Where a newcomer goes in the line (an index into ``line``; ``len(line)``: the end).

    Only the peer already at that index changes its parent (to the newcomer), so it must be
    one that may still move (:func:`_movable`): a plain peer never asks for parents again. A plain
    newcomer goes right after the last plain peer, so plain peers stand together and each
    store-and-forward hop they cost is paid once by the peers behind them (at the end of the
    line instead when plain peers lead it: it was answered before any Damselfly peer came); a Damselfly
    newcomer behind a plain tail goes instead before the last movable peer that follows a
    Damselfly peer or the seed, so it is not behind the plain peers.
    """
    live = [i for i, p in enumerate(line) if _live(p)]
    if not live:
        return len(line)
    if peer.plain:
        plain = [i for i in live if line[i].plain]
        # Not when only plain peers lead the line: the Damselfly peers behind them would each
        # move back again, and wait behind one more store-and-forward hop.
        led = bool(plain) and any(not line[i].plain for i in live if i < plain[-1])
        if led and plain[-1] != live[-1]:
            after = next(i for i in live if i > plain[-1])
            if _movable(line[after]):
                return after
        return len(line)
    if not line[live[-1]].plain:
        return len(line)
    for k in range(len(live) - 1, -1, -1):
        i = live[k]
        if _movable(line[i]) and (k == 0 or not line[live[k - 1]].plain):
            return i
    return len(line)


def line_of(task: Task) -> list[Peer]:
    """The task's peers in the chain's line order.

    Between Damselfly peers it is the order they registered in. Once a peer on Dragonfly's
    wire alone has registered (``task.mixed_wire``), each newcomer gets a fixed place
    (``Peer.line_key``) chosen by :func:`_line_slot`: such a peer serves a piece only once it
    holds it whole, and the Damselfly parent of a plain child announces it only then too, so
    every hop into or out of a plain peer costs a piece's whole transfer time. Registration
    order would put the two kinds turn about in a flash crowd, paying that at nearly every
    hop; grouped, the plain peers pay it about once each.
    """
    if not task.mixed_wire:
        return list(task.peers.values())
    line = sorted((p for p in task.peers.values() if p.line_key is not None), key=_line_key)
    for peer in task.peers.values():  # newcomers, in the order they registered
        if peer.line_key is not None or peer.host.is_seed:
            continue
        i = _line_slot(line, peer)
        before = _line_key(line[i - 1]) if i > 0 else 0.0
        after = _line_key(line[i]) if i < len(line) else before + 2.0
        peer.line_key = (before + after) / 2
        line.insert(i, peer)
    return line


def _line_key(peer: Peer) -> float:
    assert peer.line_key is not None
    return peer.line_key


def chain_parents(peer: Peer, cfg: SchedulingConfig, now: float) -> list[Peer]:
    """The ``chain`` topology: the task's peers form a line in the order they registered.

    The mesh's bad-parent test (one served piece slower than the parent's mean + 3 sigma) is not
    applied: in a line a piece's cost swings with its upstream, so the test fires by chance, and
    each verdict moves a child to its grandparent, which then feeds two and slows everyone
    after it (16 x 25 mbit with the test: 1.50, 1.30, 1.12 T_min, no failure logged, peers
    uploading up to 1.4 F; without it: 1.08, 1.08, 1.07, 1.08).

    A peer's parent is the nearest peer before it in the line (:func:`line_of`: the order
    of registration unless peers on Dragonfly's wire alone take part) that is alive (pending ones too:
    in a flash crowd the one before may not have started yet) and usable; the first peer's
    parents are the task's seed peers. Each host then receives at its full rate from one
    parent and sends at that rate to one child, pieces cut through every hop as they land,
    so when the origin is the narrowest link every peer trails it by a few hops' latency
    instead of by the pieces it has in flight from many half-shared parents. A failed or
    blocked predecessor is skipped: the child joins the one before it. So is a predecessor
    on a slow link (:func:`is_slow_link`), unless the child is on one too: a host with a
    quarter of the others' bandwidth would otherwise hold everyone after it to its rate. A
    slow head is skipped for the seeds too: the seed then sends to two children, the slow
    one taking what its link takes and the next one the rest, instead of the whole line
    going at the slow link's pace.
    """
    found = False
    slow_ok: bool | None = None  # whether the peer itself is slow; asked only when it matters
    for cand in reversed(line_of(peer.task)):
        if not found:
            found = cand is peer
            continue
        if (
            cand.host.is_seed
            or (cand.state.is_final and cand.state is not PeerState.SUCCEEDED)
            or cand.host is peer.host
            or cand.id in peer.blocked
            or cand.host.info.disable_shared
        ):
            continue
        if is_slow_link(cand, now):
            if slow_ok is None:
                slow_ok = is_slow_link(peer, now)
            if not slow_ok:
                continue
        return [cand]
    return [
        p
        for p in peer.task.available
        if p.host.is_seed and p is not peer and p.id not in peer.blocked and p.host is not peer.host
    ][: cfg.candidate_parent_limit]


def refresh(
    peer: Peer, res: Resources, cfg: SchedulingConfig, evaluator: Evaluator, now: float, rng: random.Random
) -> Parents | None:
    """A "more parents" reschedule: the usable current parents plus the best new ones.

    Peers that started at the same moment only had the seed to choose from;
    a little later the others hold pieces too. None when the peer has no
    parent and no candidate: then it is scheduled as usual.
    """
    if cfg.topology == "chain":
        chain = chain_parents(peer, cfg, now)
        return Parents(chain) if chain else None
    current = [p for p in peer.parents.values() if p.state.can_serve and p.id not in peer.blocked]
    room = cfg.max_parents - len(current)
    new: list[Peer] = []
    if room > 0:
        fresh = [c for c in candidate_parents(peer, res, cfg, evaluator, rng) if c.id not in peer.parents]
        if fresh:
            new = evaluator.rank(fresh, peer, min(room, cfg.candidate_parent_limit), now)
    if not current and not new:
        return None
    return Parents(current + new)


def other_seed_started(peer: Peer) -> bool:
    """Whether another peer of the task on a seed host is downloading or done."""
    return any(p is not peer and p.host.is_seed for p in peer.task.available)


def someone_fetches_for(peer: Peer, res: Resources) -> bool:
    """Whether a peer this one could use is getting the task from the origin, or a seed soon will.

    Fetchers blocked for ``peer`` do not count (so a peer whose only source
    failed it goes to the origin itself instead of waiting for nothing), and a
    triggered seed counts until its own peer shows up among the fetchers.
    """
    seed_registered = False
    for pid in peer.task.source_peers:
        fetcher = res.peers.get(pid)
        if fetcher is None or fetcher is peer:
            continue
        seed_registered = seed_registered or fetcher.host.is_seed
        if pid not in peer.blocked:
            return True
    return peer.task.seed_state is SeedState.TRIGGERED and not seed_registered


def pick_seed_host(res: Resources, exclude: Host | None = None) -> Host | None:
    """The least loaded seed host (fewest used upload slots relative to its limit)."""
    best: Host | None = None
    best_load = 2.0
    for host in res.seed_hosts():
        if host is exclude or host.info.disable_shared:
            continue
        load = host.children / host.upload_limit if host.upload_limit else 1.0
        if load < best_load or (load == best_load and best is not None and host.id < best.id):
            best, best_load = host, load
    return best


def _give_up(peer: Peer, reason: str) -> Decision:
    if peer.disable_back_to_source:
        return Fail(f"{reason}, and back-to-source is disabled")
    return BackToSource(reason)


def schedule(
    peer: Peer,
    res: Resources,
    cfg: SchedulingConfig,
    evaluator: Evaluator,
    now: float,
    *,
    seed_trigger: bool = True,
    rng: random.Random | None = None,
    starting: bool = False,
) -> Decision:
    """Decide what to answer ``peer`` now (see the module docstring for the rules)."""
    task = peer.task
    if peer.need_back_to_source:
        return BackToSource("the download asked for back-to-source")
    if peer.host.is_seed and not other_seed_started(peer):
        return BackToSource("seed peer fetches the task from the origin")
    if task.is_empty_content:
        return Empty()

    if cfg.topology == "chain":
        chain = chain_parents(peer, cfg, now)
        if chain:
            return Parents(chain)
    else:
        parents = candidate_parents(peer, res, cfg, evaluator, rng or random.Random())
        if parents:
            return Parents(evaluator.rank(parents, peer, cfg.candidate_parent_limit, now))

    if peer.waiting_since is not None and now - peer.waiting_since >= cfg.back_to_source_after:
        return _give_up(peer, f"no parent within {cfg.back_to_source_after:g}s")

    if not someone_fetches_for(peer, res):
        if starting:
            return Wait("scheduler starting: holders of the task may still register")
        if seed_trigger and task.seed_state is SeedState.NONE:
            seed = pick_seed_host(res, exclude=peer.host)
            if seed is not None:
                return TriggerSeed(seed)
        if not peer.disable_back_to_source:
            return BackToSource("first peer of the task fetches it from the origin")
    return Wait("no candidate parent yet")


def apply_decision(peer: Peer, decision: Decision, res: Resources, now: float) -> None:
    """Record a decision in the resources (the service then sends the answer)."""
    task = peer.task
    match decision:
        case Parents(parents):
            res.stop_waiting(peer)
            res.set_parents(peer, parents)
        case BackToSource():
            res.stop_waiting(peer)
            res.clear_parents(peer)
            task.source_peers.add(peer.id)
        case Empty():
            res.stop_waiting(peer)
        case TriggerSeed():
            task.seed_state = SeedState.TRIGGERED
            res.start_waiting(peer, now)
        case Wait():
            res.start_waiting(peer, now)
        case Fail():
            res.set_state(peer, PeerState.FAILED, now)
