"""One server-streaming gRPC call over a unix socket, blocking, without grpcio.

dfget makes exactly one call (``DfdaemonDownload.DownloadTask``) to its own
daemon's socket. grpcio costs a new process ~50 ms of imports (asyncio with it)
and its channel machinery more; a dfget then spends more time starting than a
cached download takes, and eight dfgets started at once on two cores delay the
swarm's first request by ~0.4 s. This module speaks just enough HTTP/2 for
that call: the client preface and SETTINGS, one HEADERS + DATA request on
stream 1, then frames until the stream ends; SETTINGS and PING are acknowledged,
flow-control windows are opened wide and topped up. Headers are HPACK
(``hpack``); the response's trailers carry ``grpc-status`` and ``grpc-message``.
Messages are the gRPC framing (compression flag, u32 length, bytes); a
compressed one is refused, since the request does not offer any encoding.

Why not the ``h2`` library (hyper-h2, sans-IO HTTP/2): an h2-based version of
this module (same interface; h2 keeps the connection state, acks and windows)
was measured against this one, A/B alternating on the shared two-core machine
(load 2-5, so noisy). Importing it costs +12 ms (``-X importtime`` cumulative of
this module, median of 20: 43 vs 31 ms), and a held task's dfget (``dfget URL
-O FILE -e SOCK --no-progress``, 16 MiB the daemon already holds) took 139 vs
116 ms, 245 vs 183 ms and 150 vs 105 ms (medians of 12, three rounds). On the
path whose start-up this module exists to cut, the hand-written framing stays.
"""

from __future__ import annotations

import base64
import socket
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from urllib.parse import unquote

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
WINDOW = 16 * 1024 * 1024
MAX_SEND_FRAME = 16384
MAX_REQUEST = 60 * 1024  # fits the peer's initial window: no waiting for WINDOW_UPDATE to send

# grpc status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html)
STATUS_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip


class RpcError(Exception):
    """The call ended with a gRPC status other than OK (``code`` is its name, e.g. ``NOT_FOUND``).

    ``local``: this client ended it (no connection, the connection lost, a deadline), not a
    status the server sent."""

    def __init__(self, code: str, details: str, *, local: bool = True, details_bin: bytes = b"") -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details
        self.local = local
        self.details_bin = details_bin  # the ``grpc-status-details-bin`` trailer, decoded


def _unbase64(text: str) -> bytes:
    """A binary header's value: base64, padded or not (gRPC allows both); b"" if malformed."""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:
        return b""


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


class _Reader:
    def __init__(self, sock: socket.socket, deadline: float | None) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buf = bytearray()

    def take(self, n: int) -> bytes:
        while len(self.buf) < n:
            if self.deadline is not None:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise RpcError("DEADLINE_EXCEEDED", "the call's deadline passed")
                self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(max(65536, n - len(self.buf)))
            except TimeoutError:
                raise RpcError("DEADLINE_EXCEEDED", "the call's deadline passed") from None
            if not chunk:
                raise RpcError("UNAVAILABLE", "connection reset: the daemon closed the connection")
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


def server_stream(
    path: str,
    method: str,
    message: bytes | Callable[[socket.socket], bytes],
    *,
    timeout: float | None = None,
    connect_timeout: float = 5.0,
    metadata: Sequence[tuple[str, str]] = (),
) -> Iterator[bytes]:
    """Call ``method`` (``/package.Service/Method``) on the unix socket ``path`` with one
    request ``message``; yield each response message. Raises :class:`RpcError` (with
    ``UNAVAILABLE`` when nothing answers at ``path``).

    ``message`` may be a function of the connected socket: a request that depends on who
    answers (dfget asks for the content when the daemon cannot see its files). ``metadata``:
    more request headers (gRPC metadata, e.g. ``traceparent``)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(connect_timeout)
        try:
            sock.connect(path)
        except OSError as e:
            raise RpcError("UNAVAILABLE", f"failed to connect to {path}: {e.strerror or e}") from None
        sock.settimeout(None)
        if callable(message):
            message = message(sock)
        if len(message) > MAX_REQUEST:
            raise ValueError(f"request of {len(message)} bytes is too large for this client")
        deadline = time.monotonic() + timeout if timeout else None
        yield from _call(sock, method, message, deadline, timeout, metadata)
    finally:
        sock.close()


def _call(
    sock: socket.socket,
    method: str,
    message: bytes,
    deadline: float | None,
    timeout: float | None,
    metadata: Sequence[tuple[str, str]] = (),
) -> Iterator[bytes]:
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", method),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", "damselfly-dfget"),
    ]
    if timeout:
        headers.append(("grpc-timeout", f"{max(1, int(timeout * 1000))}m"))
    headers.extend(metadata)
    body = b"\0" + len(message).to_bytes(4, "big") + message
    out = bytearray(PREFACE)
    # No server push; large windows for what the daemon sends us.
    out += _frame(SETTINGS, 0, 0, struct.pack(">HI", 0x2, 0) + struct.pack(">HI", 0x4, WINDOW))
    out += _frame(WINDOW_UPDATE, 0, 0, (WINDOW - 65535).to_bytes(4, "big"))
    out += _frame(HEADERS, END_HEADERS, 1, hpack.Encoder().encode(headers))
    for i in range(0, len(body), MAX_SEND_FRAME):
        chunk = body[i : i + MAX_SEND_FRAME]
        out += _frame(DATA, END_STREAM if i + MAX_SEND_FRAME >= len(body) else 0, 1, chunk)
    sock.sendall(out)

    reader = _Reader(sock, deadline)
    decoder = hpack.Decoder()
    block = bytearray()  # a header block split over CONTINUATION frames
    block_ends_stream = False
    pending = bytearray()  # gRPC message bytes not yet a whole message
    consumed = 0  # DATA bytes taken since the last WINDOW_UPDATE
    status: str | None = None
    details = ""
    details_bin = b""
    while True:
        head = reader.take(9)
        length = int.from_bytes(head[:3], "big")
        kind, flags = head[3], head[4]
        stream = int.from_bytes(head[5:], "big") & 0x7FFFFFFF
        payload = reader.take(length)
        if kind == SETTINGS:
            if not flags & ACK:
                sock.sendall(_frame(SETTINGS, ACK, 0))
            continue
        if kind == PING:
            if not flags & ACK:
                sock.sendall(_frame(PING, ACK, 0, payload))
            continue
        if kind == GOAWAY:
            raise RpcError("UNAVAILABLE", "connection reset: the daemon is going away")
        if stream != 1:
            continue  # WINDOW_UPDATE, PRIORITY and the like: nothing to do
        if kind == RST_STREAM:
            raise RpcError("UNAVAILABLE", "connection reset: the daemon reset the call")
        if kind in (HEADERS, CONTINUATION):
            if kind == HEADERS:
                payload = _strip(payload, flags, priority=True)
                block_ends_stream = bool(flags & END_STREAM)
            block += payload
            if not flags & END_HEADERS:
                continue
            fields = {str(k).lower(): str(v) for k, v in decoder.decode(bytes(block))}
            block.clear()
            if "grpc-status" in fields:
                code = int(fields["grpc-status"])
                status = STATUS_NAMES[code] if 0 <= code < len(STATUS_NAMES) else "UNKNOWN"
                details = unquote(fields.get("grpc-message", ""))
                details_bin = _unbase64(fields.get("grpc-status-details-bin", ""))
            elif fields.get(":status", "200") != "200":
                raise RpcError("UNAVAILABLE", f"the daemon answered HTTP {fields.get(':status')}")
            if block_ends_stream:
                break
            continue
        if kind == DATA:
            data = _strip(payload, flags)
            pending += data
            consumed += length
            while len(pending) >= 5:
                size = int.from_bytes(pending[1:5], "big")
                if len(pending) < 5 + size:
                    break
                if pending[0]:
                    raise RpcError("INTERNAL", "the daemon sent a compressed message")
                yield bytes(pending[5 : 5 + size])
                del pending[: 5 + size]
            if consumed >= WINDOW // 4:
                grant = consumed.to_bytes(4, "big")
                sock.sendall(_frame(WINDOW_UPDATE, 0, 0, grant) + _frame(WINDOW_UPDATE, 0, 1, grant))
                consumed = 0
            if flags & END_STREAM:
                break
    if status is None:
        raise RpcError("INTERNAL", "the call ended without a status")
    if status != "OK":
        raise RpcError(status, details, local=False, details_bin=details_bin)


def _strip(payload: bytes, flags: int, *, priority: bool = False) -> bytes:
    """A DATA or HEADERS payload without its padding (and a HEADERS' priority fields)."""
    start, end = 0, len(payload)
    if flags & PADDED:
        end -= payload[0]
        start = 1
    if priority and flags & PRIORITY:
        start += 5
    if end < start:
        raise RpcError("INTERNAL", "malformed HTTP/2 frame from the daemon")
    return payload[start:end]
