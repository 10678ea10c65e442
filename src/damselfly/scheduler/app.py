"""Run a scheduler: gRPC ``scheduler.v2.Scheduler`` plus metrics and ``/healthy``.

:func:`serve` is the async entry point (tests run it in-process on port 0);
:func:`run` wraps it for the command line with SIGINT/SIGTERM handling.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import grpc
from aiohttp import web

from ..api import scheduler_pb2_grpc
from ..api.health import SCHEDULER, Health
from ..config import SchedulerConfig
from ..errors import ConfigError
from ..process import SCHEDULER_GC_TUNING_ENV, gc_tuning_wanted, run_until_signal, tune_gc, write_ready_file
from ..security.tls import load_tls, server_credentials
from .metrics import SchedulerMetrics
from .runtime import GCPauses
from .service import SchedulerService

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 2.0  # seconds open RPCs get to finish on stop


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


async def serve(
    config: SchedulerConfig,
    *,
    ready_file: Path | None = None,
    stop: asyncio.Event | None = None,
    tune_runtime: bool = False,
) -> None:
    """Serve until ``stop`` is set (forever when None), then shut down cleanly.

    ``tune_runtime`` tunes the process's garbage collector (:mod:`.runtime`);
    the command line sets it; tests that serve inside the test process do not.
    """
    stop = stop or asyncio.Event()
    tls = load_tls(config.tls)  # before anything listens: bad TLS files refuse the start
    metrics = SchedulerMetrics()
    service = SchedulerService(config, metrics=metrics, tls=tls)
    await service.persistent_cache.open()
    server = grpc.aio.server()
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(service, server)
    health = Health(server, [SCHEDULER])
    address = _address(config.server.ip, config.server.port)
    try:
        if tls is None:
            grpc_port = server.add_insecure_port(address)
        else:
            grpc_port = server.add_secure_port(address, server_credentials(tls))
    except RuntimeError as e:
        raise ConfigError(f"cannot listen on {address} for gRPC: {e}") from e
    if grpc_port == 0:
        raise ConfigError(f"cannot listen on {address} for gRPC (address in use?)")

    runner: web.AppRunner | None = None
    metrics_port = 0
    await server.start()
    await health.serving()
    service.start()
    pauses = GCPauses()
    metrics.bind_gc(pauses)
    if tune_runtime:
        tune_gc()
    pauses.install()  # after tune_gc's own full collection: count pauses under load only
    try:
        if config.metrics.enable:
            runner = web.AppRunner(metrics.app(), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, config.metrics.ip, config.metrics.port)
            try:
                await site.start()
            except OSError as e:
                raise ConfigError(
                    f"cannot listen on {config.metrics.ip}:{config.metrics.port} for metrics: {e.strerror}"
                ) from e
            metrics_port = int(runner.addresses[0][1])
        log.info(
            "scheduler listening: grpc %s (port %d, %s), metrics port %d",
            address,
            grpc_port,
            "mTLS" if tls else "plaintext",
            metrics_port,
        )
        if ready_file is not None:
            write_ready_file(
                Path(ready_file), {"pid": os.getpid(), "grpc_port": grpc_port, "metrics_port": metrics_port}
            )
        await stop.wait()
    finally:
        log.info("scheduler stopping")
        await health.stopping()
        pauses.uninstall()
        await service.close()
        await server.stop(SHUTDOWN_GRACE)
        if runner is not None:
            await runner.cleanup()


def run(config: SchedulerConfig, *, ready_file: Path | None = None) -> None:
    """Run :func:`serve` in a new event loop until SIGINT or SIGTERM."""
    tune = gc_tuning_wanted(SCHEDULER_GC_TUNING_ENV)
    run_until_signal(lambda stop: serve(config, ready_file=ready_file, stop=stop, tune_runtime=tune))
