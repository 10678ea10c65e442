"""Calls from this daemon to other daemons' ``dfdaemon.v2.DfdaemonUpload``.

Channels are cached per parent address and closed with the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from ...api import dfdaemon_pb2, dfdaemon_pb2_grpc
from ...domain import HostInfo
from ...errors import NotFound, PeerError

# How long a parent may take to learn the content length from its own source.
STAT_TIMEOUT = 10.0


class PeerRPC:
    """A cache of gRPC channels to parents, and the two calls a child makes."""

    def __init__(self, *, credentials: grpc.ChannelCredentials | None = None) -> None:
        self._credentials = credentials
        self._channels: dict[str, Any] = {}

    def _stub(self, host: HostInfo) -> Any:
        addr = f"{host.ip}:{host.port}"
        channel = self._channels.get(addr)
        if channel is None:
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(addr, self._credentials)
            else:
                channel = grpc.aio.insecure_channel(addr)
            self._channels[addr] = channel
        return dfdaemon_pb2_grpc.DfdaemonUploadStub(channel)

    async def stat_task_length(self, host: HostInfo, task_id: str) -> int:
        """The content length the parent knows for ``task_id``."""
        try:
            task = await self._stub(host).StatTask(
                dfdaemon_pb2.StatTaskRequest(task_id=task_id), timeout=STAT_TIMEOUT
            )
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"parent {host.id} does not have task {task_id[:12]}") from e
            raise PeerError(f"StatTask on parent {host.id} failed: {e.code().name} {e.details()}") from e
        return int(task.content_length)

    async def sync_pieces(
        self, host: HostInfo, host_id: str, task_id: str
    ) -> AsyncIterator[tuple[int, int, int]]:
        """(number, offset, length) of the pieces the parent holds, then of those it finishes."""
        call = self._stub(host).SyncPieces(dfdaemon_pb2.SyncPiecesRequest(host_id=host_id, task_id=task_id))
        try:
            async for resp in call:
                yield int(resp.number), int(resp.offset), int(resp.length)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED:
                return
            raise PeerError(f"SyncPieces with parent {host.id} failed: {e.code().name} {e.details()}") from e
        finally:
            call.cancel()

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for ch in channels.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ch.close(), 2)
