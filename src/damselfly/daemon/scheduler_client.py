"""The daemon's side of ``scheduler.v2.Scheduler``: host announces and peer streams.

One :class:`SchedulerLink` per scheduler address (its channel, health check and
RPCs); which link a task uses is :mod:`.scheduler_fleet`'s business. Protobuf
stays in this module (and :mod:`damselfly.api.convert`); the conductor talks
to a :class:`PeerStream` in domain types.

The same dialogue serves Damselfly's scheduler and Dragonfly's Go scheduler
(docs/INTEROP.md §2.2, §3.5). Where they differ, :meth:`SchedulerLink.speaks_extensions`
tells which one is there: Damselfly's learns a new task's size from its seed peer,
so a register carries no size, and it takes a restored task's three requests at
once; toward any other scheduler (or with ``wire.extensions`` off) the daemon
talks as Dragonfly's Rust client does: a register carries ``actual_*`` sizes, a
restore waits for ``MetadataOnlyResponse``. Either scheduler may end the call
after Finished/Failed (Dragonfly's always does); that end is not an error, and
:meth:`PeerStream.close` half-closes for a scheduler that waits for it instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import cast

import grpc
from google.protobuf import message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .. import tracing
from ..api import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from ..api.convert import answer_from_pb, download_to_pb, duration, host_to_pb, piece_to_pb
from ..api.health import DAMSELFLY_EXTENSIONS
from ..credentials import without_credentials
from ..domain import CandidateParent, DownloadSpec, HostInfo, MetadataOnly, PieceInfo, ScheduleAnswer
from ..errors import DamselflyError, SchedulerError
from ..pieces import piece_count

log = logging.getLogger(__name__)

_EOF = object()

# The messages of the two announce streams: AnnouncePeer here, AnnouncePersistentCachePeer in
# persistent_cache/client.py (a subclass of PeerStream that changes the hooks typed with these).
StreamRequest = scheduler_pb2.AnnouncePeerRequest | scheduler_pb2.AnnouncePersistentCachePeerRequest
StreamResponse = scheduler_pb2.AnnouncePeerResponse | scheduler_pb2.AnnouncePersistentCachePeerResponse


class PeerStream:
    """One ``AnnouncePeer`` stream: the conductor's conversation about one peer.

    Requests are queued by plain (non-async) methods and written in order by
    one writer task, so a caller that is cancelled (a piece worker at the end
    of a download) never cancels the RPC mid-write, and grpc.aio's one-write-
    at-a-time rule holds. Answers (NormalTask / NeedBackToSource / EmptyTask /
    MetadataOnly) are read by a reader task into a queue; :meth:`next_answer`
    takes them in order. :meth:`close` flushes the queue, half-closes and stops
    both tasks.
    Owner of both tasks: this object.
    """

    def __init__(
        self, stub: scheduler_pb2_grpc.SchedulerStub, host_id: str, task_id: str, peer_id: str
    ) -> None:
        self.host_id, self.task_id, self.peer_id = host_id, task_id, peer_id
        self._stub = stub
        self._call: grpc.aio.StreamStreamCall | None = None
        # Answers, a DamselflyError once the stream failed, or _EOF.
        self._answers: asyncio.Queue[ScheduleAnswer | object] = asyncio.Queue()
        self._outbox: asyncio.Queue[StreamRequest | object] = asyncio.Queue()  # requests, then _EOF
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._write_error: SchedulerError | None = None
        self._closed = False
        # Set when the call broke under us (read or write failed): the scheduler may be gone, or
        # may have restarted and forgotten this peer. ``on_lost`` (the link's) hears of it too.
        self.lost = asyncio.Event()
        self.on_lost: Callable[[grpc.StatusCode | None], None] | None = None
        self.addr = ""  # the scheduler's, set by the link that opened it

    def _mark_lost(self, code: grpc.StatusCode | None) -> None:
        if self._closed or self.lost.is_set():
            return
        self.lost.set()
        if self.on_lost is not None:
            self.on_lost(code)

    # What the read loop makes of the stream; the persistent-cache stream overrides these three.
    def _answer(self, msg: StreamResponse) -> ScheduleAnswer:
        if not isinstance(msg, scheduler_pb2.AnnouncePeerResponse):
            raise ValueError(f"not an AnnouncePeerResponse: {type(msg).__name__}")
        return answer_from_pb(msg)

    def _read_failed(self, e: grpc.aio.AioRpcError) -> DamselflyError:
        return SchedulerError(f"scheduler stream ended: {e.code().name} {e.details()}")

    def _at_eof(self) -> object:
        return _EOF

    async def _read_loop(self) -> None:
        assert self._call is not None
        try:
            while True:
                msg = await self._call.read()
                if msg is grpc.aio.EOF:
                    break
                try:
                    self._answers.put_nowait(self._answer(msg))
                except ValueError as e:
                    log.warning("ignoring scheduler message: %s", e)
        except grpc.aio.AioRpcError as e:
            self._answers.put_nowait(self._read_failed(e))
            self._mark_lost(e.code())
            return
        self._answers.put_nowait(self._at_eof())

    async def _write_loop(self) -> None:
        assert self._call is not None
        while True:
            msg = await self._outbox.get()
            try:
                if msg is _EOF:
                    await self._call.done_writing()
                    return
                await self._call.write(msg)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as e:
                self._write_error = SchedulerError(f"cannot write to the scheduler stream: {e!r}")
                self._answers.put_nowait(self._write_error)
                self._mark_lost(e.code() if isinstance(e, grpc.aio.AioRpcError) else None)
                return
            finally:
                self._outbox.task_done()

    def _send(self, **request: message.Message) -> None:
        if self._closed:
            return
        if self._write_error is not None:
            raise self._write_error
        if self._call is None:
            self._call = self._open_call()
            loop = asyncio.get_running_loop()
            self._reader = loop.create_task(self._read_loop())
            self._writer = loop.create_task(self._write_loop())
        self._outbox.put_nowait(self._request(**request))

    # The two things a stream of another kind (persistent cache) changes.
    def _open_call(self) -> grpc.aio.StreamStreamCall:
        return self._stub.AnnouncePeer(metadata=tracing.with_metadata(None))

    def _request(self, **request: message.Message) -> StreamRequest:
        return scheduler_pb2.AnnouncePeerRequest(
            host_id=self.host_id, task_id=self.task_id, peer_id=self.peer_id, **request
        )

    async def flush(self, timeout: float = 10) -> None:
        """Wait until every queued request was written."""
        if self._writer is None:
            return
        waiter = asyncio.ensure_future(self._outbox.join())
        await asyncio.wait({waiter, self._writer}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._write_error is not None:
            raise self._write_error

    def register(
        self, download: DownloadSpec, *, content_length: int | None = None, piece_length: int = 0
    ) -> None:
        """Register this peer for ``download``.

        ``content_length`` (with ``piece_length``): the task's size, learned from the
        origin first. Dragonfly's scheduler sizes a new task from these ``actual_*``
        fields and takes a register without them for an empty task
        (scheduler/service/service_v2.go:1851,1865-1866 at 66db456); its Rust client
        always sends all three (dragonfly-client/src/grpc/dfdaemon_download.rs:441-443).
        """
        # The scheduler (and through it seed peers) never sees the user's credentials.
        download = dataclasses.replace(download, request_header=without_credentials(download.request_header))
        pb = download_to_pb(download)
        if content_length is not None:
            pb.actual_content_length = content_length
            pb.actual_piece_length = piece_length
            pb.actual_piece_count = piece_count(content_length, piece_length)
        self._send(register_peer_request=scheduler_pb2.RegisterPeerRequest(download=pb))

    def register_restored(
        self, download: DownloadSpec, content_length: int, piece_length: int, piece_count: int
    ) -> None:
        """Register a peer that already holds the complete task (after a restart): Dragonfly's
        metadata-only register (``metadata_only=true``, ``need_back_to_source=false``, the
        ``actual_*`` sizes), which the scheduler answers with ``MetadataOnlyResponse`` and
        schedules nothing for (dragonfly-client/src/resource/task.rs:1099-1218;
        scheduler/service/service_v2.go:1317-1359). :meth:`restore` is the whole dialogue."""
        pb = download_to_pb(dataclasses.replace(download, request_header={}, need_back_to_source=False))
        pb.metadata_only = True
        pb.actual_content_length = content_length
        pb.actual_piece_length = piece_length
        pb.actual_piece_count = piece_count
        self._send(register_peer_request=scheduler_pb2.RegisterPeerRequest(download=pb))

    async def restore(
        self,
        download: DownloadSpec,
        content_length: int,
        piece_length: int,
        piece_count: int,
        *,
        answer_timeout: float | None,
    ) -> None:
        """Report a task held complete: register (metadata only), Started, Finished, all written.

        ``answer_timeout``: wait this long for ``MetadataOnlyResponse`` before Started,
        as Dragonfly's client does; None: do not wait (a Damselfly scheduler handles a
        stream's requests in order, so the three go out together: no round trip per
        held task, and a restart may hold thousands). Raises :class:`SchedulerError`
        if the stream fails or the scheduler answers something else.
        """
        self.register_restored(download, content_length, piece_length, piece_count)
        if answer_timeout is not None:
            answer = await self.next_answer(answer_timeout)
            if not isinstance(answer, MetadataOnly):
                raise SchedulerError(f"the scheduler answered a metadata-only register with {answer!r}")
        self.started()
        self.finished()
        await self.flush()

    def started(self) -> None:
        self._send(download_peer_started_request=scheduler_pb2.DownloadPeerStartedRequest())

    def back_to_source_started(self, description: str = "") -> None:
        self._send(
            download_peer_back_to_source_started_request=scheduler_pb2.DownloadPeerBackToSourceStartedRequest(
                description=description
            )
        )

    def piece_finished(self, piece: PieceInfo) -> None:
        self._send(
            download_piece_finished_request=scheduler_pb2.DownloadPieceFinishedRequest(
                piece=piece_to_pb(piece)
            )
        )

    def piece_back_to_source_finished(self, piece: PieceInfo) -> None:
        self._send(
            download_piece_back_to_source_finished_request=scheduler_pb2.DownloadPieceBackToSourceFinishedRequest(
                piece=piece_to_pb(piece)
            )
        )

    def piece_failed(self, number: int, parent_id: str, *, temporary: bool) -> None:
        """Piece ``number`` failed from ``parent_id``; ``temporary`` in Dragonfly's sense:
        true asks the scheduler to offer this parent to this peer no more (the Go
        scheduler blocks it, service_v2.go:1788-1814; the Rust client always sends true)."""
        self._send(
            download_piece_failed_request=scheduler_pb2.DownloadPieceFailedRequest(
                piece_number=number, parent_id=parent_id, temporary=temporary
            )
        )

    def reschedule(self, failed_parents: list[CandidateParent], description: str) -> None:
        """Ask for other parents, naming those that failed (none: only "more parents").

        Each is sent back as the ``common.v2.Peer`` the scheduler offered: Dragonfly's
        validates every candidate as a full Peer (docs/INTEROP.md §2.0) and blocks them.
        """
        self._send(
            reschedule_peer_request=scheduler_pb2.ReschedulePeerRequest(
                candidate_parents=[_as_offered(p) for p in failed_parents], description=description
            )
        )

    def finished(self) -> None:
        self._send(download_peer_finished_request=scheduler_pb2.DownloadPeerFinishedRequest())

    def back_to_source_finished(self) -> None:
        self._send(
            download_peer_back_to_source_finished_request=scheduler_pb2.DownloadPeerBackToSourceFinishedRequest()
        )

    def failed(self, description: str) -> None:
        self._send(
            download_peer_failed_request=scheduler_pb2.DownloadPeerFailedRequest(description=description)
        )

    def back_to_source_failed(self, description: str) -> None:
        self._send(
            download_peer_back_to_source_failed_request=scheduler_pb2.DownloadPeerBackToSourceFailedRequest(
                description=description
            )
        )

    async def next_answer(self, timeout: float | None) -> ScheduleAnswer:
        """The scheduler's next answer; :class:`SchedulerError` if the stream ended or timed out."""
        try:
            async with asyncio.timeout(timeout):  # never loses a cancel, unlike 3.11's wait_for
                item = await self._answers.get()
        except TimeoutError:
            raise SchedulerError(f"the scheduler did not answer within {timeout:.0f}s") from None
        if item is _EOF:
            self._answers.put_nowait(_EOF)
            raise SchedulerError("the scheduler closed the stream")
        if isinstance(item, DamselflyError):  # the stream failed (and stays failed)
            self._answers.put_nowait(item)
            raise item
        return cast(ScheduleAnswer, item)  # neither _EOF nor an error: an answer

    async def close(self) -> None:
        """Write what is queued, half-close (the scheduler sees a clean end), stop both tasks."""
        if self._closed:
            return
        self._closed = True
        if self._call is None:
            return
        self._outbox.put_nowait(_EOF)
        assert self._writer is not None and self._reader is not None
        # asyncio.wait never raises the tasks' own errors, and a cancel of the caller (a daemon
        # stopping) still reaches the caller: swallowing it here left the announce loop running.
        try:
            await asyncio.wait({self._writer}, timeout=10)
            await asyncio.wait({self._reader}, timeout=2)  # a moment for the scheduler to end its side
        finally:
            for task in (self._writer, self._reader):
                task.cancel()
            self._call.cancel()
        await asyncio.gather(self._writer, self._reader, return_exceptions=True)


def _as_offered(parent: CandidateParent) -> common_pb2.Peer:
    """The Peer message the scheduler offered ``parent`` in, or its id alone if there was none."""
    if not parent.wire:
        return common_pb2.Peer(id=parent.peer_id)
    pb = common_pb2.Peer()
    pb.ParseFromString(parent.wire)
    return pb


def open_channel(
    addr: str, credentials: grpc.ChannelCredentials | None = None, *, target_name: str = ""
) -> grpc.aio.Channel:
    """The one place a channel to a scheduler is made (TLS settings plug in here).

    Under TLS the scheduler's certificate must name the host of ``addr``, or ``target_name``
    when given: the DNS name ``addr``'s IP was resolved from, which a certificate can carry
    where a pod's changing IP cannot."""
    options: list[tuple[str, int | str]] = [
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        # A scheduler that restarts must be seen again within a health interval or two, not after
        # grpc's default reconnect backoff (up to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.min_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]
    if credentials is not None:
        if target_name:
            options.append(("grpc.ssl_target_name_override", target_name))
        return grpc.aio.secure_channel(addr, credentials, options=options)
    return grpc.aio.insecure_channel(addr, options=options)


# A stream that breaks with one of these says the scheduler is gone or has forgotten this host
# (a restart): the link is resynced (host announced, held tasks registered again).
LOST_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.CANCELLED, None}
)


class SchedulerLink:
    """A channel to one scheduler address and what this daemon knows of it.

    ``extensions`` (the daemon's ``wire.extensions``): whether this daemon may use
    Damselfly's extensions with a scheduler that speaks them. Owner of the task that
    asks the scheduler which it is (:meth:`speaks_extensions`); :meth:`close` ends it.
    The liveness fields are the fleet's (:class:`~.scheduler_fleet.SchedulerFleet`).
    """

    def __init__(
        self,
        addr: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        extensions: bool = True,
        target_name: str = "",
    ) -> None:
        self.addr = addr
        # The configured name ``addr`` came from ("" for an address given as an IP): under TLS
        # the scheduler's certificate is checked against it.
        self.target_name = target_name
        self.extensions = extensions
        # Whether the scheduler there speaks Damselfly's extensions: asked once per
        # connection (None: not asked yet, or to ask again).
        self._speaks: asyncio.Future[bool] | None = None
        self._channel = open_channel(addr, credentials, target_name=target_name)
        self._stub = scheduler_pb2_grpc.SchedulerStub(self._channel)
        # Kept by the fleet: whether the health check says SERVING, whether this host was
        # announced there since it last came up or lost state, and a count of such losses.
        self.up = False
        self.ready = False
        self.generation = 0
        self.on_lost: Callable[[SchedulerLink, grpc.StatusCode | None], None] | None = None

    def __repr__(self) -> str:
        return f"SchedulerLink({self.addr}, up={self.up}, ready={self.ready})"

    def connection_state(self) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect=False)

    async def connection_changed(self, state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(state)  # returns once it is not ``state``

    async def check(self, *, timeout: float = 2.0) -> bool:
        """Whether the scheduler answers its health check with SERVING (``grpc.health.v1``,
        the overall service ``""``, as Dragonfly's client checks); one without a health
        service counts as up when it answers at all."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() is grpc.StatusCode.UNIMPLEMENTED:
                return True
            self._speaks = None
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    async def announce_host(self, host: HostInfo, interval_s: float, *, timeout: float = 10) -> None:
        try:
            await self._stub.AnnounceHost(
                scheduler_pb2.AnnounceHostRequest(host=host_to_pb(host), interval=duration(interval_s)),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as e:
            self._speaks = None  # the connection was lost: what answers next may be another scheduler
            raise SchedulerError(f"AnnounceHost to {self.addr} failed: {e.code().name} {e.details()}") from e

    async def speaks_extensions(self) -> bool:
        """Whether to use Damselfly's extensions with this scheduler.

        Only if ``extensions`` is on and the scheduler's health service answers
        SERVING for ``damselfly.v1.Extensions`` (a Dragonfly scheduler answers
        NOT_FOUND). Asked once per connection and remembered; concurrent callers
        share one question. A scheduler that cannot be asked now (unreachable,
        timed out) counts as a Dragonfly one this time and is asked again later.
        """
        if not self.extensions:
            return False
        if self._speaks is None:
            self._speaks = asyncio.ensure_future(self._ask_extensions())
        return await asyncio.shield(self._speaks)

    async def _ask_extensions(self) -> bool:
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=DAMSELFLY_EXTENSIONS), timeout=5)
        except grpc.aio.AioRpcError as e:
            if e.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED):
                log.info(
                    "cannot ask %s what it speaks (%s): Dragonfly's wire for now", self.addr, e.code().name
                )
                self._speaks = None
            return False
        speaks = bool(answer.status == health_pb2.HealthCheckResponse.SERVING)
        log.info("scheduler %s speaks %s wire", self.addr, "Damselfly's" if speaks else "Dragonfly's")
        return speaks

    async def delete_host(self, host_id: str, *, timeout: float = 5) -> None:
        try:
            await self._stub.DeleteHost(scheduler_pb2.DeleteHostRequest(host_id=host_id), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise SchedulerError(f"DeleteHost at {self.addr} failed: {e.code().name} {e.details()}") from e

    async def delete_peer(self, host_id: str, task_id: str, peer_id: str) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._stub.DeletePeer(
                scheduler_pb2.DeletePeerRequest(host_id=host_id, task_id=task_id, peer_id=peer_id), timeout=5
            )

    async def delete_task(self, host_id: str, task_id: str) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._stub.DeleteTask(
                scheduler_pb2.DeleteTaskRequest(host_id=host_id, task_id=task_id), timeout=5
            )

    def peer_stream(self, host_id: str, task_id: str, peer_id: str) -> PeerStream:
        stream = PeerStream(self._stub, host_id, task_id, peer_id)
        stream.addr = self.addr
        stream.on_lost = self._stream_lost
        return stream

    def _stream_lost(self, code: grpc.StatusCode | None) -> None:
        if code in LOST_CODES and self.on_lost is not None:
            self.on_lost(self, code)

    async def close(self) -> None:
        if self._speaks is not None and not self._speaks.done():  # a question still under way
            self._speaks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._speaks
        await self._channel.close()
