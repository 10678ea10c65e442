"""gRPC glue: the persistent-cache methods mixed into the daemon's servicers (daemon/service.py).

Requests become :mod:`damselfly.domain` types here (:mod:`damselfly.api.convert`)
and :class:`PersistentCache`'s answers become messages again.

The local API (dfcache, ``damselfly cache``) keeps Damselfly's statuses
(``NOT_FOUND`` for an unknown task...). What only Dragonfly's tools and peers
call answers as the Rust dfdaemon does (dragonfly-client/src/grpc/dfdaemon_{upload,download}.rs,
client commit ff17c0b7): ``UpdatePersistentCacheTask`` and ``StatPersistentCacheTask``
on the upload service, ``StatLocalPersistentCacheTask`` and
``ListLocalPersistentCacheTasks`` on the local one, every failure ``INTERNAL``; the
upload service's ``DeletePersistentCacheTask`` is always OK (upload.rs:2264-2296).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import NoReturn, TypeAlias, TypeVar

import grpc
from google.protobuf import empty_pb2

from ...api import common_pb2, dfdaemon_pb2
from ...api.cache_convert import (
    cache_export_from_pb,
    cache_import_from_pb,
    cache_progress_to_pb,
    cache_task_to_pb,
)
from ...api.convert import duration, timestamp
from ...errors import (
    NotFound,
    SchedulerError,
    StorageError,
)
from ...security.authz import SchedulerGate, require_scheduler
from ..grpc_status import status_for, write_stream
from ..store.metadata import TaskMeta
from .manager import PersistentCache

log = logging.getLogger(__name__)

T = TypeVar("T")
# grpc ships no type information: to mypy this is Any, to the reader the servicer's context.
Context: TypeAlias = grpc.aio.ServicerContext


def _status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    # dfcache has no origin to fall back to: a lost scheduler is "unavailable" here.
    if isinstance(exc, SchedulerError) and not isinstance(exc, NotFound):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, StorageError | OSError):
        return grpc.StatusCode.INTERNAL, f"storage: {exc}"
    return status_for(exc)


async def _abort(context: Context, exc: BaseException) -> NoReturn:
    await context.abort(*_status(exc))
    raise AssertionError("unreachable")


class _PersistentCacheRPCBase:
    """What both servicers share; each is built with its :class:`PersistentCache` (None: not available)."""

    persistent_cache: PersistentCache | None
    _uploaded: Mapping[str, int] = {}  # pieces sent to children, per task (the servicer's, if it counts)

    async def _pc(self, context: Context) -> PersistentCache:
        if self.persistent_cache is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "persistent cache is not available on this daemon"
            )
        assert self.persistent_cache is not None
        return self.persistent_cache

    async def _pc_download(
        self, request: dfdaemon_pb2.DownloadPersistentCacheTaskRequest, context: Context, *, remote: bool
    ) -> AsyncGenerator[dfdaemon_pb2.DownloadPersistentCacheTaskResponse, None]:
        pc = await self._pc(context)
        try:
            download = pc.download(cache_export_from_pb(request), remote=remote)
            async with contextlib.aclosing(download) as events:
                async for event in events:
                    yield cache_progress_to_pb(pc.host_id, event)
        except Exception as e:  # not a caller gone (GeneratorExit, cancel): nobody to answer then
            log.info("persistent cache download failed: %s", e)
            await context.abort(*_status(e))

    async def _pc_unary(
        self, context: Context, fn: Callable[[PersistentCache], Awaitable[T]], *, internal: bool = False
    ) -> T:
        """``fn``'s answer; a failure ends the call with Damselfly's status (``internal``: INTERNAL, as
        Dragonfly ends every persistent cache call that fails)."""
        pc = await self._pc(context)
        try:
            return await fn(pc)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            if internal:
                await context.abort(grpc.StatusCode.INTERNAL, str(e))
            await _abort(context, e)

    def _local_pb(
        self, pc: PersistentCache, meta: TaskMeta
    ) -> dfdaemon_pb2.StatLocalPersistentCacheTaskResponse:
        pb = dfdaemon_pb2.StatLocalPersistentCacheTaskResponse(
            task_id=meta.task_id,
            persistent=meta.persistent,
            ttl=duration(max(0.0, meta.expires_at - meta.created_at) if meta.expires_at else 0.0),
            piece_length=meta.piece_length or 0,
            content_length=meta.content_length or 0,
            uploading_count=pc.store.pin_count(meta.task_id),
            uploaded_count=self._uploaded.get(meta.task_id, 0),
            created_at=timestamp(meta.created_at),
            updated_at=timestamp(meta.updated_at),
        )
        if meta.state == "succeeded":
            pb.finished_at.CopyFrom(timestamp(meta.updated_at))
        elif meta.state == "failed":
            pb.failed_at.CopyFrom(timestamp(meta.updated_at))
        return pb


class PersistentCacheDownloadRPCs(_PersistentCacheRPCBase):
    """``DfdaemonDownload`` persistent-cache methods (the local API dfcache uses)."""

    async def UploadPersistentCacheTask(
        self, request: dfdaemon_pb2.UploadPersistentCacheTaskRequest, context: Context
    ) -> common_pb2.PersistentCacheTask:
        task = await self._pc_unary(context, lambda pc: pc.import_file(cache_import_from_pb(request)))
        return cache_task_to_pb(task)

    async def DownloadPersistentCacheTask(
        self, request: dfdaemon_pb2.DownloadPersistentCacheTaskRequest, context: Context
    ) -> None:
        await write_stream(context, self._pc_download(request, context, remote=False))

    async def StatPersistentCacheTask(
        self, request: dfdaemon_pb2.StatPersistentCacheTaskRequest, context: Context
    ) -> common_pb2.PersistentCacheTask:
        return cache_task_to_pb(await self._pc_unary(context, lambda pc: pc.stat(request.task_id)))

    async def DeletePersistentCacheTask(
        self, request: dfdaemon_pb2.DeletePersistentCacheTaskRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._pc_unary(context, lambda pc: pc.delete(request.task_id))
        return empty_pb2.Empty()

    async def StatLocalPersistentCacheTask(
        self, request: dfdaemon_pb2.StatLocalPersistentCacheTaskRequest, context: Context
    ) -> dfdaemon_pb2.StatLocalPersistentCacheTaskResponse:
        """This host's copy; unknown: ``INTERNAL "task <id> not found"`` (download.rs:2170-2218)."""
        pc = await self._pc(context)
        meta = pc.store.get(request.task_id)
        if meta is None or not meta.persistent_cache:
            await context.abort(grpc.StatusCode.INTERNAL, f"task {request.task_id} not found")
        assert meta is not None
        return self._local_pb(pc, meta)

    async def ListLocalPersistentCacheTasks(
        self, request: dfdaemon_pb2.ListLocalPersistentCacheTasksRequest, context: Context
    ) -> dfdaemon_pb2.ListLocalPersistentCacheTasksResponse:
        pc = await self._pc(context)
        held = [m for m in pc.store.tasks() if m.persistent_cache]
        return dfdaemon_pb2.ListLocalPersistentCacheTasksResponse(tasks=[self._local_pb(pc, m) for m in held])


class PersistentCacheUploadRPCs(_PersistentCacheRPCBase):
    """``DfdaemonUpload`` persistent-cache methods (the scheduler's replication and delete:
    the download, delete and update are for this daemon's schedulers only)."""

    scheduler_gate: SchedulerGate | None = None

    async def DownloadPersistentCacheTask(
        self, request: dfdaemon_pb2.DownloadPersistentCacheTaskRequest, context: Context
    ) -> None:
        await require_scheduler(self.scheduler_gate, context)
        await write_stream(context, self._pc_download(request, context, remote=True))

    async def DeletePersistentCacheTask(
        self, request: dfdaemon_pb2.DeletePersistentCacheTaskRequest, context: Context
    ) -> empty_pb2.Empty:
        # OK whether this host held a copy or not, as Dragonfly's (its scheduler asks every holder).
        await require_scheduler(self.scheduler_gate, context)
        await self._pc_unary(context, lambda pc: pc.delete_local(request.task_id))
        return empty_pb2.Empty()

    async def UpdatePersistentCacheTask(
        self, request: dfdaemon_pb2.UpdatePersistentCacheTaskRequest, context: Context
    ) -> empty_pb2.Empty:
        """``persistent``: keep this host's copy from eviction until it expires (upload.rs:2170-2215)."""
        await require_scheduler(self.scheduler_gate, context)
        if request.persistent:
            pc = await self._pc(context)
            meta = pc.store.get(request.task_id)
            if meta is None or not meta.persistent_cache:
                await context.abort(grpc.StatusCode.INTERNAL, f"task {request.task_id} not found")
            assert meta is not None
            pc.store.set_persistent_cache(meta.task_id, persistent=True, expires_at=meta.expires_at)
        return empty_pb2.Empty()

    async def StatPersistentCacheTask(
        self, request: dfdaemon_pb2.StatPersistentCacheTaskRequest, context: Context
    ) -> common_pb2.PersistentCacheTask:
        """The scheduler's view of the task (this host's when the scheduler does not know it)."""
        task = await self._pc_unary(context, lambda pc: pc.stat(request.task_id), internal=True)
        return cache_task_to_pb(task)


def local_delete_handler(servicer: PersistentCacheDownloadRPCs) -> grpc.GenericRpcHandler:
    """``/dfdaemon.v2.DfdaemonDownload/DeletePersistentCacheTask`` for the unix socket.

    The dragonfly-api version we use has ``DeletePersistentCacheTask`` only on
    ``DfdaemonUpload``; the local API gets the same method (same messages)
    under ``DfdaemonDownload`` so ``damselfly cache delete`` talks to its own
    daemon like every other dfcache command.
    """
    return grpc.method_handlers_generic_handler(
        "dfdaemon.v2.DfdaemonDownload",
        {
            "DeletePersistentCacheTask": grpc.unary_unary_rpc_method_handler(
                servicer.DeletePersistentCacheTask,
                request_deserializer=dfdaemon_pb2.DeletePersistentCacheTaskRequest.FromString,
                response_serializer=empty_pb2.Empty.SerializeToString,
            )
        },
    )
