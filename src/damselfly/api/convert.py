"""Translate between Dragonfly v2 protobuf messages and :mod:`damselfly.domain` types."""

from __future__ import annotations

from typing import Any, cast

from google.protobuf import duration_pb2

from ..domain import (
    ByteRange,
    CandidateParent,
    DownloadSpec,
    EmptyTask,
    HostInfo,
    HostType,
    NeedBackToSource,
    NormalTask,
    PieceInfo,
    ScheduleAnswer,
    TrafficType,
)
from . import common_pb2, scheduler_pb2

PB = Any  # protobuf messages carry no static types here


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def seconds(d: PB) -> float:
    return float(d.seconds) + float(d.nanos) / 1e9


# -- hosts -------------------------------------------------------------------


def host_to_pb(h: HostInfo) -> PB:
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


def host_from_pb(pb: PB) -> HostInfo:
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


def download_to_pb(d: DownloadSpec) -> PB:
    pb = common_pb2.Download(
        url=d.url,
        digest=d.digest or None,
        tag=d.tag or None,
        application=d.application or None,
        priority=cast(Any, d.priority),
        filtered_query_params=d.filtered_query_params or [],
        request_header=d.request_header,
        output_path=d.output_path or None,
        disable_back_to_source=d.disable_back_to_source,
        need_back_to_source=d.need_back_to_source,
        prefetch=d.prefetch,
        force_hard_link=d.force_hard_link,
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


def download_from_pb(pb: PB) -> DownloadSpec:
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
    )


# -- pieces ------------------------------------------------------------------


def piece_to_pb(p: PieceInfo) -> PB:
    pb = common_pb2.Piece(
        number=p.number,
        offset=p.offset,
        length=p.length,
        digest=p.digest,
        traffic_type=cast(Any, int(p.traffic_type)),
    )
    if p.parent_id:
        pb.parent_id = p.parent_id
    if p.cost_s:
        pb.cost.CopyFrom(duration(p.cost_s))
    return pb


def piece_from_pb(pb: PB) -> PieceInfo:
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


def candidate_to_pb(c: CandidateParent) -> PB:
    pb = common_pb2.Peer(id=c.peer_id, state=c.state)
    pb.host.CopyFrom(host_to_pb(c.host))
    pb.task.id = c.task_id
    if c.content_length is not None:
        pb.task.content_length = c.content_length
    if c.piece_count is not None:
        pb.task.piece_count = c.piece_count
    return pb


def candidate_from_pb(pb: PB) -> CandidateParent:
    has_length = pb.HasField("task") and (pb.task.content_length or pb.task.piece_count)
    return CandidateParent(
        peer_id=pb.id,
        host=host_from_pb(pb.host),
        task_id=pb.task.id,
        content_length=pb.task.content_length if has_length else None,
        piece_count=pb.task.piece_count if has_length else None,
        state=pb.state,
    )


def answer_to_pb(answer: ScheduleAnswer) -> PB:
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


def answer_from_pb(pb: PB) -> ScheduleAnswer:
    which = pb.WhichOneof("response")
    if which == "normal_task_response":
        return NormalTask([candidate_from_pb(p) for p in pb.normal_task_response.candidate_parents])
    if which == "need_back_to_source_response":
        return NeedBackToSource(pb.need_back_to_source_response.description)
    if which == "empty_task_response":
        return EmptyTask()
    raise ValueError(f"unexpected AnnouncePeerResponse {which!r}")
