"""Small domain types shared by the scheduler and the daemon.

These are what policy code sees; protobuf messages are translated to and from
them in :mod:`damselfly.api.convert` and nowhere else.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class HostType(enum.IntEnum):
    """``common.v2.Host.type``: 0 is a normal peer, the others are seed peers."""

    NORMAL = 0
    SUPER_SEED = 1
    STRONG_SEED = 2
    WEAK_SEED = 3

    @property
    def is_seed(self) -> bool:
        return self is not HostType.NORMAL


class TrafficType(enum.IntEnum):
    BACK_TO_SOURCE = 0
    REMOTE_PEER = 1
    LOCAL_PEER = 2


class SizeScope(enum.IntEnum):
    NORMAL = 0
    SMALL = 1
    TINY = 2
    EMPTY = 3


@dataclass(slots=True)
class HostInfo:
    """What a daemon announces about itself (AnnounceHost)."""

    id: str
    hostname: str
    ip: str
    port: int  # gRPC DfdaemonUpload
    download_port: int  # piece data server (Vortex over TCP)
    type: HostType = HostType.NORMAL
    idc: str = ""
    location: str = ""
    proxy_port: int = 0
    # Bandwidths in bytes per second; 0 means unknown.
    max_tx_bandwidth: int = 0
    tx_bandwidth: int = 0
    max_rx_bandwidth: int = 0
    rx_bandwidth: int = 0
    upload_tcp_connection_count: int = 0
    disable_shared: bool = False
    os: str = ""
    platform: str = ""
    version: str = ""


@dataclass(slots=True)
class ByteRange:
    start: int
    length: int


@dataclass(slots=True)
class DownloadSpec:
    """One download request (``common.v2.Download``)."""

    url: str
    digest: str = ""
    tag: str = ""
    application: str = ""
    priority: int = 0
    filtered_query_params: list[str] | None = None  # None: the defaults of ids.py
    request_header: dict[str, str] = field(default_factory=dict)
    piece_length: int | None = None
    output_path: str = ""
    timeout_s: float | None = None
    disable_back_to_source: bool = False
    need_back_to_source: bool = False
    range: ByteRange | None = None
    prefetch: bool = False
    force_hard_link: bool = False
    content_for_calculating_task_id: str = ""
    concurrent_piece_count: int = 0
    remote_ip: str = ""


@dataclass(slots=True)
class PieceInfo:
    """A finished piece as peers and the scheduler describe it."""

    number: int
    offset: int
    length: int
    digest: str = ""
    parent_id: str = ""
    traffic_type: TrafficType = TrafficType.REMOTE_PEER
    cost_s: float = 0.0


@dataclass(slots=True)
class CandidateParent:
    """A parent the scheduler offers a peer, with what the child needs to reach it."""

    peer_id: str
    host: HostInfo
    task_id: str = ""
    content_length: int | None = None
    piece_count: int | None = None
    finished_pieces: int = 0
    state: str = ""


# Scheduler answers to a registered peer (AnnouncePeerResponse).
@dataclass(slots=True)
class NormalTask:
    parents: list[CandidateParent]


@dataclass(slots=True)
class NeedBackToSource:
    description: str = ""


@dataclass(slots=True)
class EmptyTask:
    pass


ScheduleAnswer = NormalTask | NeedBackToSource | EmptyTask
