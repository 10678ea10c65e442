"""The parents of one download and what to ask of them next: pure policy over plain state.

A :class:`ParentTable` holds what a peer knows of its parents (the pieces each
holds, how each has served, which are dead), the pieces in flight, and the
clocks behind its verdicts. The piece loop (:mod:`.piece_loop`) tells it what
happened as plain values (a piece done, a piece failed and why, a piece a
parent announced) and asks it what to do next (:meth:`ParentTable.plan`):
fetch these pieces from these parents, wait this long, or give up on this
round. The conductor asks it when to want more parents and which parents to
report as failed when it reschedules. There is no asyncio and no I/O here;
time comes from an injected clock and chance from an injected rng, so every
verdict is tested without sleeping (tests/unit/download/test_parents.py).

Owner: the conductor, one table per download (it outlives reschedules); the
piece loop and the conductor's requests for more parents change it.
"""

from __future__ import annotations

import enum
import logging
import math
import random
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass, field

from ...domain import CandidateParent
from ...units import SECONDS
from .picker import ParentView, Picker, PickState, rarest_first

log = logging.getLogger(__name__)

# A parent that fails this many pieces in a row is dropped for this download.
PARENT_FAILURE_LIMIT = 3
# Pieces in flight to a lone parent: its upload slots plus its short queue (see
# upload.concurrentPieceCount and piece_server.QUEUE_PER_SLOT), so none is refused.
LONE_PARENT_DEPTH = 4
# Pieces in flight to a parent that serves only whole pieces (Dragonfly's wire): one at a time,
# so each lands at the full link rate and our own children can have it a piece-time later, not
# four (pieces sharing a link all land late, and a store-and-forward hop adds the time its
# pieces take to land). The next one (if the parent holds it) is asked WHOLE_PIECE_LEAD before
# the one in flight should land by the parent's recent costs, so the request and the parent's
# first bytes overlap the last bytes of the piece before and the link does not idle between
# one-request connections. Measured on the 8 x 100 mbit testbed, a plain peer behind the seed:
# 0.38-0.46 s behind it (one piece-time) through the first 40 of 64 pieces with the lead; without
# it, a little further behind at each piece until it fetched two at a time (0.6-0.7 s behind).
WHOLE_PIECE_DEPTH = 1
WHOLE_PIECE_LOOKAHEAD_DEPTH = 2
WHOLE_PIECE_LEAD = 0.1 * SECONDS
# How long a piece a super-seed refused is asked of other parents only.
ELSEWHERE_RETRY = 1.0 * SECONDS
# A busy parent is left alone for a random while in this range: children refused
# together come back apart.
BUSY_BACKOFF = (0.05 * SECONDS, 0.25 * SECONDS)
# The mean piece cost the picker breaks ties with covers this many recent pieces.
COST_WINDOW = 16
# Look again at least this often (a parent's backoff may end sooner), and no more often than MIN_WAIT.
MAX_WAIT = 1.0 * SECONDS
MIN_WAIT = 0.01 * SECONDS
# Requests for more parents are spread over this factor of the interval, which doubles while
# nothing new comes back, up to REFRESH_BACKOFF times the configured interval.
REFRESH_JITTER = (0.75, 1.25)
REFRESH_BACKOFF = 16
IDLE_LOG_EVERY = 0.5 * SECONDS


class Failure(enum.Enum):
    """Why a piece did not come from a parent, as the piece loop classifies the error."""

    BUSY = "busy"  # its upload slots are full (ResourceExhausted): not a failure of the parent
    ELSEWHERE = "elsewhere"  # a super-seed gave this piece to another peer (PieceElsewhere)
    CORRUPT = "corrupt"  # the piece failed its digest check (DigestMismatch)
    ERROR = "error"  # the transfer failed (PeerError, OSError)
    NOT_FOUND = "not_found"  # the parent does not hold the piece after all (NotFound)
    PROTOCOL = "protocol"  # the parent broke the protocol (ProtocolError)


@dataclass(eq=False)
class Parent:
    """One parent of this download as this peer knows it.

    A parent the scheduler offers again after it was dropped gets a new record;
    a worker or a piece sync still running for the old one keeps the old one.
    """

    candidate: CandidateParent
    view: ParentView  # what the picker sees
    failures: int = 0  # pieces failed in a row (those in flight together counting once)
    failed_after: int = -1  # the last counted failure's: fetches planned up to this one share it
    dead: bool = False
    # Left out of the scheduler's latest answer to "more parents" (the line moved on): asked
    # for nothing more unless offered again; not a failure, so never reported.
    retired: bool = False
    sync_done: bool = False  # its SyncPieces stream ended: it announces no more pieces
    # A whole-piece parent: when its next piece may be asked while one is in flight.
    ask_next_at: float = math.inf
    costs: deque[float] = field(default_factory=lambda: deque(maxlen=COST_WINDOW))

    @property
    def id(self) -> str:
        return self.candidate.peer_id


# What the table decides; the piece loop carries it out.


@dataclass(frozen=True, slots=True)
class Fetch:
    """Fetch piece ``number`` from ``parent`` (the table counts it in flight already);
    ``seq``: the table's count of fetches planned, this one included."""

    number: int
    parent: Parent
    seq: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing more to start now: wait for news (a piece, a parent) at most ``seconds``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Stalled:
    """These parents cannot finish the task: end the round and ask the scheduler again."""

    idle_s: float  # since the last piece landed
    in_flight: int  # workers still out (the backstop: one never returned)


@dataclass(frozen=True, slots=True)
class Complete:
    """Every piece is in the store."""


Action = Fetch | Wait | Stalled | Complete


@dataclass(frozen=True, slots=True)
class ReportFailed:
    """Tell the scheduler piece ``number`` failed from ``parent_id``.

    ``temporary`` has Dragonfly's meaning (``DownloadPieceFailedRequest``): true asks
    the scheduler not to offer this parent to this peer again. The Go scheduler
    blocks the parent when it is true and only logs when it is false
    (scheduler/service/service_v2.go:1788-1814 at 66db456); the Rust client always
    sends true (dragonfly-client/src/resource/task.rs:1548). :meth:`ParentTable.piece_failed`
    reports only a parent it drops, so it is always true here.
    """

    number: int
    parent_id: str
    temporary: bool = True


class ParentTable:
    """The parents of one download, the pieces in flight to them, and the verdicts on both."""

    def __init__(
        self,
        *,
        concurrent_piece_count: int = 16,
        parent_piece_depth: int = 1,
        piece_timeout: float = 30.0 * SECONDS,
        refresh_interval: float = 1.0 * SECONDS,
        max_parents: int = 8,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.concurrent_piece_count = concurrent_piece_count
        self.parent_piece_depth = parent_piece_depth
        self.piece_timeout = piece_timeout
        self.refresh_interval = refresh_interval
        self.max_parents = max_parents
        self.parents: dict[str, Parent] = {}
        self.in_flight: set[int] = set()
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._picker: Picker = rarest_first
        self._last_progress = clock()
        self._missing_seen: int | None = None
        self._refresh = refresh_interval
        self._stuck_rounds = 0
        self._idle_logged = 0.0
        self._planned = 0  # fetches planned so far (Fetch.seq)

    # ------------------------------------------------------------ the parents

    def add(self, candidates: Iterable[CandidateParent]) -> list[Parent]:
        """Take the parents the scheduler offers; return the records new here (to sync with).

        A parent dropped earlier comes back afresh: the scheduler offers it again.
        """
        added = []
        for c in candidates:
            existing = self.parents.get(c.peer_id)
            if existing is not None and not existing.dead:
                existing.retired = False
                continue
            p = Parent(candidate=c, view=ParentView(pieces=set(), max_in_flight=self.parent_piece_depth))
            self.parents[c.peer_id] = p
            added.append(p)
        return added

    def live(self) -> list[Parent]:
        return [p for p in self.parents.values() if not p.dead and not p.retired]

    def holds(self, parent: Parent, number: int, *, whole_pieces: bool = False) -> None:
        """``parent`` announced piece ``number`` (SyncPieces); ``whole_pieces``: it announces
        and serves only pieces it holds whole (it did not say it speaks Damselfly's extensions)."""
        parent.view.pieces.add(number)
        parent.view.whole_pieces = whole_pieces

    def sync_ended(self, parent: Parent) -> None:
        parent.sync_done = True

    def drop(self, parent: Parent) -> None:
        """Ask nothing more of ``parent`` in this download (unless the scheduler offers it again)."""
        parent.dead = True
        parent.view.max_in_flight = 0

    # ------------------------------------------------------- more parents

    def wants_more_parents(self) -> bool:
        return len(self.live()) < self.max_parents

    def refresh_delay(self) -> float:
        """How long to wait before asking the scheduler for more parents."""
        return self._refresh * self._rng.uniform(*REFRESH_JITTER)

    def more_parents(self, candidates: Iterable[CandidateParent], *, retire: bool = False) -> list[Parent]:
        """The answer to a request for more parents: ask again soon if it brought a new
        one (peers that started with us hold pieces by now), later and later if not.

        ``retire``: the scheduler sent the answer unasked, because it moved this peer in the
        chain's line (scheduling.move_follower): the answer lists every parent it wants this
        peer to use, and one left out is retired, no longer asked for pieces, so the peer stops
        taking its old parent's upload from the peer now behind that parent. An answer to our
        own request retires nothing: a scheduler that restarted knows nothing of the parents
        we use, and leaving them out would cut us off from them."""
        candidates = list(candidates)
        known = set(self.parents)
        added = self.add(candidates)
        offered = {c.peer_id for c in candidates}
        for p in self.parents.values() if offered and retire else ():
            if p.id not in offered and not p.dead and not p.retired:
                log.debug("parent %s left out of the scheduler's answer: retired", p.id)
                p.retired = True
                p.view.max_in_flight = 0
        if any(p.id not in known for p in added):
            self._refresh = self.refresh_interval
        else:
            self._refresh = min(self._refresh * 2, REFRESH_BACKOFF * self.refresh_interval)
        return added

    def reschedule(self) -> list[str]:
        """The parents to report as failed when the round stalled: the dead ones; all of
        them once the scheduler was asked twice and still they cannot finish."""
        failed = [p.id for p in self.parents.values() if p.dead]
        if not failed and self._stuck_rounds >= 2:
            failed = list(self.parents)
        self._stuck_rounds += 1
        return failed

    # ------------------------------------------------------------- a round

    def start_round(self, picker: Picker) -> None:
        """A round fetches from the parents until complete or stalled; each starts its clocks afresh."""
        self._picker = picker
        self._last_progress = self._clock()
        self._missing_seen = None
        self._refresh = self.refresh_interval

    def end_round(self) -> None:
        """Every worker of the round has stopped (one cancelled before it ran recorded nothing)."""
        self.in_flight.clear()
        for p in self.parents.values():
            p.view.in_flight = 0

    def plan(self, missing: Set[int], running: int) -> list[Action]:
        """What to do now, given the pieces ``missing`` from the store and the workers ``running``.

        Returns the pieces to fetch (each counted in flight at once) followed by a
        :class:`Wait`; or :class:`Complete`; or :class:`Stalled` when no piece landed
        for ``piece_timeout`` with nothing in flight, when every parent is dead or
        announces nothing more, or (the backstop for a worker that never returns)
        when no piece landed for twice ``piece_timeout``.
        """
        now = self._clock()
        if len(missing) != self._missing_seen:
            self._missing_seen = len(missing)
            self._last_progress = now
        if not missing:
            return [Complete()]
        idle = now - self._last_progress
        live = {p.id: p.view for p in self.parents.values() if not p.dead and not p.retired}
        if idle > 2 * self.piece_timeout:
            if running:
                log.warning(
                    "no piece for %.0fs with %d in flight (%s missing, parents %s); rescheduling",
                    idle,
                    running,
                    len(missing),
                    {pid: (len(v.pieces), v.in_flight) for pid, v in live.items()},
                )
            return [Stalled(idle, running)]
        self._set_depths(now)
        actions: list[Action] = []
        state = PickState(missing, self.in_flight, live, self._rng, now)
        while running + len(actions) < self.concurrent_piece_count:
            pick = self._picker(state)
            if pick is None:
                self._log_idle(now, running + len(actions), missing, live)
                break
            number, pid = pick
            parent = self.parents[pid]
            self.in_flight.add(number)
            parent.view.in_flight += 1
            if parent.view.whole_pieces and parent.costs:
                parent.ask_next_at = now + statistics.median(parent.costs) - WHOLE_PIECE_LEAD
            self._planned += 1
            actions.append(Fetch(number, parent, self._planned))
        if running + len(actions) == 0:
            stuck = all(p.dead or p.retired or p.sync_done for p in self.parents.values())
            if stuck or idle > self.piece_timeout:
                return [Stalled(idle, 0)]
        soon = [v.ready_at for v in live.values()]
        soon += [p.ask_next_at for p in self.live() if p.view.whole_pieces and p.view.in_flight == 1]
        wait = min([MAX_WAIT, *(t - now for t in soon if now < t < math.inf)])
        actions.append(Wait(max(wait, MIN_WAIT)))
        return actions

    def _set_depths(self, now: float) -> None:
        """A lone parent gets LONE_PARENT_DEPTH pieces (its upload slots and short queue
        take that many without refusals); several parents share the workers, a few each.
        A parent that serves only whole pieces gets WHOLE_PIECE_DEPTH, and a second piece
        WHOLE_PIECE_LEAD before the one in flight should land (ask_next_at)."""
        live = self.live()
        depth = (
            LONE_PARENT_DEPTH
            if len(live) <= 1
            else max(self.parent_piece_depth, self.concurrent_piece_count // (2 * len(live)))
        )
        for p in live:
            view = p.view
            if view.whole_pieces:
                due = view.in_flight == 1 and now >= p.ask_next_at
                view.max_in_flight = min(depth, WHOLE_PIECE_LOOKAHEAD_DEPTH if due else WHOLE_PIECE_DEPTH)
            else:
                view.max_in_flight = depth

    def _log_idle(self, now: float, running: int, missing: Set[int], live: dict[str, ParentView]) -> None:
        if not log.isEnabledFor(logging.DEBUG) or now - self._idle_logged <= IDLE_LOG_EVERY:
            return
        self._idle_logged = now
        log.debug(
            "no pick: %d in flight, %d missing; parents (useful, in flight/max, wait) %s",
            running, len(missing),
            " ".join(
                f"{pid.split('-')[2]}:{len((v.pieces & missing) - self.in_flight)},"
                f"{v.in_flight}/{v.max_in_flight},{max(0.0, v.ready_at - now):.2f}"
                for pid, v in live.items()
            ),
        )  # fmt: skip

    # ------------------------------------------------------- piece outcomes

    def piece_done(self, fetch: Fetch, cost_s: float) -> None:
        """The piece came; its cost feeds the parent's mean, which the picker breaks ties with."""
        self._release(fetch)
        p = fetch.parent
        p.failures = 0
        p.costs.append(cost_s)
        p.view.mean_cost_s = sum(p.costs) / len(p.costs)

    def piece_failed(self, fetch: Fetch, failure: Failure) -> ReportFailed | None:
        """The piece did not come; returns what to tell the scheduler, if anything.

        A busy parent is left alone briefly and a piece a super-seed sent elsewhere
        is asked of the others for a while: neither counts against the parent. A
        corrupt piece drops the parent for good. Other failures drop it after
        PARENT_FAILURE_LIMIT in a row, or at once for a protocol error. Pieces that
        were in flight together when one failed fail for the same cause and count
        once: a parent whose own upstream died mid-piece (a seed killed under the
        pieces it was passing on) fails every piece it was cutting through at once,
        yet serves the next ones from wherever it fetches them now.

        The scheduler hears of a failure only when the parent is dropped, with
        ``temporary=true`` (:class:`ReportFailed`: avoid this parent):

        ==========================================  ==========================
        failure                                     report
        ==========================================  ==========================
        BUSY, ELSEWHERE                             none (the parent is fine)
        ERROR, NOT_FOUND below the limit            none (it may serve again)
        ERROR, NOT_FOUND at the limit (gone)        ``temporary=true``
        PROTOCOL, CORRUPT                           ``temporary=true``
        ==========================================  ==========================
        """
        self._release(fetch)
        p, number = fetch.parent, fetch.number
        if p.dead:  # a piece that was in flight when the parent was dropped (and reported)
            return None
        if failure is Failure.BUSY:
            p.view.ready_at = self._clock() + self._rng.uniform(*BUSY_BACKOFF)
            return None
        if failure is Failure.ELSEWHERE:
            p.view.skip[number] = self._clock() + ELSEWHERE_RETRY
            return None
        if failure is Failure.NOT_FOUND:
            p.view.pieces.discard(number)
        if failure is not Failure.CORRUPT:
            if fetch.seq and fetch.seq <= p.failed_after and failure is not Failure.PROTOCOL:
                return None  # in flight when the parent last failed: the same failure
            p.failures += 1
            p.failed_after = self._planned
            if p.failures < PARENT_FAILURE_LIMIT and failure is not Failure.PROTOCOL:
                return None
        self.drop(p)
        return ReportFailed(number, p.id)

    def piece_abandoned(self, fetch: Fetch) -> None:
        """The worker stopped without an outcome (cancelled, or an error nobody expected)."""
        self._release(fetch)

    def _release(self, fetch: Fetch) -> None:
        self.in_flight.discard(fetch.number)
        fetch.parent.view.in_flight -= 1
