"""Blocking work in a worker thread that a cancel cannot leave running on its own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import ParamSpec, TypeVar

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
