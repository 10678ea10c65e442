"""Following a download as it lands: the task's start, then each piece, once.

Every local caller that streams a download's progress (DownloadTask for dfget,
the persistent cache's export and replication) reads the store the same way:
look, report what is new, wait for the next change or the download's end. The
job's state is read *before* each look, so the last look after the job ended
sees every piece it stored and none is left unreported.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

from ...domain import DownloadProgress, DownloadStarted, PieceDownloaded
from ...errors import DamselflyError, DownloadTimeout
from ..store.piece_store import PieceStore

# The longest wait between two looks: a bound, not a poll (changes wake it sooner).
LOOK_AGAIN_S = 1.0


async def follow_download(
    store: PieceStore,
    task_id: str,
    job: asyncio.Future[Any] | None,
    *,
    deadline: float | None = None,
    late: str = "the download did not finish in time",
) -> AsyncGenerator[DownloadProgress, None]:
    """Report ``task_id``'s start and pieces until ``job`` ends (None: the store holds it already).

    Raises the job's error if it failed, :class:`DownloadTimeout` (``late``) when
    ``deadline`` (a ``time.monotonic()`` value) passes first, and
    :class:`DamselflyError` when the job ended without the complete content.
    """
    sent: set[int] = set()
    started = False
    changes = store.changes(task_id, until=job)
    while True:
        ended = job is None or job.done()
        meta = store.get(task_id)
        if meta is not None and meta.content_length is not None:
            if not started:
                started = True
                yield DownloadStarted(task_id, meta.content_length, finished=ended)
            for number in sorted(meta.pieces.keys() - sent):
                sent.add(number)
                yield PieceDownloaded(task_id, meta.pieces[number])
        if ended:
            break
        wait = LOOK_AGAIN_S
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                raise DownloadTimeout(late)
        await changes.wait(wait)  # a created or deleted task wakes it too: the job says why
    if job is not None:
        error = job.exception() if not job.cancelled() else asyncio.CancelledError()
        if error is not None:
            raise error
    meta = store.get(task_id)
    if meta is None or not meta.is_complete:
        raise DamselflyError("the download ended without the complete content")
