"""The daemon's gRPC services: ``DfdaemonDownload`` (local, unix socket) and ``DfdaemonUpload`` (peers).

Protobuf is translated at this edge; the work is done by the
:class:`TaskManager`, the :class:`PieceStore` and :mod:`damselfly.daemon.output`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import grpc
from google.protobuf import empty_pb2

from .. import logs
from ..api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc
from ..api.convert import download_from_pb, piece_to_pb
from ..domain import DownloadSpec, HostInfo
from ..errors import (
    DamselflyError,
    DigestMismatch,
    DownloadTimeout,
    InvalidArgument,
    NoCandidateParents,
    NotFound,
    SourceStatusError,
    SourceUnreachable,
)
from . import output
from .storage import PieceStore, TaskMeta
from .tasks import TaskManager

log = logging.getLogger(__name__)

STAT_WAIT = 5.0  # how long StatTask waits for a running task to learn its content length


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status a failed download ends with (see docs/PROTOCOL.md)."""
    if isinstance(exc, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, DigestMismatch):
        return grpc.StatusCode.DATA_LOSS, str(exc)
    if isinstance(exc, DownloadTimeout | TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc) or "download timed out"
    if isinstance(exc, SourceStatusError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, SourceUnreachable):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, NoCandidateParents):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, NotFound):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, DamselflyError):
        return grpc.StatusCode.INTERNAL, str(exc)
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"


async def _abort(context: Any, exc: BaseException) -> NoReturn:
    code, message = status_for(exc)
    await context.abort(code, message)
    raise AssertionError("unreachable")


def task_to_pb(meta: TaskMeta, peer_count: int = 0) -> Any:
    pb = common_pb2.Task(
        id=meta.task_id,
        url=meta.url,
        content_length=meta.content_length or 0,
        piece_count=meta.piece_count or 0,
        state=meta.state,
        peer_count=peer_count,
        has_available_peer=meta.state in ("running", "succeeded"),
    )
    if meta.tag:
        pb.tag = meta.tag
    if meta.application:
        pb.application = meta.application
    return pb


class Downloads:
    """What both services share: start or join a download and stream its progress."""

    def __init__(self, manager: TaskManager, store: PieceStore, host: HostInfo) -> None:
        self.manager = manager
        self.store = store
        self.host = host

    async def progress(self, spec: DownloadSpec, *, check_url: bool = True) -> AsyncIterator[Any]:
        """Yield DownloadTaskResponse messages until the task is complete; raise on failure."""
        if check_url:
            scheme = urlsplit(spec.url).scheme
            if scheme not in ("http", "https"):
                raise InvalidArgument(f"unsupported URL {spec.url!r}: use http:// or https://")
        out = output.check_output_path(spec.output_path) if spec.output_path else None
        task_id, job = self.manager.ensure(spec)
        conductor = self.manager.running().get(task_id)
        peer_id = conductor.peer_id if conductor is not None else ""
        with logs.log_context(task_id=task_id, peer_id=peer_id):
            sent: set[int] = set()
            started = False
            version = -1
            deadline = time.monotonic() + spec.timeout_s if spec.timeout_s else None
            while True:
                meta = self.store.get(task_id)
                if meta is not None:
                    if not started and meta.content_length is not None:
                        started = True
                        yield dfdaemon_pb2.DownloadTaskResponse(
                            host_id=self.host.id,
                            task_id=task_id,
                            peer_id=peer_id,
                            download_task_started_response=dfdaemon_pb2.DownloadTaskStartedResponse(
                                content_length=meta.content_length,
                                response_header=meta.response_header,
                                is_finished=meta.is_complete,
                            ),
                        )
                    if started:
                        for number in sorted(meta.pieces.keys() - sent):
                            sent.add(number)
                            yield dfdaemon_pb2.DownloadTaskResponse(
                                host_id=self.host.id,
                                task_id=task_id,
                                peer_id=peer_id,
                                download_piece_finished_response=dfdaemon_pb2.DownloadPieceFinishedResponse(
                                    piece=piece_to_pb(meta.pieces[number])
                                ),
                            )
                    version = meta.version
                if job.done():
                    break
                timeout = 1.0
                if deadline is not None:
                    timeout = min(timeout, deadline - time.monotonic())
                    if timeout <= 0:
                        raise DownloadTimeout(f"download did not finish within {spec.timeout_s:.0f}s")
                waiter = asyncio.ensure_future(self.store.wait_for_change(task_id, version, timeout))
                await asyncio.wait({waiter, job}, return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():
                    waiter.cancel()
            exc = job.exception() if not job.cancelled() else asyncio.CancelledError()
            if exc is not None:
                raise exc
            meta = self.store.get(task_id)
            if meta is None or not meta.is_complete:
                raise DamselflyError("download ended without complete content")
            if not started:  # a local hit or an empty task: report it all now
                yield dfdaemon_pb2.DownloadTaskResponse(
                    host_id=self.host.id,
                    task_id=task_id,
                    peer_id=peer_id,
                    download_task_started_response=dfdaemon_pb2.DownloadTaskStartedResponse(
                        content_length=meta.content_length or 0, is_finished=True
                    ),
                )
                for number in sorted(meta.pieces.keys() - sent):
                    yield dfdaemon_pb2.DownloadTaskResponse(
                        host_id=self.host.id,
                        task_id=task_id,
                        peer_id=peer_id,
                        download_piece_finished_response=dfdaemon_pb2.DownloadPieceFinishedResponse(
                            piece=piece_to_pb(meta.pieces[number])
                        ),
                    )
            if spec.digest:
                await asyncio.to_thread(output.verify_content, self.store.content_path(task_id), spec.digest)
            if out is not None:
                how = await asyncio.to_thread(
                    output.export, self.store.content_path(task_id), out, force_hard_link=spec.force_hard_link
                )
                log.info("wrote %s (%s)", out, how)
            self.store.touch(task_id)


class DownloadService(dfdaemon_pb2_grpc.DfdaemonDownloadServicer):  # type: ignore[misc]
    """``dfdaemon.v2.DfdaemonDownload`` for dfget and local tools, on the unix socket."""

    def __init__(self, downloads: Downloads) -> None:
        self.downloads = downloads

    async def DownloadTask(self, request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            spec = download_from_pb(request.download)
            async for msg in self.downloads.progress(spec):
                yield msg
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            log.info("download failed: %s", e)
            await _abort(context, e)

    async def StatTask(self, request: Any, context: Any) -> Any:
        meta = self.downloads.store.get(request.task_id)
        if meta is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"task {request.task_id} not found")
        assert meta is not None
        return task_to_pb(meta)

    async def DeleteTask(self, request: Any, context: Any) -> Any:
        if self.downloads.store.get(request.task_id) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"task {request.task_id} not found")
        if self.downloads.manager.is_running(request.task_id):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "task is downloading")
        self.downloads.store.delete_task(request.task_id)
        return empty_pb2.Empty()


class UploadService(dfdaemon_pb2_grpc.DfdaemonUploadServicer):  # type: ignore[misc]
    """``dfdaemon.v2.DfdaemonUpload`` for other peers and the scheduler's seed trigger."""

    def __init__(self, downloads: Downloads, piece_ip: str, piece_port: int) -> None:
        self.downloads = downloads
        self.store = downloads.store
        self.piece_ip = piece_ip
        self.piece_port = piece_port

    async def DownloadTask(self, request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            spec = download_from_pb(request.download)
            spec.output_path = ""  # a remote caller never writes files on this host
            async for msg in self.downloads.progress(spec):
                yield msg
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            log.info("remote download failed: %s", e)
            await _abort(context, e)

    async def StatTask(self, request: Any, context: Any) -> Any:
        task_id = request.task_id
        meta = self.store.get(task_id)
        if meta is None or meta.state == "failed":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"task {task_id} not found")
        deadline = time.monotonic() + STAT_WAIT
        while meta is not None and meta.content_length is None and meta.state in ("pending", "running"):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await self.store.wait_for_change(task_id, meta.version, left)
            meta = self.store.get(task_id)
        if meta is None or meta.content_length is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "content length not known yet")
        assert meta is not None
        return task_to_pb(meta)

    async def SyncPieces(self, request: Any, context: Any) -> AsyncIterator[Any]:
        task_id = request.task_id
        interested = set(request.interested_piece_numbers)
        meta = self.store.get(task_id)
        if meta is None or meta.state == "failed":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"task {task_id} not found")
        sent: set[int] = set()
        while True:
            meta = self.store.get(task_id)
            if meta is None or meta.state == "failed":
                await context.abort(grpc.StatusCode.ABORTED, "the parent's download failed")
            assert meta is not None
            for number in sorted(meta.pieces.keys() - sent):
                if interested and number not in interested:
                    continue
                sent.add(number)
                p = meta.pieces[number]
                yield dfdaemon_pb2.SyncPiecesResponse(
                    number=number,
                    offset=p.offset,
                    length=p.length,
                    ip=self.piece_ip,
                    tcp_port=self.piece_port,
                )
            wanted = interested or (set(range(meta.piece_count)) if meta.piece_count is not None else None)
            if wanted is not None and wanted <= sent:
                return
            if meta.state == "succeeded":
                return
            await self.store.wait_for_change(task_id, meta.version, 30)

    async def DeleteTask(self, request: Any, context: Any) -> Any:
        # Peers may not delete this host's content; only the local API can.
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "delete tasks through the local API")


def socket_path_ok(path: Path) -> None:
    if len(str(path)) > 100:
        raise InvalidArgument(
            f"unix socket path {path} is too long (max ~100 bytes); use a shorter --data-dir"
        )
