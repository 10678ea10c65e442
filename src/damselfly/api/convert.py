"""Translate between Dragonfly v2 protobuf messages and :mod:`damselfly.domain` types.

Each message the scheduler or the daemon sends or reads with a domain meaning
has a ``*_to_pb`` / ``*_from_pb`` pair here; the services and clients call
them at the RPC edge, and the code behind the edge sees domain types only.
Requests made of IDs alone are built where they are sent.
"""

from __future__ import annotations

import time
from typing import cast

from google.protobuf import duration_pb2, timestamp_pb2

from ..domain import (
    ByteRange,
    CandidateParent,
    DownloadSpec,
    EmptyTask,
    HostInfo,
    HostType,
    LocalTaskInfo,
    MetadataOnly,
    NeedBackToSource,
    NormalTask,
    PeerInfo,
    PieceInfo,
    ScheduleAnswer,
    SizeScope,
    TaskInfo,
    TrafficType,
)
from . import common_pb2, dfdaemon_pb2, scheduler_pb2


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def seconds(d: duration_pb2.Duration) -> float:
    return float(d.seconds) + float(d.nanos) / 1e9


def timestamp(wall: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(wall * 1e9))
    return ts


def wall(ts: timestamp_pb2.Timestamp) -> float:
    return float(ts.ToNanoseconds()) / 1e9


# -- hosts -------------------------------------------------------------------


def host_to_pb(h: HostInfo) -> common_pb2.Host:
    pb = common_pb2.Host(
        id=h.id,
        type=int(h.type),
        hostname=h.hostname,
        ip=h.ip,
        port=h.port,
        download_port=h.download_port,
        proxy_port=h.proxy_port,
        os=h.os,
        platform=h.platform,
        disable_shared=h.disable_shared,
    )
    pb.network.idc = h.idc
    pb.network.location = h.location
    pb.network.max_tx_bandwidth = h.max_tx_bandwidth
    pb.network.tx_bandwidth = h.tx_bandwidth
    pb.network.max_rx_bandwidth = h.max_rx_bandwidth
    pb.network.rx_bandwidth = h.rx_bandwidth
    pb.network.upload_tcp_connection_count = h.upload_tcp_connection_count
    pb.build.git_version = h.version
    return pb


def host_from_pb(pb: common_pb2.Host) -> HostInfo:
    try:
        host_type = HostType(pb.type)
    except ValueError:
        host_type = HostType.NORMAL
    return HostInfo(
        id=pb.id,
        hostname=pb.hostname,
        ip=pb.ip,
        port=pb.port,
        download_port=pb.download_port,
        type=host_type,
        idc=pb.network.idc,
        location=pb.network.location,
        proxy_port=pb.proxy_port,
        max_tx_bandwidth=pb.network.max_tx_bandwidth,
        tx_bandwidth=pb.network.tx_bandwidth,
        max_rx_bandwidth=pb.network.max_rx_bandwidth,
        rx_bandwidth=pb.network.rx_bandwidth,
        upload_tcp_connection_count=pb.network.upload_tcp_connection_count,
        disable_shared=pb.disable_shared,
        os=pb.os,
        platform=pb.platform,
        version=pb.build.git_version,
    )


# -- downloads ---------------------------------------------------------------


def download_to_pb(d: DownloadSpec) -> common_pb2.Download:
    pb = common_pb2.Download(
        url=d.url,
        digest=d.digest or None,
        tag=d.tag or None,
        application=d.application or None,
        priority=cast(common_pb2.Priority, d.priority),
        filtered_query_params=d.filtered_query_params or [],
        request_header=d.request_header,
        output_path=d.output_path or None,
        disable_back_to_source=d.disable_back_to_source,
        need_back_to_source=d.need_back_to_source,
        prefetch=d.prefetch,
        force_hard_link=d.force_hard_link,
        enable_task_id_based_blob_digest=d.enable_task_id_based_blob_digest,
    )
    if d.piece_length:
        pb.piece_length = d.piece_length
    if d.timeout_s:
        pb.timeout.CopyFrom(duration(d.timeout_s))
    if d.range is not None:
        pb.range.start = d.range.start
        pb.range.length = d.range.length
    if d.content_for_calculating_task_id:
        pb.content_for_calculating_task_id = d.content_for_calculating_task_id
    if d.concurrent_piece_count:
        pb.concurrent_piece_count = d.concurrent_piece_count
    if d.remote_ip:
        pb.remote_ip = d.remote_ip
    # An explicit empty list means "filter nothing"; mark it so the peer can tell.
    return pb


def download_from_pb(pb: common_pb2.Download) -> DownloadSpec:
    return DownloadSpec(
        url=pb.url,
        digest=pb.digest,
        tag=pb.tag,
        application=pb.application,
        priority=pb.priority,
        filtered_query_params=list(pb.filtered_query_params) or None,
        request_header=dict(pb.request_header),
        piece_length=pb.piece_length if pb.HasField("piece_length") and pb.piece_length else None,
        output_path=pb.output_path,
        timeout_s=seconds(pb.timeout) if pb.HasField("timeout") else None,
        disable_back_to_source=pb.disable_back_to_source,
        need_back_to_source=pb.need_back_to_source,
        range=ByteRange(pb.range.start, pb.range.length) if pb.HasField("range") else None,
        prefetch=pb.prefetch,
        force_hard_link=pb.force_hard_link,
        content_for_calculating_task_id=pb.content_for_calculating_task_id,
        concurrent_piece_count=pb.concurrent_piece_count,
        remote_ip=pb.remote_ip,
        enable_task_id_based_blob_digest=pb.enable_task_id_based_blob_digest,
    )


# -- pieces ------------------------------------------------------------------


def piece_to_pb(p: PieceInfo, *, now: float | None = None) -> common_pb2.Piece:
    """A piece as Dragonfly's messages carry it, ``cost`` and ``created_at`` always set.

    Dragonfly's scheduler validates both as required (protoc-gen-validate rules of
    ``common.v2.Piece``, api pkg/apis/common/v2/common.proto:854-856) and ends the
    stream of a peer that leaves them out. ``created_at`` is when the piece's
    transfer began: ``now`` (wall clock seconds, the current time unless given)
    less its cost.
    """
    wall_now = time.time() if now is None else now
    pb = common_pb2.Piece(
        number=p.number,
        offset=p.offset,
        length=p.length,
        digest=p.digest,
        traffic_type=cast(common_pb2.TrafficType, int(p.traffic_type)),
        cost=duration(p.cost_s),
        created_at=timestamp(wall_now - p.cost_s),
    )
    if p.parent_id:
        pb.parent_id = p.parent_id
    return pb


def piece_from_pb(pb: common_pb2.Piece) -> PieceInfo:
    try:
        traffic = TrafficType(pb.traffic_type)
    except ValueError:
        traffic = TrafficType.REMOTE_PEER
    return PieceInfo(
        number=pb.number,
        offset=pb.offset,
        length=pb.length,
        digest=pb.digest,
        parent_id=pb.parent_id,
        traffic_type=traffic,
        cost_s=seconds(pb.cost) if pb.HasField("cost") else 0.0,
    )


# -- candidate parents and scheduling answers --------------------------------


def candidate_to_pb(c: CandidateParent) -> common_pb2.Peer:
    pb = common_pb2.Peer(id=c.peer_id, state=c.state)
    pb.host.CopyFrom(host_to_pb(c.host))
    pb.task.id = c.task_id
    if c.content_length is not None:
        pb.task.content_length = c.content_length
    if c.piece_count is not None:
        pb.task.piece_count = c.piece_count
    return pb


# Dragonfly's scheduler sends a task length it does not know (-1) as uint64(-1)
# (scheduler/scheduling/scheduling.go:1091, constructSuccessNormalTaskResponse).
UNKNOWN_CONTENT_LENGTH = 2**64 - 1


def candidate_from_pb(pb: common_pb2.Peer) -> CandidateParent:
    """A candidate parent; its length None when the message does not say it (0, or 2^64-1).

    The message itself is kept, serialized as received, so a reschedule can send it
    back whole (:attr:`CandidateParent.wire`).
    """
    length = pb.task.content_length
    has_length = (
        pb.HasField("task") and length != UNKNOWN_CONTENT_LENGTH and bool(length or pb.task.piece_count)
    )
    return CandidateParent(
        peer_id=pb.id,
        host=host_from_pb(pb.host),
        task_id=pb.task.id,
        content_length=length if has_length else None,
        piece_count=pb.task.piece_count if has_length else None,
        state=pb.state,
        wire=pb.SerializeToString(),
    )


def answer_to_pb(answer: ScheduleAnswer) -> scheduler_pb2.AnnouncePeerResponse:
    if isinstance(answer, MetadataOnly):
        return scheduler_pb2.AnnouncePeerResponse(metadata_only_response=scheduler_pb2.MetadataOnlyResponse())
    if isinstance(answer, NormalTask):
        return scheduler_pb2.AnnouncePeerResponse(
            normal_task_response=scheduler_pb2.NormalTaskResponse(
                candidate_parents=[candidate_to_pb(c) for c in answer.parents]
            )
        )
    if isinstance(answer, NeedBackToSource):
        return scheduler_pb2.AnnouncePeerResponse(
            need_back_to_source_response=scheduler_pb2.NeedBackToSourceResponse(
                description=answer.description
            )
        )
    return scheduler_pb2.AnnouncePeerResponse(empty_task_response=scheduler_pb2.EmptyTaskResponse())


def answer_from_pb(pb: scheduler_pb2.AnnouncePeerResponse) -> ScheduleAnswer:
    which = pb.WhichOneof("response")
    if which == "normal_task_response":
        return NormalTask([candidate_from_pb(p) for p in pb.normal_task_response.candidate_parents])
    if which == "need_back_to_source_response":
        return NeedBackToSource(pb.need_back_to_source_response.description)
    if which == "empty_task_response":
        return EmptyTask()
    if which == "metadata_only_response":
        return MetadataOnly()
    raise ValueError(f"unexpected AnnouncePeerResponse {which!r}")


# -- StatTask, StatPeer, StatLocalTask -----------------------------------------------


def task_to_pb(t: TaskInfo) -> common_pb2.Task:
    pb = common_pb2.Task(
        id=t.id,
        type=common_pb2.STANDARD,
        url=t.url,
        tag=t.tag,
        application=t.application,
        filtered_query_params=t.filtered_query_params,
        content_length=t.content_length,
        piece_count=t.piece_count,
        state=t.state,
        peer_count=t.peer_count,
        has_available_peer=t.has_available_peer,
    )
    if t.digest is not None:
        pb.digest = t.digest
    return pb


def task_from_pb(pb: common_pb2.Task) -> TaskInfo:
    return TaskInfo(
        id=pb.id,
        url=pb.url,
        digest=pb.digest if pb.HasField("digest") else None,
        tag=pb.tag if pb.HasField("tag") else None,
        application=pb.application if pb.HasField("application") else None,
        filtered_query_params=list(pb.filtered_query_params),
        content_length=pb.content_length,
        piece_count=pb.piece_count,
        state=pb.state,
        peer_count=pb.peer_count,
        has_available_peer=pb.has_available_peer,
    )


def peer_to_pb(p: PeerInfo) -> common_pb2.Peer:
    return common_pb2.Peer(
        id=p.id,
        state=p.state,
        need_back_to_source=p.need_back_to_source,
        task=task_to_pb(p.task),
        host=host_to_pb(p.host),
    )


def peer_from_pb(pb: common_pb2.Peer) -> PeerInfo:
    return PeerInfo(
        id=pb.id,
        state=pb.state,
        task=task_from_pb(pb.task),
        host=host_from_pb(pb.host),
        need_back_to_source=pb.need_back_to_source,
    )


def local_task_to_pb(t: LocalTaskInfo) -> dfdaemon_pb2.StatLocalTaskResponse:
    pb = dfdaemon_pb2.StatLocalTaskResponse(
        task_id=t.task_id,
        piece_length=t.piece_length,
        content_length=t.content_length,
        response_header=t.response_header,
        uploading_count=t.uploading_count,
        uploaded_count=t.uploaded_count,
        created_at=timestamp(t.created_at),
        updated_at=timestamp(t.updated_at),
    )
    if t.finished_at is not None:
        pb.finished_at.CopyFrom(timestamp(t.finished_at))
    if t.failed_at is not None:
        pb.failed_at.CopyFrom(timestamp(t.failed_at))
    return pb


def local_task_from_pb(pb: dfdaemon_pb2.StatLocalTaskResponse) -> LocalTaskInfo:
    return LocalTaskInfo(
        task_id=pb.task_id,
        piece_length=pb.piece_length,
        content_length=pb.content_length,
        response_header=dict(pb.response_header),
        uploading_count=pb.uploading_count,
        uploaded_count=pb.uploaded_count,
        created_at=wall(pb.created_at),
        updated_at=wall(pb.updated_at),
        finished_at=wall(pb.finished_at) if pb.HasField("finished_at") else None,
        failed_at=wall(pb.failed_at) if pb.HasField("failed_at") else None,
    )


# -- the scheduler's side of AnnouncePeer and StatTask/StatPeer ---------------------

# ``common.v2.SizeScope.UNKNOW``: in Dragonfly's Go API (A:pkg/apis/common/v2/common.pb.go:54),
# not in the Python package's enum; a proto3 enum field carries the number all the same.
SIZE_SCOPE_UNKNOWN = 4


def actual_sizes(pb: common_pb2.Download) -> tuple[int | None, int | None, int | None]:
    """``(content_length, piece_length, piece_count)`` a register reports, None where unset.

    A Rust dfdaemon sets all three on every register, from the origin's answer or
    its local copy (C:dragonfly-client/src/grpc/dfdaemon_download.rs:441-443).
    """
    return (
        pb.actual_content_length if pb.HasField("actual_content_length") else None,
        pb.actual_piece_length if pb.HasField("actual_piece_length") and pb.actual_piece_length else None,
        pb.actual_piece_count if pb.HasField("actual_piece_count") else None,
    )


def scheduler_task_to_pb(
    t: TaskInfo,
    *,
    content_length: int | None,
    piece_count: int | None,
    size_scope: SizeScope | None,
    pieces: list[PieceInfo] | None = None,
) -> common_pb2.Task:
    """``StatTask`` as Dragonfly's scheduler answers it: an unknown length is 2^64-1 and
    its size scope UNKNOW; ``pieces`` are those fetched from the origin."""
    pb = task_to_pb(t)
    pb.content_length = UNKNOWN_CONTENT_LENGTH if content_length is None else content_length
    pb.piece_count = piece_count or 0
    pb.size_scope = cast(common_pb2.SizeScope, SIZE_SCOPE_UNKNOWN if size_scope is None else int(size_scope))
    pb.pieces.extend(piece_to_pb(p) for p in pieces or ())
    return pb


def scheduler_peer_to_pb(p: PeerInfo, task: common_pb2.Task) -> common_pb2.Peer:
    """``StatPeer``: the peer with its task as ``StatTask`` describes it."""
    pb = peer_to_pb(p)
    pb.task.CopyFrom(task)
    return pb
