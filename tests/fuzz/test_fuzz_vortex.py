"""The Vortex parser (daemon/transfer/vortex.py) on arbitrary bytes: events or ProtocolError, never
another exception, never a hang; valid frames survive any split into chunks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from damselfly.daemon.transfer import vortex
from damselfly.errors import ProtocolError

from . import TIMEOUT

pytestmark = pytest.mark.timeout(TIMEOUT)

TASK = "a" * 64


def drain(parser: vortex.FrameParser) -> list[object]:
    """Every event the parser has; bounded: each event consumes bytes or ends the loop."""
    events: list[object] = []
    for _ in range(100_000):
        before = (parser.buffered, parser.content_remaining)
        event = parser.next_event()
        if event is None:
            return events
        events.append(event)
        if isinstance(event, vortex.Close):
            continue
        assert (parser.buffered, parser.content_remaining) != before or isinstance(event, vortex.PieceHeader)
    raise AssertionError("the parser did not stop giving events")


@given(st.lists(st.binary(max_size=512), max_size=8))
def test_arbitrary_bytes_are_events_or_a_protocol_error(chunks: list[bytes]) -> None:
    parser = vortex.FrameParser()
    try:
        for chunk in chunks:
            parser.feed(chunk)
            drain(parser)
            assert parser.bytes_needed() >= 0
    except ProtocolError:
        pass


@given(
    st.binary(min_size=0, max_size=300),
    st.integers(min_value=0, max_value=255),
    st.integers(min_value=0, max_value=255),
)
def test_a_frame_with_any_tag_and_value(value: bytes, packet_id: int, tag: int) -> None:
    parser = vortex.FrameParser()
    parser.feed(vortex.HEADER.pack(packet_id, tag, len(value)) + value)
    try:
        drain(parser)
    except ProtocolError:
        pass


frames = st.one_of(
    st.builds(
        lambda pid, n: vortex.encode_download_piece(pid, TASK, n),
        st.integers(0, 255),
        st.integers(0, 2**32 - 1),
    ),
    st.builds(
        lambda pid, n, content: (
            vortex.encode_piece_header(
                pid, n, n * 4, len(content), f"crc32:{n}", parent_id="p", cost_s=1, created_at=2
            )
            + content
        ),
        st.integers(0, 255),
        st.integers(0, 1000),
        st.binary(max_size=64),
    ),
    st.builds(
        lambda pid, code, msg: vortex.encode_error(pid, code, msg),
        st.integers(0, 255),
        st.sampled_from(list(vortex.ErrorCode)),
        st.text(max_size=100),
    ),
    st.builds(vortex.encode_close, st.integers(0, 255)),
)


@given(st.lists(frames, min_size=1, max_size=6), st.data())
def test_valid_frames_parse_the_same_in_any_split(stream: list[bytes], data: st.DataObject) -> None:
    raw = b"".join(stream)
    whole = vortex.FrameParser()
    whole.feed(raw)
    expected = drain(whole)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=10)))
    parser = vortex.FrameParser()
    got: list[object] = []
    last = 0
    for cut in [*cuts, len(raw)]:
        parser.feed(raw[last:cut])
        last = cut
        got += drain(parser)

    # Content may come in other chunks; everything else is the same, in order.
    def merged(events: list[object]) -> list[object]:
        out: list[object] = []
        for e in events:
            if isinstance(e, vortex.PieceData) and out and isinstance(out[-1], bytes):
                out[-1] += e.data
            else:
                out.append(e.data if isinstance(e, vortex.PieceData) else e)
        return out

    assert merged(got) == merged(expected)
    assert parser.buffered == 0 and parser.bytes_needed() in (0, vortex.HEADER_SIZE)
