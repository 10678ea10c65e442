"""Every download of this daemon: one :class:`Conductor` per task at a time.

Requests for a task that is already downloading join that download (dfget
twice, a seed trigger and a local request, the proxy and dfget...). Owner of
the conductors' asyncio tasks: :class:`TaskManager`, which cancels them on
:meth:`close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ... import ids
from ...domain import DownloadSpec
from .conductor import Conductor, ConductorDeps

log = logging.getLogger(__name__)


def task_id_for(spec: DownloadSpec) -> str:
    """The task ID of a download request (Dragonfly's rules, see :mod:`damselfly.ids`)."""
    return ids.download_task_id(spec)


class TaskManager:
    """Starts, joins and cancels downloads."""

    def __init__(self, deps: ConductorDeps) -> None:
        self.deps = deps
        self._running: dict[str, tuple[Conductor, asyncio.Task[None]]] = {}
        self.started_total = 0
        # Digests the content of a task was checked against when it finished.
        self.verified: dict[str, str] = {}

    def running(self) -> dict[str, Conductor]:
        return {tid: c for tid, (c, _) in self._running.items()}

    def is_running(self, task_id: str) -> bool:
        return task_id in self._running

    def ensure(self, spec: DownloadSpec) -> tuple[str, asyncio.Task[None]]:
        """Start downloading ``spec`` unless it is downloading already; return the task ID and its job."""
        task_id = task_id_for(spec)
        entry = self._running.get(task_id)
        if entry is not None:
            return task_id, entry[1]
        conductor = Conductor(self.deps, task_id, spec)

        async def run() -> None:
            await conductor.run()
            # Recorded before the job counts as done: a follower that sees it done (before
            # its done callbacks have run) must not hash the whole content a second time.
            if conductor.verified_digest:
                self.verified[task_id] = conductor.verified_digest

        job = asyncio.get_running_loop().create_task(run(), name=f"download-{task_id[:12]}")
        self._running[task_id] = (conductor, job)
        self.started_total += 1

        def _done(t: asyncio.Task[None]) -> None:
            if self._running.get(task_id, (None, None))[1] is t:
                del self._running[task_id]
            if not t.cancelled() and t.exception() is not None:
                log.info("download of task %s failed: %s", task_id[:12], t.exception())

        job.add_done_callback(_done)
        return task_id, job

    async def close(self) -> None:
        jobs = [job for _, job in self._running.values()]
        for job in jobs:
            job.cancel()
        for job in jobs:
            with contextlib.suppress(BaseException):
                await job
        self._running.clear()
