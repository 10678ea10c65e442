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
   host exists (once per task, or again on another seed host when the first
   was lost before anyone held a piece), otherwise send this peer to the origin
   (but in the scheduler's ``startup_grace`` wait instead: after a restart the
   task's holders are registering again). Else wait for a candidate to appear.

When the task's fetcher is lost mid-download, :func:`after_source_lost` decides
who fetches the rest (docs/PROTOCOL.md, "Several seeds, and losing one").

As in Dragonfly's scheduler, reschedules are not counted: each is a fresh
scheduling (with the failed parents blocked), whose only limit is how long the
peer waits without a parent (Dragonfly counts rounds of ``retryInterval`` within
one scheduling, G:scheduler/scheduling/scheduling.go:113-243); the client limits
how often it asks (the Rust dfdaemon's ``scheduler.maxScheduleCount``,
C:dragonfly-client/src/resource/task.rs:730-760).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass

from ..config import SchedulingConfig
from .evaluator import Evaluator
from .line import follower, line_of
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
# first version, 4 s at half the pace, was replaced before it could be judged alone). On a
# slow link a piece-time is a large part of that window (6.7 s at 5 mbit), so one finished
# piece moved a child's rate across the line: a child at half its parent's pace was judged
# slow half the time, and 64 x 5 mbit moved children back and forth 84 times in four minutes,
# each move giving a parent two children whose connections starved in the shared queue (30 s
# timeouts, pieces failed down the line). So the window also spans SLOW_LINK_PIECE_TIMES of
# the parents' piece-time: a child slow enough to matter (a third of the pace) still finishes
# five pieces in it.
SLOW_LINK_WINDOW_S = 12.0
SLOW_LINK_FACTOR = 0.35
SLOW_LINK_PIECE_TIMES = 16


def slow_link_window(parent_rates: Iterable[float], piece_length: int | None) -> float:
    """The window a peer's pace is judged over: :data:`SLOW_LINK_WINDOW_S`, or
    :data:`SLOW_LINK_PIECE_TIMES` piece-times at its fastest parent's pace when longer."""
    fastest = max(parent_rates, default=0.0)
    if not piece_length or fastest <= 0:
        return SLOW_LINK_WINDOW_S
    return max(SLOW_LINK_WINDOW_S, SLOW_LINK_PIECE_TIMES * piece_length / fastest)


def is_slow_link(peer: Peer, now: float) -> bool:
    """Whether ``peer`` receives much slower than its parents deliver (its own link is the
    narrow one): put behind it in a line, every peer after it would go at its pace."""
    if peer.state is not PeerState.RUNNING:
        return False
    parents = [p for p in peer.parents.values() if p.state in (PeerState.RUNNING, PeerState.BACK_TO_SOURCE)]
    window = slow_link_window(
        (r for p in parents if (r := p.logged_rate()) is not None),
        peer.task.piece_length or peer.task.longest_piece,
    )
    mine = peer.recent_rate(now, window)
    if mine is None:
        return False
    theirs = [r for p in parents if (r := p.recent_rate(now, window)) is not None]
    return bool(theirs) and mine < SLOW_LINK_FACTOR * max(theirs)


def chain_parents(peer: Peer, cfg: SchedulingConfig, now: float) -> list[Peer]:
    """The ``chain`` topology: the task's peers form a line in the order they registered.

    The mesh's bad-parent test (one served piece slower than the parent's mean + 3 sigma) is not
    applied: in a line a piece's cost swings with its upstream, so the test fires by chance, and
    each verdict moves a child to its grandparent, which then feeds two and slows everyone
    after it (16 x 25 mbit with the test: 1.50, 1.30, 1.12 T_min, no failure logged, peers
    uploading up to 1.4 F; without it: 1.08, 1.08, 1.07, 1.08).

    A peer's parent is the nearest peer before it in the line (:func:`.line.line_of`: the order
    of registration unless peers on Dragonfly's wire alone take part) that is alive (pending ones too:
    in a flash crowd the one before may not have started yet) and usable; the first peer's
    parents are the task's seed peers, or the peer the scheduler sent to the origin in the
    seed's place (:func:`after_source_lost`). Each host then receives at its full rate from one
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
    sources = peer.task.source_peers
    return [
        p
        for p in peer.task.available
        if (p.host.is_seed or p.id in sources)
        and p is not peer
        and p.id not in peer.blocked
        and p.host is not peer.host
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


def move_follower(
    peer: Peer, res: Resources, cfg: SchedulingConfig, evaluator: Evaluator, now: float, rng: random.Random
) -> tuple[Peer, Parents] | None:
    """After ``peer`` was answered: the Damselfly peer it was put before in the chain's line
    (:func:`.line.line_of`, mixed-wire tasks only) and its new parents, to be sent unasked. Until
    that peer hears, it and ``peer`` share its old parent's upload, and the lag this costs
    ``peer`` stays with every peer behind it. Plain peers are never moved."""
    if cfg.topology != "chain" or not peer.task.mixed_wire:
        return None
    nxt = follower(peer)
    if nxt is None or nxt.plain or not nxt.parents:
        return None
    more = refresh(nxt, res, cfg, evaluator, now, rng)
    if more is None or set(nxt.parents) == {p.id for p in more.parents}:
        return None
    return nxt, more


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


def seed_rank(task_id: str, host_id: str) -> int:
    """The rendezvous-hash weight of seed host ``host_id`` for ``task_id`` (highest wins)."""
    digest = hashlib.sha256(f"{task_id}\0{host_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


# A seed host using this share of its upload slots is passed over while another one has room.
SEED_BUSY = 0.8


def _seed_load(host: Host) -> float:
    return host.children / host.upload_limit if host.upload_limit else 1.0


def pick_seed_host(
    res: Resources, exclude: Host | None = None, *, task_id: str = "", skip: Set[str] = frozenset()
) -> Host | None:
    """The seed host to download ``task_id`` first.

    With several seed hosts, tasks spread over them by rendezvous hashing of the
    task ID (every scheduler picks the same seed for a task, and a seed host that
    joins or leaves moves only its share of tasks); a busy one (:data:`SEED_BUSY`
    of its upload slots used) is passed over for the next in the task's order, and
    when all are busy the least loaded is taken. ``skip``: hosts that failed the
    task (``Task.failed_seed_hosts``).
    """
    eligible = [
        h for h in res.seed_hosts() if h is not exclude and not h.info.disable_shared and h.id not in skip
    ]
    if not eligible:
        return None
    ranked = sorted(eligible, key=lambda h: (-seed_rank(task_id, h.id), h.id))
    for host in ranked:
        if _seed_load(host) < SEED_BUSY:
            return host
    return min(ranked, key=_seed_load)


@dataclass(frozen=True, slots=True)
class Backfill:
    """The task's fetcher from the origin is gone: send ``peer``, which is downloading from
    parents, back to source for the pieces it lacks (its parents keep the others coming to
    the rest of the swarm, through it)."""

    peer: Peer


def anyone_holds(task: Task) -> bool:
    """Whether a peer of the task that has not failed holds a piece of it."""
    return any(p.finished_pieces and not p.state.is_final for p in task.peers.values()) or bool(
        task.succeeded
    )


def _fetching(task: Task, res: Resources) -> bool:
    return any((p := res.peers.get(pid)) is not None and not p.state.is_final for pid in task.source_peers)


def after_source_lost(
    task: Task,
    res: Resources,
    *,
    reachable: Callable[[Peer], bool],
    seed_trigger: bool = True,
) -> Backfill | TriggerSeed | None:
    """Who fetches the rest of ``task`` now that a peer fetching it from the origin (a seed,
    or a first peer) failed or left. None when nothing needs doing.

    Nothing, when a peer holds the task whole or another fetcher is still at it. Else
    the pieces nobody holds must come from the origin, once:

    1. A peer downloading from parents that holds pieces: the one holding most goes back
       to source (:class:`Backfill`). It fetches only what it lacks, so the origin serves
       again little more than the pieces the lost fetcher had in flight; the others keep
       their parents (it among them) and receive the rest from it as it lands. A second
       seed would fetch the whole task again.
    2. Nobody holds anything yet: another seed host (not one that failed the task).
    3. No seed host left: the earliest downloading peer goes back to source.

    Peers waiting for a first parent are left to :func:`schedule`; ``reachable`` says
    whether a peer can be told (its stream is open); a peer with back-to-source disabled
    is never chosen.
    """
    if task.succeeded or _fetching(task, res):
        return None
    candidates = [
        p
        for p in task.peers.values()
        if p.state in (PeerState.PENDING, PeerState.RUNNING)
        and p.waiting_since is None
        and not p.disable_back_to_source
        and reachable(p)
    ]
    holders = [p for p in candidates if p.finished_pieces]
    if holders:
        return Backfill(min(holders, key=lambda p: (-len(p.finished_pieces), p.created_at, p.id)))
    if seed_trigger and task.seed_state is SeedState.NONE:
        seed = pick_seed_host(res, task_id=task.id, skip=task.failed_seed_hosts)
        if seed is not None:
            return TriggerSeed(seed)
    if candidates:
        return Backfill(min(candidates, key=lambda p: (p.created_at, p.id)))
    return None


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
    grace_until: float | None = None,
) -> Decision:
    """Decide what to answer ``peer`` now (see the module docstring for the rules).

    ``starting``: within the scheduler's startup grace, which ends at ``grace_until``; a
    peer's wait counts toward ``back_to_source_after`` only from then."""
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

    nobody_fetches = not someone_fetches_for(peer, res)
    if nobody_fetches and not starting:
        # Before the give-up below: a peer that waited out the startup grace still gets the
        # seed triggered for it, not the origin. Once peers hold pieces (the seed was lost), a
        # new seed would fetch the whole task again: this peer fetches only what it lacks.
        if seed_trigger and task.seed_state is SeedState.NONE and not anyone_holds(task):
            seed = pick_seed_host(res, exclude=peer.host, task_id=task.id, skip=task.failed_seed_hosts)
            if seed is not None:
                return TriggerSeed(seed)
        if not peer.disable_back_to_source:
            return BackToSource("first peer of the task fetches it from the origin")

    if peer.waiting_since is not None:
        since = max(peer.waiting_since, grace_until) if grace_until is not None else peer.waiting_since
        if now - since >= cfg.back_to_source_after:
            return _give_up(peer, f"no parent within {cfg.back_to_source_after:g}s")
    if nobody_fetches:
        return Wait("scheduler starting: holders of the task may still register")
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
