"""RunningDownloads (daemon/download/tasks.py): one download per task, joined, cleared when it ends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from damselfly.daemon.download.tasks import RunningDownloads


class FakeConductor:
    """Runs until released; then ends as told."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.release = asyncio.Event()
        self.error: BaseException | None = None
        self.runs = 0

    async def run(self) -> None:
        self.runs += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error


def table() -> tuple[RunningDownloads[Any], list[tuple[str, BaseException]]]:
    failures: list[tuple[str, BaseException]] = []
    return RunningDownloads("test", lambda tid, e: failures.append((tid, e))), failures


def run(c: FakeConductor) -> Any:
    return c.run()


async def test_a_second_request_joins_the_running_download() -> None:
    downloads, _ = table()
    made: list[FakeConductor] = []

    def make() -> FakeConductor:
        made.append(FakeConductor("t1"))
        return made[-1]

    job, started = downloads.start_or_join("t1", make, run)
    again, started_again = downloads.start_or_join("t1", make, run)
    assert started and not started_again
    assert again is job and len(made) == 1
    assert "t1" in downloads and downloads.job("t1") is job
    assert downloads.conductors() == {"t1": made[0]}
    made[0].release.set()
    await job
    assert made[0].runs == 1


async def test_a_finished_download_is_cleared_and_the_next_request_starts_afresh() -> None:
    downloads, failures = table()
    first = FakeConductor("t1")
    job, _ = downloads.start_or_join("t1", lambda: first, run)
    first.release.set()
    await job
    assert "t1" not in downloads and downloads.job("t1") is None and not failures
    second = FakeConductor("t1")
    job2, started = downloads.start_or_join("t1", lambda: second, run)
    assert started and job2 is not job
    second.release.set()
    await job2


async def test_a_failed_download_is_cleared_and_reported() -> None:
    downloads, failures = table()
    c = FakeConductor("t1")
    c.error = RuntimeError("origin gone")
    job, _ = downloads.start_or_join("t1", lambda: c, run)
    c.release.set()
    with pytest.raises(RuntimeError):
        await job
    assert "t1" not in downloads
    assert failures == [("t1", c.error)]


async def test_the_caller_that_started_a_download_going_away_does_not_cancel_it() -> None:
    """Callers wait on the job (asyncio.wait), they do not own it: the one that
    started it may be cancelled (its client left) while another still waits."""
    downloads, _ = table()
    c = FakeConductor("t1")
    waiting = asyncio.Event()

    async def caller() -> None:
        job, _ = downloads.start_or_join("t1", lambda: c, run)
        waiting.set()
        await asyncio.wait({job})

    starter = asyncio.ensure_future(caller())
    await waiting.wait()
    starter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starter
    job, started = downloads.start_or_join("t1", lambda: FakeConductor("t1"), run)
    assert not started and not job.done()
    c.release.set()
    await job
    assert not job.cancelled() and c.runs == 1


async def test_close_cancels_every_running_download() -> None:
    downloads, failures = table()
    jobs = [downloads.start_or_join(tid, lambda tid=tid: FakeConductor(tid), run)[0] for tid in ("t1", "t2")]
    await downloads.close()
    assert all(j.cancelled() for j in jobs)
    assert downloads.conductors() == {} and not failures
