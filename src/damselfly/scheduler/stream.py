"""One AnnouncePeer stream's outgoing side, and how errors map to gRPC status codes.

A :class:`PeerStream` is written by whoever decides (the stream's own reader,
another peer's event, the retry loop) and drained, in order, by the stream's
handler in :mod:`.service`, which alone touches the gRPC context. The
messages pass through unread: this module knows no protobuf type.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc

from ..errors import DamselflyError, InvalidArgument, NotFound, PermissionDenied

M = TypeVar("M")  # the messages the stream's handler writes


@dataclass(frozen=True, slots=True)
class Abort:
    code: grpc.StatusCode
    details: str


END = object()


class PeerStream(Generic[M]):
    """One AnnouncePeer stream: the peer it registered, and what its handler should write next.

    A deque and at most one waiter (the stream's handler is the only reader)
    rather than an ``asyncio.Queue``: with thousands of open streams the
    queue's own deques and Event were objects the garbage collector scanned
    for nothing (BENCHMARKS.md, the scheduler at scale).
    """

    __slots__ = ("_items", "_waiter", "peer_id", "trace")

    def __init__(self) -> None:
        self.peer_id = ""  # set by the RegisterPeerRequest
        self.trace: Any = None  # the call's metadata when tracing is on (its traceparent)
        self._items: deque[object] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def _put(self, item: object) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def send(self, message: M) -> None:
        self._put(message)

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._put(Abort(code, details))

    def end(self) -> None:
        self._put(END)

    async def get(self) -> object:
        """The next item, in order, waiting for one if there is none (one reader at a time)."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def pending(self) -> list[object]:
        """Take everything queued so far (for tests that drive :meth:`SchedulerService.handle`)."""
        out = list(self._items)
        self._items.clear()
        return out


def status_of(error: DamselflyError) -> grpc.StatusCode:
    if isinstance(error, NotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, PermissionDenied):
        return grpc.StatusCode.PERMISSION_DENIED
    return grpc.StatusCode.INTERNAL
