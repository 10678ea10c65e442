"""The ``scheduler.v2`` persistent-cache RPCs (dfcache): who may call them, and their
errors as statuses; :class:`~.service.PersistentCacheService` does the work."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from google.protobuf import empty_pb2

from ...api import common_pb2, scheduler_pb2
from ...errors import DamselflyError, NotFound, PermissionDenied
from ...security.authz import HostAuthority, caller_of
from .service import Context, PeerRequest, PersistentCacheService, Req, Resp, status_for


class PersistentCacheRPCs:
    """The ``scheduler.v2.Scheduler`` persistent-cache methods; mixed into the scheduler's servicer.

    What changes a host's copies is the host's own call or an admin's (docs/SECURITY.md):
    a request's ``host_id``, or the host of the peer it names, must be the caller's."""

    persistent_cache: PersistentCacheService
    authority: HostAuthority

    async def _pc_call(
        self,
        context: Context,
        fn: Callable[[Req], Awaitable[Resp]],
        request: Req,
        *,
        acts_for: PeerRequest | None = None,
    ) -> Resp:
        """``fn(request)`` with its errors as statuses; ``acts_for``: a request that changes a
        host's copies, allowed to that host (or an admin) only."""
        try:
            if acts_for is not None:
                host_id = await self._acts_for(acts_for)
                self.authority.check_host(caller_of(context), host_id, "change persistent cache tasks")
            return await fn(request)
        except DamselflyError as e:
            await context.abort(status_for(e), str(e))
            raise AssertionError("unreachable") from e

    async def _acts_for(self, request: PeerRequest) -> str:
        return await self.persistent_cache.host_of(request.peer_id, request.host_id)

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
        await self._pc_call(context, self.persistent_cache.upload_started, request, acts_for=request)
        return empty_pb2.Empty()

    async def UploadPersistentCacheTaskFinished(
        self, request: scheduler_pb2.UploadPersistentCacheTaskFinishedRequest, context: Context
    ) -> common_pb2.PersistentCacheTask:
        return await self._pc_call(context, self.persistent_cache.upload_finished, request, acts_for=request)

    async def UploadPersistentCacheTaskFailed(
        self, request: scheduler_pb2.UploadPersistentCacheTaskFailedRequest, context: Context
    ) -> empty_pb2.Empty:
        try:
            self.authority.check_host(caller_of(context), await self._acts_for(request), "fail uploads")
            await self.persistent_cache.upload_failed(request)
        except NotFound:
            pass  # nothing to forget
        except DamselflyError as e:
            await context.abort(status_for(e), str(e))
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
        await self._pc_call(context, self.persistent_cache.delete_peer, request, acts_for=request)
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
            await context.abort(status_for(e), str(e))
        return empty_pb2.Empty()
