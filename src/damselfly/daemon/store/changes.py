"""Waiting for a task in the store to change, without missing a change.

Whoever follows a task while it downloads (a DownloadTask progress stream,
SyncPieces, the registry mirror serving a blob as it lands, the in-order
digest) loops the same way: look at the task, wait until something about it
changes (or the download ends, or a while passes), look again. The part that
is easy to get wrong is the hand-over between the look and the wait: a change
that lands after the look but before the waiter is registered must still end
the wait. A :class:`TaskChanges` cursor holds that state for its reader, so
the reader only ever writes::

    changes = store.changes(task_id, until=job)   # before the first look
    while True:
        meta = store.get(task_id)
        ...                                        # look, send, decide to stop
        await changes.wait(timeout)

Every return of :meth:`TaskChanges.wait` marks what is current as seen; a
change after that returns the next wait at once. Changes are counted by the
task's ``version`` (bumped by the store after each mutation, see
:meth:`PieceStore._changed`) and by the task's record itself, so a task that
is created, deleted, or deleted and created again counts as changed too.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from .metadata import TaskMeta


class ChangeWaiters:
    """The futures of readers waiting on each task, woken from any thread.

    Owner: :class:`PieceStore`, which calls :meth:`wake` after every change of
    a task; the futures belong to :class:`TaskChanges` waits, which remove
    their own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_task: dict[str, set[asyncio.Future[None]]] = {}

    def add(self, task_id: str) -> asyncio.Future[None]:
        """A new future of the running loop, resolved at the task's next :meth:`wake`."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._by_task.setdefault(task_id, set()).add(fut)
        return fut

    def discard(self, task_id: str, fut: asyncio.Future[None]) -> None:
        with self._lock:
            futs = self._by_task.get(task_id)
            if futs is not None:
                futs.discard(fut)
                if not futs:
                    del self._by_task[task_id]

    def waiting(self, task_id: str) -> int:
        """How many readers wait for the task's next change (the tests' causal point)."""
        with self._lock:
            return len(self._by_task.get(task_id, ()))

    def wake(self, task_id: str) -> None:
        """Resolve every future waiting on the task, each on its own loop."""
        with self._lock:
            futs = self._by_task.pop(task_id, None)
        if not futs:
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for fut in futs:
            loop = fut.get_loop()
            if loop is running:
                _resolve(fut)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, fut)

    def __len__(self) -> int:
        """How many tasks have a waiter."""
        with self._lock:
            return len(self._by_task)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class TaskChanges:
    """One reader's cursor over one task's changes (see the module docstring).

    Made by :meth:`PieceStore.changes` before the reader first looks at the
    task. ``until`` (typically the download's job) also ends a wait once it is
    done. Not shared between readers; used on one event loop.
    """

    __slots__ = ("_get", "_meta", "_task_id", "_until", "_version", "_waiters")

    def __init__(
        self,
        get: Callable[[str], TaskMeta | None],
        waiters: ChangeWaiters,
        task_id: str,
        *,
        until: asyncio.Future[Any] | None = None,
    ) -> None:
        self._get = get
        self._waiters = waiters
        self._task_id = task_id
        self._until = until
        self._meta = get(task_id)
        self._version = _version(self._meta)

    def _moved(self) -> bool:
        meta = self._get(self._task_id)
        return meta is not self._meta or _version(meta) != self._version

    def _catch_up(self) -> bool:
        """Mark the task as it is now as seen; True if that differs from what was seen."""
        meta = self._get(self._task_id)
        version = _version(meta)
        moved = meta is not self._meta or version != self._version
        self._meta, self._version = meta, version
        return moved

    async def wait(self, timeout: float | None = None) -> bool:
        """Return once the task changed since the last return (or since the cursor was made),
        ``until`` is done, or ``timeout`` seconds passed; True if the task changed.

        A task that is missing (not created yet, or deleted) is waited on like
        any other: its creation is a change. Look at the task after every return.
        """
        if self._catch_up():
            return True
        until = self._until
        if until is not None and until.done():
            return False
        fut = self._waiters.add(self._task_id)
        try:
            # A change between the look above and add() found no future to wake: look again
            # now that the future is in place, so any change is seen either here or by a wake.
            if not self._moved():
                aws: set[asyncio.Future[Any]] = {fut} if until is None else {fut, until}
                await asyncio.wait(aws, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._waiters.discard(self._task_id, fut)
        return self._catch_up()


def _version(meta: TaskMeta | None) -> int:
    return -1 if meta is None else meta.version
