"""Pieces between two daemons on one machine: the parent's file, not its socket.

The embedded default (``damselfly up``) runs a seed beside a peer, and any host may
run both. Over TCP a piece between them is sent (``sendfile``), carried by loopback
(the sending thread also runs the receiver's protocol work) and received and written
again: measured 1.3-2 CPU-s per GiB on the two-core project machine, on top of the
parent's own download. Instead the parent hands the child an open read-only fd of its
content file (``SCM_RIGHTS`` over a unix socket) and the child copies the piece in the
kernel (``copy_file_range``), then checks the piece's crc32 on its own copy, as for any
parent: ~0.65 CPU-s per GiB. A piece that is the next one the task's content digest
needs goes through one buffer instead, which takes its crc32 and feeds the digest.

Rendezvous: an abstract unix socket named after the parent's piece address
(``\\0damselfly-pieces/<ip>:<port>``). Abstract names belong to a network namespace, so
only daemons sharing the child's network stack find it (the hosts of the namespace
testbed never do). Both ends check the other's uid (``SO_PEERCRED``): a parent hands
fds only to its own user or root, a child takes them only from its own user or root.

One request per connection. The child sends the task ID (64 ASCII hex) and the piece
number (u32 BE). The parent answers once it holds the piece (received and verified),
or at once when it cannot: ``status u8`` (0 ok, else an error), then for ok ``offset
u64, length u64, digest_len u16, digest``, with the fd; for an error a UTF-8 message.
Any failure other than a wrong crc32 sends the child back to the piece's TCP path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable

from ...domain import PieceInfo, TrafficType
from ...errors import DigestMismatch
from ...units import MiB
from ..ratelimit import ByteLimiter
from ..store.digesting import Feed, InOrderDigest
from ..store.files import crc32_of_range, pwrite_all, reserve
from ..store.piece_store import PieceStore
from ..threads import cancel_and_wait, to_thread_to_the_end

log = logging.getLogger(__name__)

_REQUEST = struct.Struct(">64sI")
_OK = struct.Struct(">BQQH")
_CRED = struct.Struct("3i")  # pid, uid, gid
OK, NOT_HELD, REFUSED = 0, 1, 2
HOLD_WAIT_S = 30.0  # how long a parent waits for a piece it is still receiving
UNAVAILABLE_FOR_S = 30.0  # a child does not look for a local parent it missed for this long
_READ = 1 * MiB


def socket_name(ip: str, port: int) -> str:
    """The abstract socket of the parent whose piece server is ``ip:port``."""
    return f"\0damselfly-pieces/{ip}:{port}"


def _peer_uid(sock: socket.socket) -> int:
    return int(_CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))[1])


def _trusted(uid: int) -> bool:
    return uid in (0, os.getuid())


class LocalPieceServer:
    """The parent's side: hands the fd of a held piece's content file to a same-host child."""

    def __init__(
        self,
        store: PieceStore,
        *,
        on_upload: Callable[[str, int], None] | None = None,
        limiter: ByteLimiter | None = None,
    ) -> None:
        self._store = store
        self._on_upload = on_upload
        # The host's upload limit: while one applies, children take the TCP path, which honours it.
        self._limiter = limiter
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.pieces_shared = 0

    async def start(self, ip: str, port: int) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(socket_name(ip, port))
        except OSError as e:  # another daemon of this namespace has that address: no sharing
            sock.close()
            log.warning("not sharing pieces with local daemons: %s", e)
            return
        sock.listen(64)
        sock.setblocking(False)
        self._sock = sock
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    async def _accept(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as e:  # out of fds, say: children use TCP meanwhile
                log.warning("local piece server cannot accept: %s", e)
                await asyncio.sleep(0.5)
                continue
            task = loop.create_task(self._serve(conn))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            conn.setblocking(False)
            if not _trusted(_peer_uid(conn)):
                return  # another user's process: not even an answer
            raw = b""
            async with asyncio.timeout(10):
                while len(raw) < _REQUEST.size:
                    data = await loop.sock_recv(conn, _REQUEST.size - len(raw))
                    if not data:
                        return
                    raw += data
            task_b, number = _REQUEST.unpack(raw)
            task_id = task_b.decode("ascii", "replace")
            if self._limiter is not None and not self._limiter.unlimited:
                await loop.sock_sendall(conn, bytes([REFUSED]) + b"an upload limit applies: use TCP")
                return
            piece = await self._held(task_id, number)
            if piece is None:
                await loop.sock_sendall(conn, bytes([NOT_HELD]) + b"piece not held here")
                return
            try:
                fd = self._store.open_read_fd(task_id)
            except Exception as e:  # deleted meanwhile, or any storage error: the child asks over TCP
                await loop.sock_sendall(conn, bytes([REFUSED]) + str(e).encode()[:200])
                return
            try:
                digest = piece.digest.encode("ascii")
                head = _OK.pack(OK, piece.offset, piece.length, len(digest)) + digest
                conn.sendmsg([head], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
            finally:
                os.close(fd)
            self.pieces_shared += 1
            if self._on_upload is not None:
                self._on_upload(task_id, piece.length)
        except (OSError, TimeoutError, UnicodeError) as e:
            log.debug("local piece request failed: %s", e)
        finally:
            conn.close()

    async def _held(self, task_id: str, number: int) -> PieceInfo | None:
        """The piece once this daemon holds it; None if it does not and will not soon."""
        deadline = time.monotonic() + HOLD_WAIT_S
        changes = self._store.changes(task_id)
        while True:
            meta = self._store.get(task_id)
            if meta is None or meta.state == "failed":
                return None
            piece = meta.pieces.get(number)
            if piece is not None:
                return piece
            count = meta.piece_count
            if meta.state == "succeeded" or (count is not None and number >= count):
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await changes.wait(min(left, 5.0))  # deleted meanwhile: None on the next look

    async def close(self) -> None:
        if self._accepting is not None:
            await cancel_and_wait([self._accepting])
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class LocalPieces:
    """The child's side: fetch a piece from a same-host parent's file, if there is one."""

    def __init__(self) -> None:
        self._missing: dict[tuple[str, int], float] = {}  # address -> when it was found absent
        # One copy at a time: concurrent copy_file_range calls into one file contend for its
        # inode lock and spin (five threads burned 4-5 CPU-s per GiB; one copies it in 0.3).
        self._copying = threading.Lock()
        self.pieces_copied = 0

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
        whole: InOrderDigest | None = None,
    ) -> PieceInfo | None:
        """The piece copied from a local parent and checked; None: no local path (use TCP).

        Raises :class:`DigestMismatch` when the copy does not match the parent's crc32.
        ``whole``: the task's content digest; when this piece is the next it needs, the
        piece goes through a buffer that feeds it (one pass over the bytes instead of
        a copy in the kernel and two reads back).
        """
        key = (host, port)
        missed = self._missing.get(key)
        if missed is not None and time.monotonic() - missed < UNAVAILABLE_FOR_S:
            return None
        began = time.monotonic()
        try:
            # The wait for the parent (it answers once it holds the piece) is on the event loop;
            # only the copy and the check take a worker thread.
            answer = await _ask(socket_name(host, port), task_id, number)
        except (ConnectionRefusedError, FileNotFoundError):
            self._missing[key] = time.monotonic()
            return None
        except (OSError, ValueError, TimeoutError) as e:
            log.debug("local piece %d from %s:%d failed (%s); over TCP instead", number, host, port, e)
            return None
        if answer is None:
            return None  # not held there (or refused): the TCP path decides
        src, p_offset, p_length, digest = answer
        try:
            if (p_offset, p_length) != (offset, length):
                raise ValueError(f"its piece {number} is {p_offset}+{p_length}, not {offset}+{length}")
            # The thread writes into our file: a cancel waits for it.
            what = (task_id, number)
            await to_thread_to_the_end(
                _copy_and_check, src, fd, what, (offset, length), digest, self._copying, whole
            )
        except (OSError, ValueError) as e:
            log.debug("local piece %d from %s:%d failed (%s); over TCP instead", number, host, port, e)
            return None
        finally:
            os.close(src)
        self.pieces_copied += 1
        return PieceInfo(
            number=number,
            offset=offset,
            length=length,
            digest=digest,
            traffic_type=TrafficType.REMOTE_PEER,
            cost_s=time.monotonic() - began,
        )


async def _ask(name: str, task_id: str, number: int) -> tuple[int, int, int, str] | None:
    """Ask the parent at ``name`` for a piece: (its content fd, offset, length, digest), or None."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, name)
        if not _trusted(_peer_uid(sock)):
            raise ValueError("the local parent runs as another user")
        await loop.sock_sendall(sock, _REQUEST.pack(task_id.encode("ascii"), number))
        readable: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(sock.fileno(), ready)
        try:
            async with asyncio.timeout(HOLD_WAIT_S + 5):
                await readable
        finally:
            loop.remove_reader(sock.fileno())
        msg, fds, _, _ = socket.recv_fds(sock, 512, 1)
    keep = False
    try:
        if not msg or msg[0] != OK or len(fds) != 1 or len(msg) < _OK.size:
            return None
        _, p_offset, p_length, dlen = _OK.unpack_from(msg)
        keep = True
        return fds[0], p_offset, p_length, msg[_OK.size : _OK.size + dlen].decode("ascii", "replace")
    finally:
        for f in fds[1:] if keep else fds:
            os.close(f)


def _copy_and_check(
    src: int,
    out: int,
    what: tuple[str, int],
    span: tuple[int, int],
    digest: str,
    copying: threading.Lock,
    whole: InOrderDigest | None = None,
) -> None:
    """Blocking (a worker thread): copy the piece from the parent's file and check its crc32.

    When the piece is the next the task's digest ``whole`` needs, it goes through
    one buffer that takes the crc32 and feeds the digest on the way (kept once the
    crc32 matched); else ``copy_file_range`` copies it in the kernel and the crc32
    is read back from our copy. The claim is made under the copy lock, so pieces
    copied one after another in order all feed the digest.
    """
    (task_id, number), (offset, length) = what, span
    buf = bytearray(min(length, _READ))
    with copying:
        reserve(out, offset, length)
        feed = whole.claim(offset) if whole is not None else None
        if feed is not None:
            try:
                crc = _copy_through(src, out, offset, length, buf, feed)
                _check(task_id, number, crc, digest)
                feed.commit()
            finally:
                feed.abandon()  # unless committed: the piece did not check out
            return
        _copy(src, out, offset, length)
    checked = crc32_of_range(out, offset, length, buf)
    if checked is None:
        raise ValueError(f"our copy of piece {number} is short")
    _check(task_id, number, checked, digest)


def _check(task_id: str, number: int, crc: int, digest: str) -> None:
    actual = f"crc32:{crc}"
    if actual != digest:
        raise DigestMismatch(f"piece {number} of task {task_id} from a local parent", digest, actual)


def _copy_through(src: int, dst: int, offset: int, length: int, buf: bytearray, feed: Feed) -> int:
    """Copy through ``buf``, feeding ``feed``; returns the crc32 of the bytes copied."""

    def each(chunk: memoryview, pos: int) -> None:
        feed.update(chunk)
        pwrite_all(dst, chunk, pos)

    crc = crc32_of_range(src, offset, length, buf, each)
    if crc is None:
        raise ValueError(f"the local parent's file ends before byte {offset + length}")
    return crc


def _copy(src: int, dst: int, offset: int, length: int) -> None:
    done = 0
    while done < length:
        try:
            n = os.copy_file_range(src, dst, length - done, offset + done, offset + done)
        except OSError:  # another file system, or no copy_file_range here: through a buffer
            n = _copy_buffered(src, dst, offset + done, length - done)
        if n <= 0:
            raise ValueError(f"the local parent's file ends before byte {offset + length}")
        done += n


def _copy_buffered(src: int, dst: int, pos: int, left: int) -> int:
    data = os.pread(src, min(left, _READ), pos)
    if data:
        pwrite_all(dst, data, pos)
    return len(data)
