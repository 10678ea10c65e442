"""DownloadTask as both daemon services answer it, and the task facts they share.

:class:`Downloads` starts or joins a download for a ``DownloadTask`` call (dfget
on the unix socket, a scheduler's seed trigger or a peer on the upload port),
streams its progress (and, for dfget ``--transfer-from-dfdaemon``, the pieces'
bytes) as ``DownloadTaskResponse`` messages, and puts the verified content at
the output path. The servicers in :mod:`.service` delegate to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import NoReturn, TypeAlias
from urllib.parse import urlsplit

import grpc

from .. import ids, logs, tracing
from ..api import common_pb2, dfdaemon_pb2
from ..api.convert import download_from_pb, local_task_to_pb, piece_to_pb
from ..domain import DownloadSpec, DownloadStarted, HostInfo, LocalTaskInfo, PieceInfo, TaskInfo
from ..errors import (
    DamselflyError,
    InvalidArgument,
)
from ..pieces import check_piece_length
from ..units import parse_size
from .download import output
from .download.local_stream import PieceReader, started_pieces
from .download.progress import follow_download
from .download.tasks import TaskManager, task_id_for
from .grpc_status import backend_details, status_for
from .metrics import DaemonMetrics
from .ratelimit import TASK_LIMITER, ByteLimiter
from .store.metadata import TaskMeta
from .store.piece_store import PieceStore
from .task_entries import stat_url

log = logging.getLogger(__name__)

# dfget --rate-limit travels as this request header (common.v2.Download has no rate field).
RATE_LIMIT_HEADER = "X-Damselfly-Rate-Limit"

# grpc ships no type information: to mypy this is Any, to the reader the servicer's context.
Context: TypeAlias = grpc.aio.ServicerContext


async def _abort(context: Context, exc: BaseException) -> NoReturn:
    code, message = status_for(exc)
    await context.abort(code, message, backend_details(exc))
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

    def __init__(
        self, manager: TaskManager, store: PieceStore, host: HostInfo, *, metrics: DaemonMetrics | None = None
    ) -> None:
        self.manager = manager
        self.store = store
        self.host = host
        self.metrics = metrics

    async def stream(
        self, request: dfdaemon_pb2.DownloadTaskRequest, context: Context, *, remote: bool
    ) -> AsyncGenerator[dfdaemon_pb2.DownloadTaskResponse, None]:
        """A DownloadTask RPC of either service: progress messages, or the call aborted with a status.

        Counted (``dragonfly_client_download_task_*``) and, with tracing on, one span that is
        the caller's ``traceparent``'s child and the parent of what the download does."""
        d = request.download
        counted = self.metrics.download_started(d) if self.metrics is not None else None
        began, size = time.monotonic(), -1
        remote_md = context.invocation_metadata() if tracing.enabled() else None
        with tracing.span("daemon", "dfdaemon.DownloadTask", remote=remote_md, attributes={"url": d.url}):
            async with contextlib.aclosing(self._stream(request, context, remote=remote)) as messages:
                async for msg in messages:
                    if size < 0 and msg.HasField("download_task_started_response"):
                        size = msg.download_task_started_response.content_length
                    yield msg
            if self.metrics is not None and counted is not None:
                self.metrics.download_ended(counted, ok=True, size=size, seconds=time.monotonic() - began)

    async def _stream(
        self, request: dfdaemon_pb2.DownloadTaskRequest, context: Context, *, remote: bool
    ) -> AsyncGenerator[dfdaemon_pb2.DownloadTaskResponse, None]:
        try:
            spec = download_from_pb(request.download)
            if spec.piece_length is not None:
                check_piece_length(spec.piece_length)  # before any task exists
            if remote:
                spec.output_path = ""  # a remote caller never writes files on this host
            # Two Download fields only this edge reads (DownloadSpec has no place for them):
            # the content in each piece message (dfget --transfer-from-dfdaemon), and whether
            # an existing output may be replaced (dfget --overwrite).
            with_content = request.download.need_piece_content
            progress = self.progress(spec, with_content=with_content, overwrite=request.download.overwrite)
            async with contextlib.aclosing(progress) as messages:
                async for msg in messages:
                    yield msg
        except Exception as e:
            # Only errors: a caller gone (its deadline passed, it hung up) closes this generator
            # with GeneratorExit or cancels it, and neither may be answered with a status.
            log.info("%sdownload failed: %s", "remote " if remote else "", e)
            if self.metrics is not None:
                self.metrics.download_ended(
                    self.metrics.labels_of(request.download), ok=False, size=0, seconds=0.0
                )
            await _abort(context, e)

    async def progress(
        self,
        spec: DownloadSpec,
        *,
        check_url: bool = True,
        with_content: bool = False,
        overwrite: bool = True,
    ) -> AsyncGenerator[dfdaemon_pb2.DownloadTaskResponse, None]:
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
        follow = self._follow(spec, task_id, job, out, with_content=with_content, overwrite=overwrite)
        with self.store.using(task_id):
            async with contextlib.aclosing(follow) as messages:
                async for msg in messages:
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
    ) -> AsyncGenerator[dfdaemon_pb2.DownloadTaskResponse, None]:
        conductor = self.manager.running().get(task_id)
        peer_id = conductor.peer_id if conductor is not None else ""
        reader = PieceReader(self.store, task_id) if with_content else None
        async with contextlib.AsyncExitStack() as stack:
            stack.enter_context(logs.log_context(task_id=task_id, peer_id=peer_id))
            if reader is not None:
                stack.callback(reader.close)
            deadline = time.monotonic() + spec.timeout_s if spec.timeout_s else None
            late = f"download did not finish within {spec.timeout_s or 0:.0f}s"
            events = await stack.enter_async_context(
                contextlib.aclosing(follow_download(self.store, task_id, job, deadline=deadline, late=late))
            )
            async for event in events:
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
