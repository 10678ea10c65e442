"""The scheduler's in-memory world: hosts, tasks, peers and the parent DAG.

Owner: one :class:`Resources` per scheduler, mutated only from the event loop
(the gRPC service and the GC loop), never from another thread, so it needs no
locks. Policy (:mod:`.scheduling`, :mod:`.evaluator`, :mod:`.gc`) reads it and
decides; the service applies the decisions through the methods here.

Every operation is O(1) or O(peers touched): a task keeps the peers that can
serve (``Task.available``) in an :class:`IndexedSet` so the scheduler can sample
candidates without scanning the task, and hosts count their child edges so free
upload slots are a subtraction.

The DAG: edges go child -> parents (``Peer.parents``) with the reverse index in
``Peer.children``. An edge that would make a cycle, or joins two peers of one
host, is refused.

Long because: hosts, tasks and peers (with the parent DAG) are one object graph
whose invariants, who points at whom, are kept in one module.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..domain import CandidateParent, DownloadSpec, HostInfo, PeerInfo, PieceInfo, SizeScope, TaskInfo
from ..errors import InvalidArgument, NotFound
from ..pieces import TINY_LIMIT

T = TypeVar("T")

# How many served-piece costs a parent keeps for bad-parent detection, and how
# many bandwidth samples a host keeps (one per announce, ~30 s apart).
COST_SAMPLES = 64
# A peer's progress is sampled at most this often, this many samples kept (16 s and more).
PROGRESS_SAMPLE_S = 0.5
PROGRESS_SAMPLES = 32
TX_SAMPLES = 8


class PeerState(enum.Enum):
    """A peer's life: Pending -> Running | BackToSource -> Succeeded | Failed; Leave when deleted."""

    PENDING = "Pending"
    RUNNING = "Running"
    BACK_TO_SOURCE = "BackToSource"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    LEAVE = "Leave"

    @property
    def can_serve(self) -> bool:
        """Whether a peer in this state may be offered as a parent."""
        return self in _SERVING

    @property
    def is_final(self) -> bool:
        return self in (PeerState.SUCCEEDED, PeerState.FAILED, PeerState.LEAVE)


_SERVING = frozenset({PeerState.RUNNING, PeerState.BACK_TO_SOURCE, PeerState.SUCCEEDED})


class SeedState(enum.Enum):
    """Whether the scheduler asked a seed host to download a task (once per task)."""

    NONE = "none"
    TRIGGERED = "triggered"
    FAILED = "failed"


class IndexedSet(Generic[T]):
    """A set with O(1) add, remove and uniform random sampling (swap-remove list + index)."""

    __slots__ = ("_index", "_items")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._index: dict[T, int] = {}

    def add(self, item: T) -> None:
        if item not in self._index:
            self._index[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: T) -> None:
        i = self._index.pop(item, None)
        if i is None:
            return
        last = self._items.pop()
        if i < len(self._items):
            self._items[i] = last
            self._index[last] = i

    def sample(self, k: int, rng: random.Random) -> list[T]:
        """Up to ``k`` items chosen uniformly, all of them when there are no more than ``k``."""
        if len(self._items) <= k:
            return list(self._items)
        return rng.sample(self._items, k)

    def __contains__(self, item: object) -> bool:
        return item in self._index

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))


@dataclass(eq=False, slots=True)
class Host:
    """One daemon, as last announced, plus the scheduler's upload-slot accounting."""

    info: HostInfo
    upload_limit: int
    last_announce: float
    children: int = 0  # child edges pointing at this host's peers: the upload slots in use
    peers: dict[str, Peer] = field(default_factory=dict)
    tx_samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=TX_SAMPLES))

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def is_seed(self) -> bool:
        return self.info.type.is_seed

    @property
    def free_upload_slots(self) -> int:
        return max(0, self.upload_limit - self.children)


@dataclass(eq=False, slots=True)
class Task:
    """One piece of content and the peers downloading or holding it."""

    id: str
    spec: DownloadSpec
    created_at: float
    updated_at: float
    content_length: int | None = None
    piece_count: int | None = None
    piece_length: int | None = None
    # The longest piece any peer reported finished: the piece length in practice when the
    # registers did not tell it (Damselfly daemons learn it from the origin, after registering).
    longest_piece: int = 0
    peers: dict[str, Peer] = field(default_factory=dict)
    available: IndexedSet[Peer] = field(default_factory=IndexedSet)  # peers in a serving state
    waiting: dict[str, Peer] = field(default_factory=dict)  # peers with no answer yet
    source_peers: set[str] = field(default_factory=set)  # peers sent to the origin, not failed
    seed_state: SeedState = SeedState.NONE
    # Seed hosts that were triggered for the task and were lost or failed it: not asked again.
    failed_seed_hosts: set[str] = field(default_factory=set)
    succeeded: int = 0
    failed: int = 0
    # Pieces reported fetched from the origin, by number: what StatTask lists, as Dragonfly's does.
    source_pieces: dict[int, PieceInfo] = field(default_factory=dict)
    # A peer on Dragonfly's wire only (Peer.plain) registered: the chain's line is then ordered
    # by Peer.line_key instead of by registration (scheduling.line_of).
    mixed_wire: bool = False

    @property
    def is_empty_content(self) -> bool:
        return self.content_length == 0

    @property
    def size_scope(self) -> SizeScope | None:
        """Dragonfly's size scope of the task (G:scheduler/resource/standard/task.go:601-623);
        None while the length is unknown (Dragonfly's UNKNOW)."""
        if self.content_length is None:
            return None
        if self.content_length == 0:
            return SizeScope.EMPTY
        if self.content_length <= TINY_LIMIT:
            return SizeScope.TINY
        if self.piece_count == 1:
            return SizeScope.SMALL
        return SizeScope.NORMAL

    def learn_sizes(
        self, content_length: int | None, piece_length: int | None, piece_count: int | None
    ) -> None:
        """Take a register's ``actual_*`` sizes while the task's length is unknown.

        Dragonfly's scheduler sizes a *new* task from them (G:scheduler/service/service_v2.go:1851-1866);
        here a task created by a peer that did not know the length (a Damselfly daemon)
        learns it from the first register that does. A known length is never changed.
        """
        if self.content_length is not None or content_length is None:
            return
        self.content_length = content_length
        self.piece_length = piece_length or self.piece_length
        if piece_count is None and self.piece_length:
            piece_count = -(-content_length // self.piece_length)
        self.piece_count = piece_count

    def forget_sizes(self) -> None:
        """A peer's fetch from the origin failed: the length is unknown again, so the next
        register's ``actual_*`` size the task anew (the origin may answer otherwise now), as
        Dragonfly's scheduler resets it (G:scheduler/service/service_v2.go:1656-1659). Kept while
        a peer holds the whole task: its copy proves the length."""
        if not self.succeeded:
            self.content_length = self.piece_count = None

    @property
    def state(self) -> str:
        """``common.v2.Task.state``: Succeeded once any peer holds it all, else Running/Failed/Pending."""
        if self.succeeded:
            return "Succeeded"
        if len(self.available):
            return "Running"
        if self.peers and self.failed == len(self.peers):
            return "Failed"
        return "Pending"

    def info(self) -> TaskInfo:
        """What ``StatTask`` says of the task."""
        spec = self.spec
        return TaskInfo(
            id=self.id,
            url=spec.url,
            digest=spec.digest or None,
            tag=spec.tag,
            application=spec.application,
            filtered_query_params=spec.filtered_query_params or [],
            content_length=self.content_length or 0,
            piece_count=self.piece_count or 0,
            state=self.state,
            peer_count=len(self.peers),
            has_available_peer=len(self.available) > 0,
        )


@dataclass(eq=False, slots=True)
class Peer:
    """One host's attempt at one task."""

    id: str
    task: Task
    host: Host
    spec: DownloadSpec
    created_at: float
    updated_at: float
    state: PeerState = PeerState.PENDING
    finished_pieces: set[int] = field(default_factory=set)
    finished_bytes: int = 0
    parents: dict[str, Peer] = field(default_factory=dict)
    children: dict[str, Peer] = field(default_factory=dict)
    blocked: set[str] = field(default_factory=set)  # parent peer IDs this peer must not get again
    # Costs (seconds) of pieces this peer served to children, newest last.
    served_costs: deque[float] = field(default_factory=lambda: deque(maxlen=COST_SAMPLES))
    reschedule_count: int = 0
    waiting_since: float | None = None
    # (time, finished_bytes) at most every PROGRESS_SAMPLE_S, newest last: the peer's recent rate.
    progress_log: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=PROGRESS_SAMPLES))
    # The peer speaks only Dragonfly's wire (a Rust dfdaemon, or a Damselfly daemon with
    # wire.extensions off): it serves only whole pieces and never asks for more parents.
    plain: bool = False
    # Its place in the chain topology's line (scheduling.line_order), fixed once given.
    line_key: float | None = None

    def __hash__(self) -> int:
        return id(self)

    def recent_rate(self, now: float, window: float) -> float | None:
        """Bytes per second finished since the newest progress sample at least ``window``
        seconds old, over that sample's age (samples come only with finished pieces: on a slow
        link one may be a piece-time older than the window); None until the peer has been
        finishing pieces for that long (no rate to judge it by yet)."""
        log = self.progress_log
        if not log or now - log[0][0] < window:
            return None
        since, before = log[0]
        for t, done in log:
            if t > now - window:
                break
            since, before = t, done
        return (self.finished_bytes - before) / (now - since)

    def logged_rate(self) -> float | None:
        """Bytes per second finished over the whole progress log (its last
        :data:`PROGRESS_SAMPLES` samples); None before two samples a while apart."""
        log = self.progress_log
        if len(log) < 2 or log[-1][0] - log[0][0] <= 0:
            return None
        return (log[-1][1] - log[0][1]) / (log[-1][0] - log[0][0])

    @property
    def need_back_to_source(self) -> bool:
        return self.spec.need_back_to_source

    @property
    def disable_back_to_source(self) -> bool:
        return self.spec.disable_back_to_source

    def candidate(self) -> CandidateParent:
        """This peer offered as a parent: what a child needs to reach it."""
        task = self.task
        return CandidateParent(
            peer_id=self.id,
            host=self.host.info,
            task_id=task.id,
            content_length=task.content_length,
            piece_count=task.piece_count,
            finished_pieces=len(self.finished_pieces),
            state=self.state.value,
        )

    def info(self) -> PeerInfo:
        """What ``StatPeer`` says of the peer."""
        return PeerInfo(
            id=self.id,
            state=self.state.value,
            task=self.task.info(),
            host=self.host.info,
            need_back_to_source=self.need_back_to_source,
        )


class Resources:
    """All hosts, tasks and peers the scheduler knows, with the parent DAG."""

    def __init__(
        self, *, peer_upload_limit: int = 200, seed_upload_limit: int = 2000, allow_cycles: bool = False
    ) -> None:
        # True for the "mesh" topology: only self and same-host edges are refused.
        self.allow_cycles = allow_cycles
        self.peer_upload_limit = peer_upload_limit
        self.seed_upload_limit = seed_upload_limit
        self.hosts: dict[str, Host] = {}
        self.tasks: dict[str, Task] = {}
        self.peers: dict[str, Peer] = {}
        self.waiting: dict[str, Peer] = {}  # every waiting peer of every task

    # -- hosts ---------------------------------------------------------------

    def upsert_host(self, info: HostInfo, now: float) -> Host:
        limit = self.seed_upload_limit if info.type.is_seed else self.peer_upload_limit
        host = self.hosts.get(info.id)
        if host is None:
            host = Host(info=info, upload_limit=limit, last_announce=now)
            self.hosts[info.id] = host
        else:
            host.info = info
            host.upload_limit = limit
            host.last_announce = now
        host.tx_samples.append((now, info.tx_bandwidth))
        return host

    def host(self, host_id: str) -> Host:
        try:
            return self.hosts[host_id]
        except KeyError:
            raise NotFound(f"host {host_id} not found") from None

    def delete_host(self, host_id: str) -> list[Peer]:
        """Forget a host and all its peers; returns the peers removed."""
        host = self.hosts.pop(host_id, None)
        if host is None:
            return []
        removed = list(host.peers.values())
        for p in removed:
            self.delete_peer(p.id)
        return removed

    def seed_hosts(self) -> Iterable[Host]:
        return (h for h in self.hosts.values() if h.is_seed)

    # -- tasks and peers -----------------------------------------------------

    def task(self, task_id: str) -> Task:
        try:
            return self.tasks[task_id]
        except KeyError:
            raise NotFound(f"task {task_id} not found") from None

    def peer(self, peer_id: str) -> Peer:
        try:
            return self.peers[peer_id]
        except KeyError:
            raise NotFound(f"peer {peer_id} not found") from None

    def get_or_create_task(self, task_id: str, spec: DownloadSpec, now: float) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            task = Task(id=task_id, spec=spec, created_at=now, updated_at=now)
            self.tasks[task_id] = task
        return task

    def create_peer(self, peer_id: str, task: Task, host: Host, spec: DownloadSpec, now: float) -> Peer:
        """A new Pending peer; a peer ID registered again replaces the old peer."""
        if peer_id in self.peers:
            self.delete_peer(peer_id)
        peer = Peer(id=peer_id, task=task, host=host, spec=spec, created_at=now, updated_at=now)
        self.peers[peer_id] = peer
        task.peers[peer_id] = peer
        task.updated_at = now
        host.peers[peer_id] = peer
        return peer

    def delete_peer(self, peer_id: str) -> Peer | None:
        """Remove a peer: its edges both ways, its place in its task and host."""
        peer = self.peers.pop(peer_id, None)
        if peer is None:
            return None
        self._set_state_counts(peer, PeerState.LEAVE)
        peer.state = PeerState.LEAVE
        self.clear_parents(peer)
        for child in list(peer.children.values()):
            self._drop_edge(child, peer)
        self.stop_waiting(peer)
        task = peer.task
        task.peers.pop(peer_id, None)
        task.source_peers.discard(peer_id)
        peer.host.peers.pop(peer_id, None)
        return peer

    def delete_task(self, task_id: str) -> None:
        task = self.tasks.pop(task_id, None)
        if task is not None:
            for pid in list(task.peers):
                self.delete_peer(pid)

    # -- state ---------------------------------------------------------------

    def set_state(self, peer: Peer, state: PeerState, now: float) -> None:
        """Move a peer to ``state``; a finished or failed peer stops holding upload slots."""
        if peer.state is state:
            peer.updated_at = now
            return
        self._set_state_counts(peer, state)
        peer.state = state
        peer.updated_at = now
        peer.task.updated_at = now
        if state.is_final:
            self.clear_parents(peer)
            self.stop_waiting(peer)
        if state is PeerState.FAILED:
            peer.task.source_peers.discard(peer.id)
            for child in list(peer.children.values()):  # it serves nobody any more
                self._drop_edge(child, peer)

    def _set_state_counts(self, peer: Peer, new: PeerState) -> None:
        task, old = peer.task, peer.state
        if old is PeerState.SUCCEEDED:
            task.succeeded -= 1
        elif old is PeerState.FAILED:
            task.failed -= 1
        if new is PeerState.SUCCEEDED:
            task.succeeded += 1
        elif new is PeerState.FAILED:
            task.failed += 1
        if new.can_serve and peer.id in task.peers:
            task.available.add(peer)
        else:
            task.available.discard(peer)

    def record_piece(self, peer: Peer, piece: PieceInfo, now: float) -> None:
        """Count a finished piece; when it came from a parent, remember what it cost that parent."""
        if piece.number not in peer.finished_pieces:
            peer.finished_pieces.add(piece.number)
            peer.finished_bytes += piece.length
            if piece.length > peer.task.longest_piece:
                peer.task.longest_piece = piece.length
            log = peer.progress_log
            if not log or now - log[-1][0] >= PROGRESS_SAMPLE_S:
                log.append((now, peer.finished_bytes))
        peer.updated_at = now
        if piece.parent_id and piece.cost_s > 0:
            parent = self.peers.get(piece.parent_id)
            if parent is not None:
                parent.served_costs.append(piece.cost_s)

    def start_waiting(self, peer: Peer, now: float) -> None:
        if peer.waiting_since is None:
            peer.waiting_since = now
        peer.task.waiting[peer.id] = peer
        self.waiting[peer.id] = peer

    def stop_waiting(self, peer: Peer) -> None:
        peer.waiting_since = None
        peer.task.waiting.pop(peer.id, None)
        self.waiting.pop(peer.id, None)

    # -- the DAG -------------------------------------------------------------

    def is_ancestor(self, ancestor: Peer, peer: Peer) -> bool:
        """Whether ``ancestor`` is reachable from ``peer`` along parent edges."""
        if not ancestor.children:
            return False  # the common case: a new peer serves nobody yet
        seen: set[str] = set()
        stack = [peer]
        while stack:
            p = stack.pop()
            if p is ancestor:
                return True
            for parent in p.parents.values():
                if parent.id not in seen:
                    seen.add(parent.id)
                    stack.append(parent)
        return False

    def descendants(self, peer: Peer) -> set[str]:
        """IDs of every peer downloading from ``peer``, directly or not (walks child edges once)."""
        out: set[str] = set()
        stack = list(peer.children.values())
        while stack:
            p = stack.pop()
            if p.id not in out:
                out.add(p.id)
                stack.extend(p.children.values())
        return out

    def can_add_edge(self, child: Peer, parent: Peer) -> bool:
        """An edge child -> parent keeps the graph acyclic and joins two hosts."""
        if child is parent or child.host is parent.host:
            return False
        return self.allow_cycles or not self.is_ancestor(child, parent)

    def add_parent(self, child: Peer, parent: Peer) -> None:
        if parent.id in child.parents:
            return
        if not self.can_add_edge(child, parent):
            raise InvalidArgument(f"peer {parent.id} cannot be a parent of {child.id}: same host or a cycle")
        child.parents[parent.id] = parent
        parent.children[child.id] = child
        parent.host.children += 1

    def set_parents(self, child: Peer, parents: Iterable[Peer]) -> None:
        """Replace a peer's parents; edges that would be refused are skipped."""
        parents = list(parents)
        self.clear_parents(child)
        for parent in parents:
            if self.can_add_edge(child, parent):
                self.add_parent(child, parent)

    def clear_parents(self, child: Peer) -> None:
        for parent in list(child.parents.values()):
            self._drop_edge(child, parent)

    def _drop_edge(self, child: Peer, parent: Peer) -> None:
        if child.parents.pop(parent.id, None) is not None:
            parent.children.pop(child.id, None)
            parent.host.children -= 1
