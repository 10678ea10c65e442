"""Which pieces a parent can give: SyncPieces, on gRPC or on the piece port.

:func:`announcements` is what a parent tells one child of a task, whatever carries
it: the interested pieces it holds, then those it finishes, and for a Damselfly
child also those still arriving here (the piece server streams them as they land,
store/receiving.py). The upload service sends them as gRPC ``SyncPiecesResponse``
messages, as Dragonfly does (daemon/service.py).

Between two Damselfly daemons the same announcements go on the parent's piece port
instead (Vortex tags of Damselfly's own, docs/PROTOCOL.md): the child sends one
``SyncPieces`` frame, the parent echoes it at once ("taken"), then answers a 21-byte
``PieceAnnounce`` frame per piece and ``Close`` once every piece asked for is held,
or ``Error`` (2: the task is not here; 3: its download failed). Measured
(``benchmarks/announce_cost.py``), a parent spends ~53 µs of CPU on each gRPC
message and ~7 on a frame, and a relaying parent tells each child of each piece
twice. A parent that does not know the tag (a Dragonfly daemon, or a Damselfly one
with ``wire.extensions: false``) closes the connection without an answer; on that,
or on any first answer but the echo, the child asks over gRPC, and keeps doing so
for that parent (:meth:`.peer_rpc.PeerRPC.sync_pieces`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import Counter
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass

from ... import tracing
from ...domain import HostInfo, PieceInfo
from ...errors import DamselflyError, NotFound, PeerError, ProtocolError
from ..ratelimit import RequestLimiter
from ..store.piece_store import PieceStore
from ..store.receiving import Receiving
from . import vortex

log = logging.getLogger(__name__)

CHANGES_WAIT_S = 30.0  # a look at the task even when no change wakes the wait
CONNECT_TIMEOUT_S = 10.0
READ_SIZE = 64 * 1024


class TaskFailed(DamselflyError):
    """The parent's copy of the task failed or was dropped while a child followed it."""


@dataclass(frozen=True, slots=True)
class ParentPiece:
    """A piece a parent holds, and where its piece server is.

    ``ip``/``port`` come from the parent's SyncPieces answer (a Dragonfly
    parent's ``Host.download_port`` is its gRPC port, not its piece server);
    ``extensions``: the parent speaks Damselfly's wire extensions.
    """

    number: int
    offset: int
    length: int
    ip: str
    port: int
    extensions: bool = False


@dataclass(frozen=True, slots=True)
class Announcement:
    number: int
    offset: int
    length: int
    arriving: bool  # still arriving here: served as it lands


async def announcements(
    store: PieceStore, task_id: str, interested: Iterable[int], *, arriving: bool
) -> AsyncGenerator[Announcement, None]:
    """The pieces among ``interested`` (empty: every piece) held here, then those that finish;
    with ``arriving``, also those still arriving, each announced again once held (its transfer
    may fail in between and the child forget it). Ends once every piece asked for is held.

    Raises NotFound when the task is not here (or failed) at the start, TaskFailed when it
    fails or goes while followed. Only what changed is looked at at each change of the task
    (set operations, not a walk over every piece: this runs for each child).
    """
    wanted_numbers = set(interested)
    meta = store.get(task_id)
    if meta is None or meta.state == "failed":
        raise NotFound(f"task {task_id} not found")
    sent: set[int] = set()  # announced, held or arriving
    held: set[int] = set()  # announced while held
    changes = store.changes(task_id)
    while True:
        meta = store.get(task_id)
        if meta is None or meta.state == "failed":
            raise TaskFailed(f"task {task_id} failed here")
        coming = store.receiving.of(task_id) if arriving else {}
        pieces = meta.pieces
        for number in sorted((coming.keys() - sent) | (pieces.keys() - held)):
            if wanted_numbers and number not in wanted_numbers:
                continue
            sent.add(number)
            piece: PieceInfo | Receiving | None = pieces.get(number)
            if piece is not None:
                held.add(number)
            else:
                piece = coming[number]
            yield Announcement(number, piece.offset, piece.length, arriving=number not in held)
        wanted = wanted_numbers or (set(range(meta.piece_count)) if meta.piece_count is not None else None)
        if wanted is not None and wanted <= held:
            return
        if meta.state == "succeeded" and meta.pieces.keys() <= held:
            return
        await changes.wait(CHANGES_WAIT_S)  # deleted meanwhile: TaskFailed on the next round


# --------------------------------------------------------------------------- parent


async def serve_sync(
    store: PieceStore,
    request: vortex.SyncPieces,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """Answer a child's SyncPieces frame on its piece connection until every piece it asked for
    is held here (then Close), the task fails or is missing (Error), or the child hangs up
    (it sends nothing more after its request: any byte or EOF ends the answer)."""
    store.note_access(request.task_id)
    packet = request.packet_id
    # Taken, first whatever follows: a child takes nothing else as a Damselfly parent's answer
    # (a server of another kind may well send an Error frame of its own).
    writer.write(vortex.encode_sync_pieces(packet, request.task_id, ()))
    meta = store.get(request.task_id)
    if meta is None or meta.state == "failed":
        missing = f"task {request.task_id} not found"
        writer.write(vortex.encode_error(packet, vortex.ErrorCode.NOT_FOUND, missing))
        await writer.drain()
        return
    if tracing.enabled():  # a span of the child's trace, as the gRPC call makes one
        remote = {tracing.TRACEPARENT: request.traceparent} if request.traceparent else None
        attributes = {"task.id": request.task_id}
        with tracing.span("daemon", "dfdaemon.SyncPieces", remote=remote, attributes=attributes):
            await _answer_until_hung_up(store, request, reader, writer)
        return
    await _answer_until_hung_up(store, request, reader, writer)


async def _answer_until_hung_up(
    store: PieceStore,
    request: vortex.SyncPieces,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    packet = request.packet_id

    async def answer() -> None:
        follow = announcements(store, request.task_id, request.numbers, arriving=True)
        try:
            async with contextlib.aclosing(follow):
                async for a in follow:
                    writer.write(
                        vortex.encode_piece_announce(
                            packet, a.number, a.offset, a.length, arriving=a.arriving
                        )
                    )
                    await writer.drain()
            writer.write(vortex.encode_close(packet))
        except NotFound as e:
            writer.write(vortex.encode_error(packet, vortex.ErrorCode.NOT_FOUND, str(e)))
        except TaskFailed as e:
            writer.write(vortex.encode_error(packet, vortex.ErrorCode.INTERNAL, str(e)))
        await writer.drain()

    answering = asyncio.ensure_future(answer())
    hung_up = asyncio.ensure_future(reader.read(1))
    try:
        await asyncio.wait({answering, hung_up}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (answering, hung_up):
            task.cancel()
        results = await asyncio.gather(answering, hung_up, return_exceptions=True)
    error = results[0]
    if isinstance(error, BaseException) and not isinstance(error, asyncio.CancelledError):
        raise error


class SyncStreams:
    """A piece server's SyncPieces streams: at most ``per_address`` at once from one child
    address (0: no cap), counted apart from its piece connections, which they neither count
    toward nor give way to (a stream waits for pieces for as long as the download runs). One
    over the cap is closed without an answer: that child asks over gRPC. A stream is a request
    of the port's as a piece is: over ``limiter``'s rate it is refused (taken, then ``Error`` 4),
    as the upload service refuses SyncPieces over its own."""

    def __init__(self, per_address: int, limiter: RequestLimiter | None = None) -> None:
        self.per_address = per_address
        self.limiter = limiter
        self.answered = 0
        self._open: Counter[str] = Counter()

    def open_from(self, address: str) -> int:
        return self._open[address]

    async def serve(
        self,
        store: PieceStore,
        request: vortex.SyncPieces,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        address: str,
    ) -> None:
        if self.per_address and self._open[address] >= self.per_address:
            log.info("SyncPieces from %s refused: %d streams open already", address, self._open[address])
            return
        if self.limiter is not None and not self.limiter.allow():
            writer.write(vortex.encode_sync_pieces(request.packet_id, request.task_id, ()))
            busy = "too many requests to this peer; retry later"
            writer.write(vortex.encode_error(request.packet_id, vortex.ErrorCode.RESOURCE_EXHAUSTED, busy))
            await writer.drain()
            return
        self._open[address] += 1
        self.answered += 1
        try:
            await serve_sync(store, request, reader, writer)
        finally:
            self._open[address] -= 1
            if not self._open[address]:
                del self._open[address]


# --------------------------------------------------------------------------- child


class PlainParent(PeerError):
    """The parent's first answer to SyncPieces was not its echo (a close, another protocol, an
    error frame, nothing): it does not take SyncPieces on its piece port."""


async def sync_on_piece_port(
    host: HostInfo,
    task_id: str,
    wanted: Iterable[int],
    *,
    tls: ssl.SSLContext | None = None,
    tls_name: str = "",
    timeout: float = CONNECT_TIMEOUT_S,
) -> AsyncGenerator[ParentPiece, None]:
    """The pieces among ``wanted`` the parent holds or is receiving, then those it finishes,
    asked on its piece port. Raises PlainParent when the parent does not take the request (it
    closes without an answer, or answers in another protocol), PeerError when it does not have
    the task or its download failed there, PeerError or ProtocolError on anything else."""
    where = f"{host.ip}:{host.download_port}"
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host.ip, host.download_port, ssl=tls, server_hostname=(tls_name or host.ip) if tls else None
            )
    except (OSError, TimeoutError) as e:
        raise PeerError(f"cannot connect to parent {where}: {e or 'timed out'}") from e
    try:
        traceparent = dict(tracing.metadata()).get(tracing.TRACEPARENT, "")
        writer.write(vortex.encode_sync_pieces(1, task_id, sorted(wanted), traceparent))
        parser = vortex.FrameParser()
        event = await _first_answer(reader, parser, timeout)
        if not (isinstance(event, vortex.SyncPieces) and event.task_id == task_id and not event.numbers):
            raise PlainParent(f"parent {where} does not take SyncPieces on its piece port")
        event = None  # taken: announcements (or an error) follow
        while True:
            if event is None:
                event = parser.next_event()
                if event is None:
                    data = await reader.read(READ_SIZE)
                    if not data:
                        raise PeerError(f"parent {where} closed its SyncPieces")
                    parser.feed(data)
                    continue
            frame, event = event, None
            if isinstance(frame, vortex.PieceAnnounce):
                yield ParentPiece(frame.number, frame.offset, frame.length, host.ip, host.download_port, True)
            elif isinstance(frame, vortex.Close):
                return
            elif isinstance(frame, vortex.Error):  # NOT_FOUND (not here) or INTERNAL (failed here)
                raise PeerError(f"SyncPieces with parent {where} failed: {frame.message}")
            else:
                raise ProtocolError(f"parent {where} answered SyncPieces with {type(frame).__name__}")
    except (ConnectionError, OSError) as e:
        raise PeerError(f"SyncPieces with parent {where} broke off: {e}") from e
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _first_answer(
    reader: asyncio.StreamReader, parser: vortex.FrameParser, timeout: float
) -> vortex.Event | None:
    """The parent's first frame; None when it closed, sent what is not Vortex (some other server
    behind the port) or nothing within ``timeout``. A Damselfly parent answers at once."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                event = parser.next_event()
                if event is not None:
                    return event
                data = await reader.read(READ_SIZE)
                if not data:
                    return None
                parser.feed(data)
    except (ProtocolError, TimeoutError):
        return None
