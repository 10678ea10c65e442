"""Every download of this daemon: one :class:`Conductor` per task at a time.

Requests for a task that is already downloading join that download (dfget
twice, a seed trigger and a local request, the proxy and dfget...).
:class:`RunningDownloads` is that rule, written once: the :class:`TaskManager`
here and the persistent cache (``persistent_cache/manager.py``) each keep one.
Owner of the conductors' asyncio tasks: the :class:`RunningDownloads`, which
cancels them on :meth:`~RunningDownloads.close`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from ... import ids
from ...domain import DownloadSpec
from ..threads import cancel_and_wait
from .conductor import Conductor, ConductorDeps

log = logging.getLogger(__name__)

C = TypeVar("C", bound=Conductor)


def task_id_for(spec: DownloadSpec) -> str:
    """The task ID of a download request (Dragonfly's rules, see :mod:`damselfly.ids`)."""
    return ids.download_task_id(spec)


class RunningDownloads(Generic[C]):
    """At most one running download (a conductor and its asyncio task) per task ID.

    :meth:`start_or_join` starts one, or hands back the job of the one running.
    A job leaves the table when it ends, however it ends, so the next request
    starts afresh. Joiners wait on the job without owning it: one that is
    cancelled (a client that went away) does not cancel the download for the
    others; only :meth:`close` and whoever calls ``cancel()`` on the job do.
    ``on_failure(task_id, error)`` runs when a job ends with an error (in a
    done callback: it must not block).
    """

    def __init__(self, name: str, on_failure: Callable[[str, BaseException], None]) -> None:
        self._name = name
        self._on_failure = on_failure
        self._running: dict[str, tuple[C, asyncio.Task[None]]] = {}

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._running

    def conductors(self) -> dict[str, C]:
        return {tid: c for tid, (c, _) in self._running.items()}

    def job(self, task_id: str) -> asyncio.Task[None] | None:
        entry = self._running.get(task_id)
        return entry[1] if entry is not None else None

    def start_or_join(
        self,
        task_id: str,
        conductor: Callable[[], C],
        run: Callable[[C], Coroutine[Any, Any, None]],
    ) -> tuple[asyncio.Task[None], bool]:
        """The job downloading ``task_id``, started with ``run(conductor())`` unless one is
        running; and whether this call started it."""
        entry = self._running.get(task_id)
        if entry is not None:
            return entry[1], False
        c = conductor()
        job = asyncio.get_running_loop().create_task(run(c), name=f"{self._name}-{task_id[:12]}")
        self._running[task_id] = (c, job)

        def done(t: asyncio.Task[None]) -> None:
            entry = self._running.get(task_id)
            if entry is not None and entry[1] is t:
                del self._running[task_id]
            if not t.cancelled() and (error := t.exception()) is not None:
                self._on_failure(task_id, error)

        job.add_done_callback(done)
        return job, True

    async def close(self) -> None:
        """Cancel every running download and wait for each to end."""
        jobs = [job for _, job in self._running.values()]
        await cancel_and_wait(jobs)
        self._running.clear()


class TaskManager:
    """Starts, joins and cancels downloads."""

    def __init__(self, deps: ConductorDeps) -> None:
        self.deps = deps
        self._running: RunningDownloads[Conductor] = RunningDownloads("download", self._failed)
        self.started_total = 0
        # Digests the content of a task was checked against when it finished.
        self.verified: dict[str, str] = {}

    def running(self) -> dict[str, Conductor]:
        return self._running.conductors()

    def is_running(self, task_id: str) -> bool:
        return task_id in self._running

    def ensure(self, spec: DownloadSpec) -> tuple[str, asyncio.Task[None]]:
        """Start downloading ``spec`` unless it is downloading already; return the task ID and its job."""
        task_id = task_id_for(spec)
        job, started = self._running.start_or_join(
            task_id, lambda: Conductor(self.deps, task_id, spec), self._run
        )
        if started:
            self.started_total += 1
        return task_id, job

    async def _run(self, conductor: Conductor) -> None:
        await conductor.run()
        # Recorded before the job counts as done: a follower that sees it done (before
        # its done callbacks have run) must not hash the whole content a second time.
        if conductor.verified_digest:
            self.verified[conductor.task_id] = conductor.verified_digest

    @staticmethod
    def _failed(task_id: str, error: BaseException) -> None:
        log.info("download of task %s failed: %s", task_id[:12], error)

    async def close(self) -> None:
        await self._running.close()
