"""The ``dfdaemon.v2`` methods for task kinds this daemon does not run: cache and persistent tasks.

Both kinds are Dragonfly's; neither is a persistent *cache* task (dfcache,
:mod:`.persistent_cache`), which Damselfly does run. Each method answers as
the Rust dfdaemon answers (dragonfly-client/src/grpc/dfdaemon_{upload,download}.rs,
client commit ff17c0b7) for what it answers the same way on any host, and
says plainly what is missing where Dragonfly would go on:

* **Cache tasks** (``DownloadCacheTask``, ``StatCacheTask``, ``DeleteCacheTask``,
  ``SyncCachePieces``, ``DownloadCachePiece``): Dragonfly has no implementation
  (``todo!()``, upload.rs:2532-2590, download.rs:2268-2292); its release build
  aborts on panic (Cargo.toml ``[profile.release] panic = "abort"``), so the
  caller sees the connection drop and the daemon restart. Here: ``UNIMPLEMENTED``.
* **Persistent tasks** (object-storage files: ``DownloadPersistentTask``,
  ``UploadPersistentTask``, ``SyncPersistentPieces``, ``UpdatePersistentTask``,
  ``StatPersistentTask``, ``StatLocalPersistentTask``, ``ListLocalPersistentTasks``,
  ``DeletePersistentTask``): this daemon holds none and has no object-storage
  backend. Asked about one, it answers as a Rust dfdaemon holding none does:
  the list is empty, a delete is OK, a stat or update of an unknown task is
  ``INTERNAL "task <id> not found"``, its pieces ``INTERNAL "persistent task
  <id> not found"``; a download or upload is checked as Dragonfly checks it
  (``INVALID_ARGUMENT "missing object storage"``...) and then refused with
  ``UNIMPLEMENTED``, since no backend here could fetch or store it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NoReturn, TypeAlias

import grpc
from google.protobuf import empty_pb2

from ..api import dfdaemon_pb2

Context: TypeAlias = grpc.aio.ServicerContext

CACHE_TASKS = "cache tasks are not implemented by this daemon (nor by Dragonfly's dfdaemon)"
NO_OBJECT_STORAGE = "persistent tasks need an object-storage backend, which this daemon does not have"


async def _no_cache_tasks(context: Context) -> NoReturn:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, CACHE_TASKS)
    raise AssertionError("unreachable")


async def _not_held(context: Context, task_id: str) -> NoReturn:
    # Dragonfly's TaskNotFound, mapped to INTERNAL by every persistent-task handler.
    await context.abort(grpc.StatusCode.INTERNAL, f"task {task_id} not found")
    raise AssertionError("unreachable")


async def _refuse_transfer(request: Any, context: Context) -> NoReturn:
    """Dragonfly's checks on a persistent task's object storage (download.rs:1160-1180), then no backend."""
    if not request.HasField("object_storage"):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "missing object storage")
    storage = request.object_storage
    if not storage.HasField("region"):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "missing object storage region")
    if not storage.HasField("endpoint"):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "missing object storage endpoint")
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, NO_OBJECT_STORAGE)
    raise AssertionError("unreachable")


class _BothServices:
    """The methods both services have."""

    async def DownloadCacheTask(self, request: Any, context: Context) -> AsyncIterator[Any]:
        await _no_cache_tasks(context)
        yield  # an async generator: a server-streaming method

    async def StatCacheTask(self, request: Any, context: Context) -> Any:
        await _no_cache_tasks(context)

    async def DeleteCacheTask(self, request: Any, context: Context) -> Any:
        await _no_cache_tasks(context)

    async def DownloadPersistentTask(
        self, request: dfdaemon_pb2.DownloadPersistentTaskRequest, context: Context
    ) -> AsyncIterator[Any]:
        await _refuse_transfer(request, context)
        yield

    async def StatPersistentTask(
        self, request: dfdaemon_pb2.StatPersistentTaskRequest, context: Context
    ) -> Any:
        # Dragonfly asks its scheduler, and any failure is INTERNAL (upload.rs:1606-1650).
        await _not_held(context, request.task_id)


class UnsupportedTaskUploadRPCs(_BothServices):
    """``DfdaemonUpload``'s cache-task and persistent-task methods."""

    async def SyncCachePieces(self, request: Any, context: Context) -> AsyncIterator[Any]:
        await _no_cache_tasks(context)
        yield

    async def DownloadCachePiece(self, request: Any, context: Context) -> Any:
        await _no_cache_tasks(context)

    async def SyncPersistentPieces(
        self, request: dfdaemon_pb2.SyncPersistentPiecesRequest, context: Context
    ) -> AsyncIterator[Any]:
        # In the stream, as Dragonfly sends it (upload.rs:1691-1760).
        await context.abort(grpc.StatusCode.INTERNAL, f"persistent task {request.task_id} not found")
        yield

    async def UpdatePersistentTask(
        self, request: dfdaemon_pb2.UpdatePersistentTaskRequest, context: Context
    ) -> empty_pb2.Empty:
        if request.persistent:  # only then does Dragonfly look the task up (upload.rs:1559-1603)
            await _not_held(context, request.task_id)
        return empty_pb2.Empty()

    async def DeletePersistentTask(
        self, request: dfdaemon_pb2.DeletePersistentTaskRequest, context: Context
    ) -> empty_pb2.Empty:
        return empty_pb2.Empty()  # Dragonfly's delete cannot fail (upload.rs:1653-1684)


class UnsupportedTaskDownloadRPCs(_BothServices):
    """``DfdaemonDownload``'s cache-task and persistent-task methods."""

    async def UploadPersistentTask(
        self, request: dfdaemon_pb2.UploadPersistentTaskRequest, context: Context
    ) -> Any:
        await _refuse_transfer(request, context)

    async def StatLocalPersistentTask(
        self, request: dfdaemon_pb2.StatLocalPersistentTaskRequest, context: Context
    ) -> Any:
        await _not_held(context, request.task_id)

    async def ListLocalPersistentTasks(
        self, request: dfdaemon_pb2.ListLocalPersistentTasksRequest, context: Context
    ) -> dfdaemon_pb2.ListLocalPersistentTasksResponse:
        return dfdaemon_pb2.ListLocalPersistentTasksResponse()
