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
        vortex.Error(1, 2, "no such task"),
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


def _meta(fields: bytes, claimed: int | None = None) -> bytes:
    """A PieceContent frame around raw metadata ``fields`` (``claimed``: the metadata_length)."""
    size = len(fields) if claimed is None else claimed
    return _header(1, 4 + len(fields)) + struct.pack(">I", size) + fields


_TAIL = struct.pack(">IBQq", 0, 1, 0, 0)  # empty parent id, traffic, cost, created_at


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_header(255, 0xFFFFFFFF), "Error value must be"),
        (_header(0, 67) + b"a" * 67, "DownloadPiece value must be 68"),
        (_header(4, 69) + b"a" * 69, "DownloadPiece value must be 68"),
        (_header(0, 68) + b"g" * 64 + b"\0\0\0\1", "not a task id"),
        (_header(0, 68) + TID.upper().encode() + b"\0\0\0\1", "not a task id"),
        (_header(0, 68) + "é".encode() * 32 + b"\0\0\0\1", "not ASCII"),
        (_header(254, 1) + b"x", "Close must be empty"),
        (_header(255, 0), "Error value must be"),
        (_header(1, 10) + b"x" * 10, "does not fit piece metadata"),
        (_header(1, 0xFFFFFFF0), "does not fit piece metadata"),
        # the metadata_length disagrees with the frame's length
        (_meta(struct.pack(">IQQI", 0, 0, 1, 0) + _TAIL, claimed=44), "the frame carries"),
        # a digest running past the metadata, fields left over after created_at
        (_meta(struct.pack(">IQQI", 0, 0, 1, 200) + _TAIL), "too long"),
        (_meta(struct.pack(">IQQI", 0, 0, 1, 30) + _TAIL), "inside its digest"),
        (_meta(struct.pack(">IQQI", 0, 0, 1, 0) + _TAIL + b"x"), "does not end where"),
        (_meta(struct.pack(">IQQI", 0, 0, 1, 2) + b"\xff\xfe" + _TAIL), "not ASCII"),
        (_meta(struct.pack(">IQQI", 0, 0, 5 * 2**30, 0) + _TAIL), "exceeds"),
        (_meta(struct.pack(">IQQI", 0, 0, 1, 0) + struct.pack(">I", 2) + b"\xff\xfe" + _TAIL[4:]), "UTF-8"),
    ],
)
def test_malformed_input_is_rejected(raw: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_all(raw)


@pytest.mark.parametrize("tag", [8, 100, 223, 228, 253])
def test_a_reserved_tag_is_unsupported(tag: int) -> None:
    with pytest.raises(vortex.UnsupportedTag) as caught:
        parse_all(_header(tag, 0, packet_id=9))
    assert (caught.value.packet_id, caught.value.tag) == (9, tag)


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
        lambda: vortex.encode_download_piece(1, TID, 0, vortex.Tag.PIECE_CONTENT),
        lambda: vortex.encode_piece_header(1, 0, 0, vortex.MAX_CONTENT_LENGTH + 1, "crc32:1"),
        lambda: vortex.encode_piece_header(1, 0, -1, 1, "crc32:1"),
        lambda: vortex.encode_piece_header(1, 0, 0, 1, "crc32:1", parent_id="p" * vortex.MAX_METADATA),
        lambda: vortex.encode_piece_header(1, 0, 0, 1, "crc32:1", tag=vortex.Tag.DOWNLOAD_PIECE),
        lambda: vortex.encode_piece_header(1, 0, 0, 1, "crc32:1", cost_s=-1),
        lambda: vortex.encode_error(1, 300, "x"),
    ],
)
def test_encoders_refuse_what_cannot_be_framed(call: object) -> None:
    with pytest.raises(ProtocolError):
        call()  # type: ignore[operator]


def test_piece_metadata_fields_round_trip() -> None:
    raw = vortex.encode_piece_header(
        7, 2, 8192, 4, "crc32:9", parent_id="10.0.0.1-h-p", traffic_type=0, cost_s=3,
        created_at=-5, tag=vortex.Tag.PERSISTENT_CACHE_PIECE_CONTENT,
    )  # fmt: skip
    content = vortex.Tag.PERSISTENT_CACHE_PIECE_CONTENT
    assert parse_all(raw) == [vortex.PieceHeader(7, 2, 8192, 4, "crc32:9", "10.0.0.1-h-p", 0, 3, -5, content)]


@pytest.mark.parametrize("step", [None, 1, 7])
def test_a_piece_with_its_digest_after_the_content(step: int | None) -> None:
    """Damselfly's extension: DownloadPiece-with-trailer, an empty header digest, PieceDigest."""
    request = vortex.encode_download_piece(5, TID, 2, vortex.Tag.DOWNLOAD_PIECE_TRAILER)
    assert request[1] == vortex.Tag.DOWNLOAD_PIECE_TRAILER
    (event,) = parse_all(request)
    assert event == vortex.DownloadPiece(5, TID, 2, vortex.Tag.DOWNLOAD_PIECE_TRAILER)
    assert isinstance(event, vortex.DownloadPiece) and event.damselfly
    assert event.answer_tag is vortex.Tag.PIECE_CONTENT
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
