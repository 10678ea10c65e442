"""The gRPC face of the scheduler: ``scheduler.v2.Scheduler`` over grpc.aio.

Protobuf stops here: requests are translated with :mod:`damselfly.api.convert`
and handed to the resources and the policy (:mod:`.scheduling`), whose
decisions this module carries out (send an answer, start a seed download, end
a stream).

One AnnouncePeer stream is one peer. Its handler owns a reader task (requests
in, handled synchronously against the resources) and writes what lands in the
stream's :class:`PeerStream`, so an answer for a waiting peer can be sent from
anywhere: when another peer of the task starts, sends a piece or finishes
(event-driven), or from the periodic retry loop (the backstop that also
enforces ``back_to_source_after``).

The unary host, task and peer RPCs are in :mod:`.resource_rpc`, the answers for
features Damselfly lacks in :mod:`.absent_rpc`, and the request checks every
RPC makes first, as Dragonfly's scheduler does, in :mod:`.validate_rpc`.

Owner of all mutable scheduler state: :class:`SchedulerService`, on the event
loop; its background tasks (retry loop, GC loop, seed downloads) are cancelled
by :meth:`SchedulerService.close`.

Long because: the AnnouncePeer dialogue is one state machine per stream (read,
handle, answer, end), and reads best in one place; the unary RPCs, the absent
features and the request checks already live in their own modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TypeAlias

import grpc

from .. import tracing
from ..api import common_pb2, convert, scheduler_pb2, scheduler_pb2_grpc
from ..config import SchedulerConfig
from ..domain import DownloadSpec, EmptyTask, MetadataOnly, NeedBackToSource, NormalTask
from ..errors import ConfigError, DamselflyError, NotFound
from ..logs import log_context
from ..security.authz import Caller, HostAuthority, caller_of
from ..security.tls import TLSFiles
from .absent_rpc import CacheTaskStubs, PersistentTaskAbsent
from .cachestore import open_store
from .dfcache.rpc import PersistentCacheRPCs
from .dfcache.service import PersistentCacheService
from .evaluator import get_evaluator
from .metrics import SchedulerMetrics
from .preheat_rpc import PreheatRPCs
from .resource_rpc import ResourceRPCs
from .resources import Host, Peer, PeerState, Resources, SeedState, Task
from .runtime import watch_loop_lag
from .scheduling import (
    TOPOLOGIES,
    Backfill,
    BackToSource,
    Decision,
    Empty,
    Fail,
    Parents,
    TriggerSeed,
    Wait,
    after_source_lost,
    apply_decision,
    move_follower,
    refresh,
    schedule,
)
from .seed_client import SeedTrigger
from .stream import END, Abort, PeerStream, status_of
from .upkeep import Upkeep
from .validate_rpc import check_announce_peer

log = logging.getLogger(__name__)

Clock = Callable[[], float]
# grpc ships no type information: to mypy this is Any, to the reader the servicer's context.
Context: TypeAlias = grpc.aio.ServicerContext
Outbox = PeerStream[scheduler_pb2.AnnouncePeerResponse]

# After these Dragonfly's scheduler ends the AnnouncePeer call (G:scheduler/service/service_v2.go:216-260),
# and the Rust client waits for that end before its download returns
# (C:dragonfly-client/src/resource/task.rs:756, 809, 915, 1016, 1052, 1077, 1217).
FINAL_REQUESTS = frozenset(
    {
        "download_peer_finished_request",
        "download_peer_back_to_source_finished_request",
        "download_peer_failed_request",
        "download_peer_back_to_source_failed_request",
    }
)
# Piece reports: Dragonfly only logs what goes wrong with them (an unknown peer included)
# and keeps the call open (G:scheduler/service/service_v2.go:261-282).
PIECE_REQUESTS = frozenset(
    {
        "download_piece_finished_request",
        "download_piece_back_to_source_finished_request",
        "download_piece_failed_request",
        "download_piece_back_to_source_failed_request",
    }
)


class SchedulerService(
    Upkeep,
    ResourceRPCs,
    PersistentCacheRPCs,
    PreheatRPCs,
    CacheTaskStubs,
    PersistentTaskAbsent,
    scheduler_pb2_grpc.SchedulerServicer,  # type: ignore[misc]
):
    """``scheduler.v2.Scheduler``: peers, tasks, hosts, persistent cache tasks, preheat; the
    cache and persistent task RPCs answer as a Dragonfly scheduler without them does."""

    def __init__(
        self,
        config: SchedulerConfig,
        *,
        clock: Clock = time.monotonic,
        metrics: SchedulerMetrics | None = None,
        rng: random.Random | None = None,
        tls: TLSFiles | None = None,
    ) -> None:
        self.config = config
        self.tls = tls  # mTLS for the scheduler's calls to daemons (seed trigger, preheat, replicas)
        self.cfg = config.scheduler
        self.clock = clock
        self.rng = rng or random.Random()
        if self.cfg.topology not in TOPOLOGIES:
            raise ConfigError(
                f"scheduler.topology must be one of {', '.join(TOPOLOGIES)}, not {self.cfg.topology!r}"
            )
        self.res = Resources(
            peer_upload_limit=self.cfg.peer_upload_limit,
            seed_upload_limit=self.cfg.seed_upload_limit,
            allow_cycles=self.cfg.topology != "dag",
        )
        self.evaluator = get_evaluator(self.cfg.algorithm)
        # Who may announce, delete and administer (docs/SECURITY.md).
        self.authority = HostAuthority(config.security, tls, live=self.res.hosts.__contains__)
        self.metrics = metrics or SchedulerMetrics()
        self.metrics.bind_sizes(
            lambda: len(self.res.hosts), lambda: len(self.res.peers), lambda: len(self.res.tasks)
        )
        self.seeds = SeedTrigger(self._seed_done, tls=tls)
        # dfcache: persistent cache tasks (scheduler/dfcache/; RPCs via PersistentCacheRPCs).
        self.persistent_cache = PersistentCacheService(
            self.res,
            store=open_store(config.database.redis.url, clock=time.time),
            interval=config.gc.interval,
            host_ttl=config.gc.host_ttl,
            upload_limits=(self.cfg.peer_upload_limit, self.cfg.seed_upload_limit),
            tls=tls,
        )
        self._streams: dict[str, Outbox] = {}
        # Task ID -> the first register's Download, for the seed: as sent, every field kept.
        self._downloads: dict[str, common_pb2.Download] = {}
        self._loops: list[asyncio.Task[None]] = []
        # When start() ran: the startup grace counts from there (SchedulingConfig.startup_grace).
        self.started_at: float | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start the retry, GC and loop-lag loops (call from the running event loop)."""
        loop = asyncio.get_running_loop()
        self.started_at = self.clock()
        self._loops = [
            loop.create_task(self._retry_loop(), name="scheduler-retry"),
            loop.create_task(self._gc_loop(), name="scheduler-gc"),
            loop.create_task(watch_loop_lag(self.metrics.observe_loop_lag), name="scheduler-loop-lag"),
        ]
        self.persistent_cache.start()

    async def close(self) -> None:
        """Cancel background work and end every open AnnouncePeer stream with UNAVAILABLE."""
        for t in self._loops:
            t.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        await self.seeds.close()
        await self.persistent_cache.close()
        await self.close_preheat()
        for outbox in self._streams.values():
            outbox.abort(grpc.StatusCode.UNAVAILABLE, "scheduler is shutting down")
        self._streams.clear()

    # -- scheduling: decide, then do --------------------------------------------

    def _decide(self, peer: Peer) -> Decision:
        if tracing.enabled():
            outbox = self._streams.get(peer.id)
            with tracing.span("scheduler", "scheduler.Schedule", remote=outbox.trace if outbox else None,
                              attributes={"peer.id": peer.id}):  # fmt: skip
                return self._decide_now(peer)
        return self._decide_now(peer)

    def _decide_now(self, peer: Peer) -> Decision:
        now = self.clock()
        grace_until = None if self.started_at is None else self.started_at + self.cfg.startup_grace
        started = time.perf_counter()
        decision = schedule(
            peer,
            self.res,
            self.cfg,
            self.evaluator,
            now,
            seed_trigger=self.config.seed_peer.enable,
            rng=self.rng,
            starting=grace_until is not None and now < grace_until,
            grace_until=grace_until,
        )
        apply_decision(peer, decision, self.res, now)
        self.metrics.schedule_duration.observe((time.perf_counter() - started) * 1000.0)
        self.metrics.count(self.metrics.decisions, type(decision).__name__)
        self._carry_out(peer, decision)
        if isinstance(decision, Parents):
            moved = move_follower(peer, self.res, self.cfg, self.evaluator, now, self.rng)
            if moved is not None and moved[0].id in self._streams:
                self._refreshed(*moved, now, " (told unasked: its place in the line changed)")
        return decision

    def _refreshed(self, peer: Peer, more: Parents, now: float, how: str = "") -> None:
        """Answer ``peer`` with the parents ``more`` (a "more parents" answer), saying so when
        its place in the chain's line changed."""
        if (
            self.cfg.topology == "chain"
            and peer.parents
            and set(peer.parents) != {p.id for p in more.parents}
        ):
            with log_context(task_id=peer.task.id, peer_id=peer.id):
                log.info("line changed: parent %s -> %s%s", ", ".join(peer.parents),
                         ", ".join(p.id for p in more.parents), how)  # fmt: skip
        apply_decision(peer, more, self.res, now)
        self.metrics.count(self.metrics.decisions, "Refresh")
        self._carry_out(peer, more)

    def _carry_out(self, peer: Peer, decision: Decision) -> None:
        outbox = self._streams.get(peer.id)
        if isinstance(decision, Parents) and not log.isEnabledFor(logging.DEBUG):
            # The common case, once per peer: no log line, so no log context to set up.
            if outbox:
                outbox.send(convert.answer_to_pb(NormalTask([p.candidate() for p in decision.parents])))
            return
        with log_context(task_id=peer.task.id, peer_id=peer.id):
            match decision:
                case Parents(parents):
                    log.debug("candidate parents %s", [p.id for p in parents])
                    if outbox:
                        outbox.send(convert.answer_to_pb(NormalTask([p.candidate() for p in parents])))
                case BackToSource(reason):
                    log.info("back to source: %s", reason)
                    self.metrics.back_to_source.inc()
                    if outbox:
                        outbox.send(convert.answer_to_pb(NeedBackToSource(reason)))
                case Empty():
                    if outbox:
                        outbox.send(convert.answer_to_pb(EmptyTask()))
                case TriggerSeed(host):
                    self._trigger_seed(peer.task, host, peer.spec)
                case Wait():
                    pass
                case Fail(reason):
                    log.info("peer failed: %s", reason)
                    self.metrics.peer_done(peer.spec.priority, peer.host.info.type, ok=False)
                    if outbox:
                        outbox.abort(grpc.StatusCode.FAILED_PRECONDITION, reason)

    def _wake(self, task: Task) -> None:
        """A candidate may have appeared (or a fetcher gone): answer the task's waiting peers."""
        for peer in list(task.waiting.values()):
            if peer.waiting_since is not None and peer.id in self.res.peers:
                self._decide(peer)

    def _wake_tasks(self, task_ids: set[str]) -> None:
        for task_id in task_ids:
            task = self.res.tasks.get(task_id)
            if task is not None:
                self._wake(task)

    def _tasks_of(self, peer_ids: Iterable[str]) -> set[str]:
        return {p.task.id for pid in peer_ids if (p := self.res.peers.get(pid)) is not None}

    def _seed_done(self, task_id: str, host_id: str, error: DamselflyError | None, lost: bool) -> None:
        self.metrics.seed_trigger.labels("failed" if error else "succeeded").inc()
        task = self.res.tasks.get(task_id)
        if task is None or error is None:
            return
        task.failed_seed_hosts.add(host_id)
        if task.seed_state is SeedState.TRIGGERED and not self.seeds.running_for(task_id):
            # A lost seed host leaves the task to another; one that failed the download ends the triggers.
            task.seed_state = SeedState.NONE if lost else SeedState.FAILED
        self._source_lost(task)
        self._wake(task)

    def _source_lost(self, task: Task) -> None:
        """A peer fetching ``task`` from the origin failed or left: have the rest fetched once
        (:func:`~.scheduling.after_source_lost`), not by every peer that was downloading it;
        nothing in the startup grace after a restart, while the fetchers register again."""
        now = self.clock()
        if self.started_at is None or now - self.started_at >= self.cfg.startup_grace:
            match after_source_lost(task, self.res, reachable=lambda p: p.id in self._streams,
                                    seed_trigger=self.config.seed_peer.enable):  # fmt: skip
                case Backfill(peer):
                    self.metrics.count(self.metrics.decisions, "Backfill")
                    answer = BackToSource(f"the fetcher is gone; {len(peer.finished_pieces)} pieces held")
                    apply_decision(peer, answer, self.res, now)
                    self._carry_out(peer, answer)
                case TriggerSeed(host):
                    task.seed_state = SeedState.TRIGGERED
                    self._trigger_seed(task, host, task.spec)

    def _trigger_seed(self, task: Task, host: Host, spec: DownloadSpec) -> None:
        log.info("triggering seed host %s", host.id)
        self.metrics.seed_trigger.labels("triggered").inc()
        download = self._downloads.get(task.id) or convert.download_to_pb(spec)
        self.seeds.trigger(task.id, host.info, download)

    # -- AnnouncePeer ------------------------------------------------------------

    async def AnnouncePeer(
        self, request_iterator: AsyncIterator[scheduler_pb2.AnnouncePeerRequest], context: Context
    ) -> None:
        # Requests are read with ``context.read()``, not through ``request_iterator``:
        # the iterator wraps every read in an async generator of grpc's, measurable
        # per message with thousands of streams (BENCHMARKS.md, scheduler at scale).
        outbox: Outbox = PeerStream()
        if tracing.enabled():
            outbox.trace = context.invocation_metadata()  # the daemon's traceparent
        self.metrics.announce_peer_streams.inc()
        self.metrics.concurrent_schedule.inc()
        reader = asyncio.get_running_loop().create_task(self._read(context, outbox))
        try:
            while True:
                item = await outbox.get()
                if item is END:
                    break
                if isinstance(item, Abort):
                    await context.abort(item.code, item.details)
                await context.write(item)
        finally:
            self.metrics.concurrent_schedule.dec()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            if outbox.peer_id:
                self._stream_closed(outbox.peer_id, outbox)

    async def _read(self, context: Context, outbox: Outbox) -> None:
        caller: Caller | None = None
        while True:
            try:
                request = await context.read()
            except Exception as e:  # the stream broke under us
                log.debug("announce peer stream broke: %r", e)
                outbox.abort(grpc.StatusCode.CANCELLED, "stream broken")
                return
            if request is grpc.aio.EOF:
                break
            try:
                if request.peer_id != outbox.peer_id:
                    # The register, or a report on another stream's peer: only for the caller's
                    # own hosts (or an admin's). A stream's own peer costs no check.
                    caller = caller or caller_of(context)
                    known = self.res.peers.get(request.peer_id)
                    owner = known.host.id if known is not None else request.host_id
                    self.authority.check_host(caller, owner, "announce peers")
                if self.handle(request, outbox):
                    return  # the handler queued the end of the call
            except DamselflyError as e:
                log.warning("ending announce peer stream of %s: %s", request.peer_id, e)
                outbox.abort(status_of(e), str(e))
                return
            except Exception as e:
                log.exception("bug handling an announce peer request of %s", request.peer_id)
                outbox.abort(grpc.StatusCode.INTERNAL, f"scheduler error: {e!r}")
                return
        outbox.end()

    def _stream_closed(self, peer_id: str, outbox: Outbox) -> None:
        if self._streams.get(peer_id) is not outbox:
            return
        del self._streams[peer_id]
        peer = self.res.peers.get(peer_id)
        if peer is None or peer.state.is_final:
            return
        with log_context(task_id=peer.task.id, peer_id=peer.id):
            log.info("stream of peer %s closed before the peer finished; marking it failed", peer_id)
        was_source = peer.id in peer.task.source_peers
        if peer.host.is_seed and peer.task.seed_state is SeedState.TRIGGERED:  # the seed host is lost
            peer.task.failed_seed_hosts.add(peer.host.id)
            peer.task.seed_state = SeedState.NONE
        self.res.set_state(peer, PeerState.FAILED, self.clock())
        self.metrics.peer_done(peer.spec.priority, peer.host.info.type, ok=False)
        if was_source:
            self._source_lost(peer.task)
        self._wake(peer.task)

    def handle(self, request: scheduler_pb2.AnnouncePeerRequest, stream: Outbox) -> bool:
        """Apply one AnnouncePeerRequest; answers go to ``stream`` (or to waiting peers' streams).

        Returns True when the call ends with this request (a peer's Finished or Failed
        report): ``stream`` then holds its end, after whatever was queued before it.
        Raises :class:`DamselflyError` for a request that ends the call with an error.
        """
        self.metrics.count(self.metrics.announce_peer, request.WhichOneof("request") or "none")
        kind = check_announce_peer(request)
        log.debug("peer %s: %s", request.peer_id, kind)
        now = self.clock()
        if kind == "register_peer_request":
            self._register(request, stream, now)
            return False
        peer = self.res.peers.get(request.peer_id)
        if peer is None:
            if kind in PIECE_REQUESTS:
                log.debug("%s of unknown peer %s ignored", kind, request.peer_id)
                return False
            raise NotFound(f"peer {request.peer_id} not found")
        task = peer.task
        if kind in PIECE_REQUESTS:
            self._piece_report(peer, request, kind, now)
        elif kind == "download_peer_started_request":
            self.metrics.count_peer(self.metrics.peer_started, peer.spec.priority, peer.host.info.type)
            if peer.state is not PeerState.SUCCEEDED:  # a metadata-only peer holds it all already
                self.res.set_state(peer, PeerState.RUNNING, now)
            self._wake(task)
        elif kind == "download_peer_back_to_source_started_request":
            self.metrics.count_peer(
                self.metrics.peer_back_to_source_started, peer.spec.priority, peer.host.info.type
            )
            self.res.set_state(peer, PeerState.BACK_TO_SOURCE, now)
            task.source_peers.add(peer.id)
            self._wake(task)
        elif kind == "reschedule_peer_request":
            self._reschedule(peer, request.reschedule_peer_request, now)
        elif kind in ("download_peer_finished_request", "download_peer_back_to_source_finished_request"):
            self._finish(peer, now)
        elif (
            kind in ("download_peer_failed_request", "download_peer_back_to_source_failed_request")
            and peer.state is not PeerState.SUCCEEDED
        ):
            was_source = peer.id in task.source_peers
            self.res.set_state(peer, PeerState.FAILED, now)
            if kind == "download_peer_back_to_source_failed_request":
                task.forget_sizes()
            self.metrics.peer_done(peer.spec.priority, peer.host.info.type, ok=False)
            if was_source:
                self._source_lost(task)
            self._wake(task)
        if kind in FINAL_REQUESTS:
            stream.end()
            return True
        return False

    def _piece_report(
        self, peer: Peer, request: scheduler_pb2.AnnouncePeerRequest, kind: str, now: float
    ) -> None:
        task = peer.task
        if kind == "download_piece_failed_request":
            msg = request.download_piece_failed_request
            # Dragonfly's rule (G:scheduler/service/service_v2.go:1788-1814): a *temporary* failure
            # blocks that parent for this peer; a permanent one is only reported.
            if msg.temporary:
                peer.blocked.add(msg.parent_id)
            return
        if kind == "download_piece_back_to_source_failed_request":
            return  # the daemon reports the peer failed if it gives up
        back = kind == "download_piece_back_to_source_finished_request"
        piece = convert.piece_from_pb(getattr(request, kind).piece)
        self.res.record_piece(peer, piece, now)
        if back:
            task.source_pieces[piece.number] = piece
        if peer.state is PeerState.PENDING:
            self.res.set_state(peer, PeerState.BACK_TO_SOURCE if back else PeerState.RUNNING, now)
        if task.waiting:
            self._wake(task)

    def _reschedule(self, peer: Peer, msg: scheduler_pb2.ReschedulePeerRequest, now: float) -> None:
        """Schedule ``peer`` again. As Dragonfly's scheduler, every ``candidate_parents[i]`` is
        blocked for the peer (the Rust client sends the whole last candidate list) and the
        reschedules are not counted: the client limits them (G:scheduler/service/service_v2.go:1546-1566).
        An empty list blocks nothing: Damselfly's "more parents", which keeps the usable parents
        and adds new ones."""
        task = peer.task
        if not msg.candidate_parents:
            more = refresh(peer, self.res, self.cfg, self.evaluator, now, self.rng)
            if more is not None:
                self._refreshed(peer, more, now)
                return
        else:
            # Not a live fetcher from the origin: what it failed was cut off upstream (a lost seed's
            # pieces); blocked, it would send this peer to the origin for the same pieces.
            fetching = {p for p in task.source_peers if (f := self.res.peers.get(p)) and not f.state.is_final}
            peer.blocked.update(c.id for c in msg.candidate_parents if c.id not in fetching)
            peer.reschedule_count += 1  # for the log
        self.res.clear_parents(peer)
        with log_context(task_id=task.id, peer_id=peer.id):
            log.info("reschedule %d: %s", peer.reschedule_count, msg.description)
        self._decide(peer)

    def _register(self, request: scheduler_pb2.AnnouncePeerRequest, stream: Outbox, now: float) -> None:
        host = self.res.host(request.host_id)
        download = request.register_peer_request.download
        spec = convert.download_from_pb(download)
        task = self.res.get_or_create_task(request.task_id, spec, now)
        # A Rust dfdaemon sends the sizes it learnt from the origin on every register
        # (C:dragonfly-client/src/grpc/dfdaemon_download.rs:441-443); they size the task.
        sizes = convert.actual_sizes(download)
        task.learn_sizes(*sizes)
        self._downloads.setdefault(task.id, download)
        peer = self.res.create_peer(request.peer_id, task, host, spec, now)
        # Only Dragonfly's dialogue sends them on a fresh register (a Damselfly daemon toward this
        # scheduler never does): the peer speaks Dragonfly's wire alone (scheduling.line_of).
        if sizes != (None, None, None) and not download.metadata_only:
            peer.plain = task.mixed_wire = True
        self._streams[peer.id] = stream
        stream.peer_id = peer.id
        self.metrics.count_peer(self.metrics.register_peer, spec.priority, host.info.type)
        if stream.trace is not None:
            with tracing.span("scheduler", "scheduler.RegisterPeer", remote=stream.trace,
                              attributes={"peer.id": peer.id, "task.id": task.id}):  # fmt: skip
                self._first_answer(peer, stream, download.metadata_only, now)
        else:
            self._first_answer(peer, stream, download.metadata_only, now)

    def _first_answer(self, peer: Peer, stream: Outbox, metadata_only: bool, now: float) -> None:
        if metadata_only:
            self._metadata_only(peer, stream, now)
            return
        self._decide(peer)

    def _metadata_only(self, peer: Peer, stream: Outbox, now: float) -> None:
        """The peer holds the whole task and only reports it: answer ``MetadataOnlyResponse``
        and nothing else (G:scheduler/service/service_v2.go:1317-1359). The peer serves at once;
        the Started and Finished reports that follow (C:dragonfly-client/src/resource/task.rs:1099-1218)
        leave it Succeeded."""
        self.res.set_state(peer, PeerState.SUCCEEDED, now)
        stream.send(convert.answer_to_pb(MetadataOnly()))
        self._wake(peer.task)

    def _finish(self, peer: Peer, now: float) -> None:
        task = peer.task
        if peer.state is not PeerState.SUCCEEDED:
            # Learn the length only from a complete report (pieces 0..n-1); a peer that
            # resumed and reported only part of its pieces must not shrink the task.
            pieces = peer.finished_pieces
            if task.content_length is None and (not pieces or max(pieces) + 1 == len(pieces)):
                task.content_length = peer.finished_bytes
                task.piece_count = len(pieces)
            self.res.set_state(peer, PeerState.SUCCEEDED, now)
            self.metrics.peer_done(peer.spec.priority, peer.host.info.type, ok=True)
        self._wake(task)

    # -- what the unary RPCs (resource_rpc.py) change ------------------------------

    def _delete_peers(self, peer_ids: list[str]) -> None:
        touched = self._tasks_of(peer_ids)
        fetched = self._fetched_by(peer_ids)
        for pid in peer_ids:
            self.res.delete_peer(pid)
            self._streams.pop(pid, None)
        for task in fetched:
            self._source_lost(task)
        self._wake_tasks(touched)

    def _delete_host(self, host: Host) -> None:
        touched = {p.task.id for p in host.peers.values()}
        fetched = self._fetched_by(host.peers)
        self.persistent_cache.forget_host(host.id)
        for peer in self.res.delete_host(host.id):
            self._streams.pop(peer.id, None)
        for task in fetched:
            self._source_lost(task)
        self._wake_tasks(touched)

    def _fetched_by(self, peer_ids: Iterable[str]) -> list[Task]:
        """The tasks that ``peer_ids`` were fetching from the origin."""
        return [p.task for pid in peer_ids if (p := self.res.peers.get(pid)) and pid in p.task.source_peers]


async def _unimplemented(self: SchedulerService, request: object, context: Context) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not implemented by the damselfly scheduler")


# Every RPC of dragonfly-api 2.3.8 has a body above; one a newer API adds answers
# UNIMPLEMENTED, in the scheduler's words.
for _name in dir(scheduler_pb2_grpc.SchedulerServicer):
    if _name[:1].isupper() and getattr(SchedulerService, _name) is getattr(
        scheduler_pb2_grpc.SchedulerServicer, _name
    ):
        setattr(SchedulerService, _name, _unimplemented)
