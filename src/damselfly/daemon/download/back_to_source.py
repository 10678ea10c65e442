"""Fetching a task from its origin (back-to-source): what the store lacks, each piece reported.

The conductor goes back to source when the scheduler says so, when there is
no scheduler, or when the scheduler is lost; this module carries that out. The
origin's body is written piece by piece by :class:`~..origin.source.HTTPSource`;
here the store learns the content length, each piece is recorded and served
on to children while it lands (cut-through), and the scheduler hears of each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ...domain import DownloadSpec, PieceInfo, TrafficType
from ...errors import ProtocolError
from ...pieces import piece_length_for
from ..store.digesting import InOrderDigest
from ..store.receiving import Receiving

if TYPE_CHECKING:
    from .conductor import ConductorDeps

log = logging.getLogger(__name__)


async def fetch_from_origin(
    deps: ConductorDeps,
    task_id: str,
    spec: DownloadSpec,
    digester: InOrderDigest | None,
    report: Callable[[PieceInfo], None] | None,
) -> None:
    """Fetch what the store lacks of ``task_id`` from the origin, telling ``report`` of each piece
    (the conductor reports it to the scheduler; it never raises)."""
    store = deps.store
    meta = store.get(task_id)
    assert meta is not None
    have = set(meta.pieces) if meta.content_length is not None else set()
    chosen_piece_length: list[int] = []

    async def on_start(content_length: int | None, headers: dict[str, str]) -> int:
        piece_length = piece_length_for(content_length or 0, spec.piece_length)
        current = store.get(task_id)
        if current is not None and current.content_length is not None:
            if content_length is not None and content_length != current.content_length:
                raise ProtocolError(
                    f"the origin's content length changed: {current.content_length} -> {content_length}"
                )
            assert current.piece_length is not None
            return current.piece_length
        if content_length is not None:
            store.set_content_length(task_id, content_length, piece_length, headers)
        else:
            store.set_piece_length(task_id, piece_length)
        chosen_piece_length.append(piece_length)
        return piece_length

    # Pieces landing from the origin are served to children as they land (cut-through; the
    # digest, known only at the piece's end, follows the content to children that take it).
    def on_piece_start(number: int, offset: int, length: int) -> Receiving | None:
        if not deps.cut_through:
            return None
        return store.receiving.start(task_id, number, offset, length, "")

    def on_piece(info: PieceInfo) -> None:
        info.traffic_type = TrafficType.BACK_TO_SOURCE
        entry = store.receiving.get(task_id, info.number)
        if entry is not None:
            entry.digest = info.digest  # before it is done: a child's trailer carries it
        try:
            store.finish_piece(task_id, info)
        finally:
            if entry is not None:
                store.receiving.end(entry, ok=store.has_piece(task_id, info.number))
        log.debug("piece %d (%d bytes) from the origin", info.number, info.length)
        if deps.on_piece is not None:
            deps.on_piece(info)
        if report is not None:
            report(info)

    try:
        content_length = await deps.source.fetch_into(
            spec.url,
            dict(spec.request_header),
            fd_factory=lambda: store.open_write_fd(task_id),
            on_start=on_start,
            on_piece=on_piece,
            have=have,
            piece_length=meta.piece_length if have else None,
            on_piece_start=on_piece_start,
            digest=digester,
        )
    finally:
        for entry in store.receiving.of(task_id).values():  # a piece cut off mid-way
            store.receiving.end(entry, ok=False)
    current = store.get(task_id)
    if current is not None and current.content_length is None:
        piece_length = (chosen_piece_length or [piece_length_for(content_length)])[0]
        store.set_content_length(task_id, content_length, piece_length)
