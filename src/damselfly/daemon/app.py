"""The daemon process: its listeners, its background jobs, start and stop.

Listeners (docs/PROTOCOL.md): DfdaemonUpload gRPC (peers, the scheduler),
the piece server (Vortex over TCP), DfdaemonDownload gRPC on a unix socket
(dfget), and ``/metrics`` + ``/healthy`` over HTTP. Background jobs: the host
scheduler fleet (health checks, host announces, held tasks registered again:
:mod:`.scheduler_fleet`, :mod:`.announcer`). Owner of everything here: :class:`Daemon`; :meth:`Daemon.stop`
closes it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from aiohttp import web

from .. import __version__, ids
from ..api import dfdaemon_pb2_grpc
from ..api.health import DFDAEMON_DOWNLOAD, DFDAEMON_UPLOAD, Health
from ..config import DaemonConfig
from ..domain import HostInfo, HostType
from ..errors import DamselflyError, SchedulerError
from ..process import (
    DAEMON_GC_TUNING_ENV,
    gc_tuning_wanted,
    metrics_app,
    run_until_signal,
    tune_gc,
    write_ready_file,
)
from ..security.authz import SchedulerGate
from ..security.tls import client_ssl_context, load_tls, server_credentials, server_ssl_context
from .announcer import Announcer
from .download.conductor import ConductorDeps
from .download.tasks import TaskManager
from .download_rpc import Downloads
from .gc import CacheGC
from .metrics import DaemonMetrics
from .origin.source import HTTPSource
from .persistent_cache import PersistentCache, local_delete_handler
from .ratelimit import HostLimiters
from .scheduler_fleet import SchedulerFleet
from .service import DownloadService, UploadService, socket_path_ok
from .store.piece_store import PieceStore
from .threads import cancel_and_wait, to_thread_to_the_end
from .transfer.local_pieces import LocalPieces, LocalPieceServer
from .transfer.peer_rpc import PeerRPC
from .transfer.piece_client import PieceConnectionPool
from .transfer.piece_server import PieceServer
from .transfer.send_guard import SendLimits

if TYPE_CHECKING:
    from .proxy import ProxyServer

log = logging.getLogger(__name__)


SEED_TYPES = {"super": HostType.SUPER_SEED, "strong": HostType.STRONG_SEED, "weak": HostType.WEAK_SEED}


def _advertise_ip(config: DaemonConfig) -> str:
    if config.host.ip:
        return config.host.ip
    listen = config.upload.server.ip
    if listen not in ("0.0.0.0", "::", ""):
        return listen
    try:
        ip = socket.gethostbyname(config.host.hostname)
        if not ip.startswith("127."):
            return ip
    except OSError:
        pass
    return "127.0.0.1"


class Daemon:
    """One dfdaemon: a normal peer or, with ``seed_peer.enable``, a seed peer."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        # mTLS on every TCP link (docs/TLS.md); checked first: bad TLS files refuse the start.
        self.tls = load_tls(config.tls, presents_peer_name=True)
        self.is_seed = config.seed_peer.enable
        self.ip = _advertise_ip(config)
        self.host_id = ids.host_id(self.ip, config.host.hostname, seed=self.is_seed)
        self.metrics = DaemonMetrics(config.storage.dir)
        # Loaded in a thread: the daemon serves at once, a held task is found on disk if asked
        # for before its turn (100 k tasks: benchmarks/daemon_restart.py).
        self.store = PieceStore(Path(config.storage.dir), background_load=True)
        self.limiters = HostLimiters(config)
        self.source = HTTPSource(config.source, limiter=self.limiters.back_to_source)
        self.pool = PieceConnectionPool(
            connect_timeout=10.0,
            limiter=self.limiters.download,
            trailer=config.download.trailer_digest,
            local=LocalPieces() if config.storage.local_share else None,
            extensions=config.wire.extensions,
            tls=client_ssl_context(self.tls) if self.tls else None,
            tls_name=self.tls.peer_name if self.tls else "",
        )
        self.peer_rpc = PeerRPC(tls=self.tls)
        sc = config.scheduler
        self.scheduler: SchedulerFleet | None = (
            SchedulerFleet(
                sc.addrs,
                credentials=self.tls.channel_credentials if self.tls else None,
                extensions=config.wire.extensions,
                health_interval=sc.health_interval,
                resolve_interval=sc.resolve_interval,
                announce_interval=sc.announce_interval,
            )
            if sc.addrs
            else None
        )
        self.announcer: Announcer | None = None
        self.uploaded: Counter[str] = Counter()  # pieces served per task
        self.piece_server = PieceServer(
            self.store,
            on_upload=self._on_upload,
            limiter=self.limiters.upload,
            request_limiter=self.limiters.piece_requests,
            upload_slots=config.upload.concurrent_piece_count,
            super_seed=self.is_seed and config.seed_peer.super_seed,
            extensions=config.wire.extensions,
            limits=SendLimits(
                idle_timeout=config.upload.send_idle_timeout,
                min_rate=config.upload.send_min_rate,
                per_address=config.upload.connections_per_address,
            ),
        )
        self.local_server = (
            LocalPieceServer(self.store, on_upload=self._on_upload, limiter=self.limiters.upload)
            if config.storage.local_share and config.wire.extensions
            else None
        )
        self.gc = CacheGC(self.store, config.gc, in_use=self._downloading, forget=self._forget_task)
        self.upload_service: UploadService | None = None
        self.host: HostInfo | None = None
        self.manager: TaskManager | None = None
        self.persistent_cache: PersistentCache | None = None  # dfcache (daemon/persistent_cache.py)
        self._servers: list[grpc.aio.Server] = []
        self._health: list[Health] = []
        self._runner: web.AppRunner | None = None
        self.proxy: ProxyServer | None = None  # when proxy.enable
        self._jobs: list[asyncio.Task[None]] = []
        self.ports: dict[str, int] = {}
        # Set after the first successful AnnounceHost (and restore): until then the
        # scheduler cannot schedule to or from this host, so "ready" waits for it.
        self.announced = asyncio.Event()
        # Succeeded tasks whose content is still to be fsynced, with when each may be.
        self._to_sync: asyncio.Queue[tuple[str, float]] = asyncio.Queue()

    # ----------------------------------------------------------------- start

    async def start(self) -> None:
        cfg = self.config
        piece_port = await self.piece_server.start(
            cfg.storage.server.ip,
            cfg.storage.server.tcp_port,
            ssl=server_ssl_context(self.tls) if self.tls else None,
        )
        if self.local_server is not None:
            await self.local_server.start(self.ip, piece_port)  # named by the address children dial

        upload_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        upload_addr = f"{cfg.upload.server.ip}:{cfg.upload.server.port}"
        if self.tls is None:
            upload_port = upload_server.add_insecure_port(upload_addr)
        else:  # a client certificate from tls.caCert required
            upload_port = upload_server.add_secure_port(upload_addr, server_credentials(self.tls))
        if upload_port == 0:
            raise DamselflyError(f"cannot listen on {cfg.upload.server.ip}:{cfg.upload.server.port}")

        # Built in dependency order, each whole: the downloads, the proxy (its port is part of
        # the host), the host, then the services over them.
        deps = ConductorDeps(
            store=self.store,
            pool=self.pool,
            source=self.source,
            peer_rpc=self.peer_rpc,
            scheduler=self.scheduler,
            host_id=self.host_id,
            host_ip=self.ip,
            hostname=cfg.host.hostname,
            is_seed=self.is_seed,
            concurrent_piece_count=cfg.download.concurrent_piece_count,
            parent_piece_depth=cfg.download.parent_concurrent_piece_count,
            max_parents=cfg.download.max_parents,
            refresh_interval=cfg.download.parent_refresh_interval,
            picker=cfg.download.piece_picker,
            cut_through=cfg.download.cut_through,
            piece_timeout=cfg.download.piece_timeout,
            schedule_timeout=cfg.scheduler.schedule_timeout,
            max_schedule_count=cfg.scheduler.max_schedule_count,
            wait_for_scheduler=cfg.scheduler.wait_for_scheduler,
            on_piece=self.metrics.on_piece,
            on_success=self._flush_later,
            on_unreported=self._unreported,
            on_reported=self._reported,
        )
        self.manager = TaskManager(deps)
        self.persistent_cache = PersistentCache(
            self.store,
            deps,
            scheduler_addr=cfg.scheduler.addrs[0] if cfg.scheduler.addrs else None,
            tls=self.tls,
        )
        proxy_port = await self._start_proxy()
        self.host = HostInfo(
            id=self.host_id,
            hostname=cfg.host.hostname,
            ip=self.ip,
            port=upload_port,
            download_port=piece_port,
            type=SEED_TYPES.get(cfg.seed_peer.type, HostType.SUPER_SEED) if self.is_seed else HostType.NORMAL,
            idc=cfg.host.idc,
            location=cfg.host.location,
            proxy_port=proxy_port,
            max_tx_bandwidth=cfg.upload.bandwidth_limit,
            max_rx_bandwidth=cfg.download.bandwidth_limit,
            os=platform.system().lower(),
            platform=platform.platform(),
            version=__version__,
        )
        downloads = Downloads(self.manager, self.store, self.host, metrics=self.metrics)
        self.upload_service = UploadService(
            downloads,
            self.ip,
            piece_port,
            persistent_cache=self.persistent_cache,
            request_limiter=self.limiters.upload_requests,
            extensions=cfg.wire.extensions,
            scheduler_gate=SchedulerGate(
                lambda: cfg.scheduler.addrs, certificate_name=cfg.scheduler.certificate_name
            ),
        )
        dfdaemon_pb2_grpc.add_DfdaemonUploadServicer_to_server(self.upload_service, upload_server)
        upload_health = Health(upload_server, [DFDAEMON_UPLOAD], extensions=cfg.wire.extensions)
        await upload_server.start()
        await upload_health.serving()
        self._health.append(upload_health)
        self._servers.append(upload_server)

        sock = cfg.socket_path
        socket_path_ok(sock)
        sock.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        download_server = grpc.aio.server()
        download_service = DownloadService(
            downloads,
            persistent_cache=self.persistent_cache,
            busy=self._downloading,
            capacity=lambda: self.gc.policy.capacity,
            uploaded=self.uploaded,
        )
        dfdaemon_pb2_grpc.add_DfdaemonDownloadServicer_to_server(download_service, download_server)
        download_server.add_generic_rpc_handlers((local_delete_handler(download_service),))
        download_health = Health(download_server, [DFDAEMON_DOWNLOAD], extensions=cfg.wire.extensions)
        download_server.add_insecure_port(f"unix:{sock}")
        await download_server.start()
        await download_health.serving()
        self._health.append(download_health)
        self._servers.append(download_server)

        metrics_port = 0
        if cfg.metrics.enable:
            self._runner = web.AppRunner(metrics_app(self.metrics.registry, self._refresh_gauges))
            await self._runner.setup()
            site = web.TCPSite(self._runner, cfg.metrics.ip, cfg.metrics.port)
            await site.start()
            metrics_port = self._runner.addresses[0][1]

        self.ports = {
            "upload_port": upload_port,
            "piece_port": piece_port,
            "metrics_port": metrics_port,
            "proxy_port": proxy_port,
        }
        self._jobs.append(asyncio.get_running_loop().create_task(self._durable_loop()))
        self._jobs.append(asyncio.get_running_loop().create_task(self.gc.run()))
        if self.scheduler is not None:
            self.announcer = Announcer(
                self.scheduler, self.host, self.store, self.manager,
                hostname=cfg.host.hostname, is_seed=self.is_seed,
                schedule_timeout=cfg.scheduler.schedule_timeout,
                persistent_cache=self.persistent_cache,
                cache_addr=cfg.scheduler.addrs[0], on_first=self.announced.set,
            )  # fmt: skip
            self.scheduler.sync = self.announcer.sync
            await self.scheduler.start()
        log.info(
            "daemon %s up: upload %s:%d, pieces %s:%d%s, socket %s, metrics %d, proxy %d%s",
            self.host_id, cfg.upload.server.ip, upload_port, cfg.storage.server.ip, piece_port,
            " (mTLS)" if self.tls else "", sock, metrics_port, proxy_port,
            " (seed peer)" if self.is_seed else "",
        )  # fmt: skip

    async def _start_proxy(self) -> int:
        """Start the registry mirror / HTTP(S) proxy; its port, or 0 when off or the port is taken."""
        cfg = self.config
        if not cfg.proxy.enable or self.manager is None:
            return 0
        from .proxy import ProxyServer
        from .proxy.metrics import ProxyMetrics  # imported with the proxy, when enabled

        self.proxy = ProxyServer(
            cfg.proxy,
            manager=self.manager,
            store=self.store,
            data_dir=Path(cfg.storage.dir),
            source=cfg.source,
            metrics=ProxyMetrics(self.metrics.registry),
        )
        try:
            return int(await self.proxy.start())
        except OSError as e:
            # Several daemons on one host share the default port; only the first gets it.
            log.warning(
                "proxy cannot listen on %s:%d (%s); no registry mirror here (see proxy.server.port)",
                cfg.proxy.server.ip, cfg.proxy.server.port, e.strerror or e,
            )  # fmt: skip
            await self.proxy.close()
            self.proxy = None
            return 0

    def _on_upload(self, task_id: str, nbytes: int) -> None:
        self.uploaded[task_id] += 1
        self.metrics.on_upload(task_id, nbytes)

    def _downloading(self) -> set[str]:
        running = set(self.manager.running()) if self.manager is not None else set()
        if self.persistent_cache is not None:
            running |= self.persistent_cache.running()
        return running

    async def _forget_task(self, task_id: str) -> None:
        """Before evicting: the scheduler must stop sending children here for this task."""
        meta = self.store.get(task_id)
        if meta is not None and meta.persistent_cache and self.persistent_cache is not None:
            await self.persistent_cache.forget(task_id)
            return
        if self.scheduler is not None:
            await self.scheduler.delete_task(self.host_id, task_id)

    def reload_config(self) -> None:
        """Re-read the config file (SIGHUP) and apply what can change at run time:
        the rate limits and the cache GC settings. Other changes need a restart."""
        try:
            new = self.config.reload()
            self.gc.update(new.gc)
        except DamselflyError as e:
            log.error("config reload failed, keeping the current settings: %s", e)
            return
        self.limiters.update(new)
        log.info("reloaded limits: %s; gc every %gs", self.limiters.describe(), new.gc.interval)

    def _refresh_gauges(self) -> None:
        tasks = self.store.tasks()
        self.metrics.tasks.set(len(tasks))
        self.metrics.store_bytes.set(self.store.usage())
        self.metrics.refresh_disk()
        if self.manager is not None:
            self.metrics.running_tasks.set(len(self.manager.running()))

    def _flush_later(self, task_id: str) -> None:
        due = time.monotonic() + self.config.storage.durable_delay
        self._to_sync.put_nowait((task_id, due))

    async def _durable_loop(self) -> None:
        """fsync finished tasks' content in the background, one at a time, each once its
        ``storage.durableDelay`` has passed: the task's own export (a hard link, then a
        directory fsync that waits for the disk's queue) goes first."""
        while True:
            task_id, due = await self._to_sync.get()
            try:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            except asyncio.CancelledError:
                self._to_sync.put_nowait((task_id, due))  # stop() flushes it
                raise
            try:
                # stop() waits for a flush under way, so nothing writes into the store after the
                # daemon has stopped (a restart on the same data dir would race it).
                await to_thread_to_the_end(self.store.make_durable, task_id)
            except DamselflyError as e:
                log.warning("could not flush task %s to disk: %s", task_id[:12], e)

    def _unreported(self, task_id: str) -> None:
        if self.announcer is not None:
            self.announcer.unreported(task_id)

    def _reported(self, task_id: str, addr: str) -> None:
        if self.announcer is not None:
            self.announcer.reported(task_id, addr)

    # ------------------------------------------------------------------ stop

    async def stop(self) -> None:
        for health in self._health:
            await health.stopping()
        await cancel_and_wait(self._jobs)
        if self.scheduler is not None:
            with contextlib.suppress(SchedulerError):
                await self.scheduler.delete_host(self.host_id)
        if self.proxy is not None:
            await self.proxy.close()
        if self.persistent_cache is not None:
            await self.persistent_cache.close()
        if self.manager is not None:
            await self.manager.close()
        # Flush what finished but is not on disk yet, so a restart trusts it as is.
        while not self._to_sync.empty():
            task_id, _ = self._to_sync.get_nowait()
            with contextlib.suppress(DamselflyError):
                await asyncio.to_thread(self.store.make_durable, task_id)
        for server in self._servers:
            await server.stop(grace=1.0)
        await self.piece_server.close()
        if self.local_server is not None:
            await self.local_server.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.pool.close()
        await self.peer_rpc.close()
        await self.source.close()
        if self.scheduler is not None:
            await self.scheduler.close()
        self.store.close()
        with contextlib.suppress(FileNotFoundError):
            self.config.socket_path.unlink()


async def serve(
    config: DaemonConfig,
    *,
    ready_file: Path | None = None,
    stop: asyncio.Event | None = None,
    tune_runtime: bool = False,
) -> None:
    """Run a daemon until ``stop`` is set; ``tune_runtime`` tunes the process's garbage
    collector once it is up (:func:`~damselfly.process.tune_gc`: process-wide, so only for a
    process that is this daemon alone)."""
    stop = stop or asyncio.Event()
    daemon = Daemon(config)
    loop = asyncio.get_running_loop()
    # SIGHUP re-reads the config file: rate limits and GC settings change without a restart.
    on_hup = threading.current_thread() is threading.main_thread()
    if on_hup:
        loop.add_signal_handler(signal.SIGHUP, daemon.reload_config)
    try:
        await daemon.start()
        if daemon.scheduler is not None:
            try:
                async with asyncio.timeout(15):
                    await daemon.announced.wait()
            except TimeoutError:
                log.warning("the scheduler has not accepted this host yet; serving anyway")
        if tune_runtime:
            tune_gc()
        if ready_file is not None:
            write_ready_file(
                ready_file,
                {
                    "pid": os.getpid(),
                    "host_id": daemon.host_id,
                    "socket": str(config.socket_path),
                    **daemon.ports,
                },
            )
        await stop.wait()
    finally:
        if on_hup:
            loop.remove_signal_handler(signal.SIGHUP)
        await daemon.stop()


def run(config: DaemonConfig, *, ready_file: Path | None = None) -> None:
    """Run a daemon in the foreground; SIGINT/SIGTERM stop it cleanly."""
    tune = gc_tuning_wanted(DAEMON_GC_TUNING_ENV)
    run_until_signal(lambda stop: serve(config, ready_file=ready_file, stop=stop, tune_runtime=tune))
