"""The daemon's persistent-cache calls: the scheduler's RPCs and stream, and peers' piece sync."""

from __future__ import annotations

import contextlib
import logging

import grpc
from google.protobuf import message

from ...api import common_pb2, dfdaemon_pb2, scheduler_pb2, scheduler_pb2_grpc
from ...api.cache_convert import cache_answer_from_pb, cache_task_from_pb
from ...api.convert import duration
from ...domain import (
    CandidateParent,
    EmptyTask,
    NormalTask,
    PersistentCacheTaskInfo,
    ScheduleAnswer,
)
from ...errors import (
    DamselflyError,
    InvalidArgument,
    NoCandidateParents,
    NotFound,
    SchedulerError,
)
from ...security.tls import TLSFiles, make_channel
from ..scheduler_client import PeerStream, StreamRequest, StreamResponse
from ..transfer.peer_rpc import PeerRPC

log = logging.getLogger(__name__)


class UnknownCacheTask(NotFound, SchedulerError):
    """The scheduler knows no such persistent cache task."""


# -- talking to the scheduler -----------------------------------------------------


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

    task_info: PersistentCacheTaskInfo | None = None

    def _open_call(self) -> grpc.aio.StreamStreamCall:
        return self._stub.AnnouncePersistentCachePeer()

    def _request(self, **request: message.Message) -> StreamRequest:
        return scheduler_pb2.AnnouncePersistentCachePeerRequest(
            host_id=self.host_id, task_id=self.task_id, peer_id=self.peer_id, **request
        )

    def _answer(self, msg: StreamResponse) -> ScheduleAnswer:
        if not isinstance(msg, scheduler_pb2.AnnouncePersistentCachePeerResponse):
            raise ValueError(f"not an AnnouncePersistentCachePeerResponse: {type(msg).__name__}")
        peers = cache_answer_from_pb(msg)
        if peers is None:
            return EmptyTask()
        parents = []
        for p in peers:
            if self.task_info is None:
                self.task_info = p.task
            if p.host is None:  # the scheduler offers live hosts only
                continue
            parents.append(
                CandidateParent(
                    peer_id=p.id,
                    host=p.host,
                    task_id=self.task_id,
                    content_length=p.task.content_length,
                    piece_count=p.task.piece_count,
                    state=p.state,
                )
            )
        return NormalTask(parents)

    def _read_failed(self, e: grpc.aio.AioRpcError) -> DamselflyError:
        return _scheduler_error("persistent cache stream", e)

    def _at_eof(self) -> object:
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

    def reschedule(self, failed_parents: list[CandidateParent], description: str) -> None:
        self._send(
            reschedule_persistent_cache_peer_request=scheduler_pb2.ReschedulePersistentCachePeerRequest(
                candidate_parents=[common_pb2.PersistentCachePeer(id=p.peer_id) for p in failed_parents],
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

    def __init__(self, addr: str, *, tls: TLSFiles | None = None) -> None:
        self.addr = addr
        self._channel = make_channel(addr, tls)
        self._stub = scheduler_pb2_grpc.SchedulerStub(self._channel)

    async def _call(
        self, what: str, method: str, request: message.Message, timeout: float = 10
    ) -> message.Message:
        try:
            return await getattr(self._stub, method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise _scheduler_error(f"{what} at {self.addr}", e) from None

    async def upload_started(self, host_id: str, peer_id: str, task: PersistentCacheTaskInfo) -> None:
        """Announce a copy of ``task`` on this host, its geometry, wanted replicas and TTL."""
        request = scheduler_pb2.UploadPersistentCacheTaskStartedRequest(
            host_id=host_id, task_id=task.id, peer_id=peer_id,
            persistent_replica_count=task.persistent_replica_count,
            tag=task.tag or None, application=task.application or None,
            piece_length=task.piece_length, content_length=task.content_length,
            piece_count=task.piece_count, ttl=duration(task.ttl_s) if task.ttl_s is not None else None,
        )  # fmt: skip
        await self._call("UploadPersistentCacheTaskStarted", "UploadPersistentCacheTaskStarted", request)

    async def upload_finished(self, host_id: str, task_id: str, peer_id: str) -> PersistentCacheTaskInfo:
        answer = await self._call(
            "UploadPersistentCacheTaskFinished",
            "UploadPersistentCacheTaskFinished",
            scheduler_pb2.UploadPersistentCacheTaskFinishedRequest(
                host_id=host_id, task_id=task_id, peer_id=peer_id
            ),
        )
        return cache_task_from_pb(answer)

    async def upload_failed(self, host_id: str, task_id: str, peer_id: str, description: str) -> None:
        with contextlib.suppress(DamselflyError):
            await self._call(
                "UploadPersistentCacheTaskFailed",
                "UploadPersistentCacheTaskFailed",
                scheduler_pb2.UploadPersistentCacheTaskFailedRequest(
                    host_id=host_id, task_id=task_id, peer_id=peer_id, description=description
                ),
            )

    async def stat_task(self, host_id: str, task_id: str) -> PersistentCacheTaskInfo:
        answer = await self._call(
            "StatPersistentCacheTask",
            "StatPersistentCacheTask",
            scheduler_pb2.StatPersistentCacheTaskRequest(host_id=host_id, task_id=task_id),
        )
        return cache_task_from_pb(answer)

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

    SYNC_METHOD = "SyncPersistentCachePieces"
    SYNC_REQUEST = dfdaemon_pb2.SyncPersistentCachePiecesRequest
    SYNC_ON_PIECE_PORT = False  # the piece port's SyncPieces names tasks only
