"""The daemon's gRPC services: ``DfdaemonDownload`` (local, unix socket) and ``DfdaemonUpload`` (peers).

Protobuf is translated at this edge; the work is done by the
:class:`TaskManager`, the :class:`PieceStore` and :mod:`damselfly.daemon.download.output`;
``DownloadTask``, which both services answer, is :class:`.download_rpc.Downloads`.
Every method of dragonfly-api 2.3.8's two services answers, each as the Rust
dfdaemon does (docs/INTEROP.md §3.1-3.2, §6.3, §6.7): the persistent cache
(dfcache) in :mod:`.persistent_cache`, the task kinds this daemon does not run
in :mod:`.unsupported_tasks_rpc`, the rest here.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TypeAlias

import grpc
from google.protobuf import empty_pb2

from .. import tracing
from ..api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc
from ..api.convert import local_task_to_pb, task_to_pb
from ..errors import (
    DamselflyError,
    InvalidArgument,
    NotFound,
)
from ..security.authz import SchedulerGate, require_scheduler
from .download_rpc import (
    Downloads,
    local_task_info,
    store_report,
    task_info,
)
from .grpc_status import write_stream
from .host_network import NetworkMonitor
from .persistent_cache import PersistentCache, PersistentCacheDownloadRPCs, PersistentCacheUploadRPCs
from .ratelimit import RequestLimiter
from .store.metadata import TaskMeta
from .transfer.announce import TaskFailed, announcements
from .transfer.peer_rpc import EXTENSIONS_METADATA, says_extensions
from .unsupported_tasks_rpc import UnsupportedTaskDownloadRPCs, UnsupportedTaskUploadRPCs

log = logging.getLogger(__name__)

# StatLocalTask / ListLocalTasks trailer: JSON with per-task disk bytes, state, last access.
STORE_TRAILER = "x-damselfly-store"

STAT_WAIT = 5.0  # how long StatTask waits for a running task to learn its content length

# grpc ships no type information: to mypy this is Any, to the reader the servicer's context.
Context: TypeAlias = grpc.aio.ServicerContext


class DownloadService(
    UnsupportedTaskDownloadRPCs,
    PersistentCacheDownloadRPCs,
    dfdaemon_pb2_grpc.DfdaemonDownloadServicer,  # type: ignore[misc]
):
    """``dfdaemon.v2.DfdaemonDownload`` for dfget and local tools, on the unix socket."""

    def __init__(
        self,
        downloads: Downloads,
        *,
        persistent_cache: PersistentCache | None = None,
        busy: Callable[[], set[str]] = set,
        capacity: Callable[[], int] = lambda: 0,
        uploaded: Mapping[str, int] | None = None,
    ) -> None:
        self.downloads = downloads
        self.persistent_cache = persistent_cache
        self._busy = busy
        self._capacity = capacity
        self._uploaded = uploaded if uploaded is not None else {}

    def _local(self, meta: TaskMeta) -> dfdaemon_pb2.StatLocalTaskResponse:
        store = self.downloads.store
        return local_task_to_pb(
            local_task_info(
                meta, uploading=store.pin_count(meta.task_id), uploaded=self._uploaded.get(meta.task_id, 0)
            )
        )

    def _trailer(self, context: Context, task_ids: list[str]) -> None:
        busy = self._busy() | self.downloads.store.pinned()
        report = store_report(self.downloads.store, task_ids, busy, self._capacity())
        context.set_trailing_metadata(((STORE_TRAILER, report),))

    async def StatLocalTask(
        self, request: dfdaemon_pb2.StatLocalTaskRequest, context: Context
    ) -> dfdaemon_pb2.StatLocalTaskResponse:
        uploaded = self._uploaded.get(request.task_id, 0)
        answer = await self.downloads.stat_local(request.task_id, context, uploaded)
        self._trailer(context, [request.task_id])
        return answer

    async def ListLocalTasks(
        self, request: dfdaemon_pb2.ListLocalTasksRequest, context: Context
    ) -> dfdaemon_pb2.ListLocalTasksResponse:
        metas = sorted(self.downloads.store.tasks(), key=lambda m: m.accessed_at, reverse=True)
        self._trailer(context, [m.task_id for m in metas])
        return dfdaemon_pb2.ListLocalTasksResponse(tasks=[self._local(m) for m in metas])

    async def DownloadTask(self, request: dfdaemon_pb2.DownloadTaskRequest, context: Context) -> None:
        await write_stream(context, self.downloads.stream(request, context, remote=False))

    async def StatTask(self, request: dfdaemon_pb2.StatTaskRequest, context: Context) -> common_pb2.Task:
        meta = self.downloads.store.get(request.task_id)
        if meta is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"task {request.task_id} not found")
        assert meta is not None
        return task_to_pb(task_info(meta))

    async def ListTaskEntries(
        self, request: dfdaemon_pb2.ListTaskEntriesRequest, context: Context
    ) -> dfdaemon_pb2.ListTaskEntriesResponse:
        return await self.downloads.entries(request, context)

    async def DeleteTask(self, request: dfdaemon_pb2.DeleteTaskRequest, context: Context) -> empty_pb2.Empty:
        """This host's copy, and the scheduler's record of it (download.rs:988-1032; task.rs:2465-2494)."""
        await self._delete(request.task_id, context)
        scheduler = self.downloads.manager.deps.scheduler
        if scheduler is not None:
            await scheduler.delete_task(self.downloads.host.id, request.task_id)
        return empty_pb2.Empty()

    async def DeleteLocalTask(
        self, request: dfdaemon_pb2.DeleteLocalTaskRequest, context: Context
    ) -> empty_pb2.Empty:
        """This host's copy only (download.rs:1035-1080)."""
        await self._delete(request.task_id, context)
        return empty_pb2.Empty()

    async def _delete(self, task_id: str, context: Context) -> None:
        await self.downloads.require_held(task_id, context)
        if self.downloads.manager.is_running(task_id):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "task is downloading")
        self.downloads.store.delete_task(task_id)

    async def DeleteHost(self, request: empty_pb2.Empty, context: Context) -> empty_pb2.Empty:
        """Ask the scheduler to forget this host and its peers (download.rs:1083-1112); it comes
        back at the next announce, as a Dragonfly daemon's does."""
        scheduler = self.downloads.manager.deps.scheduler
        if scheduler is None:
            await context.abort(grpc.StatusCode.INTERNAL, "this daemon has no scheduler")
        assert scheduler is not None
        try:
            await scheduler.delete_host(self.downloads.host.id)
        except DamselflyError as e:
            await context.abort(grpc.StatusCode.INTERNAL, str(e))
        return empty_pb2.Empty()


class UploadService(
    UnsupportedTaskUploadRPCs,
    PersistentCacheUploadRPCs,
    dfdaemon_pb2_grpc.DfdaemonUploadServicer,  # type: ignore[misc]
):
    """``dfdaemon.v2.DfdaemonUpload`` for other peers and the scheduler's seed trigger.

    What makes the daemon act (DownloadTask, DeleteTask, the persistent cache's download,
    delete and update) is for its schedulers only (``scheduler_gate``); what peers call on
    each other (SyncPieces, SyncHost, the Stat and List calls) stays open to them."""

    def __init__(
        self,
        downloads: Downloads,
        piece_ip: str,
        piece_port: int,
        *,
        persistent_cache: PersistentCache | None = None,
        request_limiter: RequestLimiter | None = None,
        extensions: bool = True,
        network: NetworkMonitor | None = None,
        scheduler_gate: SchedulerGate | None = None,
    ) -> None:
        self.downloads = downloads
        # Who may make this daemon act (download, delete): its schedulers (docs/SECURITY.md).
        self.scheduler_gate = scheduler_gate
        self.network = network  # made on the first SyncHost
        self.persistent_cache = persistent_cache
        self.store = downloads.store
        self.piece_ip = piece_ip
        self.piece_port = piece_port
        self.request_limiter = request_limiter
        self.extensions = extensions  # wire.extensions: SyncPieces may offer Damselfly's
        self.calls: Counter[str] = Counter()

    async def _admit(self, method: str, context: Context) -> None:
        """Count the call; over the request-rate limit, answer RESOURCE_EXHAUSTED rather than queue."""
        self.calls[method] += 1
        if self.request_limiter is not None and not self.request_limiter.allow():
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "too many requests to this peer; retry later"
            )

    async def DownloadTask(self, request: dfdaemon_pb2.DownloadTaskRequest, context: Context) -> None:
        await require_scheduler(self.scheduler_gate, context)
        await self._admit("DownloadTask", context)
        await write_stream(context, self.downloads.stream(request, context, remote=True))

    async def StatTask(self, request: dfdaemon_pb2.StatTaskRequest, context: Context) -> common_pb2.Task:
        await self._admit("StatTask", context)
        task_id = request.task_id
        meta = self.store.get(task_id)
        if meta is None or meta.state == "failed":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"task {task_id} not found")
        deadline = time.monotonic() + STAT_WAIT
        changes = self.store.changes(task_id)
        while meta is not None and meta.content_length is None and meta.state in ("pending", "running"):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await changes.wait(left)  # deleted meanwhile: answered below
            meta = self.store.get(task_id)
        if meta is None or meta.content_length is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "content length not known yet")
        assert meta is not None
        return task_to_pb(task_info(meta))

    async def SyncPieces(
        self,
        request: dfdaemon_pb2.SyncPiecesRequest | dfdaemon_pb2.SyncPersistentCachePiecesRequest,
        context: Context,
    ) -> AsyncIterator[dfdaemon_pb2.SyncPiecesResponse]:
        if not tracing.enabled():
            async for r in self._sync_pieces(request, context):
                yield r
            return
        attributes = {"task.id": request.task_id}
        with tracing.span(
            "daemon", "dfdaemon.SyncPieces", remote=context.invocation_metadata(), attributes=attributes
        ):
            async for r in self._sync_pieces(request, context):
                yield r

    async def _sync_pieces(
        self,
        request: dfdaemon_pb2.SyncPiecesRequest | dfdaemon_pb2.SyncPersistentCachePiecesRequest,
        context: Context,
    ) -> AsyncIterator[dfdaemon_pb2.SyncPiecesResponse]:
        """Announce the interested pieces held here, then those that finish, as Dragonfly does.

        A Damselfly child that announced Damselfly's extensions (and with ours on)
        is told we speak them too (transfer/peer_rpc.py) and also hears of pieces
        still arriving here, which our piece server streams to it as they land.
        Any other child hears only of finished pieces and gets Dragonfly's errors
        (INTERNAL for an unknown or failed task). An empty interest list means
        every piece (older Damselfly children send one; Dragonfly's never do).
        """
        await self._admit("SyncPieces", context)
        task_id = request.task_id
        self.store.note_access(task_id)
        damselfly = self.extensions and says_extensions(context.invocation_metadata())
        interested = set(request.interested_piece_numbers)
        meta = self.store.get(task_id)
        if meta is None or meta.state == "failed":
            code = grpc.StatusCode.NOT_FOUND if damselfly else grpc.StatusCode.INTERNAL
            await context.abort(code, f"task {task_id} not found")
        if damselfly:
            await context.send_initial_metadata(((EXTENSIONS_METADATA, "1"),))
        # What is announced, and when: announce.announcements (the piece port's SyncPieces too).
        follow = announcements(self.store, task_id, interested, arriving=damselfly)
        try:
            async with contextlib.aclosing(follow):
                async for a in follow:
                    yield dfdaemon_pb2.SyncPiecesResponse(
                        number=a.number,
                        offset=a.offset,
                        length=a.length,
                        ip=self.piece_ip,
                        tcp_port=self.piece_port,
                    )
        except (NotFound, TaskFailed):
            if damselfly:
                await context.abort(grpc.StatusCode.ABORTED, "the parent's download failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"task {task_id} failed")

    async def SyncPersistentCachePieces(
        self, request: dfdaemon_pb2.SyncPersistentCachePiecesRequest, context: Context
    ) -> AsyncIterator[dfdaemon_pb2.SyncPersistentCachePiecesResponse]:
        # A persistent cache task's pieces live in the same store: SyncPieces, in its message type.
        async for r in self.SyncPieces(request, context):
            yield dfdaemon_pb2.SyncPersistentCachePiecesResponse(
                number=r.number, offset=r.offset, length=r.length, ip=r.ip, tcp_port=r.tcp_port
            )

    async def DeleteTask(self, request: dfdaemon_pb2.DeleteTaskRequest, context: Context) -> empty_pb2.Empty:
        # An unknown task is answered as Dragonfly answers it (upload.rs:873-922); a held one may
        # not be deleted by peers: only the local API can. A stranger learns neither.
        await require_scheduler(self.scheduler_gate, context)
        await self.downloads.require_held(request.task_id, context)
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "delete tasks through the local API")

    async def StatLocalTask(
        self, request: dfdaemon_pb2.StatLocalTaskRequest, context: Context
    ) -> dfdaemon_pb2.StatLocalTaskResponse:
        await self._admit("StatLocalTask", context)
        return await self.downloads.stat_local(request.task_id, context)

    async def ListTaskEntries(
        self, request: dfdaemon_pb2.ListTaskEntriesRequest, context: Context
    ) -> dfdaemon_pb2.ListTaskEntriesResponse:
        await self._admit("ListTaskEntries", context)
        return await self.downloads.entries(request, context)

    async def SyncHost(
        self, request: dfdaemon_pb2.SyncHostRequest, context: Context
    ) -> AsyncIterator[common_pb2.Host]:
        """This host's network load, once a second until the child hangs up (upload.rs:1147-1222).

        As Dragonfly's, only ``network``'s four bandwidths are set, in bit/s (:mod:`.host_network`).
        """
        await self._admit("SyncHost", context)
        if self.network is None:
            host = self.downloads.host
            self.network = NetworkMonitor(host.ip, host.max_tx_bandwidth)
        async for stats in self.network.samples():
            network = common_pb2.Network(
                max_rx_bandwidth=stats.max_rx_bandwidth, max_tx_bandwidth=stats.max_tx_bandwidth
            )
            if stats.rx_bandwidth is not None:
                network.rx_bandwidth = stats.rx_bandwidth
            if stats.tx_bandwidth is not None:
                network.tx_bandwidth = stats.tx_bandwidth
            yield common_pb2.Host(network=network)


def socket_path_ok(path: Path) -> None:
    if len(str(path)) > 100:
        raise InvalidArgument(
            f"unix socket path {path} is too long (max ~100 bytes); use a shorter --data-dir"
        )
