"""Fetching a task's pieces from its parents: the piece loop, its workers, the parents' piece syncs.

Decide, then do: the :class:`~.parents.ParentTable` decides which piece to
fetch from which parent, how many at once, and when a round has stalled; the
:class:`PieceLoop` carries that out. It follows what each parent holds
(SyncPieces), starts one worker per piece (bytes over the piece protocol,
checked by the piece client, served on to our children while they land), and
reports each piece to the scheduler. A worker only classifies how its piece
went; one call to the table after the transfer records it.

Owner: the conductor, one loop per download. The loop owns the SyncPieces
tasks (until :meth:`PieceLoop.stop`) and each round's workers and companion
task (until the round ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from ... import tracing
from ...domain import CandidateParent, PieceInfo, TrafficType
from ...errors import (
    DamselflyError,
    DigestMismatch,
    NotFound,
    PeerError,
    PieceElsewhere,
    ProtocolError,
    ResourceExhausted,
    SchedulerError,
    StorageError,
)
from ...pieces import PieceSpan, piece_count, piece_length_for, piece_span
from ..scheduler_client import PeerStream
from ..store.digesting import InOrderDigest
from ..store.receiving import Receiving
from ..threads import wait_event
from .parents import Complete, Failure, Fetch, Parent, ParentTable, Stalled, Wait
from .picker import get_picker

if TYPE_CHECKING:
    from .conductor import ConductorDeps

log = logging.getLogger(__name__)

# What a piece transfer may raise that says how it went; anything else is a bug and propagates.
FETCH_ERRORS = (
    ResourceExhausted,
    PieceElsewhere,
    DigestMismatch,
    PeerError,
    ProtocolError,
    NotFound,
    OSError,
)


def classify(error: BaseException) -> Failure:
    """The kind of failure the parent table acts on, for one of FETCH_ERRORS."""
    if isinstance(error, ResourceExhausted):
        return Failure.BUSY
    if isinstance(error, PieceElsewhere):
        return Failure.ELSEWHERE
    if isinstance(error, DigestMismatch):
        return Failure.CORRUPT
    if isinstance(error, ProtocolError):
        return Failure.PROTOCOL
    if isinstance(error, NotFound):
        return Failure.NOT_FOUND
    return Failure.ERROR


class PieceLoop:
    """Fills the store with task ``task_id``'s pieces from the parents in ``table``."""

    def __init__(
        self, deps: ConductorDeps, task_id: str, piece_length: int | None, table: ParentTable
    ) -> None:
        self.deps = deps
        self.task_id = task_id
        self.piece_length = piece_length  # the request's, if it set one
        self.table = table
        self._wake = asyncio.Event()
        self._syncs: set[asyncio.Task[None]] = set()
        self._conflict = ""
        self._interrupted = False
        self._stream: PeerStream | None = None
        self._digester: InOrderDigest | None = None
        # parent id -> where its piece server is and whether it speaks Damselfly's extensions,
        # as its SyncPieces answers say
        self._servers: dict[str, tuple[str, int, bool]] = {}
        # The content length the scheduler gave with a parent, in any of its answers.
        self._said_length: int | None = None
        # Our own store failed (disk full, I/O error): the download ends; no parent is blamed.
        self._local_error: StorageError | None = None

    # ------------------------------------------------------------- parents

    def add_parents(self, candidates: Iterable[CandidateParent]) -> None:
        """Take the parents the scheduler offers and follow what each new one holds."""
        candidates = self._note_length(candidates)
        self._follow(self.table.add(candidates))

    def more_parents(self, candidates: Iterable[CandidateParent], *, retire: bool = False) -> None:
        """Like :meth:`add_parents`, for an answer with more parents (``retire``: one the
        scheduler sent unasked, see :meth:`ParentTable.more_parents`)."""
        candidates = self._note_length(candidates)
        self._follow(self.table.more_parents(candidates, retire=retire))
        self._wake.set()

    def _note_length(self, candidates: Iterable[CandidateParent]) -> list[CandidateParent]:
        """Keep the content length the scheduler says with a parent, also of one already
        followed (its record in the table keeps the first candidate, perhaps without it)."""
        candidates = list(candidates)
        if self._said_length is None:
            self._said_length = next(
                (c.content_length for c in candidates if c.content_length is not None), None
            )
        return candidates

    def _follow(self, parents: list[Parent]) -> None:
        loop = asyncio.get_running_loop()
        for p in parents:
            task = loop.create_task(self._sync(p))
            self._syncs.add(task)
            task.add_done_callback(self._syncs.discard)

    def use_stream(self, stream: PeerStream) -> None:
        """Report pieces on ``stream`` from now on (the peer registered again elsewhere)."""
        self._stream = stream

    def interrupt(self) -> None:
        """End the running round at once: the scheduler changed its mind."""
        self._interrupted = True
        self._wake.set()

    def stop(self) -> None:
        """Stop following the parents (the download is over)."""
        for task in list(self._syncs):
            task.cancel()

    async def _sync(self, p: Parent) -> None:
        """Follow what the parent holds (SyncPieces) into the table."""
        error: DamselflyError | None = None
        try:
            wanted = await self._wanted()
            if not wanted:
                return  # nothing to ask for (an empty list would mean "all" to a Damselfly parent)
            host = p.candidate.host
            deps = self.deps
            follow = deps.peer_rpc.sync_pieces(
                host, deps.host_id, self.task_id, wanted, extensions=deps.pool.extensions
            )
            async with contextlib.aclosing(follow):
                async for piece in follow:
                    self._check_span(p, piece.number, piece.offset, piece.length)
                    self._servers[p.id] = (piece.ip, piece.port, piece.extensions)
                    self.table.holds(p, piece.number, whole_pieces=not piece.extensions)
                    self._wake.set()
        except DamselflyError as e:
            error = e
        finally:
            if error is not None:
                log.info("piece sync with parent %s ended: %s", p.id, error)
                self.table.drop(p)
            self.table.sync_ended(p)
            self._wake.set()

    async def _wanted(self) -> list[int]:
        """The pieces to ask a parent for: those not held yet (a Dragonfly parent announces
        only what is asked for). Waits for the content length, which the round learns."""
        store = self.deps.store
        changes = store.changes(self.task_id)
        while True:
            meta = store.get(self.task_id)
            if meta is not None and meta.content_length is not None and meta.piece_length is not None:
                total = piece_count(meta.content_length, meta.piece_length)
                return sorted(set(range(total)) - meta.pieces.keys())
            await changes.wait()

    def _check_span(self, p: Parent, number: int, offset: int, length: int) -> None:
        """A parent's piece that does not fit our idea of the task means the length is wrong."""
        meta = self.deps.store.get(self.task_id)
        if meta is None or meta.content_length is None or meta.piece_length is None:
            return
        try:
            span = piece_span(number, meta.content_length, meta.piece_length)
        except DamselflyError:
            span = None
        if span is None or (span.offset, span.length) != (offset, length):
            self._conflict = (
                f"parent {p.id} holds piece {number} at {offset}+{length}, which does not fit a task of "
                f"{meta.content_length} bytes; refusing to finish with a content length peers disagree on"
            )
            self._wake.set()

    async def _ensure_content_length(self) -> bool:
        """Learn the content length if the store does not know it yet (it does when the origin
        was asked before registering, toward Dragonfly's scheduler).

        What the scheduler said of a parent's task comes first; only without it are the
        parents asked, one after another, until one can say. A parent that cannot (a
        Rust parent answers with its scheduler's view, which may not know either) stays:
        its SyncPieces, which waits for the length, says whether it can serve. False when
        no one could say: the round ends and the scheduler's next answer may.
        """
        meta = self.deps.store.get(self.task_id)
        assert meta is not None
        if meta.content_length is not None:
            return True
        length = self._said_length
        if length is None:
            for p in self.table.live():
                if p.dead:  # dropped while we asked another
                    continue
                length = await self.deps.peer_rpc.stat_task_length(p.candidate.host, self.task_id)
                if length is not None:
                    break
        if length is None:
            log.info("no parent can say the content length yet")
            return False
        self.deps.store.set_content_length(self.task_id, length, piece_length_for(length, self.piece_length))
        return True

    # ------------------------------------------------------------- a round

    async def run(
        self,
        stream: PeerStream,
        digester: InOrderDigest | None,
        beside: Callable[[], Coroutine[Any, Any, None]],
    ) -> bool:
        """Fetch missing pieces from the parents; True when complete, False when stalled or interrupted.

        ``beside`` runs alongside the round (the conductor asking for more
        parents) and is cancelled first when it ends.
        """
        if not await self._ensure_content_length():
            return False
        store = self.deps.store
        meta = store.get(self.task_id)
        assert meta is not None and meta.content_length is not None and meta.piece_length is not None
        total = piece_count(meta.content_length, meta.piece_length)
        self._stream, self._digester = stream, digester
        self._interrupted = False
        self.table.start_round(get_picker(self.deps.picker))
        fd = store.open_write_fd(self.task_id)
        workers: set[asyncio.Task[None]] = set()
        companion = asyncio.get_running_loop().create_task(beside())
        try:
            while True:
                if self._local_error is not None:
                    raise self._local_error
                if self._interrupted:
                    return False
                have = store.get(self.task_id)
                assert have is not None
                if self._conflict:
                    raise ProtocolError(self._conflict)
                missing = set(range(total)) - have.pieces.keys()
                wait = 0.0
                for action in self.table.plan(missing, len(workers)):
                    match action:
                        case Complete():
                            return True
                        case Stalled():
                            return False
                        case Fetch():
                            span = piece_span(action.number, meta.content_length, meta.piece_length)
                            fetcher = self._fetch_traced if tracing.enabled() else self._fetch
                            t = asyncio.get_running_loop().create_task(fetcher(fd, span, action))
                            workers.add(t)
                            t.add_done_callback(workers.discard)
                        case Wait():
                            wait = action.seconds
                self._wake.clear()
                await wait_event(self._wake, wait)  # a cancel meanwhile always ends the loop
        finally:
            companion.cancel()
            for t in workers:
                t.cancel()
            await asyncio.gather(*workers, companion, return_exceptions=True)
            self.table.end_round()
            os.close(fd)

    # ------------------------------------------------------------- a worker

    async def _fetch_traced(self, fd: int, span: PieceSpan, fetch: Fetch) -> None:
        """:meth:`_fetch` in a span (only with tracing on: no span object per piece otherwise)."""
        attributes: dict[str, str | int | bool] = {"piece.number": fetch.number, "parent.id": fetch.parent.id}
        with tracing.span("daemon", "piece.Download", attributes=attributes):
            await self._fetch(fd, span, fetch)

    async def _fetch(self, fd: int, span: PieceSpan, fetch: Fetch) -> None:
        number, p = fetch.number, fetch.parent
        host = p.candidate.host
        ip, port, extensions = self._servers.get(p.id, (host.ip, host.download_port, False))
        store = self.deps.store
        receiving: list[Receiving] = []

        def on_header(digest: str) -> Receiving | None:
            # From here on the piece is served to our children while it lands.
            if not self.deps.cut_through:
                return None
            entry = store.receiving.start(self.task_id, number, span.offset, span.length, digest)
            receiving.append(entry)
            return entry

        info: PieceInfo | None = None
        failure: Failure | None = None
        error: BaseException | None = None
        try:
            info = await self.deps.pool.download_piece(
                ip,
                port,
                self.task_id,
                number,
                fd,
                span.offset,
                span.length,
                timeout=self.deps.piece_timeout,
                on_header=on_header,
                digest=self._digester,
                damselfly=extensions,
            )
        except StorageError as e:  # before FETCH_ERRORS: it is an OSError too
            self._local_error = e
            log.warning("piece %d: %s; the download fails (parent %s is not blamed)", number, e, p.id)
        except FETCH_ERRORS as e:
            failure, error = classify(e), e
        finally:
            if info is None:  # failed or cancelled: children streaming it from us see the failure
                for entry in receiving:
                    store.receiving.end(entry, ok=False)
                if failure is None:  # cancelled, or an error nobody expected (it propagates)
                    self.table.piece_abandoned(fetch)
            self._wake.set()
        if info is None:
            if failure is not None:
                self._failed(fetch, failure, error)
            return
        self.table.piece_done(fetch, info.cost_s)
        info.parent_id = p.id
        info.traffic_type = TrafficType.REMOTE_PEER
        recorded = False
        try:
            store.finish_piece(self.task_id, info)
            recorded = True
        except StorageError as e:
            self._local_error = e
            self._wake.set()
            return
        finally:
            for entry in receiving:
                store.receiving.end(entry, ok=recorded)
        log.debug("piece %d (%d bytes) from %s in %.1f ms", number, info.length, p.id, info.cost_s * 1000)
        if self.deps.on_piece is not None:
            self.deps.on_piece(info)
        if self._stream is not None:
            with contextlib.suppress(SchedulerError):
                self._stream.piece_finished(info)

    def _failed(self, fetch: Fetch, failure: Failure, error: BaseException | None) -> None:
        """Record a failed piece, say why in the log, and tell the scheduler what the table decided."""
        report = self.table.piece_failed(fetch, failure)
        number, pid = fetch.number, fetch.parent.id
        if failure is Failure.BUSY:
            log.debug("piece %d: parent %s busy", number, pid)
        elif failure is Failure.ELSEWHERE:
            log.debug("piece %d: parent %s sent it elsewhere", number, pid)
        elif failure is Failure.CORRUPT:
            log.warning("piece %d from parent %s failed its digest check: %s", number, pid, error)
        else:
            dropping = "" if report is None else "; dropping it"
            log.info("piece %d from parent %s failed (%s)%s", number, pid, error, dropping)
        if report is not None and self._stream is not None:
            with contextlib.suppress(SchedulerError):
                self._stream.piece_failed(report.number, report.parent_id, temporary=report.temporary)
