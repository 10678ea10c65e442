"""Back-to-source range planning (daemon/origin/ranges.py): which bytes to ask the origin for."""

from __future__ import annotations

import itertools

import pytest

from damselfly.daemon.origin import ranges
from damselfly.errors import SourceError

PL = 100
URL = "http://origin/f"


def test_a_fresh_task_is_one_whole_get_or_a_probe():
    assert ranges.first_request(set(), None, 1) == (None, False)
    assert ranges.first_request(set(), PL, 1) == (None, False)
    assert ranges.first_request(set(), None, 4) == ((0, ranges.PROBE_BYTES - 1), True)


def test_a_resumed_task_starts_at_its_first_hole_and_stops_before_the_next_held_piece():
    assert ranges.first_request({0, 1, 4, 6}, PL, 4) == ((2 * PL, 4 * PL - 1), False)
    assert ranges.first_request({1, 2}, PL, 1) == ((0, PL - 1), False)
    # Nothing held after the hole: to the end.
    assert ranges.first_request({0, 1}, PL, 1) == ((2 * PL, None), False)


def test_a_resumed_task_without_the_piece_length_is_fetched_whole():
    assert ranges.first_request({0, 1}, None, 1) == (None, False)


def test_missing_runs_cover_exactly_the_holes():
    total = 5 * PL + 21  # 6 pieces, the last one short
    assert ranges.missing_runs({0, 2}, PL, total) == [(PL, 2 * PL - 1), (3 * PL, total - 1)]
    assert ranges.missing_runs(set(), PL, total) == [(0, total - 1)]
    assert ranges.missing_runs(set(range(6)), PL, total) == []
    assert ranges.missing_runs({1, 3, 5}, PL, total) == [(0, 99), (200, 299), (400, 499)]


@pytest.mark.parametrize("pos", [0, PL, PL // 2 + 7, 3 * PL - 1])
@pytest.mark.parametrize("streams", [1, 2, 3, 8])
def test_parallel_spans_tile_the_rest_at_piece_boundaries(monkeypatch, pos, streams):
    monkeypatch.setattr(ranges, "MIN_PIECES_PER_STREAM", 1)
    total = 9 * PL + 13
    spans = ranges.parallel_spans(pos, total, PL, streams)
    assert spans[0][0] == pos and spans[-1][1] == total
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))  # contiguous, no overlap
    assert all(a % PL == 0 for a, _ in spans[1:])  # later spans start on a piece
    assert 1 <= len(spans) <= streams


def test_parallel_spans_give_each_stream_enough_pieces():
    # Ten whole pieces after the probe, two at least a stream: five streams, not eight.
    spans = ranges.parallel_spans(PL, 11 * PL, PL, 8)
    assert len(spans) == 10 // ranges.MIN_PIECES_PER_STREAM
    assert all(b - a >= ranges.MIN_PIECES_PER_STREAM * PL for a, b in spans)
    assert ranges.parallel_spans(11 * PL, 11 * PL, PL, 8) == []


@pytest.mark.parametrize(
    ("pos", "total", "cut"),
    [
        (PL, 10 * PL, False),  # on a piece boundary
        (PL + 1, 10 * PL, True),  # mid-piece: the next body carries on
        (10 * PL - 5, 10 * PL - 5, False),  # the end of the content, a short last piece
        (PL + 1, None, False),  # a body of unknown length ends the content
    ],
)
def test_a_body_cut_mid_piece_carries_over(pos, total, cut):
    assert ranges.cut_mid_piece(pos, PL, total) is cut


def test_content_range():
    assert ranges.parse_content_range("bytes 0-99/1000", URL) == (0, 99, 1000)
    assert ranges.parse_content_range(" Bytes 5-9/* ", URL) == (5, 9, None)
    for bad in ["", "bytes 0-99", "items 0-9/10", "bytes a-b/c"]:
        with pytest.raises(SourceError, match="Content-Range"):
            ranges.parse_content_range(bad, URL)


def test_check_range_refuses_other_bytes_or_a_changed_length():
    ranges.check_range((100, 199, 1000), (100, 199), 1000, URL)
    ranges.check_range((100, 199, None), (100, 199), 1000, URL)
    with pytest.raises(SourceError, match="changed"):
        ranges.check_range((100, 199, 2000), (100, 199), 1000, URL)
    with pytest.raises(SourceError, match="asked 100-199"):
        ranges.check_range((100, 150, 1000), (100, 199), 1000, URL)


def test_first_answer():
    # A 200 is the whole content, whatever was asked (an origin that ignores Range).
    assert ranges.first_answer(200, "", 1000, (200, 299), URL) == (0, 1000, 1000, True)
    assert ranges.first_answer(200, "", None, None, URL) == (0, None, None, True)
    assert ranges.first_answer(206, "bytes 200-299/1000", 100, (200, 299), URL) == (200, 300, 1000, False)
    assert ranges.first_answer(206, "bytes 0-99/*", 100, (0, 99), URL) == (0, 100, None, False)
    with pytest.raises(SourceError, match="without Range"):
        ranges.first_answer(206, "bytes 0-99/1000", 100, None, URL)
    with pytest.raises(SourceError, match="from 0, asked 200"):
        ranges.first_answer(206, "bytes 0-99/1000", 100, (200, None), URL)
