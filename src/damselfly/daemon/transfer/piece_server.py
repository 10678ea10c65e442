"""The TCP server other peers pull piece bytes from (Vortex, docs/PROTOCOL.md).

A piece is sent as its PieceContent frame written normally, then the content
straight from the store's content file with ``loop.sendfile`` (zero-copy
``sendfile(2)`` on Linux). Only pieces the store has recorded as finished (or,
for Damselfly children, pieces still arriving, see below) are served, at the
offset and length the store recorded, so no request can read bytes outside a
piece.

Two kinds of children, told apart by their request's tag:

- a plain ``DownloadPiece`` (tag 0; 2 and 4 for persistent and persistent-cache
  tasks), as every Dragonfly client sends it, is answered exactly as
  Dragonfly's Rust server answers it: one request per connection (closed after
  the answer), Vortex's error codes only (2 not found, 1 invalid argument,
  3 internal), a piece still arriving sent once it is held. When all upload
  slots are taken the request waits its turn, as a Rust parent's waits for its
  upload limiter; a super-seed serves it even if the piece went out already.
- Damselfly's own ``DownloadPieceTrailer`` (224), which only a Damselfly child
  that knows this parent speaks Damselfly's extensions sends, gets them: the
  connection stays open for more requests, a piece still arriving is sent as
  it lands (its digest after the content when not known yet), and a request
  that would wait is refused at once with "busy" (4) or, from a super-seed,
  "elsewhere" (5), so the child asks another parent.

With ``extensions`` off the server answers only plain requests; a 224 request
is an unknown tag. Failures are answered, not crashed on: an unknown task or a
piece not held gets ``Error(NOT_FOUND)``, an out-of-range number
``Error(INVALID_ARGUMENT)``; a malformed frame gets ``Error(INVALID_ARGUMENT)``
and the connection is closed, since its framing can no longer be trusted; a
frame with a tag the server does not serve closes the connection without an
answer, as Dragonfly's server does.

Long because: both kinds of children share the upload slots, the in-order
queue, the super-seed's first-send clock and the send path; only the answers
differ, and they sit beside each other on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import AsyncIterator, Callable, Sized
from dataclasses import dataclass
from ssl import SSLContext

from ...errors import DamselflyError, ProtocolError
from ...units import MINUTES
from ..ratelimit import ByteLimiter, RequestLimiter
from ..store.piece_store import PieceStore
from ..store.receiving import Receiving
from . import vortex
from .announce import SyncStreams
from .open_files import OpenFiles
from .send_guard import (
    Connection,
    SendLimits,
    acked_bytes,
    queued_bytes,
    reset_connection,
    send_at_once,
    send_plain,
    send_through_tls,
    to_evict,
    watched,
)

log = logging.getLogger(__name__)
_Code = vortex.ErrorCode

_READ_SIZE = 64 * 1024
SUPER_SEED_RESEND = 5.0  # seconds after which a super-seed serves a given piece again
QUEUE_PER_SLOT = 1  # requests that may wait for each upload slot before "busy"
# A super-seed sends pieces that never went out beside its upload slots, up to this many
# times the slots at once: each receiver gives such a piece only its share of a busy
# downlink, and the seed's upload must still keep pace with its fetch from the origin.
FIRST_SEND_FACTOR = 4
# A piece still arriving (cut-through): the longest a stream waits for its next step's wake-up
# before it looks anyway, and how many final bytes wait for our own crc32 check.
STREAM_WAIT_MAX_S = 0.04
HOLD_BYTES = 64 * 1024
TLS_HANDSHAKE_S = 10.0  # a TLS client that does not finish its handshake in time is dropped


class PieceServer:
    """Serves finished pieces of ``store`` over TCP.

    Owns its listening socket and one asyncio task per connection; :meth:`close`
    cancels them all. ``on_upload(task_id, nbytes)`` is called after each piece
    is sent (metrics); it must not block. A connection with no request for
    ``idle_timeout`` is closed (children reconnect on demand).

    ``limiter`` (the host's upload limit, shared with nothing else) is taken
    before every ``sendfile`` chunk: a limited piece goes out in chunks of the
    limiter's grant size, so all children together stay under the limit and
    no burst exceeds its bucket. ``request_limiter`` refuses piece requests
    over its rate with ``Error(RESOURCE_EXHAUSTED)``; the connection stays open.
    A piece being sent holds its task in use (:meth:`PieceStore.using`), so
    the cache GC does not evict it. With ``upload_slots``, at most that many
    pieces are sent at once; beyond that a Damselfly child's request is
    answered ``Error(RESOURCE_EXHAUSTED, "busy...")`` at once and the child asks
    another parent or retries shortly, a plain request waits its turn.
    ``extensions`` (config ``wire.extensions``): serve Damselfly's requests
    (tags 224 and 226) at all. ``wall_clock`` dates the pieces' ``created_at``. ``limits``
    (:mod:`.send_guard`): a send without progress, or slower than the minimum rate,
    ends its connection (and frees its slot); connections per remote address are capped.
    """

    def __init__(
        self,
        store: PieceStore,
        *,
        on_upload: Callable[[str, int], None] | None = None,
        idle_timeout: float = 5 * MINUTES,
        limiter: ByteLimiter | None = None,
        request_limiter: RequestLimiter | None = None,
        upload_slots: int = 0,
        super_seed: bool = False,
        extensions: bool = True,
        limits: SendLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.extensions = extensions
        self._served = frozenset(vortex.REQUESTS) - (
            {vortex.Tag.DOWNLOAD_CACHE_PIECE}  # no Dragonfly server serves it either
            | (set() if extensions else {vortex.Tag.DOWNLOAD_PIECE_TRAILER})
        )
        self._wall_clock = wall_clock
        # Super-seeding (seed peers): give each piece to the swarm once while
        # other pieces have not gone out yet; peers pass it on among themselves.
        self.super_seed = super_seed
        self._clock = clock
        # task -> piece -> its first send: to which address, and when it arrived
        self._first_sent: dict[str, dict[int, _FirstSend]] = {}
        self._send_time = 0.0  # moving average of one piece's send, seconds
        self.elsewhere_refusals = 0
        # Pieces sent at once (0: no limit); a few more requests wait their turn in
        # order (so a slot that frees up is used at once), beyond that: busy.
        self.upload_slots = upload_slots
        self._slots = asyncio.Semaphore(upload_slots) if upload_slots else None
        self._queued = 0
        self._sending = 0
        self.busy_refusals = 0
        self.limiter = limiter
        self.request_limiter = request_limiter
        self._idle_timeout = idle_timeout
        self.limits = limits or SendLimits()
        self.sync_streams = SyncStreams(self.limits.per_address, request_limiter)  # SyncPieces on this port
        self._by_address: dict[str, set[Connection]] = {}
        self.stalled_sends = 0  # connections ended for a send without progress or too slow
        self.evicted = 0  # ... to make room for another from their address
        self.refused_connections = 0  # new connections refused: their address was full
        self._on_upload = on_upload
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.bytes_sent = 0
        self.pieces_sent = 0
        self.active_connections = 0

    async def start(self, host: str, port: int, *, ssl: SSLContext | None = None) -> int:
        """Listen on ``host:port`` (0: a free port) and return the bound port.

        With ``ssl`` (:func:`damselfly.security.tls.server_ssl_context`) every connection is
        TLS with a client certificate from the fleet's CA; ``loop.sendfile`` then
        reads the file and writes it through TLS (no kernel TLS).
        """
        self._server = await asyncio.start_server(
            self._on_connect,
            host,
            port,
            reuse_address=True,
            ssl=ssl,
            ssl_handshake_timeout=TLS_HANDSHAKE_S if ssl is not None else None,
        )
        sockets = self._server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        now = self._clock()
        conn = Connection(_requester(writer), now, now)
        peers = self._by_address.setdefault(conn.address, set())
        if self.limits.per_address and len(peers) >= self.limits.per_address:
            victim = to_evict(peers, self.limits, now)
            if victim is None:  # every one of them is sending and making progress
                self.refused_connections += 1
                log.info("refusing a piece connection from %s: %d open already", conn.address, len(peers))
                reset_connection(writer)
                return
            self.evicted += 1
            peers.discard(victim)
            victim.dropped = True
            victim.evict()
        peers.add(conn)
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer, conn))
        conn.evict = task.cancel
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    def address_connections(self, address: str) -> list[Connection]:
        """The connections open from ``address``, as the per-address cap sees them (metrics, tests)."""
        return list(self._by_address.get(address, ()))

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection
    ) -> None:
        self.active_connections += 1
        stalled = False  # a send without progress: reset, not closed behind unread bytes
        parser = vortex.FrameParser()
        files = OpenFiles(self._store)
        peer = writer.get_extra_info("peername")
        try:
            while True:
                try:
                    event = parser.next_event()
                except vortex.UnsupportedTag as e:
                    log.info("piece connection from %s: %s; closing", peer, e)
                    return
                except ProtocolError as e:
                    log.info("piece request from %s is malformed: %s", peer, e)
                    await self._refuse(writer, 0, vortex.ErrorCode.INVALID_ARGUMENT, str(e))
                    return
                if event is None:
                    try:
                        async with asyncio.timeout(self._idle_timeout):
                            data = await reader.read(_READ_SIZE)
                    except TimeoutError:
                        log.debug("closing piece connection from %s: idle", peer)
                        return
                    if not data:
                        return
                    conn.moved(self._clock())
                    parser.feed(data)
                    continue
                if isinstance(event, vortex.SyncPieces) and self.extensions:  # until it ends
                    self._unlist(conn)  # a stream, not a piece connection (SyncStreams)
                    return await self.sync_streams.serve(self._store, event, reader, writer, conn.address)
                if not isinstance(event, vortex.DownloadPiece) or event.tag not in self._served:
                    # Close, a frame only a parent sends, or a request not served here: as
                    # Dragonfly's server does, close without an answer.
                    log.debug("piece connection from %s ends with %s", peer, type(event).__name__)
                    return
                if not await self._send_piece(writer, event, files, conn) or not event.damselfly:
                    return  # a plain request: one per connection, as Dragonfly's server
        except TimeoutError as e:  # before OSError, of which it is one
            self.stalled_sends += 1
            stalled = True
            log.info("closing piece connection from %s: %s", peer, e or "no progress")
        except (ConnectionError, OSError, RuntimeError) as e:
            # RuntimeError: loop.sendfile on a transport the peer already closed.
            log.debug("piece connection from %s ended: %s", peer, e)
        finally:
            self.active_connections -= 1
            self._unlist(conn)
            files.close()
            if stalled or conn.dropped:
                reset_connection(writer)
            else:
                writer.close()
                try:
                    async with asyncio.timeout(self.limits.idle_timeout):
                        await writer.wait_closed()
                except TimeoutError:
                    reset_connection(writer)  # the child reads nothing more: drop what is queued for it
                except Exception:
                    pass

    def _unlist(self, conn: Connection) -> None:
        peers = self._by_address.get(conn.address)
        if peers is not None:
            peers.discard(conn)
            if not peers:
                del self._by_address[conn.address]

    async def _send_piece(
        self, writer: asyncio.StreamWriter, request: vortex.DownloadPiece, files: OpenFiles, conn: Connection
    ) -> bool:
        """Answer one piece request; False when the connection must close.

        A Damselfly child (``request.damselfly``) may be refused "busy" or
        "elsewhere" and may get a piece still arriving; a plain one gets only
        what a Dragonfly parent would answer (see the module docstring).
        """
        pid = request.packet_id
        damselfly = request.damselfly  # only served when extensions are on
        if self.request_limiter is not None and not self.request_limiter.allow():
            code = _Code.RESOURCE_EXHAUSTED if damselfly else _Code.INTERNAL
            return await self._refuse(writer, pid, code, "too many piece requests; retry")
        meta = self._store.get(request.task_id)
        if meta is None:
            return await self._refuse(writer, pid, _Code.NOT_FOUND, "unknown task")
        piece = meta.pieces.get(request.number)
        incoming = self._store.receiving.get(request.task_id, request.number) if piece is None else None
        if incoming is not None and not damselfly:
            # Arriving from our parent or the origin: a plain child (any Dragonfly client) gets
            # the piece once it is here, digest first, as a Rust parent waits for its piece.
            await incoming.ended()
            meta = self._store.get(request.task_id)
            if meta is None:
                return await self._refuse(writer, pid, _Code.NOT_FOUND, "unknown task")
            piece, incoming = meta.pieces.get(request.number), None
        if piece is None and incoming is None:
            count = meta.piece_count
            if count is not None and request.number >= count:
                code, message = _Code.INVALID_ARGUMENT, f"piece {request.number} >= {count} pieces"
            else:
                code, message = _Code.NOT_FOUND, f"piece {request.number} is not held (yet)"
            return await self._refuse(writer, pid, code, message)
        first = False
        verdict = ""
        requester = _requester(writer)
        if self.super_seed:
            verdict = self._super_seed_verdict(
                request.task_id,
                request.number,
                meta.pieces.keys(),
                requester,
                complete=meta.is_complete,
            )
            if verdict == "elsewhere" and damselfly:
                self.elsewhere_refusals += 1
                message = f"piece {request.number} is with other peers already"
                return await self._refuse(writer, pid, _Code.ELSEWHERE, message)
            first = verdict == "first" and self._sending < self.upload_slots * FIRST_SEND_FACTOR
        if (
            damselfly
            and not first
            and self._slots is not None
            and self._sending >= self.upload_slots
            and self._queued >= self.upload_slots * QUEUE_PER_SLOT
        ):
            # Refuse at once rather than split the link among ever more pieces: a
            # piece sent at full speed is one the child can pass on sooner. (A plain
            # child waits its turn: it would take a refusal as a failed parent.)
            self.busy_refusals += 1
            message = f"busy: {self.upload_slots} pieces in flight"
            return await self._refuse(writer, pid, _Code.RESOURCE_EXHAUSTED, message)
        try:
            file = files.get(request.task_id)
        except DamselflyError as e:
            return await self._refuse(writer, pid, _Code.NOT_FOUND, str(e))
        if incoming is not None and incoming.state == "failed":
            message = f"piece {request.number} is not held"
            return await self._refuse(writer, pid, _Code.NOT_FOUND, message)
        number = request.number
        parent_id, cost_s = "", 0  # for a piece still arriving: not known yet
        if incoming is not None:
            offset, length, digest = incoming.offset, incoming.length, incoming.digest
        else:
            assert piece is not None
            offset, length, digest = piece.offset, piece.length, piece.digest
            parent_id, cost_s = piece.parent_id, int(piece.cost_s)
        header = vortex.encode_piece_header(
            pid,
            number,
            offset,
            length,
            digest,
            parent_id=parent_id,
            cost_s=cost_s,
            created_at=int(self._wall_clock()),
            tag=request.answer_tag,
        )
        sent = -1
        try:
            async with self._turn(bypass=first):
                conn.sending = True
                conn.moved(self._clock())  # the wait for a slot was not the child's doing
                writer.write(header)
                began = self._clock()
                with self._store.using(request.task_id):
                    if incoming is not None:
                        sent = await self._stream_incoming(writer, file, incoming, conn)
                        if sent < 0:
                            log.info("task %s piece %d: our own transfer failed; aborting the stream",
                                     request.task_id[:12], number)  # fmt: skip
                            return False
                        if not digest and sent == length:
                            # Sent before its digest was known: the digest follows the content.
                            if not incoming.digest:
                                log.warning("task %s piece %d: landed without a digest; closing",
                                            request.task_id[:12], number)  # fmt: skip
                                return False
                            writer.write(vortex.encode_piece_digest(pid, incoming.digest))
                    else:
                        sent = await self._sendfile(writer, file, offset, length, request.task_id, conn)
                self._send_time += 0.2 * ((self._clock() - began) - self._send_time)
        finally:
            conn.sending = False
            if verdict == "first":
                self._first_send_ended(request.task_id, request.number, requester, ok=sent == length)
        self.bytes_sent += sent
        if sent != length:
            log.warning(
                "task %s piece %d: content file short (%d of %d bytes sent); closing",
                request.task_id,
                number,
                sent,
                length,
            )
            return False
        self.pieces_sent += 1
        if self._on_upload is not None:
            try:
                self._on_upload(request.task_id, sent)
            except Exception:
                log.exception("on_upload callback failed")
        return True

    async def _stream_incoming(
        self, writer: asyncio.StreamWriter, file: io.FileIO, incoming: Receiving, conn: Connection
    ) -> int:
        """Send a piece that is still arriving from our parent, as its bytes land.

        The last ``HOLD_BYTES`` go only once our own copy passed its crc32 check
        (the entry is done); if our transfer fails, returns -1 and the caller
        closes the connection, so the child never gets a whole unverified piece.
        """
        length = incoming.length
        pos = 0
        # Whatever has landed goes at each wake-up (256 KiB batches cost time: BENCHMARKS.md).
        while pos < length:
            state = incoming.state
            if state == "failed":
                return -1
            ready = incoming.written if state == "receiving" else length
            if state == "receiving":
                ready = min(ready, length - min(HOLD_BYTES, length))
            if ready > pos:
                n = await self._sendfile(
                    writer, file, incoming.offset + pos, ready - pos, incoming.task_id, conn
                )
                if n <= 0:
                    break
                pos += n
                continue
            if state == "receiving" and incoming.written >= length:
                await incoming.ended()  # all here: the held bytes go the moment it is verified
                continue
            conn.moved(self._clock())  # waiting for our upstream is not the child's stall
            # Woken when the next step lands or the transfer ends; past the bytes that may go
            # early, when the whole piece is here (then its verdict, above).
            await incoming.landed(pos if pos < length - HOLD_BYTES else length - 1, STREAM_WAIT_MAX_S)
        return pos

    @contextlib.asynccontextmanager
    async def _turn(self, *, bypass: bool = False) -> AsyncIterator[None]:
        """An upload slot, waited for in order (the caller checked the queue has room);
        ``bypass``: send at once, beside the slots (a super-seed's first send of a piece)."""
        if self._slots is None or bypass:
            self._sending += 1
            try:
                yield
            finally:
                self._sending -= 1
            return
        self._queued += 1
        try:
            await self._slots.acquire()
        finally:
            self._queued -= 1
        self._sending += 1
        try:
            yield
        finally:
            self._sending -= 1
            self._slots.release()

    def _super_seed_verdict(
        self, task_id: str, number: int, held: Sized, requester: str, *, complete: bool
    ) -> str:
        """``"first"`` (the piece never went out), ``"again"`` (serve it again) or
        ``"elsewhere"``: another peer got it recently, and the seed's upload is better
        spent on pieces the swarm lacks.

        Records the first send. While the seed is still fetching the task,
        its upload is the swarm's narrowest link (it runs at the origin's pace), so
        no duplicate goes out: each piece enters the swarm once and the peers pass
        it on. Once the task is complete here, duplicates are refused only while
        some held piece never went out. The same requester asking again (a failed
        transfer) is served; a piece whose first copy arrived long ago (more than
        ``SUPER_SEED_RESEND`` seconds and four times a piece's usual send time) is
        served again, since its receiver may be slow or gone; one still on its way is not.
        """
        sent = self._first_sent.setdefault(task_id, {})
        now = self._clock()
        first = sent.get(number)
        if first is None:
            sent[number] = _FirstSend(requester)
            return "first"
        if first.requester == requester:
            return "again"
        # Not while the first copy is still on its way (on a slow, shared link that can take
        # longer than SUPER_SEED_RESEND: resending then fed duplicates to a starving swarm);
        # then long enough for the receiver's peers to get it from the receiver.
        if first.finished is not None and now - first.finished > max(SUPER_SEED_RESEND, 4 * self._send_time):
            return "again"
        # Only held pieces are ever recorded.
        return "elsewhere" if not complete or len(sent) < len(held) else "again"

    def _first_send_ended(self, task_id: str, number: int, requester: str, *, ok: bool) -> None:
        """A first send finished (the resend clock starts) or failed (the next asker gets it first)."""
        record = self._first_sent.get(task_id, {}).get(number)
        if record is None or record.requester != requester or record.finished is not None:
            return
        if ok:
            record.finished = self._clock()
        else:
            del self._first_sent[task_id][number]

    def forget(self, task_id: str) -> None:
        self._first_sent.pop(task_id, None)

    async def _sendfile(
        self,
        writer: asyncio.StreamWriter,
        file: io.FileIO,
        offset: int,
        length: int,
        task_id: str,
        conn: Connection,
    ) -> int:
        """Send ``length`` bytes of ``file``, in chunks of the host limiter's grants when it
        limits; a send the child stops acknowledging for the idle timeout, or slower than the
        minimum rate (limiter waits not counted), raises TimeoutError (:func:`.send_guard.watched`)."""
        loop = asyncio.get_running_loop()
        limiter = self.limiter
        limited = limiter is not None and not limiter.unlimited
        send = send_through_tls if writer.get_extra_info("ssl_object") is not None else send_plain
        sock = writer.get_extra_info("socket")
        sent = send_at_once(writer, file, offset, length) if send is send_plain and not limited else 0
        if sent == length:  # the socket took it all: nothing to wait for, nothing to watch
            conn.moved(self._clock())
            return sent
        # What is queued ahead of these bytes (the transport's buffer, the socket's) goes first.
        ahead = writer.transport.get_write_buffer_size() + queued_bytes(sock)
        budget = self.limits.budget(length - sent + ahead)
        while sent < length:
            n = length - sent
            if limiter is not None and limited:
                n = await limiter.acquire(n, task_id)  # turns are fair per task
            began = loop.time()
            moved = lambda: conn.moved(self._clock())  # noqa: E731
            try:
                async with watched(lambda: acked_bytes(sock), self.limits, budget, moved):
                    got = await send(loop, writer, file, offset + sent, n)
            except TimeoutError as e:
                raise TimeoutError(f"{e} ({sent} of {length} bytes sent)") from None
            budget -= loop.time() - began
            conn.moved(self._clock())
            sent += got
            if got < n:
                if limiter is not None and limited:
                    limiter.refund(n - got)
                break
        return sent

    async def _refuse(
        self, writer: asyncio.StreamWriter, pid: int, code: vortex.ErrorCode, message: str
    ) -> bool:
        """Answer a piece request with an Error frame; the connection stays usable. A child
        that does not read the answer within the idle timeout: TimeoutError."""
        writer.write(vortex.encode_error(pid, code, message))
        async with asyncio.timeout(self.limits.idle_timeout):
            await writer.drain()
        return True


@dataclass(slots=True)
class _FirstSend:
    """A super-seed's first send of a piece: to whom, and when it completed (None: on its way)."""

    requester: str
    finished: float | None = None


def _requester(writer: asyncio.StreamWriter) -> str:
    """The address a piece request came from (the super-seed's notion of "who has it")."""
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""
