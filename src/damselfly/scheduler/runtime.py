"""Tuning of the scheduler process's Python runtime: CPython's cyclic garbage collector.

Why: with 5,000 AnnouncePeer streams open, the scheduler holds ~480k objects
the collector tracks (grpc's per-RPC state and coroutines are most of them,
then asyncio tasks, futures and our peers). With CPython's default thresholds
(700, 10, 10) the heap's growth while streams open ran a full (generation 2)
collection six times in 20 s, each one stopping the event loop for 0.2-0.7 s
on the project machine: that pause *was* the p99 of register-to-answer
latency (``damselfly bench scheduler``, BENCHMARKS.md).

What :func:`damselfly.process.tune_gc` does, once the server is up (daemons do the same):

- ``gc.freeze()`` moves everything alive after start-up (imported modules,
  protobuf descriptors, config: ~60k objects) out of every later collection;
- smaller young generations and a patient oldest one (``process.GC_THRESHOLDS``):
  a full collection now waits until the tracked heap has grown by about
  ``threshold0 * threshold1 * (threshold2 + 1)`` objects (~2M, some 20k
  concurrent peers), and a young collection scans at most ~5k objects (a few
  milliseconds; measured max 3-8 ms under load, against 17-60 ms with
  (2000, 10, 100) and 0.2-0.7 s for the full collections of the defaults).

The cost: cyclic garbage that outlives two young collections is reclaimed
later (at the next full collection). The scheduler's own state is freed by
reference counting (peers, tasks and hosts drop their edges when deleted), so
what waits is grpc/asyncio debris; the VmHWM the benchmark reports includes it.
``DAMSELFLY_SCHEDULER_GC_TUNING=0`` in the environment keeps CPython's defaults
(an escape hatch, and the A/B switch of the benchmark).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable


class GCPauses:
    """How long the collector stopped the process, per generation (fed by ``gc.callbacks``).

    Plain numbers only: a GC callback runs inside whatever allocation triggered
    it, so it must not take locks (prometheus' would deadlock if the collection
    started while one was held); the metrics read these at scrape time.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._started = 0.0
        self.count = [0, 0, 0]
        self.total_ms = [0.0, 0.0, 0.0]
        self.max_ms = [0.0, 0.0, 0.0]

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        gen = min(max(int(info.get("generation", 0)), 0), 2)
        ms = (self._clock() - self._started) * 1000.0
        self.count[gen] += 1
        self.total_ms[gen] += ms
        self.max_ms[gen] = max(self.max_ms[gen], ms)

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


LOOP_LAG_INTERVAL = 0.05  # seconds between two probes of the event loop


async def watch_loop_lag(
    observe: Callable[[float], None],
    interval: float = LOOP_LAG_INTERVAL,
    clock: Callable[[], float] = time.perf_counter,
) -> None:
    """Report, every ``interval``, how late the event loop woke us (ms): the time every
    peer's answer waited behind other work (a GC pause, a long callback, a busy CPU).
    Runs until cancelled."""
    while True:
        began = clock()
        await asyncio.sleep(interval)
        observe(max(0.0, (clock() - began - interval) * 1000.0))
