"""One download of one task on this daemon: the :class:`Conductor`, the scheduler dialogue.

The conductor registers a peer with the scheduler, follows its answers, and
has the piece store filled: from candidate parents (:mod:`.piece_loop`, with
:mod:`.parents` deciding what to ask of whom) or from the origin
(:mod:`.back_to_source`). Pieces are reported as they land so the scheduler can
send other peers here while the download is still running; when the parents
cannot finish, the conductor asks for a reschedule, naming the parents that
failed; it asks for more parents now and then while a round runs, and falls
back to the origin when told to.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
from ...errors import DamselflyError, DigestMismatch, NoCandidateParents, SchedulerError, StorageError
from ...pieces import Digest, piece_length_for
from ..origin.source import HTTPSource
from ..scheduler_client import PeerStream, SchedulerClient
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
    scheduler: SchedulerClient | None
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
        self._reported_held = False
        self._pending_answer: ScheduleAnswer | None = None
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
        log.info("download finished (%s)", "origin" if self.back_to_source else "peers")

    async def _run(self) -> None:
        if self.deps.scheduler is None:
            await self._origin_only("no scheduler configured")
            return
        self._extensions = await self.deps.scheduler.speaks_extensions()
        # Toward Dragonfly's scheduler the size goes in the register; an origin that cannot
        # say it fails the download, as it does in Dragonfly's client (task.rs:153-304).
        size = None if self._extensions else await self._content_size()
        self._stream = self.deps.scheduler.peer_stream(self.deps.host_id, self.task_id, self.peer_id)
        try:
            try:
                if size is None:
                    self._stream.register(self.spec)
                else:
                    self._stream.register(self.spec, content_length=size[0], piece_length=size[1])
                answer = await self._stream.next_answer(self.deps.schedule_timeout)
            except SchedulerError as e:
                log.warning("scheduler unavailable (%s)", e)
                await self._origin_only(f"scheduler unavailable: {e}")
                return
            try:
                await self._follow(answer)
            except StorageError as e:
                # Our own disk: this peer failed, no parent did (none was reported), and the
                # origin would not do better.
                with contextlib.suppress(Exception):
                    self._stream.failed(f"local storage error: {e}")
                raise
        finally:
            with contextlib.suppress(Exception):
                await self._stream.close()
            self._stop_syncs()

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
        await self._fetch_from_origin(None)
        await self._verify()

    # ---------------------------------------------------------- the dialogue

    async def _follow(self, answer: ScheduleAnswer) -> None:
        stream = self._stream
        assert stream is not None
        started = False
        reschedules = 0  # answers to "parents cannot finish" (not to "more parents")
        while True:
            if isinstance(answer, MetadataOnly):
                # Only a metadata-only register is answered so; Dragonfly's client fails
                # on it too (task.rs:1080-1085). The scheduler is of no use here.
                stream.failed("unexpected MetadataOnlyResponse to a download")
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
            self._pieces.add_parents(answer.parents)
            done = await self._from_parents(stream)
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
            reschedules += 1
            if reschedules >= self.deps.max_schedule_count:
                # As Dragonfly's client: the scheduler's answers did not get the task done;
                # stop asking, tell it so, and fetch what is missing from the origin.
                log.info("rescheduled %d times without finishing; going to the origin", reschedules)
                stream.failed("max schedule count exceeded")
                await self._origin_only(f"max schedule count ({self.deps.max_schedule_count}) exceeded")
                return
            failed = [self._parents.parents[pid].candidate for pid in self._parents.reschedule()]
            log.info("parents cannot finish the task; rescheduling (failed: %s)", [p.peer_id for p in failed])
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
        """Report pieces already in the store when the dialogue began (a resumed download), so
        the scheduler sees them all; once, so pieces this download brought are not told twice."""
        if self._reported_held:
            return
        self._reported_held = True
        meta = self.deps.store.get(self.task_id)
        if meta is None:
            return
        for piece in sorted(meta.pieces.values(), key=lambda p: p.number):
            if back_to_source:
                stream.piece_back_to_source_finished(piece)
            else:
                stream.piece_finished(piece)

    # ---------------------------------------------------------- from parents

    async def _from_parents(self, stream: PeerStream) -> bool:
        """One round of fetching from the parents: True when complete, False when stalled."""
        return await self._pieces.run(stream, self.digester, beside=lambda: self._refresh_parents(stream))

    async def _refresh_parents(self, stream: PeerStream) -> None:
        """Ask for more parents now and then: peers that started with us hold pieces by now.

        Not toward a scheduler without Damselfly's extensions: Dragonfly's client never
        sends an empty reschedule, and the Go scheduler takes one for a new round that
        answers back-to-source after ~2 s without a candidate (docs/INTEROP.md §2.2, S6).
        """
        if not self._extensions:
            return
        table = self._parents
        while True:
            await asyncio.sleep(table.refresh_delay())
            if not table.wants_more_parents():
                continue
            stream.reschedule([], "more parents")
            try:
                answer = await stream.next_answer(self.deps.schedule_timeout)
            except SchedulerError:
                return
            if not isinstance(answer, NormalTask):
                self._pending_answer = answer
                self._pieces.interrupt()
                return
            self._pieces.more_parents(answer.parents)

    def _stop_syncs(self) -> None:
        self._pieces.stop()

    # ---------------------------------------------------------- from origin

    async def _fetch_from_origin(self, stream: PeerStream | None) -> None:
        """Fetch what the store lacks from the origin, reporting each piece."""
        self.back_to_source = True
        await fetch_from_origin(self.deps, self.task_id, self.spec, self.digester, stream)
