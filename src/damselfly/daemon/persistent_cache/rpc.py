"""gRPC glue: the persistent-cache methods mixed into the daemon's servicers (daemon/service.py).

Requests become :mod:`damselfly.domain` types here (:mod:`damselfly.api.convert`)
and :class:`PersistentCache`'s answers become messages again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NoReturn, TypeAlias, TypeVar

import grpc
from google.protobuf import empty_pb2

from ...api import common_pb2, dfdaemon_pb2
from ...api.convert import cache_export_from_pb, cache_import_from_pb, cache_progress_to_pb, cache_task_to_pb
from ...errors import (
    NotFound,
    SchedulerError,
    StorageError,
)
from ..grpc_status import status_for
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

    async def _pc(self, context: Context) -> PersistentCache:
        if self.persistent_cache is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "persistent cache is not available on this daemon"
            )
        assert self.persistent_cache is not None
        return self.persistent_cache

    async def _pc_download(
        self, request: dfdaemon_pb2.DownloadPersistentCacheTaskRequest, context: Context, *, remote: bool
    ) -> AsyncIterator[dfdaemon_pb2.DownloadPersistentCacheTaskResponse]:
        pc = await self._pc(context)
        try:
            async for event in pc.download(cache_export_from_pb(request), remote=remote):
                yield cache_progress_to_pb(pc.host_id, event)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            log.info("persistent cache download failed: %s", e)
            await context.abort(*_status(e))

    async def _pc_unary(self, context: Context, fn: Callable[[PersistentCache], Awaitable[T]]) -> T:
        pc = await self._pc(context)
        try:
            return await fn(pc)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            await _abort(context, e)


class PersistentCacheDownloadRPCs(_PersistentCacheRPCBase):
    """``DfdaemonDownload`` persistent-cache methods (the local API dfcache uses)."""

    async def UploadPersistentCacheTask(
        self, request: dfdaemon_pb2.UploadPersistentCacheTaskRequest, context: Context
    ) -> common_pb2.PersistentCacheTask:
        task = await self._pc_unary(context, lambda pc: pc.import_file(cache_import_from_pb(request)))
        return cache_task_to_pb(task)

    async def DownloadPersistentCacheTask(
        self, request: dfdaemon_pb2.DownloadPersistentCacheTaskRequest, context: Context
    ) -> AsyncIterator[dfdaemon_pb2.DownloadPersistentCacheTaskResponse]:
        async for msg in self._pc_download(request, context, remote=False):
            yield msg

    async def StatPersistentCacheTask(
        self, request: dfdaemon_pb2.StatPersistentCacheTaskRequest, context: Context
    ) -> common_pb2.PersistentCacheTask:
        return cache_task_to_pb(await self._pc_unary(context, lambda pc: pc.stat(request.task_id)))

    async def DeletePersistentCacheTask(
        self, request: dfdaemon_pb2.DeletePersistentCacheTaskRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._pc_unary(context, lambda pc: pc.delete(request.task_id))
        return empty_pb2.Empty()


class PersistentCacheUploadRPCs(_PersistentCacheRPCBase):
    """``DfdaemonUpload`` persistent-cache methods (the scheduler's replication and delete)."""

    async def DownloadPersistentCacheTask(
        self, request: dfdaemon_pb2.DownloadPersistentCacheTaskRequest, context: Context
    ) -> AsyncIterator[dfdaemon_pb2.DownloadPersistentCacheTaskResponse]:
        async for msg in self._pc_download(request, context, remote=True):
            yield msg

    async def DeletePersistentCacheTask(
        self, request: dfdaemon_pb2.DeletePersistentCacheTaskRequest, context: Context
    ) -> empty_pb2.Empty:
        async def delete(pc: PersistentCache) -> None:
            if not await pc.delete_local(request.task_id):
                raise NotFound(f"persistent cache task {request.task_id} not found here")

        await self._pc_unary(context, delete)
        return empty_pb2.Empty()


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
