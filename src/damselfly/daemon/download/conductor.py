"""One download of one task on this daemon: the :class:`Conductor`, the scheduler dialogue.

The conductor registers a peer with the scheduler, follows its answers, and
has the piece store filled: from candidate parents (:mod:`.piece_loop`, with
:mod:`.parents` deciding what to ask of whom) or from the origin
(:mod:`.back_to_source`). Pieces are reported as they land so the scheduler can
send other peers here while the download is still running; when the parents
cannot finish, the conductor asks for a reschedule, naming the parents that
failed; it asks for more parents now and then while a round runs, and falls
back to the origin when told to.

A scheduler may die or restart under a download (docs/PROTOCOL.md, "Several
schedulers, and losing one"). Bytes that are arriving keep arriving: the parents and the origin do
not need the scheduler. A keeper beside the transfer waits for the stream to
break, then registers the peer again with the task's scheduler on the ring
(the same one once it answers again, or the next one) and tells it what this
peer does and holds (Started or BackToSourceStarted, every piece it has), and
takes the parents it offers. Where the download cannot go on without an
answer (the first one, or a reschedule), it waits ``wait_for_scheduler`` for
a scheduler before it goes to the origin. The end is reported as usual; if the
stream is gone by then, the download still succeeds and the daemon registers
the task again (``on_unreported``).

Toward a scheduler that does not speak Damselfly's extensions (Dragonfly's Go
scheduler, or any with ``wire.extensions`` off) the conductor talks as
Dragonfly's Rust client does (docs/INTEROP.md §3.4-3.5): it learns the content
length from the origin before it registers (one extra origin round trip per
download), so the register carries the ``actual_*`` sizes the Go scheduler
sizes a new task from, and it never asks for "more parents" (an empty
reschedule is a whole new scheduling round there, which can end in
back-to-source while the parents still serve).

Owner: :class:`damselfly.daemon.download.tasks.TaskManager`, one conductor per task at a
time. Mutable state: the dialogue's (this object), the parent table
(:class:`~.parents.ParentTable`, changed by the piece loop and this object's
requests for more parents), the task's pieces (the :class:`PieceStore`).

Long because: the dialogue, and what it does when the scheduler is lost mid-way, are one
state machine; the piece loop, the parent table and the origin fetch already live apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass

from ... import ids, logs
from ...domain import (
    DownloadSpec,
    EmptyTask,
    MetadataOnly,
    NeedBackToSource,
    NormalTask,
    PieceInfo,
    ScheduleAnswer,
)
from ...errors import (
    DamselflyError,
    DigestMismatch,
    NoCandidateParents,
    NotFound,
    SchedulerError,
    StorageError,
)
from ...pieces import MIN_PIECE_LENGTH, Digest, piece_length_for
from ..origin.source import HTTPSource
from ..scheduler_client import PeerStream
from ..scheduler_fleet import SchedulerFleet
from ..store.digesting import InOrderDigest
from ..store.piece_store import PieceStore
from ..transfer.peer_rpc import PeerRPC
from ..transfer.piece_client import PieceConnectionPool
from .back_to_source import fetch_from_origin
from .output import verify_content
from .parents import ParentTable
from .piece_loop import PieceLoop

log = logging.getLogger(__name__)


@dataclass
class ConductorDeps:
    """What a conductor needs from its daemon."""

    store: PieceStore
    pool: PieceConnectionPool
    source: HTTPSource
    peer_rpc: PeerRPC
    scheduler: SchedulerFleet | None
    host_id: str
    host_ip: str
    hostname: str
    is_seed: bool
    concurrent_piece_count: int = 16
    piece_timeout: float = 30.0
    schedule_timeout: float = 30.0
    # Schedule answers (the first and each "parents cannot finish" reschedule's) a download
    # takes before it stops asking and fetches the rest from the origin (Dragonfly's client:
    # scheduler.maxScheduleCount, 5).
    max_schedule_count: int = 5
    # How long a download that needs an answer waits for a scheduler (all down, or one
    # restarting) before it goes to the origin (scheduler.waitForScheduler).
    wait_for_scheduler: float = 10.0
    picker: str = "rarest-first"
    # Pieces in flight per parent when there are several parents (one parent gets
    # all of concurrent_piece_count): few, so each piece finishes soon and can be
    # passed on, and one slow parent holds few pieces hostage.
    parent_piece_depth: int = 1  # download.parentConcurrentPieceCount
    # Ask the scheduler for more parents this often while fewer than max_parents
    # are live (doubling while nothing new comes back).
    refresh_interval: float = 1.0
    max_parents: int = 8
    # Speaking Dragonfly's wire (no Damselfly extensions on the scheduler link), content of at
    # most this many bytes comes from the origin without the scheduler, as in Dragonfly's
    # client (C:dragonfly-client/src/resource/task.rs:512-535: MIN_PIECE_LENGTH).
    direct_max: int = MIN_PIECE_LENGTH
    # Serve a piece to children while it arrives from a parent (daemon/store/receiving.py).
    cut_through: bool = True
    on_piece: Callable[[PieceInfo], None] | None = None  # metrics
    on_success: Callable[[str], None] | None = None  # given: the owner makes the content durable later
    # A download that succeeded but whose end the scheduler may not have heard (its stream broke).
    on_unreported: Callable[[str], None] | None = None
    # A download whose end scheduler ``addr`` heard: (task ID, addr).
    on_reported: Callable[[str, str], None] | None = None


class _OneSmallPiece(Exception):
    """The content is too small to go through the scheduler (ConductorDeps.direct_max)."""


class Conductor:
    """Downloads ``spec`` into the store as task ``task_id``."""

    def __init__(self, deps: ConductorDeps, task_id: str, spec: DownloadSpec) -> None:
        self.deps = deps
        self.task_id = task_id
        self.spec = spec
        self.peer_id = ids.peer_id(deps.host_ip, deps.hostname, seed=deps.is_seed)
        self._parents = ParentTable(
            concurrent_piece_count=deps.concurrent_piece_count,
            parent_piece_depth=deps.parent_piece_depth,
            piece_timeout=deps.piece_timeout,
            refresh_interval=deps.refresh_interval,
            max_parents=deps.max_parents,
        )
        self._pieces = PieceLoop(deps, task_id, spec.piece_length, self._parents)
        self._stream: PeerStream | None = None
        self.back_to_source = False
        self.verified_digest = ""
        # The whole-content digest, hashed in order as pieces land (when the spec has one).
        self.digester: InOrderDigest | None = None
        # The stream on which this peer's Started (or BackToSourceStarted) and held pieces were told.
        self._told: tuple[PeerStream, bool] | None = None
        self._pending_answer: ScheduleAnswer | None = None
        self._reopening = False  # the keeper is registering again: the refresh loop holds off
        self._unreported = False  # the end was not heard: the daemon registers the task again
        # Whether the scheduler speaks Damselfly's extensions (asked before registering).
        self._extensions = True
        self.error: BaseException | None = None

    # ------------------------------------------------------------------ entry

    async def run(self) -> None:
        """Download the task; return when the store holds it complete, or raise."""
        logs.bind(task_id=self.task_id, peer_id=self.peer_id)
        store = self.deps.store
        meta = store.get(self.task_id)
        if meta is not None and meta.state == "succeeded" and meta.is_complete:
            try:
                store.check_unchanged(self.task_id)
            except NotFound:
                pass  # its content was edited in place (through an output link): fetched again
            else:
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
            if (isinstance(e, DigestMismatch) and self.verified_digest == "") or isinstance(e, StorageError):
                # Every piece passed its crc32 yet the whole is wrong: none of it is kept. Our
                # own disk failed (full, I/O error): the partial task is freed at once.
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
        if self._unreported and self.deps.on_unreported is not None:
            self.deps.on_unreported(self.task_id)
        log.info("download finished (%s)", "origin" if self.back_to_source else "peers")

    async def _run(self) -> None:
        if self.deps.scheduler is None:
            await self._origin_only("no scheduler configured")
            return
        try:
            try:
                answer = await self._open(self.deps.wait_for_scheduler)
            except _OneSmallPiece as e:
                await self._origin_only(f"{e} bytes: from the origin without the scheduler")
                return
            except SchedulerError as e:
                log.warning("scheduler unavailable (%s)", e)
                await self._origin_only(f"scheduler unavailable: {e}")
                return
            try:
                await self._follow(answer)
            except StorageError as e:
                # Our own disk: this peer failed, no parent did (none was reported), and the
                # origin would not do better.
                if self._stream is not None:
                    with contextlib.suppress(Exception):
                        self._stream.failed(f"local storage error: {e}")
                raise
        finally:
            if self._stream is not None:
                with contextlib.suppress(Exception):
                    await self._stream.close()
            self._stop_syncs()

    async def _open(self, wait: float | None) -> ScheduleAnswer:
        """Register with the task's scheduler (waiting at most ``wait`` for one); its answer."""
        answer = await self._reopen(wait)
        assert answer is not None
        return answer

    async def _reopen(self, wait: float | None, *, answer: bool = True) -> ScheduleAnswer | None:
        """Register this peer (again) with the task's scheduler and return its answer.

        Waits at most ``wait`` seconds (None: as long as it takes) for a scheduler
        that is ready, and tries again while streams break; raises
        :class:`SchedulerError` when the time is up. ``answer`` false: return once the
        register is queued (a transfer under way needs no answer to go on).
        """
        assert self.deps.scheduler is not None
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            link = await self.deps.scheduler.link_for(self.task_id, left)
            self._extensions = await link.speaks_extensions()
            # Toward Dragonfly's scheduler the size goes in the register; an origin that cannot
            # say it fails the download, as it does in Dragonfly's client (task.rs:153-304).
            size = None if self._extensions else await self._content_size()
            first = answer and self._stream is None and not self.spec.disable_back_to_source
            if first and size is not None and size[0] <= self.deps.direct_max:
                raise _OneSmallPiece(size[0])
            old, self._stream = self._stream, link.peer_stream(self.deps.host_id, self.task_id, self.peer_id)
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.close()
            self._pieces.use_stream(self._stream)
            if size is None:
                self._stream.register(self.spec)
            else:
                self._stream.register(self.spec, content_length=size[0], piece_length=size[1])
            if not answer:
                return None
            try:
                return await self._stream.next_answer(self.deps.schedule_timeout)
            except SchedulerError as e:
                if not self._stream.lost.is_set() or (deadline is not None and time.monotonic() >= deadline):
                    raise
                log.info("scheduler %s lost while registering (%s); trying again", self._stream.addr, e)
                await asyncio.sleep(0.2)

    def _say(self, what: Callable[[PeerStream], None]) -> None:
        """Tell the scheduler something; a broken stream loses it (the keeper registers again)."""
        if self._stream is not None:
            with contextlib.suppress(SchedulerError):
                what(self._stream)

    async def _report_end(self, what: Callable[[PeerStream], None]) -> None:
        """Report the download's end and wait until it is written; if the stream is gone, the
        download still counts and the daemon registers the task again once it succeeded."""
        stream = self._stream
        assert stream is not None
        try:
            what(stream)
            await stream.flush(timeout=5)
            if self.deps.on_reported is not None:
                self.deps.on_reported(self.task_id, stream.addr)
        except SchedulerError as e:
            log.warning("the scheduler may not have heard this download end (%s); registering it again", e)
            self._unreported = True

    def _tell(self, *, back_to_source: bool, description: str = "") -> None:
        """Started (or BackToSourceStarted) once per stream and way of fetching; on a new
        stream, every piece already held too."""
        stream = self._stream
        if stream is None or self._told == (stream, back_to_source):
            return
        new_stream = self._told is None or self._told[0] is not stream
        self._told = (stream, back_to_source)
        with contextlib.suppress(SchedulerError):
            if back_to_source:
                stream.back_to_source_started(description)
            else:
                stream.started()
            if new_stream:
                self._report_held(stream, back_to_source=back_to_source)

    async def _keep_stream(self, *, back_to_source: bool) -> None:
        """Beside a transfer: when the stream breaks, register again and tell what we hold;
        the parents a scheduler then offers join the round."""
        while True:
            stream = self._stream
            assert stream is not None
            await stream.lost.wait()
            log.info("stream to scheduler %s broke; the transfer goes on, registering again", stream.addr)
            self._reopening = True
            answer: ScheduleAnswer | None = None
            try:
                await self._reopen(None, answer=False)
                # What this peer does and holds goes out at once: after a restart it may be the
                # holder other peers are waiting for, before the scheduler has an answer for it.
                self._tell(back_to_source=back_to_source, description="registered again")
                fresh = self._stream
                if not back_to_source and fresh is not None:
                    answer = await fresh.next_answer(self.deps.schedule_timeout)
            except SchedulerError as e:  # no answer in time: the parents we have go on
                log.info("no answer from the scheduler after registering again: %s", e)
            finally:
                self._reopening = False
            if isinstance(answer, NormalTask):
                self._pieces.more_parents(answer.parents)
            elif answer is not None and not back_to_source:
                self._pending_answer = answer
                self._pieces.interrupt()
                return
            await asyncio.sleep(0.5)  # a scheduler that ends every stream at once is not hammered

    async def _content_size(self) -> tuple[int, int]:
        """The content length and piece length, from the store if it knows them (a resumed
        download), else from the origin, whose answer sizes the store now."""
        store = self.deps.store
        meta = store.get(self.task_id)
        if meta is not None and meta.content_length is not None and meta.piece_length is not None:
            return meta.content_length, meta.piece_length
        size = await self.deps.source.stat(self.spec.url, dict(self.spec.request_header))
        piece_length = piece_length_for(size.content_length, self.spec.piece_length)
        store.set_content_length(self.task_id, size.content_length, piece_length, size.headers)
        return size.content_length, piece_length

    async def _origin_only(self, why: str) -> None:
        if self.spec.disable_back_to_source:
            raise NoCandidateParents(f"{why}, and back-to-source is disabled")
        await self._fetch_from_origin(report=False)
        await self._verify()

    # ---------------------------------------------------------- the dialogue

    async def _follow(self, answer: ScheduleAnswer) -> None:
        reschedules = 0  # answers to "parents cannot finish" (not to "more parents")
        while True:
            if isinstance(answer, MetadataOnly):
                # Only a metadata-only register is answered so; Dragonfly's client fails
                # on it too (task.rs:1080-1085). The scheduler is of no use here.
                self._say(lambda s: s.failed("unexpected MetadataOnlyResponse to a download"))
                await self._origin_only("the scheduler answered a download as a metadata-only report")
                return
            if isinstance(answer, EmptyTask):
                known = self.deps.store.get(self.task_id)
                if known is not None and known.content_length:
                    # Dragonfly's scheduler keeps the size a task was first registered with
                    # (service_v2.go:1839-1890); the origin says otherwise: trust the origin.
                    answer = NeedBackToSource(
                        f"the scheduler holds the task as empty; the origin has {known.content_length} bytes"
                    )
                    continue
                self.deps.store.set_content_length(
                    self.task_id, 0, piece_length_for(0, self.spec.piece_length)
                )
                await self._verify()
                await self._report_end(lambda s: s.finished())
                return
            if isinstance(answer, NeedBackToSource):
                if self.spec.disable_back_to_source:
                    self._say(lambda s: s.failed("back-to-source disabled"))
                    raise NoCandidateParents(
                        f"no peer can serve this task ({answer.description or 'no parent'}), "
                        "and back-to-source is disabled"
                    )
                log.info("going back to source: %s", answer.description)
                self._tell(back_to_source=True, description=answer.description)
                keeper = asyncio.get_running_loop().create_task(self._keep_stream(back_to_source=True))
                try:
                    await self._fetch_from_origin(report=True)
                    await self._verify()
                except BaseException as e:
                    self._say(operator.methodcaller("back_to_source_failed", str(e)))
                    raise
                finally:
                    keeper.cancel()
                    await asyncio.gather(keeper, return_exceptions=True)
                await self._report_end(lambda s: s.back_to_source_finished())
                return
            assert isinstance(answer, NormalTask)
            self._tell(back_to_source=False)
            self._pieces.add_parents(answer.parents)
            done = await self._from_parents()
            if done:
                try:
                    await self._verify()
                except DigestMismatch as e:
                    self._say(operator.methodcaller("failed", str(e)))
                    raise
                await self._report_end(lambda s: s.finished())
                return
            if self._pending_answer is not None:  # the scheduler changed its mind during a refresh
                answer, self._pending_answer = self._pending_answer, None
                continue
            reschedules += 1
            if reschedules >= self.deps.max_schedule_count:
                # As Dragonfly's client: the scheduler's answers did not get the task done;
                # stop asking, tell it so, and fetch what is missing from the origin.
                log.info("rescheduled %d times without finishing; going to the origin", reschedules)
                self._say(lambda s: s.failed("max schedule count exceeded"))
                await self._origin_only(f"max schedule count ({self.deps.max_schedule_count}) exceeded")
                return
            failed = [self._parents.parents[pid].candidate for pid in self._parents.reschedule()]
            log.info("parents cannot finish the task; rescheduling (failed: %s)", [p.peer_id for p in failed])
            self._say(operator.methodcaller("reschedule", failed, "parents cannot finish the task"))
            stream = self._stream
            assert stream is not None
            try:
                answer = await stream.next_answer(self.deps.schedule_timeout)
            except SchedulerError as e:
                if not stream.lost.is_set():
                    await self._origin_only(f"scheduler lost during reschedule: {e}")
                    return
                try:  # the scheduler went away: its successor (or itself, back) answers instead
                    answer = await self._open(self.deps.wait_for_scheduler)
                except SchedulerError as e2:
                    await self._origin_only(f"scheduler lost during reschedule: {e2}")
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
        """Report the pieces in the store (a resumed download's, or what this one brought before
        its stream broke), so the scheduler of this stream sees them all."""
        meta = self.deps.store.get(self.task_id)
        if meta is None:
            return
        for piece in sorted(meta.pieces.values(), key=lambda p: p.number):
            if back_to_source:
                stream.piece_back_to_source_finished(piece)
            else:
                stream.piece_finished(piece)

    # ---------------------------------------------------------- from parents

    async def _from_parents(self) -> bool:
        """One round of fetching from the parents: True when complete, False when stalled."""
        assert self._stream is not None
        return await self._pieces.run(self._stream, self.digester, beside=self._beside_round)

    async def _beside_round(self) -> None:
        await asyncio.gather(self._refresh_parents(), self._keep_stream(back_to_source=False))

    async def _refresh_parents(self) -> None:
        """Ask for more parents now and then: peers that started with us hold pieces by now;
        and take what the scheduler says unasked in between (it sends a peer back to source
        at once when the task's fetcher is gone: docs/PROTOCOL.md, "Several seeds, and losing one").

        No asking toward a scheduler without Damselfly's extensions: Dragonfly's client never
        sends an empty reschedule, and the Go scheduler takes one for a new round that
        answers back-to-source after ~2 s without a candidate (docs/INTEROP.md §2.2, S6).
        """
        table = self._parents
        while True:
            stream = self._stream
            if self._reopening or stream is None or stream.lost.is_set():
                await asyncio.sleep(table.refresh_delay())  # the keeper reads this stream's answers
                continue
            try:  # an answer now is one nobody asked for
                # asyncio.timeout, not wait_for: on 3.11 wait_for can return an answer that came
                # as the task was cancelled, and lose the cancel (CPython gh-86296).
                async with asyncio.timeout(table.refresh_delay() if self._extensions else None):
                    answer: ScheduleAnswer | None = await stream.next_answer(None)
            except TimeoutError:
                answer = None
            except SchedulerError:  # the stream ended or broke: the keeper registers again
                await asyncio.sleep(table.refresh_delay())
                continue
            unasked = answer is not None
            if answer is None:
                if not table.wants_more_parents() or self._reopening or stream is not self._stream:
                    continue
                try:
                    stream.reschedule([], "more parents")
                    answer = await stream.next_answer(self.deps.schedule_timeout)
                except SchedulerError:
                    continue  # a broken stream: the keeper registers again
            if not isinstance(answer, NormalTask):
                self._pending_answer = answer
                self._pieces.interrupt()
                return
            self._pieces.more_parents(answer.parents, retire=unasked)

    def _stop_syncs(self) -> None:
        self._pieces.stop()

    # ---------------------------------------------------------- from origin

    async def _fetch_from_origin(self, *, report: bool) -> None:
        """Fetch what the store lacks from the origin, reporting each piece (on whichever
        stream is current when it lands)."""
        self.back_to_source = True

        def on_piece(info: PieceInfo) -> None:
            self._say(lambda s: s.piece_back_to_source_finished(info))

        await fetch_from_origin(
            self.deps, self.task_id, self.spec, self.digester, on_piece if report else None
        )
