"""Pieces this daemon is receiving from a parent right now: cut-through forwarding.

A piece crosses the swarm in hops (seed -> peer -> peer ...). Store-and-forward
makes each hop cost a whole piece's transfer time: 4 MiB at a share of a
downlink is a second or more, and a flash crowd then trails its seed by many
pieces. Instead, once a piece's header has arrived from a parent (so its crc32
is known), the piece is *receiving*: this daemon advertises it (SyncPieces)
and serves it to its own children while the bytes land, so a hop costs about a
round trip.

Integrity is unchanged: every child checks the whole piece against the digest
in the header, as always; the forwarder holds back the piece's last bytes until
its own check passed, and aborts the stream if it failed, so a child never gets
a complete piece that its parent did not verify.

Owner: :class:`PieceStore` (``store.receiving``); the conductor starts and ends
entries around each piece it fetches; the piece server and SyncPieces read them.
The byte count is advanced from the worker thread that receives the body (a
plain int store), and wakes the streams waiting in :meth:`Receiving.landed` for
more (one wake-up per step the body lands in, not a poll that looks four or five
times per step on a slow link and twice on a fast one). The end of a transfer
(``end``, on the event loop) wakes readers waiting in :meth:`Receiving.ended`:
the last bytes of a piece wait for that verdict, and at every hop of a line of
peers a poll's back-off would add its delay to the piece's way down the line.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Receiving:
    """One piece on its way in: where it goes, its digest, how many bytes landed."""

    task_id: str
    number: int
    offset: int
    length: int
    digest: str
    written: int = 0  # bytes of the piece written so far (from ``offset``)
    state: str = "receiving"  # receiving | done (verified and recorded) | failed
    _waiters: list[asyncio.Future[None]] = field(default_factory=list, repr=False)
    # Streams waiting in landed() for the count to pass a mark, woken from whichever thread
    # advances it.
    _listeners: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None], int]] = field(
        default_factory=list, repr=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def advance(self, written: int) -> None:
        self.written = written
        if self._listeners:
            with self._lock:
                due = [entry for entry in self._listeners if written > entry[2]]
                if due:
                    self._listeners = [entry for entry in self._listeners if written <= entry[2]]
            for loop, fut, _ in due:
                with contextlib.suppress(RuntimeError):  # its loop closed (the daemon stopping)
                    loop.call_soon_threadsafe(_wake, fut)

    async def landed(self, beyond: int, timeout: float) -> None:
        """Return once more than ``beyond`` bytes landed, the transfer ended, or ``timeout``
        passed (the bound on a wake-up that never comes); on the event loop only."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (loop, fut, beyond)
        with self._lock:
            self._listeners.append(entry)
        try:
            # Looked at once listed: a count advanced just before is seen here, one after wakes us.
            if self.written <= beyond and self.state == "receiving":
                timer = loop.call_later(timeout, _wake, fut)
                try:
                    await fut
                finally:
                    timer.cancel()
        finally:
            with self._lock:
                if entry in self._listeners:
                    self._listeners.remove(entry)

    async def ended(self) -> None:
        """Return once the transfer ended (done or failed); on the event loop only."""
        if self.state != "receiving":
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _settle(self, state: str) -> None:
        with self._lock:
            self.state = state
            listeners, self._listeners = self._listeners, []
        waiters, self._waiters = self._waiters, []
        for waiter in (*waiters, *(fut for _, fut, _ in listeners)):
            _wake(waiter)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ReceivingPieces:
    """The pieces being received, by task; ``on_change(task_id)`` when the set changes."""

    def __init__(self, on_change: Callable[[str], None]) -> None:
        self._lock = threading.Lock()
        self._by_task: dict[str, dict[int, Receiving]] = {}
        self._on_change = on_change

    def start(self, task_id: str, number: int, offset: int, length: int, digest: str) -> Receiving:
        entry = Receiving(task_id, number, offset, length, digest)
        with self._lock:
            self._by_task.setdefault(task_id, {})[number] = entry
        self._on_change(task_id)
        return entry

    def end(self, entry: Receiving, *, ok: bool) -> None:
        """The transfer ended: ``ok`` once the piece is verified and in the store (on the loop)."""
        entry._settle("done" if ok else "failed")
        with self._lock:
            pieces = self._by_task.get(entry.task_id)
            if pieces is not None and pieces.get(entry.number) is entry:
                del pieces[entry.number]
                if not pieces:
                    del self._by_task[entry.task_id]
        self._on_change(entry.task_id)

    def get(self, task_id: str, number: int) -> Receiving | None:
        with self._lock:
            return self._by_task.get(task_id, {}).get(number)

    def of(self, task_id: str) -> dict[int, Receiving]:
        with self._lock:
            return dict(self._by_task.get(task_id, {}))
