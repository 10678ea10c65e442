"""Persistent cache tasks on the scheduler (``dfcache``): state and policy.

A persistent cache task has no origin: its bytes exist only on the hosts that
hold it. A daemon imports a file (``UploadPersistentCacheTaskStarted`` /
``Finished``), and the scheduler then asks ``replica_count - 1`` other hosts
to fetch it from the swarm (``DfdaemonUpload.DownloadPersistentCacheTask``
with ``persistent=true``), so the task outlives the importer. Any host exports
it through the ``AnnouncePersistentCachePeer`` stream: the scheduler answers a
registration with the hosts holding the task (``NormalPersistentCacheTaskResponse``).
Persistent peers are not evicted by the daemons' LRU; every copy goes at the
task's TTL, and ``DeletePersistentCacheTask`` removes it from every host.

Decide, then do: :class:`PersistentCacheRegistry` is plain state with
synchronous methods, and :func:`replica_hosts` / :func:`candidate_parents` /
:func:`expired_tasks` are pure policy (this module, no I/O).
:class:`~.persistent_cache_service.PersistentCacheService` carries out their
decisions (gRPC calls to daemons) and answers the RPCs; the scheduler's
servicer inherits them (``PersistentCacheRPCs``).

Hosts are the scheduler's :class:`Resources` hosts: a peer whose host is gone
(``DeleteHost``, host GC) is simply not offered, and the repair step replaces
the replicas it held. Owner of the registry and of all background work:
``PersistentCacheService``, on the event loop.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass, field

from ..errors import InvalidArgument, NotFound
from .resources import Host

PARENT_LIMIT = 4  # candidate parents per answer

# Task states (common.v2.PersistentCacheTask.state) and peer states.
PENDING, UPLOADING, SUCCEEDED, FAILED = "Pending", "Uploading", "Succeeded", "Failed"
RUNNING = "Running"


@dataclass(eq=False, slots=True)
class CachePeer:
    """One host's copy (or download) of a persistent cache task."""

    id: str
    host_id: str
    persistent: bool
    state: str
    created_at: float
    updated_at: float
    blocked: set[str] = field(default_factory=set)  # parent peer IDs not to offer again
    pieces: int = 0


@dataclass(eq=False, slots=True)
class CacheTask:
    """A persistent cache task as the scheduler knows it."""

    id: str
    replica_count: int
    tag: str
    application: str
    piece_length: int
    content_length: int
    piece_count: int
    ttl: float  # seconds from created_at; 0 = no TTL
    created_at: float  # scheduler clock (monotonic)
    created_wall: float  # wall clock, for the Timestamp daemons derive their expiry from
    updated_at: float
    state: str = PENDING
    peers: dict[str, CachePeer] = field(default_factory=dict)
    failed_hosts: set[str] = field(default_factory=set)  # hosts whose copy failed: asked last

    def expired(self, now: float) -> bool:
        return self.ttl > 0 and now >= self.created_at + self.ttl

    def holders(self, alive: Container[str]) -> list[CachePeer]:
        """Succeeded peers on hosts the scheduler still knows."""
        return [p for p in self.peers.values() if p.state == SUCCEEDED and p.host_id in alive]

    def replica_hosts(self, alive: Container[str]) -> set[str]:
        """Hosts holding, or fetching, a persistent copy."""
        return {
            p.host_id
            for p in self.peers.values()
            if p.persistent and p.state in (SUCCEEDED, RUNNING, PENDING, UPLOADING) and p.host_id in alive
        }


class PersistentCacheRegistry:
    """Every persistent cache task and its peers. Plain state; the service is its only writer."""

    def __init__(self) -> None:
        self.tasks: dict[str, CacheTask] = {}
        self.peer_index: dict[str, CacheTask] = {}  # peer ID -> its task

    def task(self, task_id: str) -> CacheTask:
        try:
            return self.tasks[task_id]
        except KeyError:
            raise NotFound(f"persistent cache task {task_id} is not known to the scheduler") from None

    def upload_started(
        self,
        *,
        task_id: str,
        host_id: str,
        peer_id: str,
        replica_count: int,
        tag: str,
        application: str,
        piece_length: int,
        content_length: int,
        piece_count: int,
        ttl: float,
        now: float,
        wall: float,
    ) -> CacheTask:
        """An import began on ``host_id``. A task imported again keeps its numbers and TTL."""
        if not task_id or not peer_id or not host_id:
            raise InvalidArgument("UploadPersistentCacheTaskStarted needs host_id, task_id and peer_id")
        if piece_length <= 0 or content_length < 0:
            raise InvalidArgument(f"bad sizes: content {content_length}, piece length {piece_length}")
        task = self.tasks.get(task_id)
        if task is None:
            task = CacheTask(
                id=task_id,
                replica_count=max(1, replica_count),
                tag=tag,
                application=application,
                piece_length=piece_length,
                content_length=content_length,
                piece_count=piece_count,
                ttl=ttl,
                created_at=now,
                created_wall=wall,
                updated_at=now,
                state=UPLOADING,
            )
            self.tasks[task_id] = task
        elif (task.content_length, task.piece_length) != (content_length, piece_length):
            raise InvalidArgument(
                f"persistent cache task {task_id} exists with {task.content_length} bytes in pieces of "
                f"{task.piece_length}; this upload has {content_length} in pieces of {piece_length}"
            )
        else:
            task.replica_count = max(task.replica_count, replica_count)
        self.add_peer(task, peer_id, host_id, persistent=True, state=UPLOADING, now=now)
        return task

    def add_peer(
        self, task: CacheTask, peer_id: str, host_id: str, *, persistent: bool, state: str, now: float
    ) -> CachePeer:
        old = self.peer_index.get(peer_id)
        if old is not None:
            old.peers.pop(peer_id, None)
        # One copy per host: a new peer of the same host replaces the old one.
        for other in [p for p in task.peers.values() if p.host_id == host_id]:
            self.remove_peer(other.id)
        peer = CachePeer(peer_id, host_id, persistent, state, now, now)
        task.peers[peer_id] = peer
        self.peer_index[peer_id] = task
        task.updated_at = now
        return peer

    def peer(self, peer_id: str) -> tuple[CacheTask, CachePeer]:
        task = self.peer_index.get(peer_id)
        if task is None or peer_id not in task.peers:
            raise NotFound(f"persistent cache peer {peer_id} is not known")
        return task, task.peers[peer_id]

    def set_state(self, peer_id: str, state: str, now: float) -> CacheTask:
        task, peer = self.peer(peer_id)
        peer.state = state
        if state == FAILED:
            task.failed_hosts.add(peer.host_id)
        peer.updated_at = task.updated_at = now
        if state == SUCCEEDED:
            task.state = SUCCEEDED
        elif (
            state == FAILED
            and task.state == UPLOADING
            and not any(p.state == SUCCEEDED for p in task.peers.values())
        ):
            task.state = FAILED
        return task

    def remove_peer(self, peer_id: str) -> None:
        task = self.peer_index.pop(peer_id, None)
        if task is not None:
            task.peers.pop(peer_id, None)

    def forget_host(self, host_id: str) -> None:
        for task in self.tasks.values():
            for p in [p for p in task.peers.values() if p.host_id == host_id]:
                self.remove_peer(p.id)

    def delete_task(self, task_id: str) -> CacheTask | None:
        task = self.tasks.pop(task_id, None)
        if task is not None:
            for pid in list(task.peers):
                self.peer_index.pop(pid, None)
        return task


# -- policy --------------------------------------------------------------------


def host_score(host: Host) -> float:
    """How well a host can take (and later serve) a replica: free upload bandwidth and slots.

    The daemons do not announce free disk, so it cannot weigh in yet; seed
    hosts (stable infrastructure) get a small bonus.
    """
    info = host.info
    bw_free = 1.0 - min(1.0, info.tx_bandwidth / info.max_tx_bandwidth) if info.max_tx_bandwidth > 0 else 1.0
    slots_free = host.free_upload_slots / host.upload_limit if host.upload_limit > 0 else 0.0
    return 0.5 * bw_free + 0.4 * slots_free + (0.1 if host.is_seed else 0.0)


def replica_hosts(task: CacheTask, hosts: dict[str, Host], busy: Iterable[str] = ()) -> list[Host]:
    """The hosts to ask for a new persistent replica of ``task`` (best first), possibly none.

    Wanted: ``replica_count`` hosts holding or fetching a persistent copy. Never
    a host that already has a copy of any kind or a replication in flight (``busy``),
    and only once some host holds the task complete (there is nothing to copy before).
    """
    if task.state != SUCCEEDED or not task.holders(hosts):
        return []
    have = task.replica_hosts(hosts) | {h for h in busy if h in hosts}
    missing = task.replica_count - len(have)
    if missing <= 0:
        return []
    taken = {p.host_id for p in task.peers.values() if p.state != FAILED} | have
    free = [h for h in hosts.values() if h.id not in taken and not h.info.disable_shared]
    # Hosts whose copy failed before come last (a full disk fails again), but are not excluded.
    free.sort(key=lambda h: (h.id in task.failed_hosts, -round(host_score(h), 3), h.id))
    return free[:missing]


def candidate_parents(
    task: CacheTask, child: CachePeer, hosts: dict[str, Host], limit: int = PARENT_LIMIT
) -> list[CachePeer]:
    """Peers that hold ``task`` complete, on other live hosts, not blocked for ``child``; best first."""
    out = [
        p
        for p in task.holders(hosts)
        if p.host_id != child.host_id and p.id not in child.blocked and p.id != child.id
    ]
    out.sort(key=lambda p: (not p.persistent, -round(host_score(hosts[p.host_id]), 3), p.id))
    return out[:limit]


def expired_tasks(registry: PersistentCacheRegistry, now: float) -> list[str]:
    return [t.id for t in registry.tasks.values() if t.expired(now)]
