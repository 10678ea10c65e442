"""Sans-IO framing of the piece protocol (docs/PROTOCOL.md, "The piece data path").

Every packet is ``packet_id: u8, tag: u8, length: u32 BE, value``. This module
turns events into bytes (``encode_*``) and bytes into frozen-dataclass events
(:class:`FrameParser`); it never touches a socket, so the server and the client
only move bytes and every framing rule is tested here without the network.

Piece content is the one part of a frame that is large. The parser does not need
to see it: after a :class:`PieceHeader` event the caller may read the content
straight from its socket into its own buffer and tell the parser with
:meth:`FrameParser.content_consumed`, or feed it and get :class:`PieceData`
chunks. :meth:`FrameParser.bytes_needed` says how many bytes complete the
current unit, so a reader that reads exactly that many never over-reads past a
frame into the next one.

Malformed input raises :class:`~damselfly.errors.ProtocolError`: unknown tag,
a length above 64 MiB + 1 KiB, a length that does not fit the tag, a bad task
ID, truncated or inconsistent piece metadata.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from ...errors import ProtocolError
from ...ids import is_task_id
from ...units import KiB, MiB

HEADER = struct.Struct(">BBI")
HEADER_SIZE = HEADER.size  # 6
MAX_LENGTH = 64 * MiB + 1 * KiB
TASK_ID_SIZE = 64
DOWNLOAD_PIECE_LENGTH = TASK_ID_SIZE + 4
PIECE_META = struct.Struct(">IQQH")  # number, offset, length, digest_len
PIECE_META_SIZE = PIECE_META.size  # 22
MAX_DIGEST_LENGTH = 128
MAX_ERROR_LENGTH = 64 * KiB
_U32 = struct.Struct(">I")


class Tag(enum.IntEnum):
    DOWNLOAD_PIECE = 0
    PIECE_CONTENT = 1
    # Damselfly's extension (tags Dragonfly does not use): DownloadPiece from a child that
    # takes the digest after the content, so a parent may send a piece whose digest it does
    # not know yet (one still arriving from the origin); such a piece's PieceContent has an
    # empty digest and a PieceDigest frame follows its content.
    DOWNLOAD_PIECE_TRAILER = 224
    PIECE_DIGEST = 225
    CLOSE = 254
    ERROR = 255


class ErrorCode(enum.IntEnum):
    NOT_FOUND = 1
    INVALID_ARGUMENT = 2
    INTERNAL = 3
    RESOURCE_EXHAUSTED = 4
    # A seed peer that already gave this piece to the swarm: ask a peer for it.
    ELSEWHERE = 5


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class DownloadPiece:
    """A child asks for piece ``number`` of ``task_id``; ``trailer``: it takes the digest
    after the content (Tag.DOWNLOAD_PIECE_TRAILER)."""

    packet_id: int
    task_id: str
    number: int
    trailer: bool = False


@dataclass(frozen=True, slots=True)
class PieceHeader:
    """A parent starts sending a piece; ``length`` content bytes follow."""

    packet_id: int
    number: int
    offset: int
    length: int
    digest: str


@dataclass(frozen=True, slots=True)
class PieceDigest:
    """The digest of the piece just sent, after its content (its header's digest was empty)."""

    packet_id: int
    digest: str


@dataclass(frozen=True, slots=True)
class PieceData:
    """Content bytes of the current piece, when the caller fed them to the parser."""

    packet_id: int
    data: bytes
    last: bool


@dataclass(frozen=True, slots=True)
class Close:
    packet_id: int


@dataclass(frozen=True, slots=True)
class Error:
    packet_id: int
    code: int
    message: str


Event = DownloadPiece | PieceHeader | PieceDigest | PieceData | Close | Error


# --------------------------------------------------------------------------- encoding


def _check_u8(name: str, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise ProtocolError(f"{name} {value} does not fit in one byte")


def encode_download_piece(packet_id: int, task_id: str, number: int, *, trailer: bool = False) -> bytes:
    _check_u8("packet id", packet_id)
    if not is_task_id(task_id):
        raise ProtocolError(f"not a task id: {task_id!r}")
    if not 0 <= number < 2**32:
        raise ProtocolError(f"piece number {number} does not fit in u32")
    return (
        HEADER.pack(
            packet_id, Tag.DOWNLOAD_PIECE_TRAILER if trailer else Tag.DOWNLOAD_PIECE, DOWNLOAD_PIECE_LENGTH
        )
        + task_id.encode("ascii")
        + _U32.pack(number)
    )


def encode_piece_header(packet_id: int, number: int, offset: int, length: int, digest: str) -> bytes:
    """Frame header and piece metadata; the caller sends ``length`` content bytes after it."""
    _check_u8("packet id", packet_id)
    raw_digest = digest.encode("ascii")
    if len(raw_digest) > MAX_DIGEST_LENGTH:
        raise ProtocolError(f"digest longer than {MAX_DIGEST_LENGTH} bytes")
    if not 0 <= number < 2**32 or offset < 0 or length < 0:
        raise ProtocolError(f"bad piece metadata number={number} offset={offset} length={length}")
    total = PIECE_META_SIZE + len(raw_digest) + length
    if total > MAX_LENGTH:
        raise ProtocolError(f"piece of {length} bytes exceeds the frame limit of {MAX_LENGTH}")
    return (
        HEADER.pack(packet_id, Tag.PIECE_CONTENT, total)
        + PIECE_META.pack(number, offset, length, len(raw_digest))
        + raw_digest
    )


def encode_piece_digest(packet_id: int, digest: str) -> bytes:
    """The trailer of a piece sent with an empty digest in its header."""
    _check_u8("packet id", packet_id)
    raw = digest.encode("ascii")
    if not 1 <= len(raw) <= MAX_DIGEST_LENGTH:
        raise ProtocolError(f"a piece digest must be 1..{MAX_DIGEST_LENGTH} bytes")
    return HEADER.pack(packet_id, Tag.PIECE_DIGEST, len(raw)) + raw


def encode_error(packet_id: int, code: int, message: str) -> bytes:
    _check_u8("packet id", packet_id)
    _check_u8("error code", code)
    raw = message.encode("utf-8")[: MAX_ERROR_LENGTH - 1]
    return HEADER.pack(packet_id, Tag.ERROR, 1 + len(raw)) + bytes([code]) + raw


def encode_close(packet_id: int) -> bytes:
    _check_u8("packet id", packet_id)
    return HEADER.pack(packet_id, Tag.CLOSE, 0)


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True, slots=True)
class FrameHeader:
    packet_id: int
    tag: Tag
    length: int


def parse_header(data: bytes | bytearray | memoryview) -> FrameHeader:
    """Decode and validate the 6-byte frame header (length checked against the tag)."""
    if len(data) != HEADER_SIZE:
        raise ProtocolError(f"frame header must be {HEADER_SIZE} bytes, got {len(data)}")
    packet_id, raw_tag, length = HEADER.unpack(data)
    try:
        tag = Tag(raw_tag)
    except ValueError:
        raise ProtocolError(f"unknown packet tag {raw_tag}") from None
    if length > MAX_LENGTH:
        raise ProtocolError(f"frame length {length} exceeds the limit of {MAX_LENGTH}")
    if tag in (Tag.DOWNLOAD_PIECE, Tag.DOWNLOAD_PIECE_TRAILER) and length != DOWNLOAD_PIECE_LENGTH:
        raise ProtocolError(f"DownloadPiece value must be {DOWNLOAD_PIECE_LENGTH} bytes, got {length}")
    if tag is Tag.PIECE_DIGEST and not 1 <= length <= MAX_DIGEST_LENGTH:
        raise ProtocolError(f"PieceDigest value must be 1..{MAX_DIGEST_LENGTH} bytes, got {length}")
    if tag is Tag.CLOSE and length != 0:
        raise ProtocolError(f"Close must be empty, got {length} bytes")
    if tag is Tag.ERROR and not 1 <= length <= MAX_ERROR_LENGTH:
        raise ProtocolError(f"Error value must be 1..{MAX_ERROR_LENGTH} bytes, got {length}")
    if tag is Tag.PIECE_CONTENT and length < PIECE_META_SIZE:
        raise ProtocolError(f"PieceContent of {length} bytes is shorter than its metadata")
    return FrameHeader(packet_id, tag, length)


def decode_download_piece(
    packet_id: int, value: bytes | bytearray | memoryview, *, trailer: bool = False
) -> DownloadPiece:
    if len(value) != DOWNLOAD_PIECE_LENGTH:
        raise ProtocolError("truncated DownloadPiece")
    raw_id = bytes(value[:TASK_ID_SIZE])
    try:
        task_id = raw_id.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("task id is not ASCII") from None
    if not is_task_id(task_id):
        raise ProtocolError(f"not a task id: {task_id!r}")
    (number,) = _U32.unpack(value[TASK_ID_SIZE:])
    return DownloadPiece(packet_id, task_id, number, trailer)


def decode_error(packet_id: int, value: bytes | bytearray | memoryview) -> Error:
    if len(value) < 1:
        raise ProtocolError("truncated Error")
    return Error(packet_id, value[0], bytes(value[1:]).decode("utf-8", errors="replace"))


def decode_piece_meta(
    header: FrameHeader, fixed: bytes | bytearray | memoryview
) -> tuple[int, int, int, int]:
    """Decode the fixed part of PieceContent metadata: (number, offset, length, digest_len).

    Checks that the frame length is exactly metadata + digest + content, so a
    parent cannot announce more content than its frame carries.
    """
    if len(fixed) != PIECE_META_SIZE:
        raise ProtocolError("truncated piece metadata")
    number, offset, length, digest_len = PIECE_META.unpack(fixed)
    if digest_len > MAX_DIGEST_LENGTH:
        raise ProtocolError(f"piece digest of {digest_len} bytes is too long")
    if PIECE_META_SIZE + digest_len + length != header.length:
        raise ProtocolError(
            f"piece metadata says {length} content bytes and a {digest_len}-byte digest, "
            f"but the frame carries {header.length - PIECE_META_SIZE} bytes after the metadata"
        )
    return number, offset, length, digest_len


def decode_digest(raw: bytes | bytearray | memoryview) -> str:
    try:
        return bytes(raw).decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("piece digest is not ASCII") from None


class _State(enum.Enum):
    HEADER = enum.auto()
    VALUE = enum.auto()
    PIECE_META = enum.auto()
    PIECE_DIGEST = enum.auto()
    CONTENT = enum.auto()


class FrameParser:
    """Incremental decoder: :meth:`feed` bytes, pull events with :meth:`next_event`.

    Owned by one connection. Control frames are small and buffered whole; piece
    content may be fed (yielding :class:`PieceData`) or read by the caller out
    of band and reported with :meth:`content_consumed`.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = _State.HEADER
        self._header: FrameHeader | None = None
        self._piece: tuple[int, int, int, int] | None = None
        self._remaining = 0

    @property
    def content_remaining(self) -> int:
        """Content bytes of the current piece not yet seen (0 outside a piece)."""
        return self._remaining if self._state is _State.CONTENT else 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def bytes_needed(self) -> int:
        """Bytes to feed before the current unit (header, value, metadata, content) is complete."""
        if self._state is _State.HEADER:
            want = HEADER_SIZE
        elif self._state is _State.VALUE:
            assert self._header is not None
            want = self._header.length
        elif self._state is _State.PIECE_META:
            want = PIECE_META_SIZE
        elif self._state is _State.PIECE_DIGEST:
            assert self._piece is not None
            want = self._piece[3]
        else:
            want = self._remaining
        return max(0, want - len(self._buf))

    def content_consumed(self, n: int) -> None:
        """Record ``n`` content bytes the caller received without feeding them here."""
        if self._state is not _State.CONTENT or self._buf or not 0 < n <= self._remaining:
            raise ProtocolError("content_consumed outside of piece content")
        self._remaining -= n
        if self._remaining == 0:
            self._reset()

    def _reset(self) -> None:
        self._state = _State.HEADER
        self._header = None
        self._piece = None
        self._remaining = 0

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def next_event(self) -> Event | None:
        """The next complete event, or None when more bytes are needed."""
        while True:
            if self._state is _State.HEADER:
                if len(self._buf) < HEADER_SIZE:
                    return None
                new = parse_header(self._take(HEADER_SIZE))
                self._header = new
                if new.tag is Tag.CLOSE:
                    self._reset()
                    return Close(new.packet_id)
                self._state = _State.PIECE_META if new.tag is Tag.PIECE_CONTENT else _State.VALUE
                continue
            header = self._header
            assert header is not None
            if self._state is _State.VALUE:
                if len(self._buf) < header.length:
                    return None
                value = self._take(header.length)
                self._reset()
                if header.tag is Tag.DOWNLOAD_PIECE:
                    return decode_download_piece(header.packet_id, value)
                if header.tag is Tag.DOWNLOAD_PIECE_TRAILER:
                    return decode_download_piece(header.packet_id, value, trailer=True)
                if header.tag is Tag.PIECE_DIGEST:
                    return PieceDigest(header.packet_id, decode_digest(value))
                return decode_error(header.packet_id, value)
            if self._state is _State.PIECE_META:
                if len(self._buf) < PIECE_META_SIZE:
                    return None
                self._piece = decode_piece_meta(header, self._take(PIECE_META_SIZE))
                self._state = _State.PIECE_DIGEST
                continue
            piece = self._piece
            assert piece is not None
            number, offset, length, digest_len = piece
            if self._state is _State.PIECE_DIGEST:
                if len(self._buf) < digest_len:
                    return None
                digest = decode_digest(self._take(digest_len))
                self._state = _State.CONTENT
                self._remaining = length
                event = PieceHeader(header.packet_id, number, offset, length, digest)
                if length == 0:
                    self._reset()
                return event
            # CONTENT
            if not self._buf:
                return None
            chunk = self._take(min(self._remaining, len(self._buf)))
            self._remaining -= len(chunk)
            packet_id = header.packet_id
            last = self._remaining == 0
            if last:
                self._reset()
            return PieceData(packet_id, chunk, last)
