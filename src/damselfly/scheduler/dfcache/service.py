"""Persistent cache tasks on the scheduler, the doing half: RPCs, replication, deletion, TTL.

:class:`PersistentCacheService` answers the ``scheduler.v2`` persistent-cache
RPCs against a :class:`~..cachestore.PersistentCacheStore` (in-process, or
Redis when ``database.redis.url`` is set) and carries out the policy's decisions: it asks hosts for replicas
(``DfdaemonUpload.DownloadPersistentCacheTask``), fans deletes out
(``DfdaemonUpload.DeletePersistentCacheTask``), and expires tasks at their TTL.
:class:`~.rpc.PersistentCacheRPCs` (the mixin the scheduler's servicer inherits) calls it.

Long because: every RPC answer and the background work (replication, deletion,
TTL expiry) read and write the same store through the same few helpers and
share the table of replications in flight; the state changes and the policy
themselves are in :mod:`.state`, the storage in :mod:`..cachestore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TypeAlias, TypeVar

import grpc

from ...api import cache_convert, common_pb2, convert, dfdaemon_pb2, dfdaemon_pb2_grpc, scheduler_pb2
from ...domain import HostInfo, PersistentCachePeerInfo, PersistentCacheTaskInfo
from ...errors import (
    ConfigError,
    DamselflyError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SchedulerError,
    StoreUnavailable,
)
from ...security.tls import TLSFiles
from ..cachestore import PersistentCacheStore
from ..cachestore.memory import MemoryStore
from ..resources import Host, Resources
from ..seed_client import daemon_channel
from .state import (
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    UPLOADING,
    CachePeer,
    CacheTask,
    attach_peer,
    candidate_parents,
    expired_tasks,
    replica_hosts,
    set_peer_state,
    start_upload,
)

log = logging.getLogger(__name__)

Clock = Callable[[], float]
# grpc ships no type information: to mypy this is Any, to the reader the servicer's context.
Context: TypeAlias = grpc.aio.ServicerContext
Req = TypeVar("Req")
PeerRequest = (
    scheduler_pb2.UploadPersistentCacheTaskStartedRequest
    | scheduler_pb2.UploadPersistentCacheTaskFinishedRequest
    | scheduler_pb2.UploadPersistentCacheTaskFailedRequest
    | scheduler_pb2.DeletePersistentCachePeerRequest
)
Resp = TypeVar("Resp")

REPLICATE_TIMEOUT = 3600.0  # seconds a replica download may take
DELETE_TIMEOUT = 10.0  # seconds each host gets to delete its copy


# -- doing ---------------------------------------------------------------------


class PersistentCacheService:
    """Answers the persistent-cache RPCs and carries out replication, deletion and TTL expiry.

    Tasks live in ``store`` (:mod:`.cachestore`): each RPC reads what it needs,
    applies a state change of :mod:`.state`, and writes it back.
    Hosts count as alive when this scheduler knows them or the store does
    (another scheduler heard from them). Owns the replication calls in flight
    (one asyncio task per task and host), the store writes that follow host
    announcements, and the repair/expiry loop; :meth:`close` cancels them and
    closes the store.
    """

    def __init__(
        self,
        res: Resources,
        *,
        store: PersistentCacheStore | None = None,
        wall_clock: Clock = time.time,
        interval: float = 5.0,
        host_ttl: float = 180.0,
        upload_limits: tuple[int, int] = (200, 2000),
        tls: TLSFiles | None = None,
    ) -> None:
        self.res = res
        self.tls = tls  # the scheduler's mTLS files, for its calls to daemons
        self.wall_clock = wall_clock
        self.store = store if store is not None else MemoryStore(clock=wall_clock)
        self.interval = interval
        self.host_ttl = host_ttl
        self.upload_limits = upload_limits  # (normal, seed) hosts known only from the store
        self._replicating: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name="persistent-cache")

    async def close(self) -> None:
        tasks = list(self._replicating.values()) + list(self._background)
        if self._loop_task is not None:
            tasks.append(self._loop_task)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._replicating.clear()
        self._background.clear()
        self._loop_task = None
        await self.store.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except StoreUnavailable as e:
                log.warning("persistent cache step skipped: %s", e)
            except Exception:
                log.exception("persistent cache step failed")

    async def tick(self) -> None:
        """Expire tasks past their TTL (everywhere), then top up replicas that went missing."""
        tasks = await self.store.tasks()
        expired = set(expired_tasks(tasks, self.wall_clock()))
        for task_id in expired:
            log.info("persistent cache task %s reached its TTL; removing it everywhere", task_id[:12])
            with contextlib.suppress(NotFound):  # another scheduler sharing the store was first
                await self.delete_everywhere(task_id)
        hosts = await self.hosts()
        for task in tasks:
            if task.id not in expired:
                self.replicate(task, hosts)

    def _spawn(self, coro: Coroutine[object, object, None], name: str) -> None:
        t = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    async def open(self) -> None:
        """Check the store answers (a Redis server that cannot be reached stops the start)."""
        try:
            await self.store.ping()
        except StoreUnavailable as e:
            await self.store.close()
            raise ConfigError(f"cannot use database.redis.url: {e}") from None
        log.info("persistent cache tasks kept in %s", self.store.describe())

    # -- hosts ---------------------------------------------------------------------

    def host_announced(self, info: HostInfo) -> None:
        """A host announced itself here: record it as alive in the store (for other schedulers)."""
        self._spawn(self._put_host(info), f"pcache-host-{info.id[:12]}")

    async def _put_host(self, info: HostInfo) -> None:
        try:
            await self.store.put_host(info, self.host_ttl)
        except StoreUnavailable as e:
            log.warning("cannot record host %s: %s", info.id, e)

    def forget_host(self, host_id: str) -> None:
        """A host left (DeleteHost): its copies are gone; the store forgets it (in the background)."""
        self._spawn(self._forget_host(host_id), f"pcache-forget-{host_id[:12]}")

    async def _forget_host(self, host_id: str) -> None:
        try:
            await self.store.delete_host(host_id)
            for task in await self.store.tasks():
                for p in [p for p in task.peers.values() if p.host_id == host_id]:
                    await self.store.remove_peer(task.id, p.id)
        except StoreUnavailable as e:
            log.warning("cannot forget host %s in the store: %s", host_id, e)

    async def hosts(self) -> dict[str, Host]:
        """The hosts alive: this scheduler's, and those only the store knows (another scheduler's)."""
        hosts = dict(self.res.hosts)
        normal, seed = self.upload_limits
        for host_id, info in (await self.store.hosts()).items():
            if host_id not in hosts:
                limit = seed if info.type.is_seed else normal
                hosts[host_id] = Host(info=info, upload_limit=limit, last_announce=0.0)
        return hosts

    # -- reading and writing tasks ------------------------------------------------------

    async def task(self, task_id: str) -> CacheTask:
        task = await self.store.get_task(task_id)
        if task is None or task.expired(self.wall_clock()):
            raise NotFound(f"persistent cache task {task_id} is not known to the scheduler")
        return task

    async def peer(self, peer_id: str) -> tuple[CacheTask, CachePeer]:
        task_id = await self.store.task_of_peer(peer_id)
        task = await self.store.get_task(task_id) if task_id is not None else None
        if task is None or peer_id not in task.peers:
            raise NotFound(f"persistent cache peer {peer_id} is not known")
        return task, task.peers[peer_id]

    async def add_peer(
        self, task: CacheTask, peer_id: str, host_id: str, *, persistent: bool, state: str
    ) -> CachePeer:
        """Attach a peer (replacing the host's earlier one, and the peer's place in another task)."""
        old_task = await self.store.task_of_peer(peer_id)
        if old_task is not None and old_task != task.id:
            await self.store.remove_peer(old_task, peer_id)
        peer, replaced = attach_peer(
            task, peer_id, host_id, persistent=persistent, state=state, now=self.wall_clock()
        )
        for pid in replaced:
            await self.store.remove_peer(task.id, pid)
        await self.store.put_task(task)
        await self.store.put_peer(task, peer)
        return peer

    async def set_state(self, task: CacheTask, peer: CachePeer, state: str) -> None:
        set_peer_state(task, peer, state, self.wall_clock())
        await self.store.put_task(task)
        await self.store.put_peer(task, peer)

    async def remove_peer(self, task: CacheTask, peer_id: str) -> None:
        task.peers.pop(peer_id, None)
        await self.store.remove_peer(task.id, peer_id)

    # -- replication ---------------------------------------------------------------

    def _busy_hosts(self, task_id: str) -> set[str]:
        return {h for (t, h) in self._replicating if t == task_id}

    def replicate(self, task: CacheTask, hosts: dict[str, Host]) -> list[str]:
        """Ask the hosts :func:`replica_hosts` picks to fetch ``task``; returns their IDs."""
        chosen = replica_hosts(task, hosts, self._busy_hosts(task.id))
        for host in chosen:
            key = (task.id, host.id)
            t = asyncio.get_running_loop().create_task(
                self._replicate_to(task, host), name=f"pcache-replicate-{task.id[:12]}"
            )
            self._replicating[key] = t
            t.add_done_callback(self._replication_done(key))
        return [h.id for h in chosen]

    def _replication_done(self, key: tuple[str, str]) -> Callable[[asyncio.Task[None]], None]:
        def done(t: asyncio.Task[None]) -> None:
            if self._replicating.get(key) is t:
                del self._replicating[key]

        return done

    async def _replicate_to(self, task: CacheTask, host: Host) -> None:
        log.info("asking host %s for a replica of persistent cache task %s", host.id, task.id[:12])
        request = dfdaemon_pb2.DownloadPersistentCacheTaskRequest(
            task_id=task.id, persistent=True, tag=task.tag or None, application=task.application or None
        )
        try:
            async with daemon_channel(host.info, self.tls) as channel:
                stub = dfdaemon_pb2_grpc.DfdaemonUploadStub(channel)
                async for _ in stub.DownloadPersistentCacheTask(request, timeout=REPLICATE_TIMEOUT):
                    pass
            log.info("host %s holds a replica of persistent cache task %s", host.id, task.id[:12])
        except grpc.aio.AioRpcError as e:
            log.warning(
                "host %s could not replicate persistent cache task %s: %s %s",
                host.id, task.id[:12], e.code().name, e.details(),
            )  # fmt: skip
            with contextlib.suppress(StoreUnavailable):
                now = await self.store.get_task(task.id)
                if now is not None:
                    now.failed_hosts.add(host.id)
                    await self.store.put_task(now)

    # -- deletion --------------------------------------------------------------------

    async def delete_everywhere(self, task_id: str) -> list[str]:
        """Forget the task and ask every live host with a copy to delete it; returns those hosts."""
        task = await self.store.delete_task(task_id)
        if task is None:
            raise NotFound(f"persistent cache task {task_id} is not known to the scheduler")
        for (t, _h), job in list(self._replicating.items()):
            if t == task_id:
                job.cancel()
        alive = await self.hosts()
        hosts = [alive[h] for h in {p.host_id for p in task.peers.values()} if h in alive]
        await asyncio.gather(*(self._delete_on(h, task_id) for h in hosts))
        return [h.id for h in hosts]

    async def _delete_on(self, host: Host, task_id: str) -> None:
        try:
            async with daemon_channel(host.info, self.tls) as channel:
                stub = dfdaemon_pb2_grpc.DfdaemonUploadStub(channel)
                await stub.DeletePersistentCacheTask(
                    dfdaemon_pb2.DeletePersistentCacheTaskRequest(task_id=task_id), timeout=DELETE_TIMEOUT
                )
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                log.warning(
                    "host %s could not delete persistent cache task %s: %s %s",
                    host.id, task_id[:12], e.code().name, e.details(),
                )  # fmt: skip

    # -- what the messages say ------------------------------------------------------------

    @staticmethod
    def task_info(task: CacheTask, hosts: dict[str, Host]) -> PersistentCacheTaskInfo:
        """The task with its live replica counts; times on the wall clock (daemons derive expiry)."""
        holders = task.holders(hosts)
        return PersistentCacheTaskInfo(
            id=task.id,
            persistent_replica_count=task.replica_count,
            current_persistent_replica_count=sum(1 for p in holders if p.persistent),
            current_replica_count=len(holders),
            tag=task.tag,
            application=task.application,
            piece_length=task.piece_length,
            content_length=task.content_length,
            piece_count=task.piece_count,
            state=task.state,
            ttl_s=task.ttl,
            created_at=task.created_at,
            updated_at=task.updated_at,
        )

    def peer_info(self, task: CacheTask, peer: CachePeer, hosts: dict[str, Host]) -> PersistentCachePeerInfo:
        host = hosts.get(peer.host_id)
        return PersistentCachePeerInfo(
            id=peer.id,
            task=self.task_info(task, hosts),
            persistent=peer.persistent,
            state=peer.state,
            host=host.info if host is not None else None,
        )

    # -- the RPCs -----------------------------------------------------------------------

    async def upload_started(self, request: scheduler_pb2.UploadPersistentCacheTaskStartedRequest) -> None:
        host = self.res.host(request.host_id)
        task = start_upload(
            await self.store.get_task(request.task_id),
            task_id=request.task_id,
            host_id=request.host_id,
            peer_id=request.peer_id,
            replica_count=request.persistent_replica_count,
            tag=request.tag,
            application=request.application,
            piece_length=request.piece_length,
            content_length=request.content_length,
            piece_count=request.piece_count,
            ttl=convert.seconds(request.ttl) if request.HasField("ttl") else 0.0,
            now=self.wall_clock(),
        )
        await self.store.put_host(host.info, self.host_ttl)
        await self.add_peer(task, request.peer_id, request.host_id, persistent=True, state=UPLOADING)

    async def upload_finished(
        self, request: scheduler_pb2.UploadPersistentCacheTaskFinishedRequest
    ) -> common_pb2.PersistentCacheTask:
        task, peer = await self.peer(request.peer_id)
        await self.set_state(task, peer, SUCCEEDED)
        hosts = await self.hosts()
        chosen = self.replicate(task, hosts)
        log.info(
            "persistent cache task %s imported on %s; replicating to %s",
            task.id[:12],
            request.host_id,
            chosen,
        )
        return cache_convert.cache_task_to_pb(self.task_info(task, hosts))

    async def upload_failed(self, request: scheduler_pb2.UploadPersistentCacheTaskFailedRequest) -> None:
        task, _ = await self.peer(request.peer_id)
        await self.remove_peer(task, request.peer_id)
        if not task.peers:
            await self.store.delete_task(task.id)

    async def stat_task(
        self, request: scheduler_pb2.StatPersistentCacheTaskRequest
    ) -> common_pb2.PersistentCacheTask:
        task = await self.task(request.task_id)
        return cache_convert.cache_task_to_pb(self.task_info(task, await self.hosts()))

    async def stat_peer(
        self, request: scheduler_pb2.StatPersistentCachePeerRequest
    ) -> common_pb2.PersistentCachePeer:
        task, peer = await self.peer(request.peer_id)
        return cache_convert.cache_peer_to_pb(self.peer_info(task, peer, await self.hosts()))

    async def delete_peer(self, request: scheduler_pb2.DeletePersistentCachePeerRequest) -> None:
        """Forget one peer; with no peer ID, whichever peer ``host_id`` has of ``task_id`` (daemon GC)."""
        if request.peer_id:
            with contextlib.suppress(NotFound):
                task, _ = await self.peer(request.peer_id)
                await self.remove_peer(task, request.peer_id)
            return
        found = await self.store.get_task(request.task_id)
        if found is not None:
            for p in [p for p in found.peers.values() if p.host_id == request.host_id]:
                await self.remove_peer(found, p.id)

    async def handle(
        self, request: scheduler_pb2.AnnouncePersistentCachePeerRequest
    ) -> scheduler_pb2.AnnouncePersistentCachePeerResponse | None:
        """One AnnouncePersistentCachePeerRequest; returns the answer to send, if any."""
        kind = request.WhichOneof("request")
        if kind == "register_persistent_cache_peer_request":
            self.res.host(request.host_id)
            task = await self.task(request.task_id)
            if task.state != SUCCEEDED:
                raise SchedulerError(
                    f"persistent cache task {task.id} is still being imported ({task.state})"
                )
            msg = request.register_persistent_cache_peer_request
            peer = await self.add_peer(
                task, request.peer_id, request.host_id, persistent=msg.persistent, state=PENDING
            )
            return await self._answer(task, peer)
        task, peer = await self.peer(request.peer_id)
        if kind == "download_persistent_cache_peer_started_request":
            await self.set_state(task, peer, RUNNING)
        elif kind == "download_piece_finished_request":
            peer.pieces += 1
            peer.updated_at = self.wall_clock()
            await self.store.put_peer(task, peer)
        elif kind == "download_piece_failed_request":
            msg = request.download_piece_failed_request
            if msg.parent_id and not msg.temporary:
                peer.blocked.add(msg.parent_id)
                await self.store.put_peer(task, peer)
        elif kind == "reschedule_persistent_cache_peer_request":
            peer.blocked.update(
                p.id for p in request.reschedule_persistent_cache_peer_request.candidate_parents
            )
            await self.store.put_peer(task, peer)
            return await self._answer(task, peer)
        elif kind == "download_persistent_cache_peer_finished_request":
            await self.set_state(task, peer, SUCCEEDED)
        elif kind == "download_persistent_cache_peer_failed_request":
            await self.set_state(task, peer, FAILED)
            await self.remove_peer(task, peer.id)
        else:
            raise InvalidArgument(f"unexpected AnnouncePersistentCachePeerRequest {kind!r}")
        return None

    async def _answer(
        self, task: CacheTask, peer: CachePeer
    ) -> scheduler_pb2.AnnouncePersistentCachePeerResponse:
        if task.content_length == 0:
            return cache_convert.cache_answer_to_pb(None)
        hosts = await self.hosts()
        parents = candidate_parents(task, peer, hosts)
        if not parents:
            raise SchedulerError(
                f"no live host holds persistent cache task {task.id} (it has no origin to fall back to)"
            )
        return cache_convert.cache_answer_to_pb([self.peer_info(task, p, hosts) for p in parents])

    async def host_of(self, peer_id: str, host_id: str) -> str:
        """The host a known peer belongs to (whatever a request says), else ``host_id``."""
        try:
            _, peer = await self.peer(peer_id)
        except NotFound:
            return host_id
        return peer.host_id

    async def announce_peer(self, context: Context, admit: Callable[[str], None] | None = None) -> None:
        """One AnnouncePersistentCachePeer stream; ``admit(host_id)`` raises when the caller may not
        speak for the host of a request (authz.HostAuthority.check_host)."""
        peer_id = ""
        try:
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    break
                if admit is not None:
                    admit(await self.host_of(request.peer_id, request.host_id))
                peer_id = request.peer_id
                answer = await self.handle(request)
                if answer is not None:
                    await context.write(answer)
        except DamselflyError as e:
            await self._stream_ended(peer_id)
            await context.abort(status_for(e), str(e))
        except grpc.aio.AioRpcError:
            await self._stream_ended(peer_id)
            return
        await self._stream_ended(peer_id)

    async def _stream_ended(self, peer_id: str) -> None:
        """A download that ends without finishing leaves no peer behind."""
        with contextlib.suppress(NotFound, StoreUnavailable):
            task, peer = await self.peer(peer_id)
            if peer.state not in (SUCCEEDED, UPLOADING):
                await self.set_state(task, peer, FAILED)
                await self.remove_peer(task, peer_id)


def status_for(error: DamselflyError) -> grpc.StatusCode:
    if isinstance(error, StoreUnavailable):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(error, NotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, SchedulerError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(error, PermissionDenied):
        return grpc.StatusCode.PERMISSION_DENIED
    return grpc.StatusCode.INTERNAL
