"""Vortex framing: encode/parse round trips and every malformed input."""

from __future__ import annotations

import struct

import pytest

from damselfly.daemon.transfer import vortex
from damselfly.errors import ProtocolError
from damselfly.ids import task_id

TID = task_id("http://example.com/a")


def parse_all(data: bytes, *, step: int | None = None) -> list[vortex.Event]:
    parser = vortex.FrameParser()
    events: list[vortex.Event] = []
    chunks = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for chunk in chunks:
        parser.feed(chunk)
        while (event := parser.next_event()) is not None:
            events.append(event)
    return events


def test_download_piece_round_trip() -> None:
    raw = vortex.encode_download_piece(7, TID, 123456)
    assert len(raw) == vortex.HEADER_SIZE + 68
    assert parse_all(raw) == [vortex.DownloadPiece(7, TID, 123456)]


@pytest.mark.parametrize("step", [None, 1, 5])
def test_piece_header_and_content_round_trip(step: int | None) -> None:
    content = bytes(range(256)) * 10
    raw = vortex.encode_piece_header(3, 9, 9 * 4096, len(content), "crc32:42") + content
    events = parse_all(raw, step=step)
    assert events[0] == vortex.PieceHeader(3, 9, 9 * 4096, len(content), "crc32:42")
    data = [e for e in events[1:] if isinstance(e, vortex.PieceData)]
    assert b"".join(e.data for e in data) == content
    assert data[-1].last and not any(e.last for e in data[:-1])


def test_several_frames_in_one_buffer() -> None:
    raw = (
        vortex.encode_error(1, vortex.ErrorCode.NOT_FOUND, "no such task")
        + vortex.encode_piece_header(2, 0, 0, 3, "crc32:1")
        + b"abc"
        + vortex.encode_close(3)
        + vortex.encode_download_piece(4, TID, 0)
    )
    assert parse_all(raw) == [
        vortex.Error(1, 1, "no such task"),
        vortex.PieceHeader(2, 0, 0, 3, "crc32:1"),
        vortex.PieceData(2, b"abc", True),
        vortex.Close(3),
        vortex.DownloadPiece(4, TID, 0),
    ]


def test_empty_piece_has_no_data_events() -> None:
    raw = vortex.encode_piece_header(1, 0, 0, 0, "crc32:0") + vortex.encode_close(2)
    assert parse_all(raw) == [vortex.PieceHeader(1, 0, 0, 0, "crc32:0"), vortex.Close(2)]


def test_content_read_out_of_band() -> None:
    """A reader that reads exactly bytes_needed() never over-reads into the content."""
    parser = vortex.FrameParser()
    raw = vortex.encode_piece_header(5, 1, 100, 10, "crc32:7")
    fed = 0
    event = None
    while event is None:
        need = parser.bytes_needed()
        assert need > 0
        parser.feed(raw[fed : fed + need])
        fed += need
        event = parser.next_event()
    assert fed == len(raw)
    assert event == vortex.PieceHeader(5, 1, 100, 10, "crc32:7")
    assert parser.content_remaining == 10
    assert parser.bytes_needed() == 10
    parser.content_consumed(4)
    parser.content_consumed(6)
    assert parser.content_remaining == 0
    parser.feed(vortex.encode_close(6))
    assert parser.next_event() == vortex.Close(6)


def test_content_consumed_outside_content_is_refused() -> None:
    with pytest.raises(ProtocolError):
        vortex.FrameParser().content_consumed(1)


def test_error_message_is_utf8() -> None:
    raw = vortex.encode_error(9, vortex.ErrorCode.INTERNAL, "disque plein ✗")
    assert parse_all(raw) == [vortex.Error(9, 3, "disque plein ✗")]


def _header(tag: int, length: int, packet_id: int = 1) -> bytes:
    return struct.pack(">BBI", packet_id, tag, length)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_header(7, 0), "unknown packet tag 7"),
        (_header(1, vortex.MAX_LENGTH + 1), "exceeds the limit"),
        (_header(255, 0xFFFFFFFF), "exceeds the limit"),
        (_header(0, 67) + b"a" * 67, "DownloadPiece value must be 68"),
        (_header(0, 68) + b"g" * 64 + b"\0\0\0\1", "not a task id"),
        (_header(0, 68) + TID.upper().encode() + b"\0\0\0\1", "not a task id"),
        (_header(0, 68) + "é".encode() * 32 + b"\0\0\0\1", "not ASCII"),
        (_header(254, 1) + b"x", "Close must be empty"),
        (_header(255, 0), "Error value must be"),
        (_header(1, 10) + b"x" * 10, "shorter than its metadata"),
        # metadata claims 100 content bytes, the frame only carries 50
        (_header(1, 22 + 7 + 50) + struct.pack(">IQQH", 0, 0, 100, 7) + b"crc32:1", "the frame carries"),
        (_header(1, 22 + 200) + struct.pack(">IQQH", 0, 0, 0, 200) + b"x" * 200, "too long"),
        (_header(1, 22 + 2 + 1) + struct.pack(">IQQH", 0, 0, 1, 2) + b"\xff\xfe" + b"z", "not ASCII"),
    ],
)
def test_malformed_input_is_rejected(raw: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_all(raw)


def test_truncated_input_waits_for_more() -> None:
    raw = vortex.encode_download_piece(1, TID, 1)
    parser = vortex.FrameParser()
    parser.feed(raw[:-1])
    assert parser.next_event() is None
    assert parser.bytes_needed() == 1


def test_parse_header_needs_exactly_six_bytes() -> None:
    with pytest.raises(ProtocolError, match="6 bytes"):
        vortex.parse_header(b"\0\0\0")


@pytest.mark.parametrize(
    "call",
    [
        lambda: vortex.encode_download_piece(1, "../../etc/passwd", 0),
        lambda: vortex.encode_download_piece(256, TID, 0),
        lambda: vortex.encode_download_piece(1, TID, 2**32),
        lambda: vortex.encode_piece_header(1, 0, 0, vortex.MAX_LENGTH, "crc32:1"),
        lambda: vortex.encode_piece_header(1, 0, -1, 1, "crc32:1"),
        lambda: vortex.encode_error(1, 300, "x"),
    ],
)
def test_encoders_refuse_what_cannot_be_framed(call: object) -> None:
    with pytest.raises(ProtocolError):
        call()  # type: ignore[operator]


@pytest.mark.parametrize("step", [None, 1, 7])
def test_a_piece_with_its_digest_after_the_content(step: int | None) -> None:
    """Damselfly's extension: DownloadPiece-with-trailer, an empty header digest, PieceDigest."""
    request = vortex.encode_download_piece(5, TID, 2, trailer=True)
    assert request[1] == vortex.Tag.DOWNLOAD_PIECE_TRAILER
    assert parse_all(request) == [vortex.DownloadPiece(5, TID, 2, trailer=True)]
    answer = vortex.encode_piece_header(5, 2, 8192, 4, "") + b"wxyz"
    answer += vortex.encode_piece_digest(5, "crc32:7")
    events = parse_all(answer, step=step)
    assert events[0] == vortex.PieceHeader(5, 2, 8192, 4, "")
    assert b"".join(e.data for e in events if isinstance(e, vortex.PieceData)) == b"wxyz"
    assert events[-1] == vortex.PieceDigest(5, "crc32:7")


@pytest.mark.parametrize(
    "raw",
    [
        struct.pack(">BBI", 1, vortex.Tag.PIECE_DIGEST, 0),  # an empty digest
        struct.pack(">BBI", 1, vortex.Tag.PIECE_DIGEST, vortex.MAX_DIGEST_LENGTH + 1),
        struct.pack(">BBI", 1, vortex.Tag.DOWNLOAD_PIECE_TRAILER, 67),
    ],
)
def test_malformed_trailer_frames_are_refused(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_all(raw)


def test_a_piece_digest_must_fit_its_frame() -> None:
    with pytest.raises(ProtocolError):
        vortex.encode_piece_digest(1, "")
    with pytest.raises(ProtocolError):
        vortex.encode_piece_digest(1, "x" * (vortex.MAX_DIGEST_LENGTH + 1))
