"""What every long-running Damselfly process shares: its ready file, ``/metrics`` + ``/healthy``,
signals, and the tuning of CPython's cyclic garbage collector.

A ready file is JSON written atomically once a process's listeners are bound
(see docs/PROTOCOL.md), so tests, ``damselfly up`` and benchmarks can start
processes on port 0 and learn the ports they got.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import tempfile
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

# Small young generations and a patient oldest one: a young collection scans at most a few
# thousand objects, a full one waits until ~2M more are tracked (the why, with the
# scheduler's measurements: damselfly.scheduler.runtime).
GC_THRESHOLDS = (1_000, 5, 400)
DAEMON_GC_TUNING_ENV = "DAMSELFLY_DAEMON_GC_TUNING"
SCHEDULER_GC_TUNING_ENV = "DAMSELFLY_SCHEDULER_GC_TUNING"


def gc_tuning_wanted(variable: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether to tune: anything but ``0``, ``false``, ``no`` or ``off`` in ``variable``."""
    return environ.get(variable, "1").strip().lower() not in ("0", "false", "no", "off")


def tune_gc(thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> None:
    """Freeze the start-up heap (imported modules, descriptors, config: out of every later
    collection) and set the collector's thresholds. Process-wide; call once, when up."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)


def write_ready_file(path: Path, data: object) -> None:
    """Write JSON to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def metrics_app(registry: CollectorRegistry, refresh: Callable[[], None] | None = None) -> web.Application:
    """An aiohttp app with ``GET /metrics`` (Prometheus text of ``registry``) and ``GET /healthy``."""

    async def metrics(_: web.Request) -> web.Response:
        if refresh is not None:
            refresh()
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthy(_: web.Request) -> web.Response:
        return web.Response(text="OK")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthy", healthy)
    return app


def run_until_signal(serve: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run ``serve(stop)`` in a new event loop; SIGINT or SIGTERM sets ``stop`` for a clean exit."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    asyncio.run(main())
