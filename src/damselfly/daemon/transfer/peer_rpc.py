"""Calls from this daemon to other daemons' ``dfdaemon.v2.DfdaemonUpload``.

Channels are cached per parent address and closed with the daemon.

SyncPieces is also where two Damselfly daemons find out that they both speak
Damselfly's wire extensions, at no cost per piece: a child that may use them
sends the request metadata :data:`EXTENSIONS_METADATA`; a Damselfly parent
that may use them too answers with the same key in its initial metadata, and
only then announces pieces it is still receiving (cut-through). The child uses
the extensions on that parent's piece server only when its answer carried the
key. Dragonfly's daemons neither send nor look at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Iterable, Sequence
from typing import Any

import grpc

from ... import tracing
from ...api import dfdaemon_pb2, dfdaemon_pb2_grpc
from ...api.convert import UNKNOWN_CONTENT_LENGTH
from ...domain import HostInfo
from ...errors import PeerError
from ...security.tls import TLSFiles, client_ssl_context, peer_channel
from .announce import ParentPiece, PlainParent, sync_on_piece_port

log = logging.getLogger(__name__)

# How long a parent may take to learn the content length from its own source.
STAT_TIMEOUT = 10.0
# gRPC metadata on SyncPieces: "this end speaks Damselfly's wire extensions" (value "1").
EXTENSIONS_METADATA = "x-damselfly-extensions"


def known_length(length: int) -> int | None:
    """A content length off the wire, or None for "not known": 2^64-1 is how Dragonfly's
    scheduler sends its -1 (docs/INTEROP.md 2.1, G:scheduler/service/service_v2.go:455-516), and
    0 is a field left unset (an empty task never reaches the parents)."""
    return None if length in (0, UNKNOWN_CONTENT_LENGTH) else length


def says_extensions(metadata: Sequence[tuple[str, Any]] | None) -> bool:
    """Whether gRPC metadata carries :data:`EXTENSIONS_METADATA` set to "1"."""
    return any(key == EXTENSIONS_METADATA and value == "1" for key, value in metadata or ())


class PeerRPC:
    """A cache of gRPC channels to parents, and the two calls a child makes."""

    # The piece sync call and its request (a subclass may name another of the same shape), and
    # whether a Damselfly parent is asked on its piece port instead (announce.py: tasks only).
    SYNC_METHOD = "SyncPieces"
    SYNC_REQUEST: Any = dfdaemon_pb2.SyncPiecesRequest
    SYNC_ON_PIECE_PORT = True

    def __init__(self, *, tls: TLSFiles | None = None) -> None:
        # The daemon's mTLS files: parents are dialed by IP, their certificate names it (or tls.peerName).
        self._tls = tls
        self._piece_tls = client_ssl_context(tls) if tls is not None else None
        self._channels: dict[str, Any] = {}
        # Piece ports that did not take SyncPieces: those parents are asked over gRPC.
        self.plain_sync: set[tuple[str, int]] = set()

    def _stub(self, host: HostInfo) -> Any:
        addr = f"{host.ip}:{host.port}"
        channel = self._channels.get(addr)
        if channel is None:
            channel = peer_channel(addr, self._tls)
            self._channels[addr] = channel
        return dfdaemon_pb2_grpc.DfdaemonUploadStub(channel)

    async def stat_task_length(self, host: HostInfo, task_id: str) -> int | None:
        """The content length the parent knows for ``task_id``; None when it cannot say.

        First ``StatLocalTask``, the parent's own view (a Rust dfdaemon and a
        Damselfly daemon both answer it at once from their store); then
        ``StatTask``, which a Damselfly parent answers from its store too, waiting
        a moment for a running task to learn its length, but a Rust parent
        answers with its scheduler's view, ``INTERNAL`` on any error, and a length
        of 2^64-1 or 0 when the scheduler does not know it (docs/INTEROP.md 3.1,
        2.1). No error here condemns the parent: its SyncPieces says whether it
        can serve; the caller asks another parent or waits for the scheduler.
        """
        stub = self._stub(host)
        try:
            local = await stub.StatLocalTask(
                dfdaemon_pb2.StatLocalTaskRequest(task_id=task_id), timeout=STAT_TIMEOUT
            )
        except grpc.aio.AioRpcError as e:  # not held there, or a parent without StatLocalTask
            log.debug("StatLocalTask on parent %s: %s %s", host.id, e.code().name, e.details())
        else:
            # A failed copy does not vouch for the length.
            if local.HasField("content_length") and not local.HasField("failed_at"):
                length = known_length(local.content_length)
                if length is not None:
                    return length
        try:
            task = await stub.StatTask(dfdaemon_pb2.StatTaskRequest(task_id=task_id), timeout=STAT_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            why = f"{e.code().name} {e.details()}"
            log.info("parent %s cannot say the content length: StatTask %s", host.id, why)
            return None
        length = known_length(task.content_length)
        if length is None:
            log.info("parent %s cannot say the content length: StatTask has %d", host.id, task.content_length)
        return length

    async def sync_pieces(
        self, host: HostInfo, host_id: str, task_id: str, wanted: Iterable[int], *, extensions: bool = False
    ) -> AsyncGenerator[ParentPiece, None]:
        """The pieces among ``wanted`` the parent holds, then those it finishes.

        ``wanted`` must list every piece asked for: a Dragonfly parent answers an
        empty list with nothing. ``extensions``: this daemon speaks Damselfly's wire
        extensions; a parent is then asked on its piece port first (a frame per
        piece, not a gRPC message: announce.py) and, if it does not take that, over
        gRPC from then on, announcing the extensions. Each :class:`ParentPiece` says
        whether the parent speaks them too.
        """
        numbers = sorted(wanted)
        key = (host.ip, host.download_port)
        if extensions and self.SYNC_ON_PIECE_PORT and host.download_port and key not in self.plain_sync:
            tls_name = self._tls.peer_name if self._tls is not None else ""
            stream = sync_on_piece_port(host, task_id, numbers, tls=self._piece_tls, tls_name=tls_name)
            try:
                async with contextlib.aclosing(stream):
                    async for piece in stream:
                        yield piece
                return
            except PlainParent:
                log.info("parent %s does not take SyncPieces on its piece port: asked over gRPC", host.id)
                self.plain_sync.add(key)
        stream = self._grpc_sync_pieces(host, host_id, task_id, numbers, extensions=extensions)
        async with contextlib.aclosing(stream):
            async for piece in stream:
                yield piece

    async def _grpc_sync_pieces(
        self, host: HostInfo, host_id: str, task_id: str, wanted: list[int], *, extensions: bool
    ) -> AsyncGenerator[ParentPiece, None]:
        """SyncPieces over gRPC: Dragonfly's call."""
        metadata = tracing.with_metadata(((EXTENSIONS_METADATA, "1"),) if extensions else ())
        request = self.SYNC_REQUEST(host_id=host_id, task_id=task_id, interested_piece_numbers=wanted)
        call = getattr(self._stub(host), self.SYNC_METHOD)(request, metadata=metadata)
        try:
            theirs = extensions and says_extensions(await call.initial_metadata())
            async for resp in call:
                yield ParentPiece(
                    int(resp.number),
                    int(resp.offset),
                    int(resp.length),
                    # Both always set by a Dragonfly or Damselfly parent; an older one may omit them.
                    resp.ip or host.ip,
                    int(resp.tcp_port) or host.download_port,
                    theirs,
                )
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
