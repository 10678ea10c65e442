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

Decide, then do: the state changes (:func:`start_upload`, :func:`attach_peer`,
:func:`set_peer_state`) and the policy (:func:`replica_hosts`,
:func:`candidate_parents`, :func:`expired_tasks`) are pure functions over a
:class:`CacheTask` (this module, no I/O). The tasks live in a
:class:`~.cachestore.PersistentCacheStore` (in-process, or Redis to outlive a
scheduler and be shared by several).
:class:`~.service.PersistentCacheService` carries out their
decisions (gRPC calls to daemons) and answers the RPCs; the scheduler's
servicer inherits them (``PersistentCacheRPCs``).

Hosts are the scheduler's :class:`Resources` hosts: a peer whose host is gone
(``DeleteHost``, host GC) is simply not offered, and the repair step replaces
the replicas it held. Owner of the store and of all background work: ``PersistentCacheService``, on
the event loop.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass, field

from ...errors import InvalidArgument
from ..resources import Host

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
    """A persistent cache task as the scheduler knows it. Times are wall-clock seconds
    (schedulers sharing a store agree on them; daemons derive their expiry from them)."""

    id: str
    replica_count: int
    tag: str
    application: str
    piece_length: int
    content_length: int
    piece_count: int
    ttl: float  # seconds from created_at; 0 = no TTL
    created_at: float
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


# -- state changes (pure: the service loads the task, applies one, and writes it back) ---------


def start_upload(
    task: CacheTask | None,
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
) -> CacheTask:
    """An import began on ``host_id``: the task (new, or ``task`` updated). A task imported
    again keeps its numbers and TTL. The importer's peer is attached by the caller."""
    if not task_id or not peer_id or not host_id:
        raise InvalidArgument("UploadPersistentCacheTaskStarted needs host_id, task_id and peer_id")
    if piece_length <= 0 or content_length < 0:
        raise InvalidArgument(f"bad sizes: content {content_length}, piece length {piece_length}")
    if task is None:
        return CacheTask(
            id=task_id,
            replica_count=max(1, replica_count),
            tag=tag,
            application=application,
            piece_length=piece_length,
            content_length=content_length,
            piece_count=piece_count,
            ttl=ttl,
            created_at=now,
            updated_at=now,
            state=UPLOADING,
        )
    if (task.content_length, task.piece_length) != (content_length, piece_length):
        raise InvalidArgument(
            f"persistent cache task {task_id} exists with {task.content_length} bytes in pieces of "
            f"{task.piece_length}; this upload has {content_length} in pieces of {piece_length}"
        )
    task.replica_count = max(task.replica_count, replica_count)
    return task


def attach_peer(
    task: CacheTask, peer_id: str, host_id: str, *, persistent: bool, state: str, now: float
) -> tuple[CachePeer, list[str]]:
    """Add a peer to ``task``; returns it and the IDs of the peers it replaces (one copy per
    host: a new peer of the same host replaces the old one)."""
    replaced = [p.id for p in task.peers.values() if p.host_id == host_id or p.id == peer_id]
    for pid in replaced:
        del task.peers[pid]
    peer = CachePeer(peer_id, host_id, persistent, state, now, now)
    task.peers[peer_id] = peer
    task.updated_at = now
    return peer, [pid for pid in replaced if pid != peer_id]


def set_peer_state(task: CacheTask, peer: CachePeer, state: str, now: float) -> None:
    """A peer's new state, and what it means for the task's."""
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


def expired_tasks(tasks: Iterable[CacheTask], now: float) -> list[str]:
    return [t.id for t in tasks if t.expired(now)]
