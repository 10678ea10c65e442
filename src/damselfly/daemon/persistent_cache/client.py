"""The daemon's persistent-cache calls: the scheduler's RPCs and stream, and peers' piece sync."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from ...api import common_pb2, dfdaemon_pb2, scheduler_pb2, scheduler_pb2_grpc
from ...api.convert import host_from_pb, seconds
from ...domain import CandidateParent, EmptyTask, NormalTask
from ...errors import (
    DamselflyError,
    InvalidArgument,
    NoCandidateParents,
    NotFound,
    SchedulerError,
)
from ..scheduler_client import PeerStream
from ..transfer.peer_rpc import PeerRPC

log = logging.getLogger(__name__)

PB = Any


class UnknownCacheTask(NotFound, SchedulerError):
    """The scheduler knows no such persistent cache task."""


# -- talking to the scheduler -----------------------------------------------------


@dataclass(slots=True)
class CacheTaskInfo:
    """What a daemon needs to know of a persistent cache task from the scheduler."""

    content_length: int
    piece_length: int
    piece_count: int
    expires_at: float  # wall clock; 0 = never


def task_info_from_pb(pb: PB) -> CacheTaskInfo:
    ttl = seconds(pb.ttl) if pb.HasField("ttl") else 0.0
    created = pb.created_at.ToNanoseconds() / 1e9 if pb.HasField("created_at") else time.time()
    return CacheTaskInfo(
        content_length=int(pb.content_length),
        piece_length=int(pb.piece_length),
        piece_count=int(pb.piece_count),
        expires_at=created + ttl if ttl > 0 else 0.0,
    )


def _scheduler_error(what: str, e: grpc.aio.AioRpcError) -> DamselflyError:
    details = e.details() or e.code().name
    if e.code() == grpc.StatusCode.NOT_FOUND:
        return UnknownCacheTask(details)
    if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
        return NoCandidateParents(details)
    if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(details)
    return SchedulerError(f"{what}: {e.code().name} {details}")


class CachePeerStream(PeerStream):
    """One ``AnnouncePersistentCachePeer`` stream, with :class:`PeerStream`'s queueing and methods.

    Answers come out as domain answers (:class:`NormalTask` / :class:`EmptyTask`);
    the task's geometry and expiry from the first one land in :attr:`task_info`.
    """

    task_info: CacheTaskInfo | None = None

    def _open_call(self) -> Any:
        return self._stub.AnnouncePersistentCachePeer()

    def _request(self, **request: Any) -> Any:
        return scheduler_pb2.AnnouncePersistentCachePeerRequest(
            host_id=self.host_id, task_id=self.task_id, peer_id=self.peer_id, **request
        )

    def _answer(self, msg: Any) -> Any:
        if msg.WhichOneof("response") == "empty_persistent_cache_task_response":
            return EmptyTask()
        parents = []
        for p in msg.normal_persistent_cache_task_response.candidate_cache_parents:
            if self.task_info is None:
                self.task_info = task_info_from_pb(p.task)
            parents.append(
                CandidateParent(
                    peer_id=p.id,
                    host=host_from_pb(p.host),
                    task_id=self.task_id,
                    content_length=int(p.task.content_length),
                    piece_count=int(p.task.piece_count),
                    state=p.state,
                )
            )
        return NormalTask(parents)

    def _read_failed(self, e: grpc.aio.AioRpcError) -> DamselflyError:
        return _scheduler_error("persistent cache stream", e)

    def _at_eof(self) -> Any:
        return SchedulerError("the scheduler closed the persistent cache stream")

    def register_cache_peer(self, *, persistent: bool, tag: str, application: str) -> None:
        self._send(
            register_persistent_cache_peer_request=scheduler_pb2.RegisterPersistentCachePeerRequest(
                persistent=persistent, tag=tag or None, application=application or None
            )
        )

    def started(self) -> None:
        self._send(
            download_persistent_cache_peer_started_request=scheduler_pb2.DownloadPersistentCachePeerStartedRequest()
        )

    def reschedule(self, failed_parents: list[str], description: str) -> None:
        self._send(
            reschedule_persistent_cache_peer_request=scheduler_pb2.ReschedulePersistentCachePeerRequest(
                candidate_parents=[common_pb2.PersistentCachePeer(id=p) for p in failed_parents],
                description=description,
            )
        )

    def finished(self) -> None:
        self._send(
            download_persistent_cache_peer_finished_request=scheduler_pb2.DownloadPersistentCachePeerFinishedRequest()
        )

    def failed(self, description: str) -> None:
        self._send(
            download_persistent_cache_peer_failed_request=scheduler_pb2.DownloadPersistentCachePeerFailedRequest(
                description=description
            )
        )


class CacheSchedulerClient:
    """The persistent-cache RPCs of ``scheduler.v2.Scheduler``, on a channel of its own."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self._channel = grpc.aio.insecure_channel(addr)
        self._stub = scheduler_pb2_grpc.SchedulerStub(self._channel)

    async def _call(self, what: str, method: str, request: PB, timeout: float = 10) -> PB:
        try:
            return await getattr(self._stub, method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise _scheduler_error(f"{what} at {self.addr}", e) from None

    async def upload_started(self, request: PB) -> None:
        await self._call("UploadPersistentCacheTaskStarted", "UploadPersistentCacheTaskStarted", request)

    async def upload_finished(self, host_id: str, task_id: str, peer_id: str) -> PB:
        return await self._call(
            "UploadPersistentCacheTaskFinished",
            "UploadPersistentCacheTaskFinished",
            scheduler_pb2.UploadPersistentCacheTaskFinishedRequest(
                host_id=host_id, task_id=task_id, peer_id=peer_id
            ),
        )

    async def upload_failed(self, host_id: str, task_id: str, peer_id: str, description: str) -> None:
        with contextlib.suppress(DamselflyError):
            await self._call(
                "UploadPersistentCacheTaskFailed",
                "UploadPersistentCacheTaskFailed",
                scheduler_pb2.UploadPersistentCacheTaskFailedRequest(
                    host_id=host_id, task_id=task_id, peer_id=peer_id, description=description
                ),
            )

    async def stat_task(self, host_id: str, task_id: str) -> PB:
        return await self._call(
            "StatPersistentCacheTask",
            "StatPersistentCacheTask",
            scheduler_pb2.StatPersistentCacheTaskRequest(host_id=host_id, task_id=task_id),
        )

    async def delete_task(self, host_id: str, task_id: str) -> None:
        await self._call(
            "DeletePersistentCacheTask",
            "DeletePersistentCacheTask",
            scheduler_pb2.DeletePersistentCacheTaskRequest(host_id=host_id, task_id=task_id),
            timeout=60,
        )

    async def delete_peer(self, host_id: str, task_id: str) -> None:
        """Forget this host's copy (an empty peer ID: whichever peer this host has)."""
        with contextlib.suppress(DamselflyError):
            await self._call(
                "DeletePersistentCachePeer",
                "DeletePersistentCachePeer",
                scheduler_pb2.DeletePersistentCachePeerRequest(host_id=host_id, task_id=task_id),
            )

    def peer_stream(self, host_id: str, task_id: str, peer_id: str) -> CachePeerStream:
        return CachePeerStream(self._stub, host_id, task_id, peer_id)

    async def close(self) -> None:
        await self._channel.close()


class CachePeerRPC(PeerRPC):
    """:class:`PeerRPC` whose piece sync is ``SyncPersistentCachePieces``."""

    async def sync_pieces(self, host: Any, host_id: str, task_id: str) -> AsyncIterator[tuple[int, int, int]]:
        call = self._stub(host).SyncPersistentCachePieces(
            dfdaemon_pb2.SyncPersistentCachePiecesRequest(host_id=host_id, task_id=task_id)
        )
        try:
            async for resp in call:
                yield int(resp.number), int(resp.offset), int(resp.length)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED:
                return
            raise NotFound(
                f"SyncPersistentCachePieces with {host.id} failed: {e.code().name} {e.details()}"
            ) from e
        finally:
            call.cancel()
