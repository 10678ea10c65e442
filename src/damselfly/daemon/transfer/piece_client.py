"""Pulling pieces from a parent's piece server (Vortex over TCP).

A parent known to speak Damselfly's extensions (it said so when the child
synced its pieces, :mod:`.peer_rpc`) is asked with Damselfly's request (tag
224) on pooled connections, and may answer "busy", "elsewhere" or send a
digest after the content. Any other parent, a Dragonfly one in particular, is
asked as Dragonfly's Rust client asks: a plain ``DownloadPiece`` on a new
connection per piece, the answer's packet id not checked (Dragonfly's server
draws it at random), exactly ``length`` content bytes read, then the
connection dropped (that server answers one request per connection).

Receiving is copy-light: frame headers are read exactly (never past the
frame), then content goes from the socket with ``recv_into`` into one reused
buffer (in a worker thread; on the event loop when a byte limit applies) and
from there with ``os.pwrite`` to the piece offset in the caller's fd, with the
crc32 computed on the way (:mod:`.landing`). A piece is never held whole in
memory; a threaded body lands in steps of the parent's pace, not one per packet.

The caller says where the piece goes (offset, length it computed from the
task's geometry). A parent whose header disagrees gets :class:`ProtocolError`:
a parent must never make us write elsewhere.

Errors: the parent's Error frames become :class:`NotFound`,
:class:`ResourceExhausted`, :class:`PieceElsewhere` (the last two from
Damselfly parents only) or :class:`PeerError` (vortex.ErrorCode); a wrong
digest :class:`DigestMismatch` (the bytes written are just not recorded by
the caller, who fetches again); broken connections,
refused connections and timeouts :class:`PeerError`.

Long because: both ways of asking (Damselfly's pooled request, Dragonfly's
one-shot one) share one landing path and one tail (trailer digest, crc check);
splitting the pool off would put one receive path in two files.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ...domain import PieceInfo, TrafficType
from ...errors import (
    DigestMismatch,
    NotFound,
    PeerError,
    PieceElsewhere,
    ProtocolError,
    ResourceExhausted,
    StorageError,
)
from .. import net
from ..ratelimit import TASK_LIMITER, ByteLimiter, LimiterChain, chain
from ..store.digesting import Feed, InOrderDigest
from ..store.receiving import Receiving
from . import vortex
from .landing import RECV_BUFFER_SIZE, Landing, Pace, receive_blocking
from .local_pieces import LocalPieces
from .piece_tls import TLSSession

Limiter = ByteLimiter | LimiterChain
# Called with the piece's digest once its header arrived; may return where to count its bytes.
OnHeader = Callable[[str], Receiving | None]

# Receive piece bodies in worker threads (see PieceClient._receive_threaded); the
# limited path stays on the event loop, where the limiter's tokens are awaited, and so do
# bodies over TLS: a TLS session hands out one 16 KiB record per read, so threads take the
# GIL back some 65 000 times a GiB and queue on it (a loopback hop of 1 GiB, 16 pieces in
# flight, alternating: 0.445 / 0.481 x plain TCP threaded, 0.736 / 0.617 on the loop).
THREADED_BODY = True
# The threads bodies land in: their own pool, not the loop's default executor (six threads on
# two cores, shared with digests and store work). A body holds its thread until its last byte,
# 27 s for a 4 MiB piece at 5 mbit shared by four; a body queued behind busy threads is not
# read at all, its parent's send makes no progress, and the parent drops the connection (64 x
# 5 mbit: "0 of 734136 bytes sent" after 11 s, then the piece failed down the whole line).
# Threads start only as bodies need them; one is cheap while it waits in recv.
BODY_THREADS = 256
_body_pool = ThreadPoolExecutor(max_workers=BODY_THREADS, thread_name_prefix="piece-body")

log = logging.getLogger(__name__)


class PieceClient:
    """One TCP connection to one parent's piece server; one request at a time.

    After any failure other than a clean Error frame or a digest mismatch the
    connection is marked :attr:`broken` (its framing is unknown) and should be
    closed. With :attr:`damselfly` off (the default) it carries one plain
    request, as Dragonfly's client does, and is :attr:`spent` after it.
    """

    def __init__(
        self,
        sock: socket.socket,
        address: tuple[str, int],
        *,
        tls: TLSSession | None = None,
        buffer_size: int = RECV_BUFFER_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sock = sock
        self._tls = tls  # Vortex over TLS (piece_tls.py); None: plain TCP
        self.address = address
        self._where = f"{address[0]}:{address[1]}"
        self._loop = asyncio.get_running_loop()
        self._view = memoryview(bytearray(buffer_size))
        self._pace = Pace()  # how fast piece bodies come from this parent
        self._clock = clock
        self._packet_id = 0
        self._busy = False
        self.broken = False
        self.closed = False
        self.requests = 0
        # Whether the current request got any byte back (a reused idle connection that the
        # parent closed fails before that, and may be retried on a fresh one).
        self.received_any = False
        self.timed_out = False
        self._frame_done = False
        # Ask with Damselfly's request (vortex.Tag.DOWNLOAD_PIECE_TRAILER): the parent then
        # answers with Damselfly's extensions (a digest after the content, busy and elsewhere,
        # the connection kept). Only for a parent known to speak them.
        self.damselfly = False
        # A plain request was made: the parent closes the connection after its answer.
        self.spent = False

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout: float = 10.0,
        tls: ssl.SSLContext | None = None,
        tls_name: str = "",
    ) -> PieceClient:
        """Connect (and with ``tls``, finish a TLS handshake that checks the parent's
        certificate names ``tls_name``, or ``host``) within ``timeout`` seconds."""
        sock: socket.socket | None = None
        try:
            async with asyncio.timeout(timeout):  # the look-up, every address and the handshake
                addresses = await net.resolve(host, port, timeout=timeout)
                sock = await net.connect_first(addresses, timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                session = TLSSession(sock, tls, tls_name or host) if tls is not None else None
                if session is not None:
                    await session.handshake()
        except TimeoutError:
            if sock is not None:
                sock.close()
            raise PeerError(f"connecting to parent {host}:{port} timed out after {timeout:g}s") from None
        except OSError as e:  # ssl.SSLError included: a certificate refused
            if sock is not None:
                sock.close()
            raise PeerError(f"cannot connect to parent {host}:{port}: {e}") from e
        return cls(sock, (host, port), tls=session)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.damselfly and not self.spent and not self.broken and not self._busy:
            with contextlib.suppress(OSError):
                close = vortex.encode_close(self._next_packet_id())
                if self._tls is not None:
                    self._tls.send_nowait(close)
                else:
                    self._sock.send(close)
        self._sock.close()

    async def _recv_into(self, view: memoryview) -> int:
        if self._tls is not None:
            return await self._tls.recv_into(view)
        return await self._loop.sock_recv_into(self._sock, view)

    async def _sendall(self, data: bytes) -> None:
        if self._tls is not None:
            await self._tls.sendall(data)
        else:
            await self._loop.sock_sendall(self._sock, data)

    def _next_packet_id(self) -> int:
        self._packet_id = (self._packet_id + 1) & 0xFF
        return self._packet_id

    def _got(self, n: int) -> int:
        """``n`` bytes came from a recv: none means the parent closed the connection."""
        if n == 0:
            raise PeerError(f"parent {self._where} closed the connection mid-piece")
        self.received_any = True
        return n

    def _progress_until(self, deadline: asyncio.Timeout, idle: float) -> Callable[[int], int]:
        """A vetting of each recv's count that also moves ``deadline`` ``idle`` seconds on."""

        def got(n: int) -> int:
            self._got(n)
            if idle:
                deadline.reschedule(self._loop.time() + idle)  # progress: the parent is alive
            return n

        return got

    def _receive_threaded(self, body: Landing, idle: float) -> None:
        """The piece body, in a worker thread: blocking recv_into, pwrite and crc32 all
        release the GIL, so bodies from several parents land in parallel on several
        cores, with no event-loop round trip per socket read; each recv waits for a step
        of this parent's pace (:func:`.landing.receive_blocking`)."""
        sock = self._sock
        sock.settimeout(idle or None)
        try:
            receive_blocking(sock, body, self._pace, self._got)
        except TimeoutError:
            self.timed_out = True
            raise PeerError(f"parent {self._where} sent nothing for {idle:g}s mid-piece") from None
        finally:
            with contextlib.suppress(OSError):
                sock.setblocking(False)

    async def _receive_paced(
        self,
        body: Landing,
        limiter: Limiter | None,
        task_id: str,
        deadline: asyncio.Timeout,
        idle: float,
    ) -> None:
        """The piece body on the event loop, where a limiter's tokens are awaited: bytes are
        granted before each recv, and each recv reads at most what was granted."""
        credit = 0  # bytes granted by the limiter and not received yet
        got = self._progress_until(deadline, idle)
        try:
            while body.pos < body.end:
                room = body.room()
                if limiter is not None:
                    if credit <= 0:
                        credit = await self._grant(limiter, len(room), task_id, deadline)
                    room = room[:credit]
                n = got(await self._recv_into(room))
                credit -= n
                body.land(n)
        finally:
            if limiter is not None and credit > 0:
                limiter.refund(credit)

    async def download_piece(
        self,
        task_id: str,
        number: int,
        fd: int,
        offset: int,
        length: int,
        *,
        timeout: float = 30.0,
        limiter: Limiter | None = None,
        on_header: OnHeader | None = None,
        digest: InOrderDigest | None = None,
    ) -> PieceInfo:
        """Fetch piece ``number`` of ``task_id`` and pwrite it to ``fd`` at ``offset``.

        Returns the PieceInfo (``crc32:<n>`` digest, cost, REMOTE_PEER; the caller
        sets ``parent_id``) once the content matched the parent's digest.

        ``timeout`` is an inactivity timeout: it fires when the parent sends
        nothing for that long, so a slow but steady parent (a rate-limited one)
        is not mistaken for a dead one. With ``limiter``, bytes are granted
        before each recv and each recv reads at most what was granted; time
        spent waiting for the limiter does not count either: the timeout judges
        the parent, not our own limit. ``on_header(digest)``, once the parent's
        piece header arrived, may return a :class:`Receiving` whose byte count
        follows the body as it lands (cut-through forwarding). ``digest``: the
        task's whole-content digest, fed the body while it is in hand when this
        piece is the next it needs (kept only once the piece's crc32 matched).
        """
        if self.closed or self.broken or self.spent:
            raise PeerError(f"connection to parent {self._where} is no longer usable")
        if self._busy:
            raise PeerError("one request at a time per piece connection")
        self._busy = True
        self.spent = not self.damselfly
        self.received_any = False
        self.timed_out = False
        self._frame_done = False
        self.requests += 1
        start = self._clock()
        ok = False
        try:
            async with asyncio.timeout(timeout) as deadline:
                info = await self._exchange(
                    task_id, number, fd, offset, length, limiter, deadline, timeout, on_header, digest
                )
            info.cost_s = self._clock() - start
            ok = True
            return info
        except (NotFound, DigestMismatch, PeerError, ResourceExhausted, PieceElsewhere):
            ok = self._frame_done  # the whole answer was read: the connection is still in sync
            raise
        except StorageError:
            raise  # ours, not the parent's: not a PeerError (the connection is dropped all the same)
        except TimeoutError:
            self.timed_out = True
            raise PeerError(
                f"piece {number} from parent {self._where} timed out: nothing received for {timeout:g}s"
            ) from None
        except OSError as e:
            raise PeerError(f"piece {number} from parent {self._where} failed: {e}") from e
        finally:
            self._busy = False
            if not ok:
                self.broken = True

    async def _exchange(
        self,
        task_id: str,
        number: int,
        fd: int,
        offset: int,
        length: int,
        limiter: Limiter | None,
        deadline: asyncio.Timeout,
        idle: float,
        on_header: OnHeader | None,
        whole: InOrderDigest | None,
    ) -> PieceInfo:
        """Ask for the piece, read its header, land its body, check its crc32."""
        packet_id = self._next_packet_id()
        tag = vortex.Tag.DOWNLOAD_PIECE_TRAILER if self.damselfly else vortex.Tag.DOWNLOAD_PIECE
        request = vortex.encode_download_piece(packet_id, task_id, number, tag)
        await self._sendall(request)
        event = self._expect_header(await self._next_frame(), packet_id, number, offset, length)
        progress = on_header(event.digest) if on_header is not None else None
        feed = whole.claim(offset) if whole is not None else None
        body = Landing(self._view, fd, offset, offset + length, progress, feed)
        try:
            if limiter is None and THREADED_BODY and self._tls is None:
                deadline.reschedule(None)  # the socket's own timeout judges the parent now
                await self._loop.run_in_executor(
                    _body_pool, functools.partial(self._receive_threaded, body, idle)
                )
                if idle:
                    deadline.reschedule(self._loop.time() + idle)
            elif limiter is None and self._tls is not None:
                await self._tls.receive_body(body, self._pace, self._progress_until(deadline, idle))
            else:
                await self._receive_paced(body, limiter, task_id, deadline, idle)
            digest = event.digest or await self._trailer(packet_id, number, progress)
            self._frame_done = True
            return self._checked(task_id, number, offset, length, body.crc, digest, feed)
        finally:
            if feed is not None:
                feed.abandon()  # unless committed: the piece did not check out

    def _expect_header(
        self, event: vortex.Event, packet_id: int, number: int, offset: int, length: int
    ) -> vortex.PieceHeader:
        """The parent's answer as the header of the piece asked for, or the error it means.

        A Damselfly parent echoes the request's packet id; Dragonfly's draws one at
        random, so a plain answer's is not checked (its connection carries nothing else).
        """
        if self.damselfly and event.packet_id != packet_id:
            raise ProtocolError(f"parent {self._where} answered packet {event.packet_id}, asked {packet_id}")
        if isinstance(event, vortex.Error):
            self._frame_done = True
            if event.code == vortex.ErrorCode.NOT_FOUND:
                raise NotFound(f"parent {self._where} does not hold piece {number}: {event.message}")
            if self.damselfly and event.code == vortex.ErrorCode.RESOURCE_EXHAUSTED:
                raise ResourceExhausted(f"parent {self._where} is busy: {event.message}")
            if self.damselfly and event.code == vortex.ErrorCode.ELSEWHERE:
                raise PieceElsewhere(f"parent {self._where}: {event.message}")
            raise PeerError(
                f"parent {self._where} refused piece {number} (code {event.code}): {event.message}"
            )
        if not isinstance(event, vortex.PieceHeader) or event.tag is not vortex.Tag.PIECE_CONTENT:
            what = event.tag.name if isinstance(event, vortex.PieceHeader) else type(event).__name__
            raise ProtocolError(f"parent {self._where} answered with {what}")
        if (event.number, event.offset, event.length) != (number, offset, length):
            raise ProtocolError(
                f"parent {self._where} sent piece {event.number} at {event.offset}+{event.length}, "
                f"expected piece {number} at {offset}+{length}"
            )
        if not event.digest and not self.damselfly:
            raise ProtocolError(f"parent {self._where} sent piece {number} without a digest")
        return event

    async def _next_frame(self) -> vortex.Event:
        """The next control frame or piece header, reading exactly up to its end."""
        parser = vortex.FrameParser()
        while True:
            event = parser.next_event()
            if event is not None:
                return event
            need = min(parser.bytes_needed(), len(self._view))
            n = self._got(await self._recv_into(self._view[:need]))
            parser.feed(self._view[:n])

    async def _trailer(self, packet_id: int, number: int, progress: Receiving | None) -> str:
        """The digest that follows a piece sent with an empty one; our own children streaming
        the piece from us get it too (``progress``)."""
        event = await self._next_frame()
        if event.packet_id != packet_id or not isinstance(event, vortex.PieceDigest):
            raise ProtocolError(
                f"parent {self._where} followed piece {number} with {type(event).__name__}, not its digest"
            )
        if progress is not None:
            progress.digest = event.digest
        return event.digest

    async def _grant(self, limiter: Limiter, want: int, task_id: str, deadline: asyncio.Timeout) -> int:
        """Bytes the limiter lets us receive; time spent waiting for them is not the parent's."""
        began = self._loop.time()
        granted = await limiter.acquire(want, task_id)  # turns are fair per task
        waited = self._loop.time() - began
        if waited > 0.001 and (when := deadline.when()) is not None:
            deadline.reschedule(when + waited)
        return granted

    def _checked(
        self, task_id: str, number: int, offset: int, length: int, crc: int, want: str, feed: Feed | None
    ) -> PieceInfo:
        digest = f"crc32:{crc}"
        if digest != want:
            raise DigestMismatch(f"piece {number} of task {task_id} from {self._where}", want, digest)
        if feed is not None:
            feed.commit()
        return PieceInfo(
            number=number,
            offset=offset,
            length=length,
            digest=digest,
            traffic_type=TrafficType.REMOTE_PEER,
        )


class PieceConnectionPool:
    """Connections to parents' piece servers: pooled per Damselfly parent, one per piece otherwise.

    Owns every connection it made; concurrent downloads from one parent each
    use their own connection. Toward a parent that speaks Damselfly's
    extensions (and with ``extensions`` on), idle connections are kept, at most
    ``max_idle_per_parent`` per parent ``(host, port)``, and a same-machine
    parent hands over its file (``local``); toward any other parent each piece
    takes a new connection, as Dragonfly's client does.
    """

    def __init__(
        self,
        *,
        max_idle_per_parent: int = 8,
        connect_timeout: float = 10.0,
        limiter: ByteLimiter | None = None,
        trailer: bool = True,
        local: LocalPieces | None = None,
        extensions: bool = True,
        tls: ssl.SSLContext | None = None,
        tls_name: str = "",
    ) -> None:
        # Vortex over TLS toward every parent (the daemon's tls.*: all or nothing per fleet).
        self.tls = tls
        # The name parents' certificates must carry (tls.peerName); empty: the parent's IP.
        self.tls_name = tls_name
        # The host's download limit; a download's own limit (TASK_LIMITER) is taken under it.
        self.limiter = limiter
        # Parents on this machine hand over their file instead (local_pieces.py); only when no
        # byte limit applies, since the copy does not go through one.
        self.local = local
        # Damselfly's wire extensions (config wire.extensions): off, every parent is asked
        # exactly as Dragonfly's client asks, and this daemon announces none (peer_rpc.py).
        self.extensions = extensions
        # Ask Damselfly parents with Damselfly's request, which takes a digest after the
        # content (a parent may send a piece still arriving from its origin) and the other
        # extensions; off (download.trailerDigest), they are asked plainly.
        self.trailer = trailer
        # Parents that announced the extensions but closed on Damselfly's request.
        self._plain: set[tuple[str, int]] = set()
        self._max_idle = max_idle_per_parent
        self._connect_timeout = connect_timeout
        self._idle: dict[tuple[str, int], list[PieceClient]] = {}
        self._closed = False

    async def _acquire(self, key: tuple[str, int], *, pooled: bool) -> tuple[PieceClient, bool]:
        idle = self._idle.get(key) if pooled else None
        while idle:
            client = idle.pop()
            if not client.closed and not client.broken:
                return client, True
        return (
            await PieceClient.connect(
                key[0], key[1], timeout=self._connect_timeout, tls=self.tls, tls_name=self.tls_name
            ),
            False,
        )

    async def _release(self, key: tuple[str, int], client: PieceClient) -> None:
        idle = self._idle.setdefault(key, [])
        if self._closed or client.broken or client.closed or client.spent or len(idle) >= self._max_idle:
            await client.close()
        else:
            idle.append(client)

    async def download_piece(
        self,
        host: str,
        port: int,
        task_id: str,
        number: int,
        fd: int,
        offset: int,
        length: int,
        *,
        timeout: float = 30.0,
        on_header: OnHeader | None = None,
        digest: InOrderDigest | None = None,
        damselfly: bool = True,
    ) -> PieceInfo:
        """Like :meth:`PieceClient.download_piece` toward the piece server at ``host:port``.

        ``damselfly``: the parent said it speaks Damselfly's extensions (with the
        pool's ``extensions`` on, they are used). A reused connection that the
        parent had closed while idle fails before any byte comes back; that
        request is retried once on a fresh connection, as is one whose parent
        closed on Damselfly's request without an answer (it is asked plainly
        from then on).
        """
        if self._closed:
            raise PeerError("piece connection pool is closed")
        key = (host, port)
        limiter = chain(self.limiter, TASK_LIMITER.get())
        damselfly = damselfly and self.extensions
        if damselfly and self.local is not None and limiter is None:
            local = await self.local.download_piece(
                host, port, task_id, number, fd, offset, length, whole=digest
            )
            if local is not None:
                return local
        extended = damselfly and self.trailer and key not in self._plain
        retried = False
        while True:
            client, reused = await self._acquire(key, pooled=extended)
            client.damselfly = extended
            try:
                info = await client.download_piece(
                    task_id,
                    number,
                    fd,
                    offset,
                    length,
                    timeout=timeout,
                    limiter=limiter,
                    on_header=on_header,
                    digest=digest,
                )
                if not extended and damselfly and self.trailer and retried:
                    self._plain.add(key)
                    log.info("parent %s:%d takes plain piece requests only", host, port)
                return info
            except (PeerError, ProtocolError):
                if retried or client.received_any or client.timed_out or not client.broken:
                    raise
                if reused:
                    log.debug("idle connection to %s:%d was stale; retrying", host, port)
                elif extended:
                    # Closed with no answer, as a server that does not know the tag does.
                    extended = False
                else:
                    raise
                retried = True
            finally:
                await self._release(key, client)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for clients in idle.values():
            for client in clients:
                await client.close()
