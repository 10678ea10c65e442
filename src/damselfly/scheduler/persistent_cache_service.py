"""Persistent cache tasks on the scheduler, the doing half: RPCs, replication, deletion, TTL.

:class:`PersistentCacheService` answers the ``scheduler.v2`` persistent-cache
RPCs against the :class:`~.persistent_cache.PersistentCacheRegistry` and
carries out the policy's decisions: it asks hosts for replicas
(``DfdaemonUpload.DownloadPersistentCacheTask``), fans deletes out
(``DfdaemonUpload.DeletePersistentCacheTask``), and expires tasks at their TTL.
:class:`PersistentCacheRPCs` is the mixin the scheduler's servicer inherits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeAlias, TypeVar

import grpc
from google.protobuf import empty_pb2

from ..api import cache_convert, common_pb2, convert, dfdaemon_pb2, dfdaemon_pb2_grpc, scheduler_pb2
from ..domain import PersistentCachePeerInfo, PersistentCacheTaskInfo
from ..errors import DamselflyError, InvalidArgument, NotFound, PermissionDenied, SchedulerError
from ..security.authz import HostAuthority, caller_of
from ..security.tls import TLSFiles
from .persistent_cache import (
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    UPLOADING,
    CachePeer,
    CacheTask,
    PersistentCacheRegistry,
    candidate_parents,
    expired_tasks,
    replica_hosts,
)
from .resources import Host, Resources
from .seed_client import daemon_channel

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

    Owns the replication calls in flight (one asyncio task per task and host)
    and the repair/expiry loop; :meth:`close` cancels them.
    """

    def __init__(
        self,
        res: Resources,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        interval: float = 5.0,
        tls: TLSFiles | None = None,
    ) -> None:
        self.res = res
        self.tls = tls  # the scheduler's mTLS files, for its calls to daemons
        self.clock = clock
        self.wall_clock = wall_clock
        self.interval = interval
        self.registry = PersistentCacheRegistry()
        self._replicating: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name="persistent-cache")

    async def close(self) -> None:
        tasks = list(self._replicating.values())
        if self._loop_task is not None:
            tasks.append(self._loop_task)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._replicating.clear()
        self._loop_task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except Exception:
                log.exception("persistent cache step failed")

    async def tick(self) -> None:
        """Expire tasks past their TTL (everywhere), then top up replicas that went missing."""
        for task_id in expired_tasks(self.registry, self.clock()):
            log.info("persistent cache task %s reached its TTL; removing it everywhere", task_id[:12])
            await self.delete_everywhere(task_id)
        for task in list(self.registry.tasks.values()):
            self.replicate(task)

    def forget_host(self, host_id: str) -> None:
        self.registry.forget_host(host_id)

    # -- replication ---------------------------------------------------------------

    def _busy_hosts(self, task_id: str) -> set[str]:
        return {h for (t, h) in self._replicating if t == task_id}

    def replicate(self, task: CacheTask) -> list[str]:
        """Ask the hosts :func:`replica_hosts` picks to fetch ``task``; returns their IDs."""
        chosen = replica_hosts(task, self.res.hosts, self._busy_hosts(task.id))
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
            task.failed_hosts.add(host.id)
            log.warning(
                "host %s could not replicate persistent cache task %s: %s %s",
                host.id, task.id[:12], e.code().name, e.details(),
            )  # fmt: skip

    # -- deletion --------------------------------------------------------------------

    async def delete_everywhere(self, task_id: str) -> list[str]:
        """Forget the task and ask every live host with a copy to delete it; returns those hosts."""
        task = self.registry.delete_task(task_id)
        if task is None:
            raise NotFound(f"persistent cache task {task_id} is not known to the scheduler")
        for (t, _h), job in list(self._replicating.items()):
            if t == task_id:
                job.cancel()
        hosts = [self.res.hosts[h] for h in {p.host_id for p in task.peers.values()} if h in self.res.hosts]
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

    def task_info(self, task: CacheTask) -> PersistentCacheTaskInfo:
        """The task with its live replica counts; times on the wall clock (daemons derive expiry)."""
        holders = task.holders(self.res.hosts)
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
            created_at=task.created_wall,
            updated_at=task.created_wall + (task.updated_at - task.created_at),
        )

    def peer_info(self, task: CacheTask, peer: CachePeer) -> PersistentCachePeerInfo:
        host = self.res.hosts.get(peer.host_id)
        return PersistentCachePeerInfo(
            id=peer.id,
            task=self.task_info(task),
            persistent=peer.persistent,
            state=peer.state,
            host=host.info if host is not None else None,
        )

    # -- the RPCs -----------------------------------------------------------------------

    def upload_started(self, request: scheduler_pb2.UploadPersistentCacheTaskStartedRequest) -> None:
        self.res.host(request.host_id)
        self.registry.upload_started(
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
            now=self.clock(),
            wall=self.wall_clock(),
        )

    def upload_finished(
        self, request: scheduler_pb2.UploadPersistentCacheTaskFinishedRequest
    ) -> common_pb2.PersistentCacheTask:
        task = self.registry.set_state(request.peer_id, SUCCEEDED, self.clock())
        chosen = self.replicate(task)
        log.info(
            "persistent cache task %s imported on %s; replicating to %s",
            task.id[:12],
            request.host_id,
            chosen,
        )
        return cache_convert.cache_task_to_pb(self.task_info(task))

    def upload_failed(self, request: scheduler_pb2.UploadPersistentCacheTaskFailedRequest) -> None:
        task, _ = self.registry.peer(request.peer_id)
        self.registry.remove_peer(request.peer_id)
        if not task.peers:
            self.registry.delete_task(task.id)

    def stat_task(
        self, request: scheduler_pb2.StatPersistentCacheTaskRequest
    ) -> common_pb2.PersistentCacheTask:
        return cache_convert.cache_task_to_pb(self.task_info(self.registry.task(request.task_id)))

    def stat_peer(
        self, request: scheduler_pb2.StatPersistentCachePeerRequest
    ) -> common_pb2.PersistentCachePeer:
        task, peer = self.registry.peer(request.peer_id)
        return cache_convert.cache_peer_to_pb(self.peer_info(task, peer))

    def delete_peer(self, request: scheduler_pb2.DeletePersistentCachePeerRequest) -> None:
        """Forget one peer; with no peer ID, whichever peer ``host_id`` has of ``task_id`` (daemon GC)."""
        if request.peer_id:
            self.registry.remove_peer(request.peer_id)
            return
        task = self.registry.tasks.get(request.task_id)
        if task is not None:
            for p in [p for p in task.peers.values() if p.host_id == request.host_id]:
                self.registry.remove_peer(p.id)

    def handle(
        self, request: scheduler_pb2.AnnouncePersistentCachePeerRequest
    ) -> scheduler_pb2.AnnouncePersistentCachePeerResponse | None:
        """One AnnouncePersistentCachePeerRequest; returns the answer to send, if any."""
        kind = request.WhichOneof("request")
        now = self.clock()
        if kind == "register_persistent_cache_peer_request":
            self.res.host(request.host_id)
            task = self.registry.task(request.task_id)
            if task.state != SUCCEEDED:
                raise SchedulerError(
                    f"persistent cache task {task.id} is still being imported ({task.state})"
                )
            msg = request.register_persistent_cache_peer_request
            peer = self.registry.add_peer(
                task, request.peer_id, request.host_id, persistent=msg.persistent, state=PENDING, now=now
            )
            return self._answer(task, peer)
        task, peer = self.registry.peer(request.peer_id)
        if kind == "download_persistent_cache_peer_started_request":
            self.registry.set_state(peer.id, RUNNING, now)
        elif kind == "download_piece_finished_request":
            peer.pieces += 1
            peer.updated_at = now
        elif kind == "download_piece_failed_request":
            msg = request.download_piece_failed_request
            if msg.parent_id and not msg.temporary:
                peer.blocked.add(msg.parent_id)
        elif kind == "reschedule_persistent_cache_peer_request":
            peer.blocked.update(
                p.id for p in request.reschedule_persistent_cache_peer_request.candidate_parents
            )
            return self._answer(task, peer)
        elif kind == "download_persistent_cache_peer_finished_request":
            self.registry.set_state(peer.id, SUCCEEDED, now)
        elif kind == "download_persistent_cache_peer_failed_request":
            self.registry.set_state(peer.id, FAILED, now)
            self.registry.remove_peer(peer.id)
        else:
            raise InvalidArgument(f"unexpected AnnouncePersistentCachePeerRequest {kind!r}")
        return None

    def _answer(self, task: CacheTask, peer: CachePeer) -> scheduler_pb2.AnnouncePersistentCachePeerResponse:
        if task.content_length == 0:
            return cache_convert.cache_answer_to_pb(None)
        parents = candidate_parents(task, peer, self.res.hosts)
        if not parents:
            raise SchedulerError(
                f"no live host holds persistent cache task {task.id} (it has no origin to fall back to)"
            )
        return cache_convert.cache_answer_to_pb([self.peer_info(task, p) for p in parents])

    def host_of(self, peer_id: str, host_id: str) -> str:
        """The host a known peer belongs to (whatever a request says), else ``host_id``."""
        task = self.registry.peer_index.get(peer_id)
        peer = task.peers.get(peer_id) if task is not None else None
        return peer.host_id if peer is not None else host_id

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
                    admit(self.host_of(request.peer_id, request.host_id))
                peer_id = request.peer_id
                answer = self.handle(request)
                if answer is not None:
                    await context.write(answer)
        except DamselflyError as e:
            self._stream_ended(peer_id)
            await context.abort(_status(e), str(e))
        except grpc.aio.AioRpcError:
            self._stream_ended(peer_id)
            return
        self._stream_ended(peer_id)

    def _stream_ended(self, peer_id: str) -> None:
        """A download that ends without finishing leaves no peer behind."""
        with contextlib.suppress(NotFound):
            _, peer = self.registry.peer(peer_id)
            if peer.state not in (SUCCEEDED, UPLOADING):
                self.registry.set_state(peer_id, FAILED, self.clock())
                self.registry.remove_peer(peer_id)


def _status(error: DamselflyError) -> grpc.StatusCode:
    if isinstance(error, NotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, SchedulerError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(error, PermissionDenied):
        return grpc.StatusCode.PERMISSION_DENIED
    return grpc.StatusCode.INTERNAL


class PersistentCacheRPCs:
    """The ``scheduler.v2.Scheduler`` persistent-cache methods; mixed into the scheduler's servicer.

    What changes a host's copies is the host's own call or an admin's (docs/SECURITY.md):
    a request's ``host_id``, or the host of the peer it names, must be the caller's."""

    persistent_cache: PersistentCacheService
    authority: HostAuthority

    async def _pc_call(
        self, context: Context, fn: Callable[[Req], Resp], request: Req, *, acts_for: str | None = None
    ) -> Resp:
        try:
            if acts_for is not None:
                self.authority.check_host(caller_of(context), acts_for, "change persistent cache tasks")
            return fn(request)
        except DamselflyError as e:
            await context.abort(_status(e), str(e))
            raise AssertionError("unreachable") from e

    def _acts_for(self, request: PeerRequest) -> str:
        return self.persistent_cache.host_of(request.peer_id, request.host_id)

    async def AnnouncePersistentCachePeer(
        self,
        request_iterator: AsyncIterator[scheduler_pb2.AnnouncePersistentCachePeerRequest],
        context: Context,
    ) -> None:
        caller = caller_of(context)

        def admit(host_id: str) -> None:
            self.authority.check_host(caller, host_id, "announce persistent cache peers")

        await self.persistent_cache.announce_peer(context, admit)

    async def UploadPersistentCacheTaskStarted(
        self, request: scheduler_pb2.UploadPersistentCacheTaskStartedRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._pc_call(
            context, self.persistent_cache.upload_started, request, acts_for=self._acts_for(request)
        )
        return empty_pb2.Empty()

    async def UploadPersistentCacheTaskFinished(
        self, request: scheduler_pb2.UploadPersistentCacheTaskFinishedRequest, context: Context
    ) -> common_pb2.PersistentCacheTask:
        return await self._pc_call(
            context, self.persistent_cache.upload_finished, request, acts_for=self._acts_for(request)
        )

    async def UploadPersistentCacheTaskFailed(
        self, request: scheduler_pb2.UploadPersistentCacheTaskFailedRequest, context: Context
    ) -> empty_pb2.Empty:
        try:
            self.authority.check_host(caller_of(context), self._acts_for(request), "fail uploads")
        except DamselflyError as e:
            await context.abort(_status(e), str(e))
        with contextlib.suppress(NotFound):
            self.persistent_cache.upload_failed(request)
        return empty_pb2.Empty()

    async def StatPersistentCacheTask(
        self, request: scheduler_pb2.StatPersistentCacheTaskRequest, context: Context
    ) -> common_pb2.PersistentCacheTask:
        return await self._pc_call(context, self.persistent_cache.stat_task, request)

    async def StatPersistentCachePeer(
        self, request: scheduler_pb2.StatPersistentCachePeerRequest, context: Context
    ) -> common_pb2.PersistentCachePeer:
        return await self._pc_call(context, self.persistent_cache.stat_peer, request)

    async def DeletePersistentCachePeer(
        self, request: scheduler_pb2.DeletePersistentCachePeerRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._pc_call(
            context, self.persistent_cache.delete_peer, request, acts_for=self._acts_for(request)
        )
        return empty_pb2.Empty()

    async def DeletePersistentCacheTask(
        self, request: scheduler_pb2.DeletePersistentCacheTaskRequest, context: Context
    ) -> empty_pb2.Empty:
        """Every copy goes: asked by a host that announced itself (``host_id`` is the caller's,
        as dfcache on any host of the cluster may), or by an admin."""
        try:
            caller = caller_of(context)
            if not (self.authority.owns(caller, request.host_id) or self.authority.is_admin(caller)):
                raise PermissionDenied(
                    f"{caller.describe()} may not delete persistent cache tasks as host {request.host_id}"
                )
            await self.persistent_cache.delete_everywhere(request.task_id)
        except DamselflyError as e:
            await context.abort(_status(e), str(e))
        return empty_pb2.Empty()
