"""Sans-IO framing of the piece protocol: Dragonfly's Vortex (docs/PROTOCOL.md, "The piece data path").

Every packet is ``packet_id: u8, tag: u8, length: u32 BE, value``. This module
turns events into bytes (``encode_*``) and bytes into frozen-dataclass events
(:class:`FrameParser`); it never touches a socket, so the server and the client
only move bytes and every framing rule is tested here without the network.

The layouts are Vortex's (``dragonflyoss/vortex-protocol`` v0.1.5, the release
Dragonfly's Rust client pins; docs/INTEROP.md section 4). A PieceContent frame
carries only the piece's metadata (``metadata_length: u32`` then the fields);
the piece's bytes follow the frame and are not counted in its ``length``. The
parser does not need to see them: after a :class:`PieceHeader` event the caller
may read the content straight from its socket into its own buffer and tell the
parser with :meth:`FrameParser.content_consumed`, or feed it and get
:class:`PieceData` chunks. :meth:`FrameParser.bytes_needed` says how many bytes
complete the current unit, so a reader that reads exactly that many never
over-reads past a frame into the next one.

Damselfly adds four tags in Vortex's reserved range (224 DownloadPiece with a
trailer digest, 225 PieceDigest, 226 SyncPieces, 227 PieceAnnounce) and two
error codes (4 busy, 5 elsewhere); they are used only between Damselfly peers
(piece_server.py and announce.py say how).

Long because: the whole wire format of the piece port, Dragonfly's frames and
Damselfly's, is encoded, decoded and validated in this one place, where the
conformance tests hold it against Vortex's golden frames.

Malformed input raises :class:`~damselfly.errors.ProtocolError`: a length that
does not fit the tag, a bad task ID, inconsistent piece metadata. A tag this
module does not know (Vortex's reserved ones) raises :class:`UnsupportedTag`, a
ProtocolError a server answers as Dragonfly's does: by closing the connection.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ...errors import ProtocolError
from ...ids import is_task_id
from ...units import GiB, KiB

HEADER = struct.Struct(">BBI")
HEADER_SIZE = HEADER.size  # 6
TASK_ID_SIZE = 64
DOWNLOAD_PIECE_LENGTH = TASK_ID_SIZE + 4
# PieceContent metadata (vortex-protocol v0.1.5 src/tlv/piece_content.rs): after the u32
# metadata_length, number u32, offset u64, length u64, digest_length u32, digest, parent_id_length
# u32, parent_id, traffic_type u8, cost u64 (whole seconds), created_at i64 (Unix seconds).
METADATA_LENGTH = struct.Struct(">I")
PIECE_FIXED = struct.Struct(">IQQI")  # number, offset, length, digest_length
PARENT_ID_LENGTH = struct.Struct(">I")
PIECE_TAIL = struct.Struct(">BQq")  # traffic_type, cost, created_at
SYNC_FIXED = TASK_ID_SIZE + 4  # task_id, then the count of piece numbers (u32 each) that follow
MAX_SYNC_PIECES = 1 << 20  # piece numbers one SyncPieces may list (0: every piece)
MAX_TRACE_CONTEXT = 256  # after the numbers, a W3C traceparent (ASCII) when the child traces
SYNC_MAX = SYNC_FIXED + 4 * MAX_SYNC_PIECES + MAX_TRACE_CONTEXT
ANNOUNCE = struct.Struct(">IQQB")  # number, offset, length, flags
ANNOUNCE_ARRIVING = 1  # flags: the piece is still arriving at the parent (served as it lands)
MIN_METADATA = PIECE_FIXED.size + PARENT_ID_LENGTH.size + PIECE_TAIL.size  # 45
MAX_METADATA = 4 * KiB
MAX_DIGEST_LENGTH = 128
MAX_ERROR_LENGTH = 64 * KiB
MAX_CONTENT_LENGTH = 4 * GiB  # Vortex's largest value; a child checks the length it expects anyway
TRAFFIC_REMOTE_PEER = 1  # common.v2.TrafficType.REMOTE_PEER, what a Rust parent always sends
_U32 = struct.Struct(">I")


class Tag(enum.IntEnum):
    DOWNLOAD_PIECE = 0
    PIECE_CONTENT = 1
    DOWNLOAD_PERSISTENT_PIECE = 2
    PERSISTENT_PIECE_CONTENT = 3
    DOWNLOAD_PERSISTENT_CACHE_PIECE = 4
    PERSISTENT_CACHE_PIECE_CONTENT = 5
    DOWNLOAD_CACHE_PIECE = 6
    CACHE_PIECE_CONTENT = 7
    # Damselfly's extension (in Vortex's reserved range): DownloadPiece from a Damselfly child,
    # which takes Damselfly's answers on this connection: the digest after the content (a
    # parent may send a piece whose digest it does not know yet, one still arriving from the
    # origin: its PieceContent has an empty digest and a PieceDigest frame follows its
    # content), the busy and elsewhere codes, and the connection kept for more requests.
    DOWNLOAD_PIECE_TRAILER = 224
    PIECE_DIGEST = 225
    # Damselfly's SyncPieces on the piece port: a Damselfly child asks which pieces of a task
    # the parent holds or is receiving; the parent answers with a PieceAnnounce per piece and a
    # Close once every piece asked for is held (daemon/transfer/announce.py).
    SYNC_PIECES = 226
    PIECE_ANNOUNCE = 227
    CLOSE = 254
    ERROR = 255


# Each request tag and the tag of its answer.
REQUESTS: dict[Tag, Tag] = {
    Tag.DOWNLOAD_PIECE: Tag.PIECE_CONTENT,
    Tag.DOWNLOAD_PERSISTENT_PIECE: Tag.PERSISTENT_PIECE_CONTENT,
    Tag.DOWNLOAD_PERSISTENT_CACHE_PIECE: Tag.PERSISTENT_CACHE_PIECE_CONTENT,
    Tag.DOWNLOAD_CACHE_PIECE: Tag.CACHE_PIECE_CONTENT,
    Tag.DOWNLOAD_PIECE_TRAILER: Tag.PIECE_CONTENT,
}
CONTENTS = frozenset(REQUESTS.values())


class ErrorCode(enum.IntEnum):
    # Vortex's (vortex-protocol v0.1.5 src/tlv/error.rs); 4-255 are reserved there.
    UNKNOWN = 0
    INVALID_ARGUMENT = 1
    NOT_FOUND = 2
    INTERNAL = 3
    # Damselfly's, only ever sent to a child that asked with Tag.DOWNLOAD_PIECE_TRAILER.
    # Busy: every upload slot is taken; try later or elsewhere.
    RESOURCE_EXHAUSTED = 4
    # A seed peer that already gave this piece to the swarm: ask a peer for it.
    ELSEWHERE = 5


class UnsupportedTag(ProtocolError):
    """A frame whose tag this side does not know (Vortex's reserved range)."""

    def __init__(self, packet_id: int, tag: int) -> None:
        super().__init__(f"unsupported packet tag {tag}")
        self.packet_id = packet_id
        self.tag = tag


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class DownloadPiece:
    """A child asks for piece ``number`` of ``task_id``. ``tag``: which request
    (Tag.DOWNLOAD_PIECE_TRAILER: a Damselfly child, see :attr:`damselfly`)."""

    packet_id: int
    task_id: str
    number: int
    tag: Tag = Tag.DOWNLOAD_PIECE

    @property
    def damselfly(self) -> bool:
        """Asked with Damselfly's own request: the child takes Damselfly's answers."""
        return self.tag is Tag.DOWNLOAD_PIECE_TRAILER

    @property
    def answer_tag(self) -> Tag:
        return REQUESTS[self.tag]


@dataclass(frozen=True, slots=True)
class SyncPieces:
    """A Damselfly child asks to hear of the pieces ``numbers`` of ``task_id`` (empty: every
    piece) the parent holds or is receiving, and of those it finishes."""

    packet_id: int
    task_id: str
    numbers: tuple[int, ...]
    traceparent: str = ""  # the child's span (W3C), when it traces


@dataclass(frozen=True, slots=True)
class PieceAnnounce:
    """The parent holds piece ``number`` (or, with ``arriving``, is receiving it)."""

    packet_id: int
    number: int
    offset: int
    length: int
    arriving: bool


@dataclass(frozen=True, slots=True)
class PieceHeader:
    """A parent starts sending a piece; ``length`` content bytes follow the frame.

    ``parent_id``, ``traffic_type``, ``cost_s`` (whole seconds) and ``created_at``
    (Unix seconds) are Vortex's informational fields: where the parent got the
    piece, how, how long it took and when.
    """

    packet_id: int
    number: int
    offset: int
    length: int
    digest: str
    parent_id: str = ""
    traffic_type: int = TRAFFIC_REMOTE_PEER
    cost_s: int = 0
    created_at: int = 0
    tag: Tag = Tag.PIECE_CONTENT


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


Event = DownloadPiece | SyncPieces | PieceAnnounce | PieceHeader | PieceDigest | PieceData | Close | Error


# --------------------------------------------------------------------------- encoding


def _check_u8(name: str, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise ProtocolError(f"{name} {value} does not fit in one byte")


def encode_download_piece(packet_id: int, task_id: str, number: int, tag: Tag = Tag.DOWNLOAD_PIECE) -> bytes:
    _check_u8("packet id", packet_id)
    if tag not in REQUESTS:
        raise ProtocolError(f"{tag!r} is not a piece request")
    if not 0 <= number < 2**32:
        raise ProtocolError(f"piece number {number} does not fit in u32")
    return HEADER.pack(packet_id, tag, DOWNLOAD_PIECE_LENGTH) + _task_and_u32(task_id, number)


def _task_and_u32(task_id: str, n: int) -> bytes:
    """A task ID (64 ASCII hex bytes) and a u32: DownloadPiece's value, and SyncPieces' head."""
    if not is_task_id(task_id):
        raise ProtocolError(f"not a task id: {task_id!r}")
    return task_id.encode("ascii") + _U32.pack(n)


def encode_piece_header(
    packet_id: int,
    number: int,
    offset: int,
    length: int,
    digest: str,
    *,
    parent_id: str = "",
    traffic_type: int = TRAFFIC_REMOTE_PEER,
    cost_s: int = 0,
    created_at: int = 0,
    tag: Tag = Tag.PIECE_CONTENT,
) -> bytes:
    """The PieceContent frame (metadata only); the caller sends ``length`` content bytes after it."""
    _check_u8("packet id", packet_id)
    _check_u8("traffic type", traffic_type)
    if tag not in CONTENTS:
        raise ProtocolError(f"{tag!r} is not a piece answer")
    raw_digest = digest.encode("ascii")
    raw_parent = parent_id.encode("utf-8")
    if len(raw_digest) > MAX_DIGEST_LENGTH:
        raise ProtocolError(f"digest longer than {MAX_DIGEST_LENGTH} bytes")
    if not 0 <= number < 2**32 or offset < 0 or not 0 <= length <= MAX_CONTENT_LENGTH:
        raise ProtocolError(f"bad piece metadata number={number} offset={offset} length={length}")
    if not 0 <= cost_s < 2**64 or not -(2**63) <= created_at < 2**63:
        raise ProtocolError(f"bad piece cost {cost_s} or creation time {created_at}")
    metadata_length = MIN_METADATA + len(raw_digest) + len(raw_parent)
    if metadata_length > MAX_METADATA:
        raise ProtocolError(f"piece metadata of {metadata_length} bytes exceeds {MAX_METADATA}")
    return b"".join(
        (
            HEADER.pack(packet_id, tag, METADATA_LENGTH.size + metadata_length),
            METADATA_LENGTH.pack(metadata_length),
            PIECE_FIXED.pack(number, offset, length, len(raw_digest)),
            raw_digest,
            PARENT_ID_LENGTH.pack(len(raw_parent)),
            raw_parent,
            PIECE_TAIL.pack(traffic_type, cost_s, created_at),
        )
    )


def encode_sync_pieces(packet_id: int, task_id: str, numbers: Sequence[int], traceparent: str = "") -> bytes:
    _check_u8("packet id", packet_id)
    if len(numbers) > MAX_SYNC_PIECES:
        raise ProtocolError(f"at most {MAX_SYNC_PIECES} piece numbers per SyncPieces, got {len(numbers)}")
    trace = traceparent.encode("ascii")
    if len(trace) > MAX_TRACE_CONTEXT:
        raise ProtocolError(f"a traceparent of {len(trace)} bytes is over {MAX_TRACE_CONTEXT}")
    value = _task_and_u32(task_id, len(numbers)) + struct.pack(f">{len(numbers)}I", *numbers) + trace
    return HEADER.pack(packet_id, Tag.SYNC_PIECES, len(value)) + value


def encode_piece_announce(packet_id: int, number: int, offset: int, length: int, *, arriving: bool) -> bytes:
    flags = ANNOUNCE_ARRIVING if arriving else 0
    return HEADER.pack(packet_id, Tag.PIECE_ANNOUNCE, ANNOUNCE.size) + ANNOUNCE.pack(
        number, offset, length, flags
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
        raise UnsupportedTag(packet_id, raw_tag) from None
    if tag in REQUESTS and length != DOWNLOAD_PIECE_LENGTH:
        raise ProtocolError(f"DownloadPiece value must be {DOWNLOAD_PIECE_LENGTH} bytes, got {length}")
    if tag in CONTENTS and not MIN_METADATA <= length - METADATA_LENGTH.size <= MAX_METADATA:
        raise ProtocolError(f"PieceContent of {length} bytes does not fit piece metadata")
    if tag is Tag.PIECE_DIGEST and not 1 <= length <= MAX_DIGEST_LENGTH:
        raise ProtocolError(f"PieceDigest value must be 1..{MAX_DIGEST_LENGTH} bytes, got {length}")
    if tag is Tag.SYNC_PIECES and not SYNC_FIXED <= length <= SYNC_MAX:
        raise ProtocolError(f"SyncPieces value of {length} bytes is not a task id and piece numbers")
    if tag is Tag.PIECE_ANNOUNCE and length != ANNOUNCE.size:
        raise ProtocolError(f"PieceAnnounce value must be {ANNOUNCE.size} bytes, got {length}")
    if tag is Tag.CLOSE and length != 0:
        raise ProtocolError(f"Close must be empty, got {length} bytes")
    if tag is Tag.ERROR and not 1 <= length <= MAX_ERROR_LENGTH:
        raise ProtocolError(f"Error value must be 1..{MAX_ERROR_LENGTH} bytes, got {length}")
    return FrameHeader(packet_id, tag, length)


def decode_download_piece(
    packet_id: int, value: bytes | bytearray | memoryview, tag: Tag = Tag.DOWNLOAD_PIECE
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
    return DownloadPiece(packet_id, task_id, number, tag)


def decode_sync_pieces(packet_id: int, value: bytes | bytearray | memoryview) -> SyncPieces:
    head = decode_download_piece(packet_id, value[:SYNC_FIXED])  # the task id, then the count
    count = head.number
    end = SYNC_FIXED + 4 * count
    if not end <= len(value) <= end + MAX_TRACE_CONTEXT:
        raise ProtocolError(f"SyncPieces lists {count} pieces in {len(value) - SYNC_FIXED} bytes")
    numbers = struct.unpack(f">{count}I", value[SYNC_FIXED:end])
    try:
        traceparent = bytes(value[end:]).decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("a SyncPieces traceparent is not ASCII") from None
    return SyncPieces(packet_id, head.task_id, numbers, traceparent)


def decode_piece_announce(packet_id: int, value: bytes | bytearray | memoryview) -> PieceAnnounce:
    number, offset, length, flags = ANNOUNCE.unpack(value)
    return PieceAnnounce(packet_id, number, offset, length, bool(flags & ANNOUNCE_ARRIVING))


def decode_error(packet_id: int, value: bytes | bytearray | memoryview) -> Error:
    if len(value) < 1:
        raise ProtocolError("truncated Error")
    return Error(packet_id, value[0], bytes(value[1:]).decode("utf-8", errors="replace"))


def decode_piece_header(header: FrameHeader, value: bytes | bytearray | memoryview) -> PieceHeader:
    """Decode a PieceContent frame's value: its metadata, which must fill the frame exactly."""
    view = memoryview(value)
    if len(view) != header.length or len(view) < METADATA_LENGTH.size:
        raise ProtocolError("truncated PieceContent")
    (metadata_length,) = METADATA_LENGTH.unpack_from(view)
    if METADATA_LENGTH.size + metadata_length != header.length:
        raise ProtocolError(
            f"piece metadata says {metadata_length} bytes, "
            f"the frame carries {header.length - METADATA_LENGTH.size}"
        )
    pos = METADATA_LENGTH.size
    end = header.length
    number, offset, length, digest_len = PIECE_FIXED.unpack_from(view, pos)
    pos += PIECE_FIXED.size
    if digest_len > MAX_DIGEST_LENGTH:
        raise ProtocolError(f"piece digest of {digest_len} bytes is too long")
    if length > MAX_CONTENT_LENGTH:
        raise ProtocolError(f"piece of {length} bytes exceeds {MAX_CONTENT_LENGTH}")
    if pos + digest_len + PARENT_ID_LENGTH.size > end:
        raise ProtocolError("piece metadata ends inside its digest")
    digest = decode_digest(view[pos : pos + digest_len])
    pos += digest_len
    (parent_len,) = PARENT_ID_LENGTH.unpack_from(view, pos)
    pos += PARENT_ID_LENGTH.size
    if pos + parent_len + PIECE_TAIL.size != end:
        raise ProtocolError("piece metadata does not end where its fields do")
    try:
        parent_id = bytes(view[pos : pos + parent_len]).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("parent id is not UTF-8") from None
    pos += parent_len
    traffic_type, cost_s, created_at = PIECE_TAIL.unpack_from(view, pos)
    return PieceHeader(
        header.packet_id,
        number,
        offset,
        length,
        digest,
        parent_id,
        traffic_type,
        cost_s,
        created_at,
        header.tag,
    )


def decode_digest(raw: bytes | bytearray | memoryview) -> str:
    try:
        return bytes(raw).decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("piece digest is not ASCII") from None


class _State(enum.Enum):
    HEADER = enum.auto()
    VALUE = enum.auto()
    CONTENT = enum.auto()


class FrameParser:
    """Incremental decoder: :meth:`feed` bytes, pull events with :meth:`next_event`.

    Owned by one connection. Frames are small and buffered whole; piece content
    (after a PieceContent frame) may be fed (yielding :class:`PieceData`) or read
    by the caller out of band and reported with :meth:`content_consumed`.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = _State.HEADER
        self._header: FrameHeader | None = None
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
        """Bytes to feed before the current unit (header, value, content) is complete."""
        if self._state is _State.HEADER:
            want = HEADER_SIZE
        elif self._state is _State.VALUE:
            assert self._header is not None
            want = self._header.length
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
                if new.tag is Tag.CLOSE:
                    return Close(new.packet_id)
                self._header = new
                self._state = _State.VALUE
                continue
            header = self._header
            assert header is not None
            if self._state is _State.VALUE:
                if len(self._buf) < header.length:
                    return None
                value = self._take(header.length)
                self._reset()
                if header.tag in CONTENTS:
                    event = decode_piece_header(header, value)
                    if event.length:
                        self._state, self._header, self._remaining = _State.CONTENT, header, event.length
                    return event
                if header.tag in REQUESTS:
                    return decode_download_piece(header.packet_id, value, header.tag)
                if header.tag is Tag.PIECE_DIGEST:
                    return PieceDigest(header.packet_id, decode_digest(value))
                if header.tag is Tag.SYNC_PIECES:
                    return decode_sync_pieces(header.packet_id, value)
                if header.tag is Tag.PIECE_ANNOUNCE:
                    return decode_piece_announce(header.packet_id, value)
                return decode_error(header.packet_id, value)
            # CONTENT
            if not self._buf:
                return None
            chunk = self._take(min(self._remaining, len(self._buf)))
            self._remaining -= len(chunk)
            last = self._remaining == 0
            if last:
                self._reset()
            return PieceData(header.packet_id, chunk, last)
