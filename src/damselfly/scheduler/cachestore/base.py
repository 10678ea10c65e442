"""The persistent cache store's interface, its record codec and the choice of implementation.

A task is stored as its own fields (one record) plus one record per peer, so
two schedulers updating different peers of one task never overwrite each
other; writes of one record are last-writer-wins. Hosts that hold copies are
stored too (their announced :class:`HostInfo`, with a time to live refreshed at
every AnnounceHost), so a scheduler that never heard from a host still counts
its copy while it is alive somewhere.

Time: every timestamp is wall-clock seconds (shared by schedulers). A task
whose TTL has passed stays readable for :data:`EXPIRY_GRACE` more, so the
scheduler that notices first can delete the copies on the hosts; then the
store drops it by itself (Redis key expiry, or the in-memory store's own
deadline), also when no scheduler is running.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit

from ...domain import HostInfo, HostType
from ...errors import ConfigError
from ...units import MINUTES
from ..dfcache.state import CachePeer, CacheTask

EXPIRY_GRACE = 10 * MINUTES  # a task past its TTL stays this long for the scheduler to delete its copies
SCHEMES = ("redis", "rediss", "unix")

Clock = Callable[[], float]


class PersistentCacheStore(ABC):
    """Persistent cache tasks, their peers, and the hosts holding them.

    Reads return fresh objects: a change is kept only once written back
    (:meth:`put_task`, :meth:`put_peer`). Owner: the scheduler's
    :class:`~..dfcache.service.PersistentCacheService`.
    """

    @abstractmethod
    async def get_task(self, task_id: str) -> CacheTask | None:
        """The task with its peers, or None (unknown, deleted, or dropped after its TTL and grace)."""

    @abstractmethod
    async def tasks(self) -> list[CacheTask]:
        """Every task with its peers."""

    @abstractmethod
    async def put_task(self, task: CacheTask) -> None:
        """Write the task's own fields (not its peers)."""

    @abstractmethod
    async def put_peer(self, task: CacheTask, peer: CachePeer) -> None:
        """Write one peer of ``task`` and index it by its ID."""

    @abstractmethod
    async def remove_peer(self, task_id: str, peer_id: str) -> None:
        """Forget one peer (no error if unknown)."""

    @abstractmethod
    async def task_of_peer(self, peer_id: str) -> str | None:
        """The ID of the task ``peer_id`` belongs to, if known."""

    @abstractmethod
    async def delete_task(self, task_id: str) -> CacheTask | None:
        """Forget a task and its peers; returns it as it was, or None if unknown."""

    @abstractmethod
    async def put_host(self, info: HostInfo, ttl: float) -> None:
        """Record a host as alive for ``ttl`` seconds from now."""

    @abstractmethod
    async def hosts(self) -> dict[str, HostInfo]:
        """The hosts alive (announced within their TTL), by ID."""

    @abstractmethod
    async def delete_host(self, host_id: str) -> None:
        """Forget a host (it left); its peers are removed by the caller."""

    def describe(self) -> str:
        """Where the tasks are kept, for the log (never with credentials)."""
        return "the scheduler's memory"

    async def ping(self) -> None:  # noqa: B027 (optional: a store with nothing to reach)
        """StoreUnavailable unless the store answers (the in-memory one always does)."""

    async def close(self) -> None:  # noqa: B027 (optional: a store with nothing to release)
        """Release connections (nothing for the in-memory store)."""


def drop_at(task: CacheTask) -> float | None:
    """When the store may forget ``task`` by itself (wall clock), or None for never."""
    return task.created_at + task.ttl + EXPIRY_GRACE if task.ttl > 0 else None


# -- records ---------------------------------------------------------------------


def encode_task(task: CacheTask) -> str:
    return json.dumps(
        {
            "id": task.id,
            "replica_count": task.replica_count,
            "tag": task.tag,
            "application": task.application,
            "piece_length": task.piece_length,
            "content_length": task.content_length,
            "piece_count": task.piece_count,
            "ttl": task.ttl,
            "created_at": task.created_at,
            "updated_at": task.updated_at,
            "state": task.state,
            "failed_hosts": sorted(task.failed_hosts),
        },
        separators=(",", ":"),
    )


def decode_task(raw: str | bytes, peers: list[CachePeer]) -> CacheTask:
    d = json.loads(raw)
    return CacheTask(
        id=str(d["id"]),
        replica_count=int(d["replica_count"]),
        tag=str(d["tag"]),
        application=str(d["application"]),
        piece_length=int(d["piece_length"]),
        content_length=int(d["content_length"]),
        piece_count=int(d["piece_count"]),
        ttl=float(d["ttl"]),
        created_at=float(d["created_at"]),
        updated_at=float(d["updated_at"]),
        state=str(d["state"]),
        peers={p.id: p for p in peers},
        failed_hosts={str(h) for h in d.get("failed_hosts", [])},
    )


def encode_peer(peer: CachePeer) -> str:
    return json.dumps(
        {
            "id": peer.id,
            "host_id": peer.host_id,
            "persistent": peer.persistent,
            "state": peer.state,
            "created_at": peer.created_at,
            "updated_at": peer.updated_at,
            "blocked": sorted(peer.blocked),
            "pieces": peer.pieces,
        },
        separators=(",", ":"),
    )


def decode_peer(raw: str | bytes) -> CachePeer:
    d = json.loads(raw)
    return CachePeer(
        id=str(d["id"]),
        host_id=str(d["host_id"]),
        persistent=bool(d["persistent"]),
        state=str(d["state"]),
        created_at=float(d["created_at"]),
        updated_at=float(d["updated_at"]),
        blocked={str(b) for b in d.get("blocked", [])},
        pieces=int(d.get("pieces", 0)),
    )


def encode_host(info: HostInfo) -> str:
    data: dict[str, Any] = asdict(info)
    data["type"] = int(info.type)
    return json.dumps(data, separators=(",", ":"))


def decode_host(raw: str | bytes) -> HostInfo:
    d = json.loads(raw)
    d["type"] = HostType(int(d["type"]))
    known = HostInfo.__dataclass_fields__
    return HostInfo(**{k: v for k, v in d.items() if k in known})


# -- choosing a store -----------------------------------------------------------------


def redacted(url: str) -> str:
    """``url`` without its user name and password, for logs and errors."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None and "password=" not in parts.query:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"***@{host}" if parts.username is not None or parts.password is not None else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    query = "&".join(q for q in parts.query.split("&") if not q.startswith("password="))
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def check_url(url: str) -> None:
    """ConfigError unless ``url`` is empty or a Redis URL redis-py can use."""
    if not url:
        return
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ConfigError(
            f"database.redis.url must start with redis://, rediss:// or unix://, not {redacted(url)!r}"
        )


def open_store(url: str, *, clock: Clock) -> PersistentCacheStore:
    """The Redis store for ``url``, or the in-memory one when ``url`` is empty."""
    check_url(url)
    if not url:
        from .memory import MemoryStore

        return MemoryStore(clock=clock)
    from .redis_store import RedisStore

    return RedisStore.from_url(url)
