"""gRPC glue: the persistent-cache methods mixed into the daemon's servicers (daemon/service.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from ...api import dfdaemon_pb2
from ...errors import (
    NotFound,
    SchedulerError,
    StorageError,
)
from ..grpc_status import status_for
from .manager import PersistentCache

log = logging.getLogger(__name__)

PB = Any


def _status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    # dfcache has no origin to fall back to: a lost scheduler is "unavailable" here.
    if isinstance(exc, SchedulerError) and not isinstance(exc, NotFound):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, StorageError | OSError):
        return grpc.StatusCode.INTERNAL, f"storage: {exc}"
    return status_for(exc)


class _PersistentCacheRPCBase:
    persistent_cache: PersistentCache | None = None

    async def _pc(self, context: Any) -> PersistentCache:
        if self.persistent_cache is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "persistent cache is not available on this daemon"
            )
        assert self.persistent_cache is not None
        return self.persistent_cache

    async def _pc_download(self, request: PB, context: Any, *, remote: bool) -> AsyncIterator[PB]:
        pc = await self._pc(context)
        try:
            async for msg in pc.download(request, remote=remote):
                yield msg
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            log.info("persistent cache download failed: %s", e)
            await context.abort(*_status(e))

    async def _pc_unary(self, context: Any, fn: Callable[[PersistentCache], Any]) -> Any:
        pc = await self._pc(context)
        try:
            return await fn(pc)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            await context.abort(*_status(e))


class PersistentCacheDownloadRPCs(_PersistentCacheRPCBase):
    """``DfdaemonDownload`` persistent-cache methods (the local API dfcache uses)."""

    async def UploadPersistentCacheTask(self, request: PB, context: Any) -> PB:
        return await self._pc_unary(context, lambda pc: pc.import_file(request))

    async def DownloadPersistentCacheTask(self, request: PB, context: Any) -> AsyncIterator[PB]:
        async for msg in self._pc_download(request, context, remote=False):
            yield msg

    async def StatPersistentCacheTask(self, request: PB, context: Any) -> PB:
        return await self._pc_unary(context, lambda pc: pc.stat(request.task_id))

    async def DeletePersistentCacheTask(self, request: PB, context: Any) -> PB:
        from google.protobuf import empty_pb2

        await self._pc_unary(context, lambda pc: pc.delete(request.task_id))
        return empty_pb2.Empty()


class PersistentCacheUploadRPCs(_PersistentCacheRPCBase):
    """``DfdaemonUpload`` persistent-cache methods (the scheduler's replication and delete)."""

    async def DownloadPersistentCacheTask(self, request: PB, context: Any) -> AsyncIterator[PB]:
        async for msg in self._pc_download(request, context, remote=True):
            yield msg

    async def DeletePersistentCacheTask(self, request: PB, context: Any) -> PB:
        from google.protobuf import empty_pb2

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
    from google.protobuf import empty_pb2

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
