"""Work a cancel cannot leave running on its own: blocking work in a worker thread,
background tasks stopped by their owner, and a bounded wait for an event that a cancel
always ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


async def to_thread_to_the_end(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``asyncio.to_thread``, except that cancelling the caller waits for the thread to finish
    before the cancel goes on: a thread cannot be stopped, and it may still be using an fd, a
    buffer or a file that the caller releases as soon as it is cancelled."""
    job = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await job
        raise


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has ended, whatever it ended with.

    ``asyncio.wait`` never raises the tasks' own errors (they are marked as
    seen here, so none is reported as never retrieved), while a cancel of the
    caller still reaches the caller: a ``suppress(BaseException)`` around each
    ``await task`` would swallow that cancel too, and leave the caller running
    (a stopping daemon whose loop goes on).
    """
    tasks = list(tasks)
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in tasks:
        if not task.cancelled():
            task.exception()


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set, for at most ``timeout`` seconds (None: forever); whether it is.

    Not ``asyncio.wait_for(event.wait(), timeout)``: on Python 3.11 that returns normally,
    dropping the cancel, when its task is cancelled just as the event is set (CPython
    gh-86296, fixed in 3.12). A loop around it then goes on after being cancelled, and
    whoever waits for the loop to end waits forever: a scheduler link's keeper kicked as the
    daemon stops. ``asyncio.timeout`` counts cancels and never hides one.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True
