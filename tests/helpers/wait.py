"""Waiting in tests for what happened, never for how long it might take.

A test that sleeps "long enough" and then asserts passes or fails with the
machine's load: on a busy machine the thing has not happened yet, and a
"must not happen" check proves nothing. These helpers wait for the observable
condition itself; their timeout only bounds a hang, so it is generous (a
loaded machine is slow, not wrong), and running out of it fails the test
with what was being waited for.

For "must not happen", wait for the causal point after which it would have
happened (the other side's answer, a counter of decisions taken, a waiter
parked on the store) and assert then; :func:`parked_on` is one such point.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

from damselfly.daemon.store.piece_store import PieceStore

TIMEOUT = 30.0  # seconds: a bound on a hang, not an expectation
_FIRST_LOOK = 0.002
_MOST_BETWEEN_LOOKS = 0.05

Condition = Callable[[], "bool | Awaitable[bool]"]
What = str | Callable[[], str]  # what is awaited; a function for details known only at failure (logs)


def _failure(what: What, timeout: float) -> AssertionError:
    return AssertionError(f"still not the case after {timeout:g} s: {what() if callable(what) else what}")


async def until(condition: Condition, what: What, *, timeout: float = TIMEOUT) -> None:
    """Return as soon as ``condition()`` (a function, or a coroutine function) is true.

    Looks often at first, then at most every 50 ms; fails with ``what`` after
    ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pause = _FIRST_LOOK
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise _failure(what, timeout)
        await asyncio.sleep(pause)
        pause = min(2 * pause, _MOST_BETWEEN_LOOKS)


def wait_until(condition: Callable[[], bool], what: What, *, timeout: float = TIMEOUT) -> None:
    """:func:`until` for synchronous tests (another process or thread makes it true)."""
    deadline = time.monotonic() + timeout
    pause = _FIRST_LOOK
    while not condition():
        if time.monotonic() >= deadline:
            raise _failure(what, timeout)
        time.sleep(pause)
        pause = min(2 * pause, _MOST_BETWEEN_LOOKS)


def parked_on(store: PieceStore, task_id: str) -> bool:
    """Someone waits on the store (a :meth:`PieceStore.changes` cursor) for the task's next change.

    Every change wakes (and drops) the task's waiters, so a waiter present after
    the test's last change has looked at the task as it is now and found nothing
    to do: the causal point for asserting that it did nothing.
    """
    return store.readers_waiting(task_id) > 0
