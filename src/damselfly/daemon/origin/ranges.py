"""Which bytes to ask the origin for: range planning for back-to-source, with no I/O.

:mod:`.source` carries these decisions out; they are here, apart from the
sockets, so each can be tested over plain numbers. The origin's HTTP ranges are
inclusive (``first``-``last``, as in a ``Range`` header); spans of content are
half-open ``[start, stop)``.

A download asks for:

- a fresh task, one stream: the whole content, one GET without ``Range``;
- a fresh task, several streams: a *probe* for the first :data:`PROBE_BYTES`
  (its ``Content-Range`` tells the length), then the rest cut at piece
  boundaries into up to that many ranges fetched at once
  (:func:`parallel_spans`); the first of them finishes the piece the probe
  cut off, carrying its crc32 over (:func:`cut_mid_piece`);
- a resumed task: from its first missing piece up to the next held one
  (:func:`first_request`), then one range per run of missing pieces
  (:func:`missing_runs`).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Set

from ...errors import SourceError

# The probe's size: every piece length is a power of two of at least 4 MiB, so a probe
# never ends past piece 0.
PROBE_BYTES = 4 * 1024 * 1024
# A split download gives each stream at least this many whole pieces.
MIN_PIECES_PER_STREAM = 2

HttpRange = tuple[int, int | None]  # first and last byte asked for; last None: to the end
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


def first_request(have: Set[int], piece_length: int | None, streams: int) -> tuple[HttpRange | None, bool]:
    """The first GET's byte range (None: the whole content), and whether it is a probe.

    ``have``: pieces already held, of ``piece_length`` bytes (the store's; without
    it a resumed task is fetched whole and its held pieces skipped). A resumed task
    starts at its first missing piece and stops before the next held one.
    """
    if have and piece_length:
        first = next(n for n in range(len(have) + 1) if n not in have)
        later = [n for n in have if n > first]
        return (first * piece_length, min(later) * piece_length - 1 if later else None), False
    if streams > 1:
        return (0, PROBE_BYTES - 1), True
    return None, False


def missing_runs(have: Set[int], piece_length: int, total: int) -> list[tuple[int, int]]:
    """Inclusive byte ranges, one per run of consecutive pieces not in ``have``."""
    count = (total + piece_length - 1) // piece_length
    runs: list[tuple[int, int]] = []
    n = 0
    while n < count:
        if n in have:
            n += 1
            continue
        start = n
        while n < count and n not in have:
            n += 1
        runs.append((start * piece_length, min(n * piece_length, total) - 1))
    return runs


def parallel_spans(pos: int, total: int, piece_length: int, streams: int) -> list[tuple[int, int]]:
    """Bytes ``[pos, total)`` cut into up to ``streams`` half-open spans at piece boundaries.

    Each span but the first starts on a piece boundary and gets at least
    :data:`MIN_PIECES_PER_STREAM` pieces; the first starts at ``pos``, which may
    be mid-piece (it finishes the piece the probe cut off).
    """
    if pos >= total:
        return []
    first_piece = -(-pos // piece_length)  # the first piece that starts at or after pos
    count = (total + piece_length - 1) // piece_length
    whole = count - first_piece  # pieces that start after pos
    parts = max(1, min(streams, whole // MIN_PIECES_PER_STREAM))
    cuts = [pos] + [(first_piece + whole * i // parts) * piece_length for i in range(1, parts)] + [total]
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def cut_mid_piece(pos: int, piece_length: int, total: int | None) -> bool:
    """Whether a body that ended at ``pos`` left a piece unfinished, for the next body
    to carry on (its crc32 and start time go along). A body of unknown length ends
    the content, so it leaves nothing unfinished."""
    return total is not None and pos < total and pos % piece_length != 0


def parse_content_range(value: str, url: str) -> tuple[int, int, int | None]:
    """``Content-Range: bytes a-b/total`` as ``(a, b, total)``; total None for ``*``."""
    m = _CONTENT_RANGE.match(value)
    if not m:
        raise SourceError(f"the origin answered 206 without a usable Content-Range for {url}")
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


def check_range(got: tuple[int, int, int | None], asked: tuple[int, int], total: int, url: str) -> None:
    """Refuse a 206 answer for other bytes than asked, or for content whose length changed."""
    start, end, got_total = got
    if got_total is not None and got_total != total:
        raise SourceError(f"the content length of {url} changed mid-download")
    if (start, end) != asked:
        raise SourceError(f"the origin sent bytes {start}-{end}, asked {asked[0]}-{asked[1]}, for {url}")


def first_answer(
    status: int, content_range: str, content_length: int | None, asked: HttpRange | None, url: str
) -> tuple[int, int | None, int | None, bool]:
    """What the first response holds: ``(start, stop, total, whole)``.

    The body is content bytes ``[start, stop)`` (stop None: to wherever it ends, a
    body of unknown length); ``total`` is the content's length when the origin
    said it; ``whole``: the body is the whole content (a ``200``, also the answer
    of an origin that ignores ``Range``).
    """
    if status == 200:
        return 0, content_length, content_length, True
    if asked is None:
        raise SourceError(f"the origin answered 206 to a request without Range for {url}")
    start, last, total = parse_content_range(content_range, url)
    if start != asked[0]:
        raise SourceError(f"the origin sent bytes from {start}, asked {asked[0]}, for {url}")
    return start, last + 1, total, False
