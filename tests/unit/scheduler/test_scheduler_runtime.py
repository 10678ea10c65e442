"""The scheduler's runtime tuning: GC thresholds, the frozen start-up heap, and GC pause accounting."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest

from damselfly.process import GC_THRESHOLDS, SCHEDULER_GC_TUNING_ENV, gc_tuning_wanted, tune_gc
from damselfly.scheduler.metrics import SchedulerMetrics
from damselfly.scheduler.runtime import GCPauses, watch_loop_lag


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_tune_gc_freezes_the_startup_heap_and_raises_thresholds(restore_gc: None) -> None:
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_freeze_count() > 1000  # imported modules at least
    # A full collection must wait for a heap growth far beyond 5,000 peers' ~0.5M objects.
    t0, t1, t2 = GC_THRESHOLDS
    assert t0 * t1 * (t2 + 1) >= 1_000_000


def test_gc_pauses_are_counted_per_generation_with_an_injected_clock() -> None:
    now = iter([1.0, 1.25, 2.0, 2.001])
    pauses = GCPauses(clock=lambda: next(now))
    pauses("start", {"generation": 2})
    pauses("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
    pauses("start", {"generation": 0})
    pauses("stop", {"generation": 0, "collected": 0, "uncollectable": 0})
    assert pauses.count == [1, 0, 1]
    assert pauses.max_ms[2] == pytest.approx(250.0)
    assert pauses.total_ms[0] == pytest.approx(1.0)


def test_real_collections_reach_the_metrics_and_uninstall_stops_counting() -> None:
    pauses = GCPauses()
    metrics = SchedulerMetrics()
    metrics.bind_gc(pauses)
    pauses.install()
    try:
        gc.collect()
    finally:
        pauses.uninstall()
    assert pauses.count[2] >= 1
    text = generate_latest(metrics.registry).decode()
    assert 'damselfly_scheduler_gc_collections{generation="2"}' in text
    assert 'damselfly_scheduler_gc_pause_milliseconds_max{generation="2"}' in text
    seen = pauses.count[2]
    gc.collect()
    assert pauses.count[2] == seen


def test_metrics_count_reuses_one_child_per_label() -> None:
    metrics = SchedulerMetrics()
    for _ in range(3):
        metrics.count(metrics.announce_peer, "register_peer_request")
    metrics.count(metrics.announce_peer, "download_peer_started_request")
    text = generate_latest(metrics.registry).decode()
    assert 'damselfly_scheduler_announce_peer_request_total{type="register_peer_request"} 3.0' in text
    assert 'damselfly_scheduler_announce_peer_request_total{type="download_peer_started_request"} 1.0' in text


def test_gc_tuning_can_be_switched_off_by_environment() -> None:
    assert gc_tuning_wanted(SCHEDULER_GC_TUNING_ENV, {})
    assert gc_tuning_wanted(SCHEDULER_GC_TUNING_ENV, {"DAMSELFLY_SCHEDULER_GC_TUNING": "1"})
    for off in ("0", "false", "OFF", " no "):
        assert not gc_tuning_wanted(SCHEDULER_GC_TUNING_ENV, {"DAMSELFLY_SCHEDULER_GC_TUNING": off})


async def test_loop_lag_is_how_late_the_timer_fired() -> None:
    ticks = iter([0.0, 0.08, 1.0, 1.05])
    seen: list[float] = []

    def observe(ms: float) -> None:
        seen.append(ms)
        if len(seen) == 2:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await watch_loop_lag(observe, interval=0.0, clock=lambda: next(ticks))
    assert seen == [pytest.approx(80.0), pytest.approx(50.0)]


def test_loop_lag_metrics_keep_the_maximum() -> None:
    metrics = SchedulerMetrics()
    for ms in (3.0, 120.0, 7.0):
        metrics.observe_loop_lag(ms)
    text = generate_latest(metrics.registry).decode()
    assert "damselfly_scheduler_event_loop_lag_max_milliseconds 120.0" in text
    assert "damselfly_scheduler_event_loop_lag_milliseconds_count 3.0" in text
