"""The persistent cache store, the same tests against both implementations.

``memory``: the in-process store; ``redis``: :class:`RedisStore` against a real
redis-server (tests/helpers/redis_server.py), once over TCP with a password in
the URL and once over the unix socket.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import pytest

from damselfly.domain import HostInfo, HostType
from damselfly.errors import ConfigError, StoreUnavailable
from damselfly.scheduler.cachestore import PersistentCacheStore, open_store, redacted
from damselfly.scheduler.cachestore.base import EXPIRY_GRACE
from damselfly.scheduler.cachestore.memory import MemoryStore
from damselfly.scheduler.cachestore.redis_store import RedisStore
from damselfly.scheduler.dfcache.state import SUCCEEDED, UPLOADING, CacheTask, attach_peer
from helpers.processes import closed_port
from helpers.redis_server import RedisServer, redis_server
from helpers.wait import until


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(params=["memory", "redis-tcp", "redis-unix"])
async def store(request: pytest.FixtureRequest, redis: RedisServer) -> AsyncIterator[PersistentCacheStore]:
    if request.param == "memory":
        s: PersistentCacheStore = MemoryStore(clock=time.time)
    else:
        s = open_store(redis.url if request.param == "redis-tcp" else redis.unix_url, clock=time.time)
        assert isinstance(s, RedisStore)
        await s.client.flushdb()
    await s.ping()
    try:
        yield s
    finally:
        await s.close()


def a_task(task_id: str = "t" * 64, *, ttl: float = 3600.0, created: float | None = None) -> CacheTask:
    now = time.time() if created is None else created
    return CacheTask(
        id=task_id, replica_count=2, tag="tag", application="app", piece_length=4096, content_length=10_000,
        piece_count=3, ttl=ttl, created_at=now, updated_at=now, state=UPLOADING,
    )  # fmt: skip


def a_host(host_id: str, **kw: object) -> HostInfo:
    return HostInfo(id=host_id, hostname=f"h-{host_id}", ip="10.0.0.1", port=4000, download_port=4001, **kw)  # type: ignore[arg-type]


async def test_a_task_and_its_peers_come_back_as_written(store: PersistentCacheStore) -> None:
    task = a_task()
    task.failed_hosts.add("h9")
    await store.put_task(task)
    peer, _ = attach_peer(task, "p1", "h1", persistent=True, state=UPLOADING, now=task.created_at)
    peer.blocked.add("p0")
    peer.pieces = 2
    await store.put_peer(task, peer)
    got = await store.get_task(task.id)
    assert got is not None and got is not task
    assert (got.id, got.replica_count, got.tag, got.application, got.ttl, got.state) == (
        task.id, 2, "tag", "app", 3600.0, UPLOADING,
    )  # fmt: skip
    assert got.failed_hosts == {"h9"} and got.created_at == task.created_at
    assert set(got.peers) == {"p1"}
    p = got.peers["p1"]
    assert (p.host_id, p.persistent, p.state, p.blocked, p.pieces) == ("h1", True, UPLOADING, {"p0"}, 2)
    assert await store.task_of_peer("p1") == task.id
    assert [t.id for t in await store.tasks()] == [task.id]


async def test_a_change_is_kept_only_once_written_back(store: PersistentCacheStore) -> None:
    task = a_task()
    await store.put_task(task)
    read = await store.get_task(task.id)
    assert read is not None
    read.state = SUCCEEDED
    assert (await store.get_task(task.id)).state == UPLOADING  # type: ignore[union-attr]
    await store.put_task(read)
    assert (await store.get_task(task.id)).state == SUCCEEDED  # type: ignore[union-attr]


async def test_peers_are_removed_one_by_one_and_with_their_task(store: PersistentCacheStore) -> None:
    task = a_task()
    await store.put_task(task)
    for i in range(3):
        peer, _ = attach_peer(task, f"p{i}", f"h{i}", persistent=False, state="Running", now=1.0)
        await store.put_peer(task, peer)
    await store.remove_peer(task.id, "p1")
    assert set((await store.get_task(task.id)).peers) == {"p0", "p2"}  # type: ignore[union-attr]
    assert await store.task_of_peer("p1") is None
    deleted = await store.delete_task(task.id)
    assert deleted is not None and set(deleted.peers) == {"p0", "p2"}
    assert await store.get_task(task.id) is None
    assert await store.task_of_peer("p0") is None
    assert await store.tasks() == []
    assert await store.delete_task(task.id) is None


async def test_a_peer_written_after_its_task_was_deleted_does_not_bring_it_back(
    store: PersistentCacheStore,
) -> None:
    task = a_task()
    await store.put_task(task)
    await store.delete_task(task.id)
    peer, _ = attach_peer(task, "late", "h1", persistent=False, state="Running", now=1.0)
    await store.put_peer(task, peer)
    assert await store.get_task(task.id) is None
    assert await store.task_of_peer("late") is None
    assert await store.tasks() == []


async def test_a_task_past_its_ttl_and_grace_is_dropped_by_the_store(store: PersistentCacheStore) -> None:
    now = time.time()
    gone = a_task("g" * 64, ttl=60, created=now - 60 - EXPIRY_GRACE - 1)  # dropped a second ago
    grace = a_task("r" * 64, ttl=60, created=now - 61)  # expired, but within the grace
    forever = a_task("f" * 64, ttl=0, created=now - 10 * EXPIRY_GRACE)  # no TTL
    for t in (gone, grace, forever):
        await store.put_task(t)
        peer, _ = attach_peer(t, f"peer-{t.id[:1]}", "h1", persistent=True, state=SUCCEEDED, now=now)
        await store.put_peer(t, peer)
    assert await store.get_task(gone.id) is None
    assert await store.task_of_peer("peer-g") is None
    kept = await store.get_task(grace.id)
    assert kept is not None and kept.expired(now)  # readable, so a scheduler can delete the copies
    assert await store.task_of_peer("peer-f") == forever.id
    assert {t.id for t in await store.tasks()} == {grace.id, forever.id}


async def test_hosts_live_for_their_ttl_and_can_leave(store: PersistentCacheStore) -> None:
    await store.put_host(a_host("h1", type=HostType.SUPER_SEED, idc="dc1", max_tx_bandwidth=10), 60.0)
    await store.put_host(a_host("h2"), 0.2)
    await store.put_host(a_host("h3"), 60.0)
    hosts = await store.hosts()
    assert set(hosts) == {"h1", "h2", "h3"}
    assert hosts["h1"] == a_host("h1", type=HostType.SUPER_SEED, idc="dc1", max_tx_bandwidth=10)
    await store.delete_host("h3")

    async def h2_gone() -> bool:
        return "h2" not in await store.hosts()

    await until(h2_gone, "h2 to expire")
    assert set(await store.hosts()) == {"h1"}  # h2 stopped announcing, h3 left


def test_the_url_is_checked_and_shown_without_credentials() -> None:
    assert redacted("redis://user:s3cret@db.example:6380/2") == "redis://***@db.example:6380/2"
    assert redacted("redis://:s3cret@127.0.0.1:6379/0") == "redis://***@127.0.0.1:6379/0"
    assert redacted("unix:///run/redis.sock?db=1&password=s3cret") == "unix:///run/redis.sock?db=1"
    assert redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    with pytest.raises(ConfigError, match=r"redis://, rediss:// or unix://") as e:
        open_store("http://user:s3cret@x:1/", clock=time.time)
    assert "s3cret" not in str(e.value)
    assert isinstance(open_store("", clock=time.time), MemoryStore)


async def test_an_unreachable_redis_is_a_clear_error_without_the_password() -> None:
    store = open_store(f"redis://:s3cret@127.0.0.1:{closed_port()}/0", clock=time.time)
    try:
        with pytest.raises(StoreUnavailable) as e:
            await store.get_task("x")
        assert "s3cret" not in str(e.value) and "127.0.0.1" in str(e.value)
    finally:
        await store.close()
