"""The daemon's gRPC services: ``DfdaemonDownload`` (local, unix socket) and ``DfdaemonUpload`` (peers).

Protobuf is translated at this edge; the work is done by the
:class:`TaskManager`, the :class:`PieceStore` and :mod:`damselfly.daemon.download.output`.
Every method of dragonfly-api 2.3.8's two services answers, each as the Rust
dfdaemon does (docs/INTEROP.md §3.1-3.2, §6.3, §6.7): the persistent cache
(dfcache) in :mod:`.persistent_cache`, the task kinds this daemon does not run
in :mod:`.unsupported_tasks_rpc`, the rest here.

Long because: it is the whole protobuf edge of two services that share the
download follower, the task stats and the admission checks; each method is a
few lines of translation, and splitting them by service would repeat those.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import NoReturn, TypeAlias
from urllib.parse import urlsplit

import grpc
from google.protobuf import empty_pb2

from .. import ids, logs
from ..api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc
from ..api.convert import download_from_pb, local_task_to_pb, piece_to_pb, task_to_pb
from ..domain import DownloadSpec, DownloadStarted, HostInfo, LocalTaskInfo, PieceInfo, TaskInfo
from ..errors import (
    DamselflyError,
    InvalidArgument,
)
from ..units import parse_size
from .download import output
from .download.local_stream import PieceReader, started_pieces
from .download.progress import follow_download
from .download.tasks import TaskManager, task_id_for
from .grpc_status import status_for
from .host_network import NetworkMonitor
from .persistent_cache import PersistentCache, PersistentCacheDownloadRPCs, PersistentCacheUploadRPCs
from .ratelimit import TASK_LIMITER, ByteLimiter, RequestLimiter
from .store.metadata import TaskMeta
from .store.piece_store import PieceStore
from .store.receiving import Receiving
from .task_entries import stat_url
from .transfer.peer_rpc import EXTENSIONS_METADATA, says_extensions
from .unsupported_tasks_rpc import UnsupportedTaskDownloadRPCs, UnsupportedTaskUploadRPCs

log = logging.getLogger(__name__)

# dfget --rate-limit travels as this request header (common.v2.Download has no rate field).
RATE_LIMIT_HEADER = "X-Damselfly-Rate-Limit"
# StatLocalTask / ListLocalTasks trailer: JSON with per-task disk bytes, state, last access.
STORE_TRAILER = "x-damselfly-store"

STAT_WAIT = 5.0  # how long StatTask waits for a running task to learn its content length

# grpc ships no type information: to mypy this is Any, to the reader the servicer's context.
Context: TypeAlias = grpc.aio.ServicerContext


async def _abort(context: Context, exc: BaseException) -> NoReturn:
    code, message = status_for(exc)
    await context.abort(code, message)
    raise AssertionError("unreachable")


def take_rate_limit(spec: DownloadSpec) -> ByteLimiter | None:
    """Pop the per-download rate limit header from ``spec`` (dfget --rate-limit); None if absent."""
    for name in list(spec.request_header):
        if name.lower() == RATE_LIMIT_HEADER.lower():
            raw = spec.request_header.pop(name)
            try:
                rate = parse_size(raw.strip().removesuffix("/s"))
            except ValueError:
                raise InvalidArgument(f"{RATE_LIMIT_HEADER}: not a rate: {raw!r} (try 10MB/s)") from None
            return ByteLimiter(rate, name="download-task") if rate > 0 else None
    return None


def _listed(piece: PieceInfo, held: bool) -> common_pb2.Piece:
    """A piece of the started message: as stored when held, else where it will be."""
    if held:
        return piece_to_pb(piece)
    return common_pb2.Piece(number=piece.number, offset=piece.offset, length=piece.length)


def local_task_info(meta: TaskMeta, *, uploading: int = 0, uploaded: int = 0) -> LocalTaskInfo:
    """What ``StatLocalTask`` says of a task held here."""
    return LocalTaskInfo(
        task_id=meta.task_id,
        piece_length=meta.piece_length or 0,
        content_length=meta.content_length or 0,
        response_header=meta.response_header,
        uploading_count=uploading,
        uploaded_count=uploaded,
        created_at=meta.created_at,
        updated_at=meta.updated_at,
        finished_at=meta.updated_at if meta.state == "succeeded" else None,
        failed_at=meta.updated_at if meta.state == "failed" else None,
    )


def store_report(store: PieceStore, task_ids: list[str], busy: set[str], capacity: int = 0) -> str:
    """JSON for the ``x-damselfly-store`` trailer: what StatLocalTaskResponse has no field for."""
    tasks = {}
    for task_id in task_ids:
        meta = store.get(task_id)
        if meta is None:
            continue
        tasks[task_id] = {
            "state": meta.state,
            "bytes": store.task_usage(task_id),
            "pieces": len(meta.pieces),
            "piece_count": meta.piece_count,
            "accessed_at": meta.accessed_at,
            "in_use": task_id in busy,
            "url": meta.url,
        }
    return json.dumps({"usage": store.usage(), "capacity": capacity, "tasks": tasks}, separators=(",", ":"))


def task_info(meta: TaskMeta) -> TaskInfo:
    """What a daemon's ``StatTask`` says of a task it holds (the peer count is the scheduler's to know)."""
    return TaskInfo(
        id=meta.task_id,
        url=meta.url,
        tag=meta.tag or None,
        application=meta.application or None,
        content_length=meta.content_length or 0,
        piece_count=meta.piece_count or 0,
        state=meta.state,
        has_available_peer=meta.state in ("running", "succeeded"),
    )


class Downloads:
    """What both services share: start or join a download and stream its progress."""

    def __init__(self, manager: TaskManager, store: PieceStore, host: HostInfo) -> None:
        self.manager = manager
        self.store = store
        self.host = host

    async def stream(
        self, request: dfdaemon_pb2.DownloadTaskRequest, context: Context, *, remote: bool
    ) -> AsyncIterator[dfdaemon_pb2.DownloadTaskResponse]:
        """A DownloadTask RPC of either service: progress messages, or the call aborted with a status."""
        try:
            spec = download_from_pb(request.download)
            if remote:
                spec.output_path = ""  # a remote caller never writes files on this host
            # Two Download fields only this edge reads (DownloadSpec has no place for them):
            # the content in each piece message (dfget --transfer-from-dfdaemon), and whether
            # an existing output may be replaced (dfget --overwrite).
            with_content = request.download.need_piece_content
            async for msg in self.progress(
                spec, with_content=with_content, overwrite=request.download.overwrite
            ):
                yield msg
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            log.info("%sdownload failed: %s", "remote " if remote else "", e)
            await _abort(context, e)

    async def progress(
        self,
        spec: DownloadSpec,
        *,
        check_url: bool = True,
        with_content: bool = False,
        overwrite: bool = True,
    ) -> AsyncIterator[dfdaemon_pb2.DownloadTaskResponse]:
        """Yield DownloadTaskResponse messages until the task is complete; raise on failure.

        The task is held in use (the cache GC skips it) until the caller is done,
        export included. A ``X-Damselfly-Rate-Limit`` request header (bytes per
        second) limits the download it starts, under the host's limit; it is
        consumed here and never sent to the origin. ``with_content``: each piece
        message carries the piece's bytes (``need_piece_content``). ``overwrite``
        False: an existing output is refused, before the download and at the rename.
        """
        if check_url:
            scheme = urlsplit(spec.url).scheme
            if scheme not in ("http", "https"):
                raise InvalidArgument(f"unsupported URL {spec.url!r}: use http:// or https://")
        out = output.check_output_path(spec.output_path) if spec.output_path else None
        if spec.enable_task_id_based_blob_digest and not (
            spec.digest or spec.content_for_calculating_task_id
        ):
            # A task named by a blob's digest holds what the digest says, or nothing.
            encoded = ids.blob_digest(spec.url)
            spec.digest = f"sha256:{encoded}" if encoded else ""
        if out is not None and not overwrite:
            # Refused before any download starts (an output that is this task's stored content,
            # linked by an earlier run, is not "another" file: it stays).
            held = self.store.content_path(task_id_for(spec))
            output.refuse_existing(out, held, overwrite=False)
        task_limiter = take_rate_limit(spec)
        token = TASK_LIMITER.set(task_limiter)
        try:
            task_id, job = self.manager.ensure(spec)
        finally:
            TASK_LIMITER.reset(token)
        with self.store.using(task_id):
            async for msg in self._follow(
                spec, task_id, job, out, with_content=with_content, overwrite=overwrite
            ):
                yield msg

    async def _follow(
        self,
        spec: DownloadSpec,
        task_id: str,
        job: asyncio.Task[None],
        out: Path | None,
        *,
        with_content: bool = False,
        overwrite: bool = True,
    ) -> AsyncIterator[dfdaemon_pb2.DownloadTaskResponse]:
        conductor = self.manager.running().get(task_id)
        peer_id = conductor.peer_id if conductor is not None else ""
        reader = PieceReader(self.store, task_id) if with_content else None
        with logs.log_context(task_id=task_id, peer_id=peer_id), contextlib.ExitStack() as stack:
            if reader is not None:
                stack.callback(reader.close)
            deadline = time.monotonic() + spec.timeout_s if spec.timeout_s else None
            late = f"download did not finish within {spec.timeout_s or 0:.0f}s"
            async for event in follow_download(self.store, task_id, job, deadline=deadline, late=late):
                if isinstance(event, DownloadStarted):
                    meta = self.store.get(task_id)
                    listed = [_listed(p, held) for p, held in started_pieces(meta, spec.range)]
                    started = dfdaemon_pb2.DownloadTaskStartedResponse(
                        content_length=event.content_length,
                        # As Rust (resource/task.rs): finished when the store holds it whole.
                        is_finished=event.finished or (meta is not None and meta.is_complete),
                        pieces=listed,
                    )
                    if spec.range is not None:
                        started.range.start = spec.range.start
                        started.range.length = spec.range.length
                    yield dfdaemon_pb2.DownloadTaskResponse(
                        host_id=self.host.id,
                        task_id=task_id,
                        peer_id=peer_id,
                        download_task_started_response=started,
                    )
                else:
                    piece = piece_to_pb(event.piece)
                    if reader is not None:
                        piece.content = await reader.read(event.piece.offset, event.piece.length)
                    yield dfdaemon_pb2.DownloadTaskResponse(
                        host_id=self.host.id,
                        task_id=task_id,
                        peer_id=peer_id,
                        download_piece_finished_response=dfdaemon_pb2.DownloadPieceFinishedResponse(
                            piece=piece
                        ),
                    )
            if spec.digest and self.manager.verified.get(task_id) != spec.digest:
                # The stream's OK status is the verdict: a caller given the content (with_content)
                # keeps it only when the call ends OK, so a mismatch still reaches it as DATA_LOSS.
                await asyncio.to_thread(output.verify_content, self.store.content_path(task_id), spec.digest)
            if out is not None:
                how = await asyncio.to_thread(
                    output.export,
                    self.store.content_path(task_id),
                    out,
                    force_hard_link=spec.force_hard_link,
                    overwrite=overwrite,
                )
                log.info("wrote %s (%s)", out, how)
            self.store.touch(task_id)

    async def entries(
        self, request: dfdaemon_pb2.ListTaskEntriesRequest, context: Context
    ) -> dfdaemon_pb2.ListTaskEntriesResponse:
        """ListTaskEntries of either service: the origin's stat of the URL (:mod:`.task_entries`)."""
        deps = self.manager.deps
        try:
            # The daemon's own origin session: its TLS settings (source.caCert...) apply here too.
            session = deps.source._get_session()
            stat = await stat_url(session, request.url, request.request_header, timeout=deps.piece_timeout)
        except DamselflyError as e:
            await context.abort(grpc.StatusCode.INTERNAL, str(e))
        pb = dfdaemon_pb2.ListTaskEntriesResponse(
            content_length=stat.content_length or 0, response_header=stat.response_header
        )
        if stat.status_code is not None:
            pb.status_code = stat.status_code
        return pb

    async def stat_local(
        self, task_id: str, context: Context, uploaded: int = 0
    ) -> dfdaemon_pb2.StatLocalTaskResponse:
        """StatLocalTask of either service; unknown: NOT_FOUND as Dragonfly words it (upload.rs:742-787)."""
        meta = self.store.get(task_id)
        if meta is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"local task not found: {task_id}")
        assert meta is not None
        info = local_task_info(meta, uploading=self.store.pin_count(task_id), uploaded=uploaded)
        return local_task_to_pb(info)

    async def require_held(self, task_id: str, context: Context) -> TaskMeta:
        """The task's metadata; unknown: as Dragonfly answers a delete, ``INTERNAL "task <id> not found"``."""
        meta = self.store.get(task_id)
        if meta is None:
            await context.abort(grpc.StatusCode.INTERNAL, f"task {task_id} not found")
        assert meta is not None
        return meta


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

    async def DownloadTask(
        self, request: dfdaemon_pb2.DownloadTaskRequest, context: Context
    ) -> AsyncIterator[dfdaemon_pb2.DownloadTaskResponse]:
        async for msg in self.downloads.stream(request, context, remote=False):
            yield msg

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
    """``dfdaemon.v2.DfdaemonUpload`` for other peers and the scheduler's seed trigger."""

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
    ) -> None:
        self.downloads = downloads
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

    async def DownloadTask(
        self, request: dfdaemon_pb2.DownloadTaskRequest, context: Context
    ) -> AsyncIterator[dfdaemon_pb2.DownloadTaskResponse]:
        await self._admit("DownloadTask", context)
        async for msg in self.downloads.stream(request, context, remote=True):
            yield msg

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
        sent: set[int] = set()  # announced, held or arriving
        held: set[int] = set()  # announced while held
        changes = self.store.changes(task_id)
        while True:
            meta = self.store.get(task_id)
            if meta is None or meta.state == "failed":
                if damselfly:
                    await context.abort(grpc.StatusCode.ABORTED, "the parent's download failed")
                await context.abort(grpc.StatusCode.INTERNAL, f"task {task_id} failed")
            assert meta is not None
            # Pieces held, and for a Damselfly child pieces arriving from a parent (served while
            # they land, daemon/store/receiving.py). One announced while arriving is announced
            # again once held: its transfer may have failed in between and the child forgotten
            # it. Only what changed is looked at (set operations, not a walk over every piece:
            # this runs at each change of the task, for each child).
            arriving = self.store.receiving.of(task_id) if damselfly else {}
            pieces = meta.pieces
            for number in sorted((arriving.keys() - sent) | (pieces.keys() - held)):
                if interested and number not in interested:
                    continue
                sent.add(number)
                piece: PieceInfo | Receiving | None = pieces.get(number)
                if piece is not None:
                    held.add(number)
                else:
                    piece = arriving[number]
                offset, length = piece.offset, piece.length
                yield dfdaemon_pb2.SyncPiecesResponse(
                    number=number,
                    offset=offset,
                    length=length,
                    ip=self.piece_ip,
                    tcp_port=self.piece_port,
                )
            wanted = interested or (set(range(meta.piece_count)) if meta.piece_count is not None else None)
            if wanted is not None and wanted <= held:
                return
            if meta.state == "succeeded" and meta.pieces.keys() <= held:
                return
            await changes.wait(30)  # deleted meanwhile: ABORTED on the next round

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
        # not be deleted by peers: only the local API can.
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
