"""The in-process persistent cache store: the embedded ``damselfly up`` and a scheduler without Redis.

It keeps the same encoded records as :class:`~.redis_store.RedisStore`, with
the same deadlines (checked on read against an injected wall clock), so code
that forgets to write a change back fails here too. Lost with the process.
"""

from __future__ import annotations

import time

from ...domain import HostInfo
from ..dfcache.state import CachePeer, CacheTask
from .base import (
    Clock,
    PersistentCacheStore,
    decode_host,
    decode_peer,
    decode_task,
    drop_at,
    encode_host,
    encode_peer,
    encode_task,
)


class MemoryStore(PersistentCacheStore):
    """Records in dicts; owned by the scheduler's event loop (no locks)."""

    def __init__(self, *, clock: Clock = time.time) -> None:
        self.clock = clock
        self._tasks: dict[str, tuple[str, float | None]] = {}  # id -> (record, drop at)
        self._peers: dict[str, dict[str, str]] = {}  # task id -> peer id -> record
        self._peer_task: dict[str, str] = {}
        self._hosts: dict[str, tuple[str, float]] = {}  # id -> (record, alive until)

    def _live(self, task_id: str) -> str | None:
        entry = self._tasks.get(task_id)
        if entry is None:
            return None
        raw, deadline = entry
        if deadline is not None and self.clock() >= deadline:
            self._drop(task_id)
            return None
        return raw

    def _drop(self, task_id: str) -> None:
        self._tasks.pop(task_id, None)
        for pid in self._peers.pop(task_id, {}):
            if self._peer_task.get(pid) == task_id:
                del self._peer_task[pid]

    def _load(self, task_id: str) -> CacheTask | None:
        raw = self._live(task_id)
        if raw is None:
            return None
        return decode_task(raw, [decode_peer(p) for p in self._peers.get(task_id, {}).values()])

    async def get_task(self, task_id: str) -> CacheTask | None:
        return self._load(task_id)

    async def tasks(self) -> list[CacheTask]:
        out = [self._load(tid) for tid in list(self._tasks)]
        return [t for t in out if t is not None]

    async def put_task(self, task: CacheTask) -> None:
        self._tasks[task.id] = (encode_task(task), drop_at(task))

    async def put_peer(self, task: CacheTask, peer: CachePeer) -> None:
        if self._live(task.id) is None:
            return  # deleted or expired meanwhile: nothing to attach the peer to
        self._peers.setdefault(task.id, {})[peer.id] = encode_peer(peer)
        self._peer_task[peer.id] = task.id

    async def remove_peer(self, task_id: str, peer_id: str) -> None:
        self._peers.get(task_id, {}).pop(peer_id, None)
        if self._peer_task.get(peer_id) == task_id:
            del self._peer_task[peer_id]

    async def task_of_peer(self, peer_id: str) -> str | None:
        task_id = self._peer_task.get(peer_id)
        if task_id is None or self._live(task_id) is None:
            return None
        return task_id

    async def delete_task(self, task_id: str) -> CacheTask | None:
        task = self._load(task_id)
        self._drop(task_id)
        return task

    async def put_host(self, info: HostInfo, ttl: float) -> None:
        self._hosts[info.id] = (encode_host(info), self.clock() + ttl)

    async def hosts(self) -> dict[str, HostInfo]:
        now = self.clock()
        for host_id in [h for h, (_, until) in self._hosts.items() if until <= now]:
            del self._hosts[host_id]
        return {h: decode_host(raw) for h, (raw, _) in self._hosts.items()}

    async def delete_host(self, host_id: str) -> None:
        self._hosts.pop(host_id, None)
