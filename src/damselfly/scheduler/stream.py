"""One AnnouncePeer stream's outgoing side, and how errors map to gRPC status codes.

A :class:`PeerStream` is written by whoever decides (the stream's own reader,
another peer's event, the retry loop) and drained, in order, by the stream's
handler in :mod:`.service`, which alone touches the gRPC context.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc

from ..errors import DamselflyError, InvalidArgument, NotFound

PB = Any


@dataclass(frozen=True, slots=True)
class Abort:
    code: Any  # grpc.StatusCode
    details: str


END = object()


class PeerStream:
    """One AnnouncePeer stream: the peer it registered, and what its handler should write next."""

    def __init__(self) -> None:
        self.peer_id = ""  # set by the RegisterPeerRequest
        self._queue: asyncio.Queue[object] = asyncio.Queue()

    def send(self, message: PB) -> None:
        self._queue.put_nowait(message)

    def abort(self, code: Any, details: str) -> None:
        self._queue.put_nowait(Abort(code, details))

    def end(self) -> None:
        self._queue.put_nowait(END)

    async def get(self) -> object:
        return await self._queue.get()

    def pending(self) -> list[object]:
        """Take everything queued so far (for tests that drive :meth:`SchedulerService.handle`)."""
        out = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out


def status_of(error: DamselflyError) -> Any:
    if isinstance(error, NotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL
