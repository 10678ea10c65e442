"""The persistent cache store in Redis: tasks outlive a scheduler, and schedulers share them.

Keys (all under ``damselfly:persistent-cache:``):

* ``task:<task id>``: a hash; field ``task`` is the task's record, ``peer:<peer id>``
  one per peer. Expires (PEXPIREAT) at the task's TTL plus the grace of
  :data:`~.base.EXPIRY_GRACE`, so Redis forgets a task even with no scheduler up.
* ``peer:<peer id>``: the task ID, with the same expiry.
* ``host:<host id>``: the host's announced record, expiring (PX) when it stops announcing.

A peer is only attached to a task that still exists (one Lua script), so a
late write never brings a deleted task back. Records are JSON (:mod:`.base`).
Errors of Redis become :class:`~damselfly.errors.StoreUnavailable`, whose
message names the server without user name or password.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ...domain import HostInfo
from ...errors import StoreUnavailable
from ..dfcache.state import CachePeer, CacheTask
from .base import (
    PersistentCacheStore,
    decode_host,
    decode_peer,
    decode_task,
    drop_at,
    encode_host,
    encode_peer,
    encode_task,
    redacted,
)

PREFIX = "damselfly:persistent-cache:"
TASK_FIELD = "task"
PEER_FIELD = "peer:"
SCAN_COUNT = 500

T = TypeVar("T")

# KEYS: task hash, peer index key; ARGV: peer field, peer record, task id, drop-at in ms (0: never).
_PUT_PEER = """
if redis.call('HEXISTS', KEYS[1], 'task') == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
if tonumber(ARGV[4]) > 0 then redis.call('PEXPIREAT', KEYS[2], ARGV[4]) end
return 1
"""


def task_key(task_id: str) -> str:
    return f"{PREFIX}task:{task_id}"


def peer_key(peer_id: str) -> str:
    return f"{PREFIX}peer:{peer_id}"


def host_key(host_id: str) -> str:
    return f"{PREFIX}host:{host_id}"


def _ms(at: float | None) -> int:
    return 0 if at is None else int(at * 1000)


class RedisStore(PersistentCacheStore):
    """One connection pool to one Redis database (redis-py's asyncio client)."""

    def __init__(self, client: aioredis.Redis, *, where: str) -> None:
        self.client = client
        self.where = where  # the URL without credentials
        self._put_peer = client.register_script(_PUT_PEER)

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        return cls(aioredis.Redis.from_url(url, decode_responses=True), where=redacted(url))

    async def _do(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except (RedisError, OSError) as e:
            raise StoreUnavailable(f"the persistent cache store at {self.where} failed: {e}") from None

    async def ping(self) -> None:
        """StoreUnavailable unless the server answers."""
        await self._do(self.client.ping())  # type: ignore[arg-type]  # redis-py types ping as sync|async

    def describe(self) -> str:
        return f"Redis at {self.where}"

    async def close(self) -> None:
        await self.client.aclose()

    # -- tasks ------------------------------------------------------------------------

    @staticmethod
    def _task_from(fields: dict[str, str]) -> CacheTask | None:
        raw = fields.get(TASK_FIELD)
        if raw is None:
            return None
        peers = [decode_peer(v) for k, v in fields.items() if k.startswith(PEER_FIELD)]
        return decode_task(raw, peers)

    async def get_task(self, task_id: str) -> CacheTask | None:
        fields: dict[str, str] = await self._do(self.client.hgetall(task_key(task_id)))  # type: ignore[arg-type]
        return self._task_from(fields)

    async def tasks(self) -> list[CacheTask]:
        async def scan() -> list[str]:
            return [k async for k in self.client.scan_iter(match=f"{PREFIX}task:*", count=SCAN_COUNT)]

        keys = await self._do(scan())
        if not keys:
            return []
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        results: list[dict[str, str]] = await self._do(pipe.execute())
        return [t for t in (self._task_from(f) for f in results) if t is not None]

    async def put_task(self, task: CacheTask) -> None:
        key = task_key(task.id)
        at = drop_at(task)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, TASK_FIELD, encode_task(task))
        if at is None:
            pipe.persist(key)
        else:
            pipe.pexpireat(key, _ms(at))
        await self._do(pipe.execute())

    async def put_peer(self, task: CacheTask, peer: CachePeer) -> None:
        args: list[Any] = [PEER_FIELD + peer.id, encode_peer(peer), task.id, _ms(drop_at(task))]
        await self._do(self._put_peer(keys=[task_key(task.id), peer_key(peer.id)], args=args))

    async def remove_peer(self, task_id: str, peer_id: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(task_key(task_id), PEER_FIELD + peer_id)
        pipe.delete(peer_key(peer_id))
        await self._do(pipe.execute())

    async def task_of_peer(self, peer_id: str) -> str | None:
        value: str | None = await self._do(self.client.get(peer_key(peer_id)))
        return value

    async def delete_task(self, task_id: str) -> CacheTask | None:
        task = await self.get_task(task_id)
        keys = [task_key(task_id)] + ([peer_key(p) for p in task.peers] if task is not None else [])
        await self._do(self.client.delete(*keys))
        return task

    # -- hosts ------------------------------------------------------------------------

    async def put_host(self, info: HostInfo, ttl: float) -> None:
        await self._do(self.client.set(host_key(info.id), encode_host(info), px=max(1, int(ttl * 1000))))

    async def hosts(self) -> dict[str, HostInfo]:
        async def scan() -> list[str]:
            return [k async for k in self.client.scan_iter(match=f"{PREFIX}host:*", count=SCAN_COUNT)]

        keys = await self._do(scan())
        if not keys:
            return {}
        values: list[str | None] = await self._do(self.client.mget(keys))
        hosts = [decode_host(v) for v in values if v is not None]
        return {h.id: h for h in hosts}

    async def delete_host(self, host_id: str) -> None:
        await self._do(self.client.delete(host_key(host_id)))
