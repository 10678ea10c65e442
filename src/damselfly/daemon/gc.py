"""The daemon's cache lifecycle: which tasks to evict, and evicting them.

Policy (:func:`plan_eviction`, pure): a task unused for longer than the TTL
goes; then, when the store's own bytes pass the high watermark of its
capacity, the least recently used tasks go until the store is at or below
the low watermark. A task in use (being downloaded, a piece being sent, a
local export) is never chosen, and neither is one used in the last
``recent_window`` seconds (a child between two piece requests still counts as
being uploaded to; so the TTL is effectively at least that window). Only the
daemon's task files are counted; nothing else on the disk is measured or touched.
Persistent cache tasks (dfcache) carry their own expiry: at ``expires_at`` they
go (unless in use) whatever the recent window, and a ``persistent`` copy is
never evicted before that, neither by the idle TTL nor by the watermark.

Doing (:class:`CacheGC`): for each chosen task, first tell the scheduler
(``DeleteTask`` for this host), then remove it from the store. In that
order a crash in between leaves bytes nobody is sent to, never a scheduler
that sends children to a parent without the pieces. The store's removal is
itself crash-safe (see :meth:`PieceStore.evict`).

Owner of the loop's asyncio task: :class:`damselfly.daemon.app.Daemon`.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from ..config import DaemonGCConfig
from ..errors import DamselflyError
from .store.piece_store import PieceStore

log = logging.getLogger(__name__)

# A task used this recently is kept whatever its TTL or age rank: uploads touch it per piece.
RECENT_WINDOW = 60.0


@dataclass(frozen=True, slots=True)
class TaskUsage:
    """One task as the policy sees it."""

    task_id: str
    size: int  # bytes on disk
    accessed_at: float  # last download, export or upload (seconds, the GC's clock)
    in_use: bool = False
    persistent: bool = False  # a persistent cache replica: kept until expires_at
    expires_at: float = 0.0  # hard expiry (persistent cache tasks); 0: none


@dataclass(frozen=True, slots=True)
class GCPolicy:
    task_ttl: float  # 0: no TTL
    capacity: int  # bytes; 0: no watermark step
    high_threshold: float  # percent of capacity
    low_threshold: float
    recent_window: float = RECENT_WINDOW

    @property
    def high_bytes(self) -> int:
        return int(self.capacity * self.high_threshold / 100)

    @property
    def low_bytes(self) -> int:
        return int(self.capacity * self.low_threshold / 100)


@dataclass(frozen=True, slots=True)
class Eviction:
    task_id: str
    reason: str  # "ttl" or "watermark"
    size: int


def plan_eviction(tasks: Iterable[TaskUsage], *, now: float, policy: GCPolicy) -> list[Eviction]:
    """The tasks to evict, in order: TTL-expired ones, then LRU down to the low watermark."""
    tasks = list(tasks)
    usage = sum(t.size for t in tasks)
    out: list[Eviction] = []
    candidates: list[TaskUsage] = []
    for t in tasks:
        idle = now - t.accessed_at
        if t.in_use:
            continue
        if t.expires_at > 0 and now >= t.expires_at:
            out.append(Eviction(t.task_id, "ttl", t.size))
            usage -= t.size
            continue
        if t.persistent or idle < policy.recent_window:
            continue
        if policy.task_ttl > 0 and idle >= policy.task_ttl:
            out.append(Eviction(t.task_id, "ttl", t.size))
            usage -= t.size
        else:
            candidates.append(t)
    if policy.capacity > 0 and usage > policy.high_bytes:
        for t in sorted(candidates, key=lambda t: (t.accessed_at, t.task_id)):
            if usage <= policy.low_bytes:
                break
            out.append(Eviction(t.task_id, "watermark", t.size))
            usage -= t.size
    return out


def policy_from_config(config: DaemonGCConfig, store_root: str) -> GCPolicy:
    capacity = config.capacity
    if capacity <= 0:
        try:
            capacity = shutil.disk_usage(store_root).total
        except OSError:
            capacity = 0
    if not 0 <= config.low_threshold <= config.high_threshold <= 100:
        raise DamselflyError(
            f"gc: need 0 <= lowThreshold ({config.low_threshold}) <= highThreshold "
            f"({config.high_threshold}) <= 100"
        )
    return GCPolicy(
        task_ttl=config.task_ttl,
        capacity=capacity,
        high_threshold=config.high_threshold,
        low_threshold=config.low_threshold,
    )


class CacheGC:
    """Carries out :func:`plan_eviction` on a :class:`PieceStore` every ``config.interval``.

    ``in_use()`` returns the IDs of tasks being downloaded (the store adds its
    own pinned tasks: pieces being sent, exports). ``forget(task_id)`` tells
    the scheduler this host no longer holds the task.
    """

    def __init__(
        self,
        store: PieceStore,
        config: DaemonGCConfig,
        *,
        in_use: Callable[[], set[str]] = set,
        forget: Callable[[str], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._in_use = in_use
        self._forget = forget
        self._clock = clock
        self.config = config
        self.policy = policy_from_config(config, str(store.root))
        self.evicted_total = 0
        self.evicted_bytes = 0

    def update(self, config: DaemonGCConfig) -> None:
        """New settings from a config reload."""
        self.policy = policy_from_config(config, str(self.store.root))
        self.config = config

    def busy(self) -> set[str]:
        return set(self._in_use()) | self.store.pinned()

    def snapshot(self, busy: set[str] | None = None) -> list[TaskUsage]:
        """Every task with its size on disk (a ``du`` of each task dir: with 100 k tasks, seconds,
        so :meth:`run_once` takes it in a thread, with ``busy`` found on the event loop)."""
        busy = self.busy() if busy is None else busy
        return [
            TaskUsage(
                task_id=meta.task_id,
                size=self.store.task_usage(meta.task_id),
                accessed_at=meta.accessed_at,
                in_use=meta.task_id in busy,
                persistent=meta.persistent,
                expires_at=meta.expires_at,
            )
            for meta in self.store.tasks()
        ]

    def plan(self) -> list[Eviction]:
        return plan_eviction(self.snapshot(), now=self._clock(), policy=self.policy)

    async def run_once(self) -> list[Eviction]:
        """Plan and evict; returns what was evicted (a task that became busy meanwhile is skipped).
        Nothing while the store still loads: the least recently used may not be known yet."""
        done: list[Eviction] = []
        if not self.store.loading.loaded:
            return done
        usage = await asyncio.to_thread(self.snapshot, self.busy())
        for ev in plan_eviction(usage, now=self._clock(), policy=self.policy):
            if ev.task_id in self.busy():
                continue
            if self._forget is not None:
                await self._forget(ev.task_id)
            trash = self.store.evict(ev.task_id, busy=self._in_use())
            if trash is None:
                log.info("task %s became busy; not evicting it", ev.task_id[:12])
                continue
            await asyncio.to_thread(self.store.purge, trash)
            self.evicted_total += 1
            self.evicted_bytes += ev.size
            log.info("evicted task %s (%s, %d bytes)", ev.task_id[:12], ev.reason, ev.size)
            done.append(ev)
        return done

    async def run(self) -> None:
        """Forever: wait an interval, collect. Cancel to stop."""
        while True:
            await asyncio.sleep(self.config.interval)
            try:
                await self.run_once()
            except (DamselflyError, OSError) as e:
                log.warning("cache GC failed: %s", e)
