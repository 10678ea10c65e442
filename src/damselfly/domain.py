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


@dataclass(frozen=True, slots=True)
class MetadataOnly:
    """The answer to a register that only reports a task held complete (``metadata_only``):
    the peer is recorded, nothing is scheduled; the peer then says Started and Finished."""

    description: str = ""


ScheduleAnswer = NormalTask | NeedBackToSource | EmptyTask | MetadataOnly


# -- what StatTask, StatPeer and StatLocalTask describe ----------------------------


@dataclass(slots=True)
class TaskInfo:
    """A task as ``StatTask`` describes it (``common.v2.Task``), from the scheduler or a daemon.

    ``digest``, ``tag`` and ``application`` are None when not sent: the message
    tells an unset field from an empty one, and the two senders differ there.
    """

    id: str
    url: str = ""
    digest: str | None = None
    tag: str | None = None
    application: str | None = None
    filtered_query_params: list[str] = field(default_factory=list)
    content_length: int = 0
    piece_count: int = 0
    state: str = ""
    peer_count: int = 0
    has_available_peer: bool = False


@dataclass(slots=True)
class PeerInfo:
    """A peer as the scheduler's ``StatPeer`` describes it (``common.v2.Peer``)."""

    id: str
    state: str
    task: TaskInfo
    host: HostInfo
    need_back_to_source: bool = False


@dataclass(slots=True)
class LocalTaskInfo:
    """A task this daemon holds, for ``StatLocalTask`` / ``ListLocalTasks``. Times: wall clock seconds."""

    task_id: str
    piece_length: int = 0
    content_length: int = 0
    response_header: dict[str, str] = field(default_factory=dict)
    uploading_count: int = 0
    uploaded_count: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None
    failed_at: float | None = None


# -- persistent cache tasks (dfcache) ------------------------------------------------


@dataclass(slots=True)
class PersistentCacheTaskInfo:
    """A persistent cache task (``common.v2.PersistentCacheTask``). Times: wall clock seconds;
    None where the message leaves them out."""

    id: str
    persistent_replica_count: int = 0
    current_persistent_replica_count: int = 0
    current_replica_count: int = 0
    tag: str = ""
    application: str = ""
    piece_length: int = 0
    content_length: int = 0
    piece_count: int = 0
    state: str = ""
    ttl_s: float | None = None
    created_at: float | None = None
    updated_at: float | None = None

    def expires_at(self, now: float) -> float:
        """When the task expires (0: never); ``now`` stands in for a creation time not sent."""
        ttl = self.ttl_s or 0.0
        created = self.created_at if self.created_at is not None else now
        return created + ttl if ttl > 0 else 0.0


@dataclass(slots=True)
class PersistentCachePeerInfo:
    """A host's copy of a persistent cache task (``common.v2.PersistentCachePeer``)."""

    id: str
    task: PersistentCacheTaskInfo
    persistent: bool = False
    state: str = ""
    host: HostInfo | None = None  # None: the host is gone


@dataclass(slots=True)
class CacheImport:
    """Import a file as a persistent cache task (``UploadPersistentCacheTask``)."""

    path: str
    persistent_replica_count: int = 0  # 0: the daemon's default
    tag: str = ""
    application: str = ""
    piece_length: int | None = None  # None: chosen from the size
    ttl_s: float | None = None  # None or <= 0: the daemon's default
    content_for_calculating_task_id: str = ""  # a name for the task; "": hash the content


@dataclass(slots=True)
class CacheExport:
    """Download a persistent cache task (``DownloadPersistentCacheTask``): an export or a replica."""

    task_id: str  # an ID or a name (``--id``)
    persistent: bool = False
    tag: str = ""
    application: str = ""
    output_path: str = ""  # "": keep it in the store only
    timeout_s: float | None = None
    digest: str = ""
    force_hard_link: bool = False


# What a download reports as it goes (download/progress.py).
@dataclass(slots=True)
class DownloadStarted:
    task_id: str
    content_length: int
    finished: bool = False  # the content was all there at the start (a local hit)


@dataclass(slots=True)
class PieceDownloaded:
    task_id: str
    piece: PieceInfo


DownloadProgress = DownloadStarted | PieceDownloaded
