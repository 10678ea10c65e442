"""Persistent cache tasks (dfcache) between protobuf and :mod:`damselfly.domain` types.

The same edge as :mod:`.convert`, for the persistent-cache messages of
``scheduler.v2`` and ``dfdaemon.v2``; kept apart so each module stays one job.
"""

from __future__ import annotations

from ..domain import (
    CacheExport,
    CacheImport,
    DownloadProgress,
    DownloadStarted,
    PersistentCachePeerInfo,
    PersistentCacheTaskInfo,
    PieceDownloaded,
)
from . import common_pb2, dfdaemon_pb2, scheduler_pb2
from .convert import duration, host_from_pb, host_to_pb, piece_from_pb, piece_to_pb, seconds, timestamp, wall

# -- tasks, peers, answers --------------------------------------------------------


def cache_task_to_pb(t: PersistentCacheTaskInfo) -> common_pb2.PersistentCacheTask:
    pb = common_pb2.PersistentCacheTask(
        id=t.id,
        persistent_replica_count=t.persistent_replica_count,
        current_persistent_replica_count=t.current_persistent_replica_count,
        current_replica_count=t.current_replica_count,
        tag=t.tag or None,
        application=t.application or None,
        piece_length=t.piece_length,
        content_length=t.content_length,
        piece_count=t.piece_count,
        state=t.state,
    )
    if t.ttl_s is not None:
        pb.ttl.CopyFrom(duration(t.ttl_s))
    if t.created_at is not None:
        pb.created_at.CopyFrom(timestamp(t.created_at))
    if t.updated_at is not None:
        pb.updated_at.CopyFrom(timestamp(t.updated_at))
    return pb


def cache_task_from_pb(pb: common_pb2.PersistentCacheTask) -> PersistentCacheTaskInfo:
    return PersistentCacheTaskInfo(
        id=pb.id,
        persistent_replica_count=pb.persistent_replica_count,
        current_persistent_replica_count=pb.current_persistent_replica_count,
        current_replica_count=pb.current_replica_count,
        tag=pb.tag,
        application=pb.application,
        piece_length=pb.piece_length,
        content_length=pb.content_length,
        piece_count=pb.piece_count,
        state=pb.state,
        ttl_s=seconds(pb.ttl) if pb.HasField("ttl") else None,
        created_at=wall(pb.created_at) if pb.HasField("created_at") else None,
        updated_at=wall(pb.updated_at) if pb.HasField("updated_at") else None,
    )


def cache_peer_to_pb(p: PersistentCachePeerInfo) -> common_pb2.PersistentCachePeer:
    pb = common_pb2.PersistentCachePeer(
        id=p.id, persistent=p.persistent, state=p.state, task=cache_task_to_pb(p.task)
    )
    if p.host is not None:
        pb.host.CopyFrom(host_to_pb(p.host))
    return pb


def cache_peer_from_pb(pb: common_pb2.PersistentCachePeer) -> PersistentCachePeerInfo:
    return PersistentCachePeerInfo(
        id=pb.id,
        task=cache_task_from_pb(pb.task),
        persistent=pb.persistent,
        state=pb.state,
        host=host_from_pb(pb.host) if pb.HasField("host") else None,
    )


def cache_answer_to_pb(
    parents: list[PersistentCachePeerInfo] | None,
) -> scheduler_pb2.AnnouncePersistentCachePeerResponse:
    """The scheduler's answer on an ``AnnouncePersistentCachePeer`` stream; None: the task is empty."""
    if parents is None:
        return scheduler_pb2.AnnouncePersistentCachePeerResponse(
            empty_persistent_cache_task_response=scheduler_pb2.EmptyPersistentCacheTaskResponse()
        )
    return scheduler_pb2.AnnouncePersistentCachePeerResponse(
        normal_persistent_cache_task_response=scheduler_pb2.NormalPersistentCacheTaskResponse(
            candidate_cache_parents=[cache_peer_to_pb(p) for p in parents]
        )
    )


def cache_answer_from_pb(
    pb: scheduler_pb2.AnnouncePersistentCachePeerResponse,
) -> list[PersistentCachePeerInfo] | None:
    if pb.WhichOneof("response") == "empty_persistent_cache_task_response":
        return None
    return [cache_peer_from_pb(p) for p in pb.normal_persistent_cache_task_response.candidate_cache_parents]


def cache_import_to_pb(c: CacheImport) -> dfdaemon_pb2.UploadPersistentCacheTaskRequest:
    return dfdaemon_pb2.UploadPersistentCacheTaskRequest(
        path=c.path,
        persistent_replica_count=c.persistent_replica_count,
        tag=c.tag or None,
        application=c.application or None,
        piece_length=c.piece_length,
        ttl=duration(c.ttl_s) if c.ttl_s is not None else None,
        content_for_calculating_task_id=c.content_for_calculating_task_id or None,
    )


def cache_import_from_pb(pb: dfdaemon_pb2.UploadPersistentCacheTaskRequest) -> CacheImport:
    return CacheImport(
        path=pb.path,
        persistent_replica_count=pb.persistent_replica_count,
        tag=pb.tag,
        application=pb.application,
        piece_length=pb.piece_length if pb.HasField("piece_length") else None,
        ttl_s=seconds(pb.ttl) if pb.HasField("ttl") else None,
        content_for_calculating_task_id=(
            pb.content_for_calculating_task_id if pb.HasField("content_for_calculating_task_id") else ""
        ),
    )


def cache_export_to_pb(c: CacheExport) -> dfdaemon_pb2.DownloadPersistentCacheTaskRequest:
    return dfdaemon_pb2.DownloadPersistentCacheTaskRequest(
        task_id=c.task_id,
        persistent=c.persistent,
        tag=c.tag or None,
        application=c.application or None,
        output_path=c.output_path or None,
        timeout=duration(c.timeout_s) if c.timeout_s is not None else None,
        digest=c.digest or None,
        force_hard_link=c.force_hard_link,
    )


def cache_export_from_pb(pb: dfdaemon_pb2.DownloadPersistentCacheTaskRequest) -> CacheExport:
    return CacheExport(
        task_id=pb.task_id,
        persistent=pb.persistent,
        tag=pb.tag,
        application=pb.application,
        output_path=pb.output_path,
        timeout_s=seconds(pb.timeout) if pb.HasField("timeout") else None,
        digest=pb.digest,
        force_hard_link=pb.force_hard_link,
    )


def cache_progress_to_pb(
    host_id: str, event: DownloadProgress
) -> dfdaemon_pb2.DownloadPersistentCacheTaskResponse:
    if isinstance(event, DownloadStarted):
        return dfdaemon_pb2.DownloadPersistentCacheTaskResponse(
            host_id=host_id,
            task_id=event.task_id,
            download_persistent_cache_task_started_response=dfdaemon_pb2.DownloadPersistentCacheTaskStartedResponse(
                content_length=event.content_length
            ),
        )
    return dfdaemon_pb2.DownloadPersistentCacheTaskResponse(
        host_id=host_id,
        task_id=event.task_id,
        download_piece_finished_response=dfdaemon_pb2.DownloadPieceFinishedResponse(
            piece=piece_to_pb(event.piece)
        ),
    )


def cache_progress_from_pb(pb: dfdaemon_pb2.DownloadPersistentCacheTaskResponse) -> DownloadProgress:
    if pb.HasField("download_persistent_cache_task_started_response"):
        return DownloadStarted(pb.task_id, pb.download_persistent_cache_task_started_response.content_length)
    return PieceDownloaded(pb.task_id, piece_from_pb(pb.download_piece_finished_response.piece))
