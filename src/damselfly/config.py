"""Configuration: one typed object per component, composed at the root.

Defaults live here, written in units. YAML keys follow Dragonfly's where one
exists (camelCase, e.g. ``download.concurrentPieceCount``); snake_case field
names are accepted too. Load with :func:`load_daemon_config` /
:func:`load_scheduler_config`, which read an optional YAML file and apply
overrides given as a nested dict (from the command line).

Long because: every key of both components is declared here, once, with its default and
the comment that deploy/config's example files are generated from; splitting the sections
over modules would scatter what an operator reads as one reference.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError
from pydantic.alias_generators import to_camel

from .config_errors import validation_problem, yaml_problem
from .errors import ConfigError
from .units import MINUTES, SECONDS, KiB, MiB


class Section(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


# --------------------------------------------------------------------------- shared


class MetricsConfig(Section):
    """Prometheus ``/metrics`` and ``GET /healthy`` on one small HTTP server."""

    enable: bool = True
    ip: str = "127.0.0.1"
    port: int = 4002  # 0: pick a free port


class TLSConfig(Section):
    """mTLS for a gRPC link; all three paths empty means plaintext."""

    ca_cert: str = ""
    cert: str = ""
    key: str = ""
    # A DNS name every daemon's certificate carries (one certificate shared by a fleet, as a
    # Kubernetes Secret is): daemons' certificates are then checked against this name, not the
    # IP a daemon is dialed at, and the scheduler checks such a daemon's announced IP against
    # the address it calls from. Weaker than a certificate per host (docs/TLS.md). Empty: by IP.
    peer_name: str = ""


class LogConfig(Section):
    """How the process logs: ``format`` "text" (one readable line) or "json" (one JSON object a line)."""

    format: Literal["text", "json"] = "text"


class TracingConfig(Section):
    """OpenTelemetry tracing, off while ``endpoint`` is empty (keys as Dragonfly's ``tracing``).

    Spans go over OTLP/HTTP to ``{protocol}://{endpoint}{path}``; ``endpoint`` may also be a
    whole URL. Needs the ``tracing`` extra (``pip install 'damselfly[tracing]'``)."""

    protocol: Literal["http", "https"] = "http"
    endpoint: str = ""  # e.g. "otel-collector:4318"
    path: str = "/v1/traces"
    headers: dict[str, str] = Field(default_factory=dict)

    @property
    def url(self) -> str:
        """The OTLP/HTTP traces URL ("" when off)."""
        if not self.endpoint or "://" in self.endpoint:
            return self.endpoint
        return f"{self.protocol}://{self.endpoint}{self.path}"


# --------------------------------------------------------------------------- scheduler


class SchedulerServerConfig(Section):
    ip: str = "0.0.0.0"
    advertise_ip: str = ""
    port: int = 8002
    data_dir: str = ""  # logs and the ready file go here when set


class SchedulingConfig(Section):
    """Policy knobs of the scheduler (Dragonfly's ``scheduler.*``)."""

    algorithm: str = "default"  # evaluator name, see scheduler/evaluator.py
    # "chain" (default): the task's peers in a line, each fed by the one registered before
    # it, a peer on a slow link left out of others' way (scheduling.chain_parents); measured
    # nearest the bound in flash crowds (BENCHMARKS.md). "mesh": any peer of another host may
    # be a parent, so peers that started together trade pieces both ways (BitTorrent-like).
    # "dag": as mesh, but parents never descend from their child (Dragonfly's rule).
    topology: str = "chain"
    # Parents a peer may hold at once, counting those added by "more parents" reschedules.
    max_parents: int = 8
    candidate_parent_limit: int = 4
    filter_parent_limit: int = 15
    # Accepted so Dragonfly's scheduler files load; not used: a peer with no parent waits
    # ``backToSourceAfter`` (below) before it is sent to the origin, and a daemon stops
    # rescheduling after its own ``scheduler.maxScheduleCount`` answers.
    retry_limit: int = 5
    retry_back_to_source_limit: int = 3
    retry_interval: float = 0.2 * SECONDS
    # How long a peer may wait for a parent (e.g. a seed that was just triggered)
    # before the scheduler sends it to the origin.
    back_to_source_after: float = 10 * SECONDS
    # For this long after it starts, the scheduler neither triggers a seed for a task nobody
    # holds nor sends its first peer to the origin: after a restart the daemons register what
    # they hold and fetch again (within a health interval or two), and a task a seed or peer
    # still holds must find it, not the origin. Costs a fresh cluster's first download at most this.
    startup_grace: float = 2 * SECONDS
    peer_upload_limit: int = 200  # children per normal host
    seed_upload_limit: int = 2000  # children per seed host


class GCConfig(Section):
    interval: float = 30 * SECONDS
    # a host that stopped announcing is dropped after this
    host_ttl: float = Field(default=3 * MINUTES, alias="hostTTL")
    peer_ttl: float = Field(default=24 * 60 * MINUTES, alias="peerTTL")
    task_ttl: float = Field(default=24 * 60 * MINUTES, alias="taskTTL")
    # a peer stuck without progress
    pending_peer_ttl: float = Field(default=10 * MINUTES, alias="pendingPeerTTL")


class SeedPeerTriggerConfig(Section):
    enable: bool = True


class SecurityConfig(Section):
    """Who may do what on the scheduler (docs/SECURITY.md). Entries are certificate names (CN or
    DNS SAN), IPs or CIDR networks."""

    # Who may announce a seed peer: under mTLS its certificate, with TLS off its source
    # address. Empty: any host that may announce.
    seed_peers: list[str] = Field(default_factory=list)
    # Under mTLS, the certificates that may administer (preheat, delete any host or cache
    # task); the scheduler's own certificate always may.
    admins: list[str] = Field(default_factory=list)
    # With TLS off, the source addresses that may administer: the scheduler's own machine.
    admin_addresses: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1"])
    # With TLS off, networks behind NAT whose hosts may announce an IP other than the
    # address they call from.
    trusted_networks: list[str] = Field(default_factory=list)


class RedisConfig(Section):
    """Redis for the state that must outlive a scheduler and be shared by several: persistent
    cache tasks (dfcache), their peers and the hosts holding them (scheduler/cachestore/).

    One key, ``url``: ``redis://[[user]:password@]host:port/db``, ``rediss://`` (TLS) or
    ``unix:///path/redis.sock?db=0``. Empty (default): kept in the scheduler's memory, lost
    when it stops. Dragonfly spells this ``database.redis.{addrs,username,password,db}``.
    """

    url: str = ""


class DatabaseConfig(Section):
    redis: RedisConfig = Field(default_factory=RedisConfig)


class SchedulerConfig(Section):
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    server: SchedulerServerConfig = Field(default_factory=SchedulerServerConfig)
    scheduler: SchedulingConfig = Field(default_factory=SchedulingConfig)
    gc: GCConfig = Field(default_factory=GCConfig)
    seed_peer: SeedPeerTriggerConfig = Field(default_factory=SeedPeerTriggerConfig)
    metrics: MetricsConfig = Field(default_factory=lambda: MetricsConfig(port=8000))
    tls: TLSConfig = Field(default_factory=TLSConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)


# --------------------------------------------------------------------------- daemon


class HostConfig(Section):
    hostname: str = Field(default_factory=socket.gethostname)
    ip: str = ""  # advertised address; empty: the upload server's IP, or 127.0.0.1
    idc: str = ""
    location: str = ""


class SeedPeerConfig(Section):
    enable: bool = False
    type: str = "super"  # super | strong | weak
    # Give each piece to the swarm once while others have not gone out (see piece_server.py).
    super_seed: bool = True


class SchedulerClientConfig(Section):
    addrs: list[str] = Field(default_factory=lambda: ["127.0.0.1:8002"])
    # Under mTLS, the name (CN or DNS SAN) the schedulers' certificate carries; empty: the
    # host part of an address in ``addrs`` (an IP SAN for an IP). Only a scheduler may make
    # this daemon download or delete (docs/SECURITY.md).
    certificate_name: str = ""
    announce_interval: float = 30 * SECONDS
    schedule_timeout: float = 30 * SECONDS
    # Schedule answers a download takes before it fetches the rest from the origin (as
    # Dragonfly's client; "more parents" refreshes do not count).
    max_schedule_count: int = 5
    # Every scheduler is checked (grpc.health.v1) this often; a task goes to its scheduler on a
    # consistent-hash ring of those serving (daemon/scheduler_fleet.py).
    health_interval: float = 1 * SECONDS
    # Scheduler addresses given by name are resolved again this often (a name may give several).
    resolve_interval: float = 30 * SECONDS
    # A download that needs a scheduler and has none (all down, or restarting) waits this long
    # for one before it goes to the origin: a scheduler blink must not send the swarm there.
    # A download whose bytes are arriving never waits: it goes on and registers again later.
    wait_for_scheduler: float = 10 * SECONDS


class DownloadServerConfig(Section):
    socket_path: str = ""  # empty: <storage.dir>/dfdaemon.sock


class DownloadConfig(Section):
    server: DownloadServerConfig = Field(default_factory=DownloadServerConfig)
    concurrent_piece_count: int = 16
    # Pieces in flight to each parent when there are several (a lone parent: LONE_PARENT_DEPTH;
    # with few parents the workers still spread, concurrent_piece_count // (2 x parents)). One
    # piece per parent moves each piece at a larger share of the downlink, so a peer trails its
    # parents by less data in flight; measured (max / T_min): 8 x 100 mbit 1.28-1.30 -> 1.22-1.24,
    # 16 x 25 mbit 1.29-1.44 -> 1.31-1.35, mixed 1.06-1.08 -> 1.06.
    parent_concurrent_piece_count: int = 1
    max_parents: int = 8  # parents held at once, counting "more parents" refreshes
    parent_refresh_interval: float = 1 * SECONDS
    piece_picker: str = "rarest-first"  # daemon/download/picker.py
    # Serve a piece to children while it still arrives from a parent or the origin
    # (daemon/store/receiving.py).
    cut_through: bool = True
    # Ask parents for pieces with the digest after the content (vortex.Tag.DOWNLOAD_PIECE_TRAILER),
    # so a piece still arriving at a parent from the origin comes on at once; parents that do
    # not know that request get plain ones.
    trailer_digest: bool = True
    piece_timeout: float = 30 * SECONDS  # a parent that sends nothing for this long failed the piece
    bandwidth_limit: int = 0  # bytes/s for all downloads of the host; 0: unlimited
    back_to_source_bandwidth_limit: int = 0


class UploadServerConfig(Section):
    ip: str = "0.0.0.0"
    port: int = 4000  # gRPC DfdaemonUpload; 0: pick a free port
    request_rate_limit: float = 0  # RPCs per second; over it: RESOURCE_EXHAUSTED. 0: unlimited


class UploadConfig(Section):
    server: UploadServerConfig = Field(default_factory=UploadServerConfig)
    bandwidth_limit: int = 0
    concurrent_upload_limit: int = 200  # upload slots the host offers
    # Pieces sent at once, as many more queued; beyond that "busy". 0: no limit. A super-seed's
    # first sends of pieces go beside these slots (piece_server.FIRST_SEND_FACTOR). Measured on
    # the namespace testbed (max / T_min, links queued ack-first): 8 x 100 mbit, 2 -> 1.41-1.56,
    # 4 -> 1.32-1.34, 8 -> 1.32, unlimited -> 1.39; 16 x 25 mbit, 2 -> 1.69, 4 -> 1.36. (With
    # fifo links, where a busy uplink delayed its own ACKs, 2 had measured best.)
    concurrent_piece_count: int = 4
    # Bounds on the piece port (daemon/transfer/send_guard.py): a piece send that makes no
    # progress for sendIdleTimeout ends its connection and frees its slot; a piece must go out
    # at sendMinRate bytes/s on average (64 MiB in 17 min: a 5 mbit link shared by eight pieces
    # still finishes); at most connectionsPerAddress connections from one address (0: no cap),
    # a stalled one evicted first when a new one comes.
    send_idle_timeout: float = Field(default=5 * SECONDS, gt=0)
    send_min_rate: int = Field(default=64 * KiB, gt=0)
    connections_per_address: int = Field(default=64, ge=0)


class StorageServerConfig(Section):
    ip: str = "0.0.0.0"
    tcp_port: int = 4005  # Vortex piece server; 0: pick a free port
    request_rate_limit: float = 0  # piece requests (and SyncPieces streams)/s; over: Error 4. 0: unlimited


class StorageConfig(Section):
    dir: str = "/var/lib/damselfly"
    server: StorageServerConfig = Field(default_factory=StorageServerConfig)
    read_buffer_size: int = 1 * MiB
    write_buffer_size: int = 1 * MiB
    # A finished task's content is fsynced this long after it succeeded, so the user's
    # output (a hard link and a directory fsync) is not queued behind the store's bulk flush.
    durable_delay: float = Field(default=2 * SECONDS, ge=0)
    # Daemons on one machine (one network namespace) pass pieces as file descriptors of
    # their content files and copy them in the kernel, instead of over TCP (local_pieces.py).
    local_share: bool = True


class DaemonGCConfig(Section):
    """The daemon's cache lifecycle (see daemon/gc.py): TTL, then LRU between watermarks.

    Only the daemon's own task files count towards ``capacity``; other files on
    the disk neither count nor are touched.
    """

    interval: float = 1 * MINUTES  # how often the GC looks
    task_ttl: float = Field(default=24 * 60 * MINUTES, alias="taskTTL")  # unused this long: evicted; 0: never
    # The store's budget in bytes; 0: the size of the filesystem holding storage.dir.
    capacity: int = 0
    high_threshold: float = 80.0  # percent of capacity: above it, evict least recently used tasks...
    low_threshold: float = 60.0  # ...until the store is at or below this percent


class SourceConfig(Section):
    connect_timeout: float = 10 * SECONDS
    # The origin must send a byte at least this often, or the download fails.
    read_timeout: float = 60 * SECONDS
    insecure_skip_verify: bool = False
    ca_cert: str = ""
    # Byte ranges fetched at once for one large download from an origin that honours Range
    # (split at piece boundaries; 1: one stream). More streams fill a link whose ACKs wait
    # behind this host's own uploads (a seed feeding the swarm).
    range_streams: int = 1


class ProxyServerConfig(Section):
    """Where the registry mirror / HTTP(S) proxy listens. Loopback by default: never an open proxy."""

    ip: str = "127.0.0.1"
    port: int = 4001  # 0: pick a free port
    # A connection whose request head (the first, a CONNECT's, or one inside an intercepted
    # tunnel) is not complete this long after it began is closed.
    head_timeout: float = Field(default=10 * SECONDS, gt=0)


class ProxyRuleConfig(Section):
    """A URL regex and what to do with matching GETs (Dragonfly's ``proxy.rules[]``).

    ``direct``: pass straight through instead of P2P. ``use_tls``: fetch the
    upstream over https even when the request said http. ``redirect``: replace
    the URL's host (or the whole URL prefix when it has a scheme) upstream.
    """

    regx: str
    use_tls: bool = Field(default=False, alias="useTLS")
    direct: bool = False
    redirect: str = ""


class RegistryMirrorConfig(Section):
    """The registry mirror: where requests that name no registry go, and which may be named.

    A mirror request names its registry by ``X-Dragonfly-Registry``, containerd's
    ``?ns=``, or the mirror path (``/v2/damselfly__mirror/<scheme>/<host>[_<port>]/...``,
    daemon/proxy/mirror.py); it is served with GET and HEAD only.
    """

    url: str = "https://index.docker.io"
    insecure: bool = False  # skip upstream TLS verification for this registry
    certs: list[str] = Field(default_factory=list)  # extra CA bundles (PEM files) for it
    # Honour a registry a request names (header, ?ns=, mirror path); off: only ``url`` is
    # served and a request naming another registry is refused.
    dynamic: bool = True
    # Registries (regexes, matched whole against host or host:port) a request may name;
    # empty: any but link-local addresses. ``url`` is always allowed. Checked before any
    # connection is made.
    allowed_registries: list[str] = Field(default_factory=list)


class HijackHostConfig(Section):
    """A host whose CONNECT tunnels are TLS-intercepted (and its upstream TLS options)."""

    regx: str
    insecure: bool = False
    certs: list[str] = Field(default_factory=list)


class HijackHTTPSConfig(Section):
    """TLS interception of CONNECT: the CA that signs per-host leaf certificates.

    Empty ``cert``/``key``: a CA is generated on first start and kept in
    ``<storage.dir>/proxy-ca/`` (``damselfly ca`` prints it for users to trust).
    """

    cert: str = ""
    key: str = ""
    hosts: list[HijackHostConfig] = Field(default_factory=list)


class ProxyConfig(Section):
    """Registry mirror and HTTP(S) proxy on the daemon (Dragonfly's ``proxy.*``)."""

    enable: bool = True
    server: ProxyServerConfig = Field(default_factory=ProxyServerConfig)
    rules: list[ProxyRuleConfig] = Field(default_factory=lambda: [ProxyRuleConfig(regx="blobs/sha256.*")])
    registry_mirror: RegistryMirrorConfig = Field(default_factory=RegistryMirrorConfig)
    hijack_https: HijackHTTPSConfig = Field(default_factory=HijackHTTPSConfig, alias="hijackHTTPS")
    # Hosts (regexes) that absolute-URI requests and CONNECT may reach besides
    # the registries and hijacked hosts; nothing else is proxied.
    allow_hosts: list[str] = Field(default_factory=list)
    # A registry blob's task ID is its digest: one blob from two registries is one task.
    blob_task_id_by_digest: bool = True
    # After a Range request, keep downloading the whole blob (always true today:
    # a task downloads whole; kept for Dragonfly compatibility).
    prefetch: bool = True
    # Blobs started in the background after the one a client asks for, in the order of the image
    # manifest it fetched through this proxy (clients such as skopeo pull one layer at a time).
    read_ahead: int = Field(default=1, ge=0)


class WireConfig(Section):
    """How this daemon speaks on the wire (docs/INTEROP.md).

    ``extensions`` (default on) lets it use Damselfly's own wire extensions with
    peers and schedulers that announce them (the trailer digest, "busy" and
    "elsewhere" answers, pooled piece connections, same-machine file handover,
    a Damselfly scheduler's knowledge of a task's size). Off, the daemon behaves
    on the wire exactly as a Dragonfly peer does, with every peer and scheduler.
    """

    extensions: bool = True


class DaemonConfig(Section):
    host: HostConfig = Field(default_factory=HostConfig)
    seed_peer: SeedPeerConfig = Field(default_factory=SeedPeerConfig)
    scheduler: SchedulerClientConfig = Field(default_factory=SchedulerClientConfig)
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    upload: UploadConfig = Field(default_factory=UploadConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    source: SourceConfig = Field(default_factory=SourceConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    tls: TLSConfig = Field(default_factory=TLSConfig)
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    gc: DaemonGCConfig = Field(default_factory=DaemonGCConfig)
    wire: WireConfig = Field(default_factory=WireConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    # Where this config came from, so SIGHUP can read it again (set by load_daemon_config).
    _source_file: Path | None = PrivateAttr(default=None)
    _source_overrides: dict[str, Any] = PrivateAttr(default_factory=dict)

    def reload(self) -> DaemonConfig:
        """This config read again from its file, with the same command-line overrides."""
        return load_daemon_config(self._source_file, self._source_overrides)

    @property
    def socket_path(self) -> Path:
        return Path(self.download.server.socket_path or Path(self.storage.dir) / "dfdaemon.sock")


# --------------------------------------------------------------------------- loading

M = TypeVar("M", bound=BaseModel)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; an override's snake_case key meets the file's camelCase one."""
    out = dict(base)
    for key, v in over.items():
        k = key
        if k not in out and to_camel(k) in out:
            k = to_camel(k)
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _load(model: type[M], path: str | Path | None, overrides: dict[str, Any] | None) -> M:
    """``model`` from the YAML file at ``path`` with ``overrides`` on top; any problem is a
    :class:`ConfigError` of one line naming the file and each offending key."""
    data: dict[str, Any] = {}
    where = f"config {path}" if path else "configuration"
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{where} is not valid YAML: {yaml_problem(e)}") from e
        except (UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"{where} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"{where} must be a mapping at the top level")
        data = loaded
    try:
        data = _merge(data, overrides or {})
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(validation_problem(model, err) for err in e.errors())
        raise ConfigError(f"invalid configuration{f' in {path}' if path else ''}: {problems}") from None
    except (TypeError, ValueError, RecursionError) as e:  # keys that are not strings, and the like
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"invalid configuration{f' in {path}' if path else ''}: {first}") from None


def load_daemon_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> DaemonConfig:
    config = _load(DaemonConfig, path, overrides)
    config._source_file = Path(path) if path else None
    config._source_overrides = dict(overrides or {})
    return config


def load_scheduler_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> SchedulerConfig:
    return _load(SchedulerConfig, path, overrides)
