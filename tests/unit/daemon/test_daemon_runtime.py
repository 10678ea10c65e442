"""A daemon process tunes CPython's cyclic collector once it is up (damselfly.process.tune_gc):
the start-up heap frozen out of later collections, the scheduler's thresholds; switched off by
DAMSELFLY_DAEMON_GC_TUNING=0."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from damselfly.config import load_daemon_config
from damselfly.daemon.app import serve
from damselfly.process import DAEMON_GC_TUNING_ENV, GC_THRESHOLDS, gc_tuning_wanted


@pytest.fixture
def restore_gc() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    gc.unfreeze()
    try:
        yield before
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def _serve_until_ready(tmp_path: Path, *, tune_runtime: bool) -> tuple[tuple[int, int, int], int]:
    """Start a daemon (no scheduler) in this process; the collector's thresholds and frozen
    count once its ready file is written, then stop it."""
    config = load_daemon_config(
        None,
        {
            "scheduler": {"addrs": []},  # none: nothing to wait for before the ready file
            "storage": {"dir": str(tmp_path / "store"), "server": {"ip": "127.0.0.1", "tcp_port": 0}},
            "upload": {"server": {"ip": "127.0.0.1", "port": 0}},
            "metrics": {"enable": False},
            "proxy": {"enable": False},
        },
    )
    ready = tmp_path / "ready.json"
    stop = asyncio.Event()
    server = asyncio.create_task(serve(config, ready_file=ready, stop=stop, tune_runtime=tune_runtime))
    try:
        async with asyncio.timeout(30):
            while not ready.exists():
                assert not server.done(), server.exception()
                await asyncio.sleep(0.02)
        assert json.loads(ready.read_text())["pid"] > 0
        return gc.get_threshold(), gc.get_freeze_count()
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)


async def test_a_daemon_freezes_its_startup_heap_and_sets_thresholds_when_up(
    tmp_path: Path, restore_gc: tuple[int, int, int]
) -> None:
    gc.set_threshold(700, 10, 10)
    thresholds, frozen = await _serve_until_ready(tmp_path, tune_runtime=True)
    assert thresholds == GC_THRESHOLDS
    assert frozen > 1000  # the imported modules at least


async def test_a_daemon_asked_not_to_tune_leaves_the_collector_alone(
    tmp_path: Path, restore_gc: tuple[int, int, int]
) -> None:
    gc.set_threshold(700, 10, 10)
    thresholds, frozen = await _serve_until_ready(tmp_path, tune_runtime=False)
    assert thresholds == (700, 10, 10)
    assert frozen == 0


def test_daemon_gc_tuning_is_on_unless_the_environment_says_off() -> None:
    assert gc_tuning_wanted(DAEMON_GC_TUNING_ENV, {})
    assert gc_tuning_wanted(DAEMON_GC_TUNING_ENV, {DAEMON_GC_TUNING_ENV: "yes"})
    for off in ("0", "false", "OFF", " no "):
        assert not gc_tuning_wanted(DAEMON_GC_TUNING_ENV, {DAEMON_GC_TUNING_ENV: off})
    assert gc_tuning_wanted(DAEMON_GC_TUNING_ENV, {"DAMSELFLY_SCHEDULER_GC_TUNING": "0"})
