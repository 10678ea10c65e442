"""One download of one task on this daemon: the :class:`Conductor`.

The conductor registers a peer with the scheduler, follows its answers, and
fills the piece store: from candidate parents (SyncPieces for what they hold,
piece bytes over the piece protocol, several pieces in flight, each verified)
or from the origin. It reports every piece so the scheduler can send other
peers here while the download is still running, asks for a reschedule when
its parents cannot finish, and falls back to the origin when told to.

Owner: :class:`damselfly.daemon.download.tasks.TaskManager`, one conductor per task at a
time. Mutable state: the parents table and in-flight set (this object), the
task's pieces (the :class:`PieceStore`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ... import ids, logs
from ...domain import (
    CandidateParent,
    DownloadSpec,
    EmptyTask,
    NeedBackToSource,
    NormalTask,
    PieceInfo,
    ScheduleAnswer,
    TrafficType,
)
from ...errors import (
    DamselflyError,
    DigestMismatch,
    NoCandidateParents,
    NotFound,
    PeerError,
    PieceElsewhere,
    ProtocolError,
    ResourceExhausted,
    SchedulerError,
)
from ...pieces import Digest, piece_count, piece_length_for, piece_span
from ..scheduler_client import PeerStream, SchedulerClient
from ..store.digesting import InOrderDigest
from ..store.piece_store import PieceStore
from ..store.receiving import Receiving
from ..transfer.peer_rpc import PeerRPC
from .output import verify_content
from .picker import ParentView, PickState, get_picker

log = logging.getLogger(__name__)

# A parent that fails this many pieces in a row is dropped for this download.
PARENT_FAILURE_LIMIT = 3
# Pieces in flight to a lone parent: its upload slots plus its short queue (see
# upload.concurrentPieceCount and piece_server.QUEUE_PER_SLOT), so none is refused.
LONE_PARENT_DEPTH = 4
# How long a piece a super-seed refused is asked of other parents only.
ELSEWHERE_RETRY = 1.0


@dataclass
class ConductorDeps:
    """What a conductor needs from its daemon."""

    store: PieceStore
    pool: Any  # PieceConnectionPool
    source: Any  # HTTPSource
    peer_rpc: PeerRPC
    scheduler: SchedulerClient | None
    host_id: str
    host_ip: str
    hostname: str
    is_seed: bool
    concurrent_piece_count: int = 16
    piece_timeout: float = 30.0
    schedule_timeout: float = 30.0
    picker: str = "rarest-first"
    # Pieces in flight per parent when there are several parents (one parent gets
    # all of concurrent_piece_count): few, so each piece finishes soon and can be
    # passed on, and one slow parent holds few pieces hostage.
    parent_piece_depth: int = 1  # download.parentConcurrentPieceCount
    # Ask the scheduler for more parents this often while fewer than max_parents
    # are live (doubling while nothing new comes back).
    refresh_interval: float = 1.0
    max_parents: int = 8
    # Serve a piece to children while it arrives from a parent (daemon/store/receiving.py).
    cut_through: bool = True
    on_piece: Callable[[PieceInfo], None] | None = None  # metrics
    on_success: Callable[[str], None] | None = None  # given: the owner makes the content durable later


@dataclass
class _Parent:
    candidate: CandidateParent
    view: ParentView
    failures: int = 0
    dead: bool = False
    sync_done: bool = False
    sync_task: asyncio.Task[None] | None = None
    costs: list[float] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.candidate.peer_id


class Conductor:
    """Downloads ``spec`` into the store as task ``task_id``."""

    def __init__(self, deps: ConductorDeps, task_id: str, spec: DownloadSpec) -> None:
        self.deps = deps
        self.task_id = task_id
        self.spec = spec
        self.peer_id = ids.peer_id(deps.host_ip, deps.hostname, seed=deps.is_seed)
        self._parents: dict[str, _Parent] = {}
        self._in_flight: set[int] = set()
        self._wake = asyncio.Event()
        self._stream: PeerStream | None = None
        self._rng = random.Random()
        self.back_to_source = False
        self.verified_digest = ""
        # The whole-content digest, hashed in order as pieces land (when the spec has one).
        self.digester: InOrderDigest | None = None
        self._reported_held = False
        self._conflict = ""
        self._pending_answer: ScheduleAnswer | None = None
        self._stuck_rounds = 0
        self._idle_logged = 0.0
        self.error: BaseException | None = None

    # ------------------------------------------------------------------ entry

    async def run(self) -> None:
        """Download the task; return when the store holds it complete, or raise."""
        logs.bind(task_id=self.task_id, peer_id=self.peer_id)
        store = self.deps.store
        meta = store.get(self.task_id)
        if meta is not None and meta.state == "succeeded" and meta.is_complete:
            return
        store.create_task(
            self.task_id, url=self.spec.url, tag=self.spec.tag, application=self.spec.application
        )
        store.mark_running(self.task_id)
        try:
            if self.spec.digest:
                self.digester = InOrderDigest(store, self.task_id, Digest.parse(self.spec.digest))
            await self._run()
        except BaseException as e:
            self.error = e
            if isinstance(e, DigestMismatch) and self.verified_digest == "":
                # Every piece passed its crc32 yet the whole is wrong: none of it is kept.
                with contextlib.suppress(DamselflyError, OSError):
                    store.delete_task(self.task_id)
            else:
                store.mark_failed(self.task_id, str(e))
            raise
        finally:
            if self.digester is not None:
                await self.digester.close()
        # The content is flushed to disk later (on_success -> make_durable), off the
        # requester's critical path; a crash before that costs a crc32 re-check.
        await asyncio.to_thread(store.mark_succeeded, self.task_id, durable=self.deps.on_success is None)
        if self.deps.on_success is not None:
            self.deps.on_success(self.task_id)
        log.info("download finished (%s)", "origin" if self.back_to_source else "peers")

    async def _run(self) -> None:
        if self.deps.scheduler is None:
            await self._origin_only("no scheduler configured")
            return
        self._stream = self.deps.scheduler.peer_stream(self.deps.host_id, self.task_id, self.peer_id)
        try:
            try:
                self._stream.register(self.spec)
                answer = await self._stream.next_answer(self.deps.schedule_timeout)
            except SchedulerError as e:
                log.warning("scheduler unavailable (%s)", e)
                await self._origin_only(f"scheduler unavailable: {e}")
                return
            await self._follow(answer)
        finally:
            with contextlib.suppress(Exception):
                await self._stream.close()
            self._stop_syncs()

    async def _origin_only(self, why: str) -> None:
        if self.spec.disable_back_to_source:
            raise NoCandidateParents(f"{why}, and back-to-source is disabled")
        await self._fetch_from_origin(None)
        await self._verify()

    # ---------------------------------------------------------- the dialogue

    async def _follow(self, answer: ScheduleAnswer) -> None:
        stream = self._stream
        assert stream is not None
        started = False
        while True:
            if isinstance(answer, EmptyTask):
                self.deps.store.set_content_length(
                    self.task_id, 0, piece_length_for(0, self.spec.piece_length)
                )
                await self._verify()
                stream.finished()
                return
            if isinstance(answer, NeedBackToSource):
                if self.spec.disable_back_to_source:
                    stream.failed("back-to-source disabled")
                    raise NoCandidateParents(
                        f"no peer can serve this task ({answer.description or 'no parent'}), "
                        "and back-to-source is disabled"
                    )
                log.info("going back to source: %s", answer.description)
                stream.back_to_source_started(answer.description)
                self._report_held(stream, back_to_source=True)
                try:
                    await self._fetch_from_origin(stream)
                    await self._verify()
                except BaseException as e:
                    with contextlib.suppress(Exception):
                        stream.back_to_source_failed(str(e))
                    raise
                stream.back_to_source_finished()
                return
            assert isinstance(answer, NormalTask)
            if not started:
                stream.started()
                self._report_held(stream, back_to_source=False)
                started = True
            for c in answer.parents:
                self._add_parent(c)
            done = await self._from_parents()
            if done:
                try:
                    await self._verify()
                except DigestMismatch as e:
                    stream.failed(str(e))
                    raise
                stream.finished()
                return
            if self._pending_answer is not None:  # the scheduler changed its mind during a refresh
                answer, self._pending_answer = self._pending_answer, None
                continue
            failed = [p.id for p in self._parents.values() if p.dead]
            if not failed and self._stuck_rounds >= 2:
                # Asked twice for more and still stuck: these parents cannot finish it.
                failed = [p.id for p in self._parents.values()]
            self._stuck_rounds += 1
            log.info("parents cannot finish the task; rescheduling (failed: %s)", failed)
            stream.reschedule(failed, "parents cannot finish the task")
            try:
                answer = await stream.next_answer(self.deps.schedule_timeout)
            except SchedulerError as e:
                await self._origin_only(f"scheduler lost during reschedule: {e}")
                return

    async def _verify(self) -> None:
        """Check content addressed by digest (a registry blob, dfget --digest) before it counts.

        Runs before the scheduler hears "finished", so a blob that does not match
        its digest is never recorded as good: not here, and not for the peers
        this host would serve.
        """
        if self.spec.digest:
            if self.digester is not None:
                await self.digester.check("downloaded content")
                log.debug(
                    "digest checked: %d of %d bytes hashed as they arrived",
                    self.digester.fed,
                    self.digester.upto,
                )
            else:
                path = self.deps.store.content_path(self.task_id)
                await asyncio.to_thread(verify_content, path, self.spec.digest)
            self.verified_digest = self.spec.digest

    def _report_held(self, stream: PeerStream, *, back_to_source: bool) -> None:
        """Report pieces already in the store (a resumed download), so the scheduler sees them all."""
        meta = self.deps.store.get(self.task_id)
        if meta is None or not meta.pieces or self._reported_held:
            return
        self._reported_held = True
        for piece in sorted(meta.pieces.values(), key=lambda p: p.number):
            if back_to_source:
                stream.piece_back_to_source_finished(piece)
            else:
                stream.piece_finished(piece)

    # ---------------------------------------------------------- from parents

    def _add_parent(self, c: CandidateParent) -> None:
        existing = self._parents.get(c.peer_id)
        if existing is not None and not existing.dead:
            return
        p = _Parent(candidate=c, view=ParentView(pieces=set(), max_in_flight=self.deps.parent_piece_depth))
        self._parents[c.peer_id] = p
        p.sync_task = asyncio.get_running_loop().create_task(self._sync(p))

    def _set_depths(self, live: dict[str, ParentView]) -> None:
        """A lone parent gets LONE_PARENT_DEPTH pieces (its upload slots and short queue
        take that many without refusals); several parents share the workers, a few each."""
        depth = (
            LONE_PARENT_DEPTH
            if len(live) <= 1
            else max(self.deps.parent_piece_depth, self.deps.concurrent_piece_count // (2 * len(live)))
        )
        for view in live.values():
            view.max_in_flight = depth

    async def _refresh_parents(self) -> None:
        """Ask for more parents now and then: peers that started with us hold pieces by now."""
        stream = self._stream
        if stream is None:
            return
        interval = self.deps.refresh_interval
        while True:
            await asyncio.sleep(interval * (0.75 + 0.5 * self._rng.random()))
            live = sum(1 for p in self._parents.values() if not p.dead)
            if live >= self.deps.max_parents:
                continue
            stream.reschedule([], "more parents")
            try:
                answer = await stream.next_answer(self.deps.schedule_timeout)
            except SchedulerError:
                return
            if not isinstance(answer, NormalTask):
                self._pending_answer = answer
                self._wake.set()
                return
            known = set(self._parents)
            for c in answer.parents:
                self._add_parent(c)
            grew = bool(set(self._parents) - known)
            interval = (
                self.deps.refresh_interval if grew else min(interval * 2, 16 * self.deps.refresh_interval)
            )
            self._wake.set()

    def _stop_syncs(self) -> None:
        for p in self._parents.values():
            if p.sync_task is not None and not p.sync_task.done():
                p.sync_task.cancel()

    async def _ensure_content_length(self) -> bool:
        meta = self.deps.store.get(self.task_id)
        assert meta is not None
        if meta.content_length is not None:
            return True
        for p in list(self._parents.values()):
            if p.dead:
                continue
            length = p.candidate.content_length
            if length is None:
                try:
                    length = await self.deps.peer_rpc.stat_task_length(p.candidate.host, self.task_id)
                except (PeerError, NotFound) as e:
                    log.info("parent %s cannot say the content length: %s", p.id, e)
                    self._drop(p)
                    continue
            self.deps.store.set_content_length(
                self.task_id, length, piece_length_for(length, self.spec.piece_length)
            )
            return True
        return False

    async def _sync(self, p: _Parent) -> None:
        """Follow what the parent holds (SyncPieces) into ``p.view.pieces``."""
        try:
            async for number, offset, length in self.deps.peer_rpc.sync_pieces(
                p.candidate.host, self.deps.host_id, self.task_id
            ):
                self._check_span(p, number, offset, length)
                p.view.pieces.add(number)
                self._wake.set()
        except asyncio.CancelledError:
            raise
        except DamselflyError as e:
            log.info("piece sync with parent %s ended: %s", p.id, e)
            self._drop(p)
        finally:
            p.sync_done = True
            self._wake.set()

    def _check_span(self, p: _Parent, number: int, offset: int, length: int) -> None:
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

    def _drop(self, p: _Parent) -> None:
        p.dead = True
        p.view.max_in_flight = 0
        self._wake.set()

    async def _from_parents(self) -> bool:
        """Fetch missing pieces from the parents; True when complete, False when stuck."""
        store = self.deps.store
        if not await self._ensure_content_length():
            return False
        meta = store.get(self.task_id)
        assert meta is not None and meta.content_length is not None and meta.piece_length is not None
        total = piece_count(meta.content_length, meta.piece_length)
        picker = get_picker(self.deps.picker)
        fd = store.open_write_fd(self.task_id)
        workers: set[asyncio.Task[None]] = set()
        last_progress = time.monotonic()
        refresher = asyncio.get_running_loop().create_task(self._refresh_parents())
        try:
            while True:
                if self._pending_answer is not None:
                    return False
                have = store.get(self.task_id)
                assert have is not None
                if self._conflict:
                    raise ProtocolError(self._conflict)
                missing = set(range(total)) - have.pieces.keys()
                if not missing:
                    return True
                live = {pid: p.view for pid, p in self._parents.items() if not p.dead}
                self._set_depths(live)
                clock = time.monotonic()
                while len(workers) < self.deps.concurrent_piece_count:
                    pick = picker(PickState(missing, self._in_flight, live, self._rng, clock))
                    if pick is None:
                        if log.isEnabledFor(logging.DEBUG) and clock - self._idle_logged > 0.5:
                            self._idle_logged = clock
                            log.debug(
                                "no pick: %d in flight, %d missing; parents (useful, in flight/max, wait) %s",
                                len(workers), len(missing),
                                " ".join(
                                    f"{pid.split('-')[2]}:{len((v.pieces & missing) - self._in_flight)},"
                                    f"{v.in_flight}/{v.max_in_flight},{max(0.0, v.ready_at - clock):.2f}"
                                    for pid, v in live.items()
                                ),
                            )  # fmt: skip
                        break
                    number, pid = pick
                    self._in_flight.add(number)
                    self._parents[pid].view.in_flight += 1
                    t = asyncio.get_running_loop().create_task(
                        self._fetch_piece(
                            fd, meta.content_length, meta.piece_length, number, self._parents[pid]
                        )
                    )
                    workers.add(t)
                    t.add_done_callback(workers.discard)
                if not workers:
                    stuck = all(p.dead or p.sync_done for p in self._parents.values())
                    if stuck or time.monotonic() - last_progress > self.deps.piece_timeout:
                        return False
                elif time.monotonic() - last_progress > 2 * self.deps.piece_timeout:
                    # Workers time out on their own; this is the backstop if one never returns.
                    log.warning(
                        "no piece for %.0fs with %d in flight (%s missing, parents %s); rescheduling",
                        time.monotonic() - last_progress,
                        len(workers),
                        len(missing),
                        {pid: (len(v.pieces), v.in_flight) for pid, v in live.items()},
                    )
                    return False
                self._wake.clear()
                before = len(have.pieces)
                wait = 1.0
                for view in live.values():
                    if view.ready_at > clock:
                        wait = min(wait, view.ready_at - clock)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(wait, 0.01))
                now = store.get(self.task_id)
                if now is not None and len(now.pieces) != before:
                    last_progress = time.monotonic()
        finally:
            refresher.cancel()
            for t in [*workers, refresher]:
                t.cancel()
            await asyncio.gather(*workers, refresher, return_exceptions=True)
            os.close(fd)

    async def _fetch_piece(
        self, fd: int, content_length: int, piece_length: int, number: int, p: _Parent
    ) -> None:
        span = piece_span(number, content_length, piece_length)
        host = p.candidate.host
        receiving: list[Receiving] = []

        def on_header(digest: str) -> Receiving | None:
            # From here on the piece is served to our children while it lands.
            if not self.deps.cut_through:
                return None
            entry = self.deps.store.receiving.start(self.task_id, number, span.offset, span.length, digest)
            receiving.append(entry)
            return entry

        recorded = got = False
        try:
            info = await self.deps.pool.download_piece(
                host.ip,
                host.download_port,
                self.task_id,
                number,
                fd,
                span.offset,
                span.length,
                timeout=self.deps.piece_timeout,
                on_header=on_header,
                digest=self.digester,
            )
            got = True
        except ResourceExhausted:
            # The parent's upload slots are full: not a failure; leave it alone briefly.
            p.view.ready_at = time.monotonic() + self._rng.uniform(0.05, 0.25)
            log.debug("piece %d: parent %s busy", number, p.id)
            return
        except PieceElsewhere:
            # A super-seed gave this piece to another peer: get it from the peers.
            p.view.skip[number] = time.monotonic() + ELSEWHERE_RETRY
            log.debug("piece %d: parent %s sent it elsewhere", number, p.id)
            return
        except DigestMismatch as e:
            log.warning("piece %d from parent %s failed its digest check: %s", number, p.id, e)
            self._drop(p)
            await self._report_failed(number, p.id, temporary=False)
            return
        except (PeerError, ProtocolError, NotFound, OSError) as e:
            p.failures += 1
            temporary = p.failures < PARENT_FAILURE_LIMIT and not isinstance(e, ProtocolError)
            log.info(
                "piece %d from parent %s failed (%s)%s", number, p.id, e, "" if temporary else "; dropping it"
            )
            if isinstance(e, NotFound):
                p.view.pieces.discard(number)
            if not temporary:
                self._drop(p)
            await self._report_failed(number, p.id, temporary=temporary)
            return
        finally:
            self._in_flight.discard(number)
            p.view.in_flight -= 1
            self._wake.set()
            if not got:  # failed or cancelled: children streaming it from us see the failure
                for entry in receiving:
                    self.deps.store.receiving.end(entry, ok=False)
        p.failures = 0
        p.costs.append(info.cost_s)
        p.view.mean_cost_s = sum(p.costs[-16:]) / len(p.costs[-16:])
        info.parent_id = p.id
        info.traffic_type = TrafficType.REMOTE_PEER
        try:
            self.deps.store.finish_piece(self.task_id, info)
            recorded = True
        finally:
            for entry in receiving:
                self.deps.store.receiving.end(entry, ok=recorded)
        log.debug("piece %d (%d bytes) from %s in %.1f ms", number, info.length, p.id, info.cost_s * 1000)
        if self.deps.on_piece is not None:
            self.deps.on_piece(info)
        if self._stream is not None:
            with contextlib.suppress(SchedulerError):
                self._stream.piece_finished(info)

    async def _report_failed(self, number: int, parent_id: str, *, temporary: bool) -> None:
        if self._stream is not None:
            with contextlib.suppress(SchedulerError):
                self._stream.piece_failed(number, parent_id, temporary=temporary)

    # ---------------------------------------------------------- from origin

    async def _fetch_from_origin(self, stream: PeerStream | None) -> None:
        """Fetch what the store lacks from the origin, reporting each piece."""
        self.back_to_source = True
        store = self.deps.store
        meta = store.get(self.task_id)
        assert meta is not None
        have = set(meta.pieces) if meta.content_length is not None else set()
        chosen_piece_length: list[int] = []

        async def on_start(content_length: int | None, headers: dict[str, str]) -> int:
            piece_length = piece_length_for(content_length or 0, self.spec.piece_length)
            current = store.get(self.task_id)
            if current is not None and current.content_length is not None:
                if content_length is not None and content_length != current.content_length:
                    raise ProtocolError(
                        f"the origin's content length changed: {current.content_length} -> {content_length}"
                    )
                assert current.piece_length is not None
                return current.piece_length
            if content_length is not None:
                store.set_content_length(self.task_id, content_length, piece_length, headers)
            else:
                store.set_piece_length(self.task_id, piece_length)
            chosen_piece_length.append(piece_length)
            return piece_length

        # Pieces landing from the origin are served to children as they land (cut-through; the
        # digest, known only at the piece's end, follows the content to children that take it).
        def on_piece_start(number: int, offset: int, length: int) -> Receiving | None:
            if not self.deps.cut_through:
                return None
            return store.receiving.start(self.task_id, number, offset, length, "")

        def on_piece(info: PieceInfo) -> None:
            info.traffic_type = TrafficType.BACK_TO_SOURCE
            entry = store.receiving.get(self.task_id, info.number)
            if entry is not None:
                entry.digest = info.digest  # before it is done: a child's trailer carries it
            try:
                store.finish_piece(self.task_id, info)
            finally:
                if entry is not None:
                    store.receiving.end(entry, ok=store.has_piece(self.task_id, info.number))
            log.debug("piece %d (%d bytes) from the origin", info.number, info.length)
            if self.deps.on_piece is not None:
                self.deps.on_piece(info)
            if stream is not None:
                with contextlib.suppress(SchedulerError):
                    stream.piece_back_to_source_finished(info)

        try:
            content_length = await self.deps.source.fetch_into(
                self.spec.url,
                dict(self.spec.request_header),
                fd_factory=lambda: store.open_write_fd(self.task_id),
                on_start=on_start,
                on_piece=on_piece,
                have=have,
                piece_length=meta.piece_length if have else None,
                on_piece_start=on_piece_start,
                digest=self.digester,
            )
        finally:
            for entry in store.receiving.of(self.task_id).values():  # a piece cut off mid-way
                store.receiving.end(entry, ok=False)
        current = store.get(self.task_id)
        if current is not None and current.content_length is None:
            piece_length = (chosen_piece_length or [piece_length_for(content_length)])[0]
            store.set_content_length(self.task_id, content_length, piece_length)
