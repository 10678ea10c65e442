"""The scheduler's background upkeep: waiting peers scheduled again (the backstop for
missed events and timeouts) and the garbage collection of hosts, peers and tasks, each
round in its own try so that a bug in one does not stop the next; a mixin of
:class:`~.service.SchedulerService`, which owns the state it reads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from ..config import SchedulerConfig, SchedulingConfig
from . import gc
from .resources import Peer, Resources

log = logging.getLogger(__name__)


class Upkeep:
    """Retry and GC rounds over the service's resources."""

    res: Resources
    cfg: SchedulingConfig
    config: SchedulerConfig
    clock: Callable[[], float]
    _streams: dict[str, Any]
    _downloads: dict[str, Any]

    def _decide(self, peer: Peer) -> Any:
        raise NotImplementedError  # the service's

    def _tasks_of(self, peer_ids: Iterable[str]) -> set[str]:
        raise NotImplementedError  # the service's

    def _wake_tasks(self, task_ids: set[str]) -> None:
        raise NotImplementedError  # the service's

    async def _retry_loop(self) -> None:
        await self._every(max(self.cfg.retry_interval, 0.01), self.retry_waiting)

    async def _gc_loop(self) -> None:
        await self._every(self.config.gc.interval, self.run_gc)

    @staticmethod
    async def _every(interval: float, step: Callable[[], None]) -> None:
        """Run ``step`` every ``interval`` seconds; a bug in one round must not stop the next."""
        while True:
            await asyncio.sleep(interval)
            try:
                step()
            except Exception:
                log.exception("scheduler background step %s failed", getattr(step, "__name__", step))

    def retry_waiting(self) -> None:
        """Schedule every waiting peer again (the backstop for missed events and timeouts)."""
        for peer in list(self.res.waiting.values()):
            if peer.waiting_since is not None and peer.id in self.res.peers:
                self._decide(peer)

    def run_gc(self) -> None:
        plan = gc.plan(self.res, self.config.gc, self.clock(), keep=self._streams)
        if not plan:
            return
        touched = self._tasks_of(plan.peer_ids) | self._tasks_of(
            pid for hid in plan.host_ids if (h := self.res.hosts.get(hid)) for pid in h.peers
        )
        gc.collect(self.res, plan)
        for pid in plan.peer_ids:
            self._streams.pop(pid, None)
        for task_id in list(self._downloads):
            if task_id not in self.res.tasks:
                del self._downloads[task_id]
        log.info(
            "gc dropped %d hosts, %d peers, %d tasks",
            len(plan.host_ids),
            len(plan.peer_ids),
            len(plan.task_ids),
        )
        self._wake_tasks(touched)
