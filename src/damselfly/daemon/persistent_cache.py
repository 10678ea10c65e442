"""Persistent cache tasks on the daemon (``damselfly cache import/export/stat/delete``).

A persistent cache task is a file put into the swarm with no origin behind it.

* **Import** (``DfdaemonDownload.UploadPersistentCacheTask``): the file is
  *copied* into the piece store in one pass that also computes every piece's
  crc32 and the content's sha256 (:func:`stage_file`), then announced to the
  scheduler (``UploadPersistentCacheTaskStarted`` / ``Finished``), which asks
  ``replica_count - 1`` other hosts to fetch it. A copy, not a hard link: a
  link shares the inode, so editing or truncating the original in place would
  change the bytes under their recorded crc32 and every replica would reject
  them. The content is fsynced before the task counts as held: there is no
  origin to fetch it again from.
* **Task ID**: Dragonfly derives it from the crc32 of the content plus tag and
  application. Damselfly uses ``sha256("persistent-cache" | "sha256:<content
  sha256>" | tag | application)`` instead (:func:`persistent_cache_task_id`):
  a 32-bit ID collides by the birthday bound after some tens of thousands of
  files, which would serve one file's bytes for another's ID, and the store
  and the piece protocol address tasks by 64 hex digits. ``--id NAME`` names a
  task instead of hashing it (the ID is then the same sha256 over ``id:NAME``);
  a 64-hex ``--id`` is used verbatim (:func:`resolve_task_id`).
* **Export** (``DfdaemonDownload.DownloadPersistentCacheTask``) and
  **replication** (``DfdaemonUpload.DownloadPersistentCacheTask``, from the
  scheduler): a :class:`CacheConductor` — the normal P2P download with the
  ``AnnouncePersistentCachePeer`` stream instead of ``AnnouncePeer`` and no
  origin — fetches the pieces from the hosts the scheduler names
  (``SyncPersistentCachePieces`` then the piece protocol, crc32 per piece).
  The output is written like dfget's: complete, verified, renamed into place.
* **Expiry**: every copy carries ``expires_at`` (from the scheduler's created
  time plus the TTL); the cache GC removes it then, and never evicts a
  ``persistent`` copy (a replica the scheduler placed) before.

Owner of the downloads' asyncio tasks and of the channels to the scheduler:
:class:`PersistentCache`, closed by the daemon's ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import secrets
import shutil
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from .. import ids
from ..api import common_pb2, dfdaemon_pb2, scheduler_pb2, scheduler_pb2_grpc
from ..api.convert import duration, host_from_pb, piece_to_pb, seconds
from ..checksum import crc32
from ..domain import CandidateParent, DownloadSpec, EmptyTask, NormalTask, PieceInfo, TrafficType
from ..errors import (
    DamselflyError,
    DigestMismatch,
    DownloadTimeout,
    InvalidArgument,
    NoCandidateParents,
    NotFound,
    SchedulerError,
    StorageError,
)
from ..pieces import piece_length_for
from ..units import HOURS, MiB
from . import output
from .conductor import Conductor, ConductorDeps
from .peer_rpc import PeerRPC
from .scheduler_client import PeerStream
from .storage import PieceStore, TaskMeta

log = logging.getLogger(__name__)

PB = Any
DEFAULT_TTL = 1 * HOURS
DEFAULT_REPLICAS = 2
_STAGING = "import-staging"  # under the store root: same file system, so the rename is atomic
_CHUNK = 4 * MiB


class UnknownCacheTask(NotFound, SchedulerError):
    """The scheduler knows no such persistent cache task."""


# -- IDs -------------------------------------------------------------------------


def persistent_cache_task_id(basis: str, *, tag: str = "", application: str = "") -> str:
    """The task ID for ``basis`` (``sha256:<hex>`` of the content, or ``id:<name>``)."""
    h = hashlib.sha256(b"persistent-cache\0")
    for part in (basis, tag, application):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def resolve_task_id(text: str, *, tag: str = "", application: str = "") -> str:
    """A 64-hex ID as is; any other name hashed with the tag and application."""
    text = text.strip()
    if not text:
        raise InvalidArgument("no persistent cache task ID given")
    if len(text) == 64 and ids.is_task_id(text):
        return text
    return persistent_cache_task_id(f"id:{text}", tag=tag, application=application)


# -- import: one pass over the file ------------------------------------------------


@dataclass(slots=True)
class StagedFile:
    path: Path
    size: int
    piece_length: int
    sha256: str
    pieces: list[PieceInfo]


def stage_file(src: Path, dst: Path, piece_length: int, *, hash_content: bool = True) -> StagedFile:
    """Copy ``src`` to ``dst``, computing each piece's crc32 (and the sha256) on the way (blocking)."""
    sha = hashlib.sha256() if hash_content else None
    buf = bytearray(min(_CHUNK, piece_length))
    view = memoryview(buf)
    pieces: list[PieceInfo] = []
    try:
        fin = open(src, "rb", buffering=0)  # noqa: SIM115 - closed below, with the output
    except OSError as e:
        raise StorageError(e.errno, f"cannot read {src}: {e.strerror}") from e
    try:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            offset, crc, piece_start = 0, 0, 0
            while True:
                want = min(len(buf), piece_start + piece_length - offset)
                n = fin.readinto(view[:want])
                if n:
                    chunk = view[:n]
                    crc = crc32(chunk, crc)
                    if sha is not None:
                        sha.update(chunk)
                    written = 0
                    while written < n:
                        written += os.write(fd, chunk[written:])
                    offset += n
                if offset > piece_start and (offset - piece_start == piece_length or not n):
                    number = piece_start // piece_length
                    pieces.append(
                        PieceInfo(
                            number, piece_start, offset - piece_start, f"crc32:{crc}",
                            traffic_type=TrafficType.LOCAL_PEER,
                        )
                    )  # fmt: skip
                    piece_start, crc = offset, 0
                if not n:
                    break
        finally:
            os.close(fd)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(dst)
        raise StorageError(e.errno, f"cannot copy {src} into the store: {e.strerror}") from e
    finally:
        fin.close()
    return StagedFile(dst, offset, piece_length, sha.hexdigest() if sha else "", pieces)


# -- talking to the scheduler -----------------------------------------------------


@dataclass(slots=True)
class CacheTaskInfo:
    """What a daemon needs to know of a persistent cache task from the scheduler."""

    content_length: int
    piece_length: int
    piece_count: int
    expires_at: float  # wall clock; 0 = never


def task_info_from_pb(pb: PB) -> CacheTaskInfo:
    ttl = seconds(pb.ttl) if pb.HasField("ttl") else 0.0
    created = pb.created_at.ToNanoseconds() / 1e9 if pb.HasField("created_at") else time.time()
    return CacheTaskInfo(
        content_length=int(pb.content_length),
        piece_length=int(pb.piece_length),
        piece_count=int(pb.piece_count),
        expires_at=created + ttl if ttl > 0 else 0.0,
    )


def _scheduler_error(what: str, e: grpc.aio.AioRpcError) -> DamselflyError:
    details = e.details() or e.code().name
    if e.code() == grpc.StatusCode.NOT_FOUND:
        return UnknownCacheTask(details)
    if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
        return NoCandidateParents(details)
    if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(details)
    return SchedulerError(f"{what}: {e.code().name} {details}")


class CachePeerStream(PeerStream):
    """One ``AnnouncePersistentCachePeer`` stream, with :class:`PeerStream`'s queueing and methods.

    Answers come out as domain answers (:class:`NormalTask` / :class:`EmptyTask`);
    the task's geometry and expiry from the first one land in :attr:`task_info`.
    """

    task_info: CacheTaskInfo | None = None

    def _send(self, **request: Any) -> None:
        if self._closed:
            return
        if self._write_error is not None:
            raise self._write_error
        if self._call is None:
            self._call = self._stub.AnnouncePersistentCachePeer()
            loop = asyncio.get_running_loop()
            self._reader = loop.create_task(self._read_loop())
            self._writer = loop.create_task(self._write_loop())
        self._outbox.put_nowait(
            scheduler_pb2.AnnouncePersistentCachePeerRequest(
                host_id=self.host_id, task_id=self.task_id, peer_id=self.peer_id, **request
            )
        )

    async def _read_loop(self) -> None:
        assert self._call is not None
        try:
            while True:
                msg = await self._call.read()
                if msg is grpc.aio.EOF:
                    break
                kind = msg.WhichOneof("response")
                if kind == "empty_persistent_cache_task_response":
                    self._answers.put_nowait(EmptyTask())
                    continue
                parents = []
                for p in msg.normal_persistent_cache_task_response.candidate_cache_parents:
                    if self.task_info is None:
                        self.task_info = task_info_from_pb(p.task)
                    parents.append(
                        CandidateParent(
                            peer_id=p.id,
                            host=host_from_pb(p.host),
                            task_id=self.task_id,
                            content_length=int(p.task.content_length),
                            piece_count=int(p.task.piece_count),
                            state=p.state,
                        )
                    )
                self._answers.put_nowait(NormalTask(parents))
        except grpc.aio.AioRpcError as e:
            self._answers.put_nowait(_scheduler_error("persistent cache stream", e))
            return
        self._answers.put_nowait(SchedulerError("the scheduler closed the persistent cache stream"))

    def register_cache_peer(self, *, persistent: bool, tag: str, application: str) -> None:
        self._send(
            register_persistent_cache_peer_request=scheduler_pb2.RegisterPersistentCachePeerRequest(
                persistent=persistent, tag=tag or None, application=application or None
            )
        )

    def started(self) -> None:
        self._send(
            download_persistent_cache_peer_started_request=scheduler_pb2.DownloadPersistentCachePeerStartedRequest()
        )

    def reschedule(self, failed_parents: list[str], description: str) -> None:
        self._send(
            reschedule_persistent_cache_peer_request=scheduler_pb2.ReschedulePersistentCachePeerRequest(
                candidate_parents=[common_pb2.PersistentCachePeer(id=p) for p in failed_parents],
                description=description,
            )
        )

    def finished(self) -> None:
        self._send(
            download_persistent_cache_peer_finished_request=scheduler_pb2.DownloadPersistentCachePeerFinishedRequest()
        )

    def failed(self, description: str) -> None:
        self._send(
            download_persistent_cache_peer_failed_request=scheduler_pb2.DownloadPersistentCachePeerFailedRequest(
                description=description
            )
        )


class CacheSchedulerClient:
    """The persistent-cache RPCs of ``scheduler.v2.Scheduler``, on a channel of its own."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self._channel = grpc.aio.insecure_channel(addr)
        self._stub = scheduler_pb2_grpc.SchedulerStub(self._channel)

    async def _call(self, what: str, method: str, request: PB, timeout: float = 10) -> PB:
        try:
            return await getattr(self._stub, method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise _scheduler_error(f"{what} at {self.addr}", e) from None

    async def upload_started(self, request: PB) -> None:
        await self._call("UploadPersistentCacheTaskStarted", "UploadPersistentCacheTaskStarted", request)

    async def upload_finished(self, host_id: str, task_id: str, peer_id: str) -> PB:
        return await self._call(
            "UploadPersistentCacheTaskFinished",
            "UploadPersistentCacheTaskFinished",
            scheduler_pb2.UploadPersistentCacheTaskFinishedRequest(
                host_id=host_id, task_id=task_id, peer_id=peer_id
            ),
        )

    async def upload_failed(self, host_id: str, task_id: str, peer_id: str, description: str) -> None:
        with contextlib.suppress(DamselflyError):
            await self._call(
                "UploadPersistentCacheTaskFailed",
                "UploadPersistentCacheTaskFailed",
                scheduler_pb2.UploadPersistentCacheTaskFailedRequest(
                    host_id=host_id, task_id=task_id, peer_id=peer_id, description=description
                ),
            )

    async def stat_task(self, host_id: str, task_id: str) -> PB:
        return await self._call(
            "StatPersistentCacheTask",
            "StatPersistentCacheTask",
            scheduler_pb2.StatPersistentCacheTaskRequest(host_id=host_id, task_id=task_id),
        )

    async def delete_task(self, host_id: str, task_id: str) -> None:
        await self._call(
            "DeletePersistentCacheTask",
            "DeletePersistentCacheTask",
            scheduler_pb2.DeletePersistentCacheTaskRequest(host_id=host_id, task_id=task_id),
            timeout=60,
        )

    async def delete_peer(self, host_id: str, task_id: str) -> None:
        """Forget this host's copy (an empty peer ID: whichever peer this host has)."""
        with contextlib.suppress(DamselflyError):
            await self._call(
                "DeletePersistentCachePeer",
                "DeletePersistentCachePeer",
                scheduler_pb2.DeletePersistentCachePeerRequest(host_id=host_id, task_id=task_id),
            )

    def peer_stream(self, host_id: str, task_id: str, peer_id: str) -> CachePeerStream:
        return CachePeerStream(self._stub, host_id, task_id, peer_id)

    async def close(self) -> None:
        await self._channel.close()


class CachePeerRPC(PeerRPC):
    """:class:`PeerRPC` whose piece sync is ``SyncPersistentCachePieces``."""

    async def sync_pieces(self, host: Any, host_id: str, task_id: str) -> AsyncIterator[tuple[int, int, int]]:
        call = self._stub(host).SyncPersistentCachePieces(
            dfdaemon_pb2.SyncPersistentCachePiecesRequest(host_id=host_id, task_id=task_id)
        )
        try:
            async for resp in call:
                yield int(resp.number), int(resp.offset), int(resp.length)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED:
                return
            raise NotFound(
                f"SyncPersistentCachePieces with {host.id} failed: {e.code().name} {e.details()}"
            ) from e
        finally:
            call.cancel()


# -- one download ---------------------------------------------------------------------


class CacheConductor(Conductor):
    """The normal P2P download, over the persistent-cache stream, with no origin to fall back to."""

    def __init__(
        self,
        deps: ConductorDeps,
        task_id: str,
        spec: DownloadSpec,
        client: CacheSchedulerClient,
        *,
        persistent: bool,
    ) -> None:
        super().__init__(deps, task_id, spec)
        self.client = client
        self.persistent = persistent

    async def _run(self) -> None:
        stream = self.client.peer_stream(self.deps.host_id, self.task_id, self.peer_id)
        self._stream = stream
        try:
            stream.register_cache_peer(
                persistent=self.persistent, tag=self.spec.tag, application=self.spec.application
            )
            answer = await stream.next_answer(self.deps.schedule_timeout)
            info = stream.task_info
            if info is None:  # an empty task's answer says nothing of it: ask
                info = task_info_from_pb(await self.client.stat_task(self.deps.host_id, self.task_id))
            if isinstance(answer, NormalTask):
                self.deps.store.set_content_length(self.task_id, info.content_length, info.piece_length)
            self.deps.store.set_persistent_cache(
                self.task_id, persistent=self.persistent, expires_at=info.expires_at
            )
            try:
                await self._follow(answer)
            except BaseException as e:
                with contextlib.suppress(Exception):
                    stream.failed(str(e) or type(e).__name__)
                raise
        finally:
            with contextlib.suppress(Exception):
                await stream.close()
            self._stop_syncs()

    async def _origin_only(self, why: str) -> None:
        raise NoCandidateParents(f"{why}; a persistent cache task has no origin to fall back to")


# -- the daemon's persistent cache ----------------------------------------------------------


class PersistentCache:
    """Imports, exports, replicas and deletes of persistent cache tasks on one daemon."""

    def __init__(
        self,
        store: PieceStore,
        deps: ConductorDeps,
        *,
        scheduler_addr: str | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.clock = clock
        self.client = CacheSchedulerClient(scheduler_addr) if scheduler_addr else None
        self.peer_rpc = CachePeerRPC()
        # Content fsynced before the task counts as held (on_success=None): no origin to refetch it from.
        self.deps = dataclasses.replace(deps, peer_rpc=self.peer_rpc, on_success=None)
        self.staging = store.root / _STAGING
        shutil.rmtree(self.staging, ignore_errors=True)  # imports a crash interrupted
        self._running: dict[str, asyncio.Task[None]] = {}

    @property
    def host_id(self) -> str:
        return self.deps.host_id

    def running(self) -> set[str]:
        return set(self._running)

    async def close(self) -> None:
        jobs = list(self._running.values())
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        self._running.clear()
        await self.peer_rpc.close()
        if self.client is not None:
            await self.client.close()

    def _require_client(self) -> CacheSchedulerClient:
        if self.client is None:
            raise SchedulerError("no scheduler configured: persistent cache tasks need one")
        return self.client

    # -- import -------------------------------------------------------------------------

    async def import_file(self, req: PB) -> PB:
        """``UploadPersistentCacheTask``: copy the file in, announce it, let the scheduler replicate it."""
        path = Path(req.path)
        if not path.is_absolute():
            raise InvalidArgument(f"path {req.path!r} must be absolute")
        try:
            st = await asyncio.to_thread(os.stat, path)
        except OSError as e:
            raise InvalidArgument(f"cannot read {path}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"{path} is not a regular file")
        size = st.st_size
        piece_length = piece_length_for(size, req.piece_length if req.HasField("piece_length") else None)
        ttl = seconds(req.ttl) if req.HasField("ttl") else 0.0
        ttl = ttl if ttl > 0 else DEFAULT_TTL
        replicas = req.persistent_replica_count or DEFAULT_REPLICAS
        tag, app = req.tag, req.application
        named = req.content_for_calculating_task_id if req.HasField("content_for_calculating_task_id") else ""
        self.staging.mkdir(exist_ok=True)
        staged_path = self.staging / f"{secrets.token_hex(8)}.part"
        staged = await asyncio.to_thread(stage_file, path, staged_path, piece_length, hash_content=not named)
        try:
            if named:
                task_id = resolve_task_id(named, tag=tag, application=app)
            else:
                task_id = persistent_cache_task_id(f"sha256:{staged.sha256}", tag=tag, application=app)
            peer_id = ids.peer_id(self.deps.host_ip, self.deps.hostname, seed=self.deps.is_seed)
            if self.client is not None:
                await self.client.upload_started(
                    scheduler_pb2.UploadPersistentCacheTaskStartedRequest(
                        host_id=self.host_id, task_id=task_id, peer_id=peer_id,
                        persistent_replica_count=replicas, tag=tag or None, application=app or None,
                        piece_length=staged.piece_length, content_length=staged.size,
                        piece_count=len(staged.pieces), ttl=duration(ttl),
                    )
                )  # fmt: skip
            try:
                await asyncio.to_thread(self._adopt, task_id, staged, tag, app)
                self.store.set_persistent_cache(task_id, persistent=True, expires_at=self.clock() + ttl)
            except BaseException as e:
                if self.client is not None:
                    await self.client.upload_failed(self.host_id, task_id, peer_id, str(e))
                raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                staged_path.unlink()
        log.info("imported %s as persistent cache task %s (%d bytes)", path, task_id[:12], staged.size)
        if self.client is None:
            meta = self.store.get(task_id)
            assert meta is not None
            return local_task_pb(meta, replicas=replicas, ttl=ttl)
        return await self.client.upload_finished(self.host_id, task_id, peer_id)

    def _adopt(self, task_id: str, staged: StagedFile, tag: str, application: str) -> None:
        """Make the staged copy the task's content (blocking). A task already held complete stays."""
        store = self.store
        meta = store.get(task_id)
        if meta is not None and meta.state == "succeeded" and meta.is_complete:
            return
        if task_id in self._running:
            raise InvalidArgument(f"persistent cache task {task_id} is being downloaded here; try again")
        if meta is not None:
            store.delete_task(task_id)
        store.create_task(task_id, tag=tag, application=application)
        os.replace(staged.path, store.content_path(task_id))
        store.set_content_length(task_id, staged.size, staged.piece_length)
        for piece in staged.pieces:
            store.finish_piece(task_id, piece)
        store.mark_succeeded(task_id)  # fsyncs the content, then the metadata

    # -- export and replication ------------------------------------------------------------

    def ensure(self, task_id: str, spec: DownloadSpec, *, persistent: bool) -> asyncio.Task[None]:
        """Start downloading the task unless it is downloading already (then join that download)."""
        job = self._running.get(task_id)
        if job is not None:
            return job
        conductor = CacheConductor(self.deps, task_id, spec, self._require_client(), persistent=persistent)
        job = asyncio.get_running_loop().create_task(conductor.run(), name=f"pcache-{task_id[:12]}")
        self._running[task_id] = job

        def done(t: asyncio.Task[None]) -> None:
            if self._running.get(task_id) is t:
                del self._running[task_id]
            if not t.cancelled() and t.exception() is not None:
                meta = self.store.get(task_id)
                if meta is not None and not meta.pieces:  # nothing worth keeping (e.g. unknown ID)
                    with contextlib.suppress(DamselflyError, OSError):
                        self.store.delete_task(task_id)

        job.add_done_callback(done)
        return job

    async def download(self, req: PB, *, remote: bool) -> AsyncIterator[PB]:
        """``DownloadPersistentCacheTask``: progress messages; the output (local callers only) at the end."""
        task_id = resolve_task_id(req.task_id, tag=req.tag, application=req.application)
        out = None
        if not remote and req.HasField("output_path") and req.output_path:
            out = output.check_output_path(req.output_path)
        spec = DownloadSpec(url="", tag=req.tag, application=req.application)
        timeout = seconds(req.timeout) if req.HasField("timeout") else None
        deadline = time.monotonic() + timeout if timeout else None
        with self.store.using(task_id):
            held = self.store.get(task_id)
            if held is None or held.state != "succeeded" or not held.is_complete:
                job: asyncio.Task[None] | None = self.ensure(task_id, spec, persistent=req.persistent)
            else:
                job = None
                if req.persistent and not held.persistent:
                    self.store.set_persistent_cache(task_id, persistent=True, expires_at=held.expires_at)
            async for msg in self._follow(task_id, job, deadline):
                yield msg
            if req.HasField("digest") and req.digest:
                await asyncio.to_thread(output.verify_content, self.store.content_path(task_id), req.digest)
            if out is not None:
                how = await asyncio.to_thread(
                    output.export, self.store.content_path(task_id), out, force_hard_link=req.force_hard_link
                )
                log.info("exported persistent cache task %s to %s (%s)", task_id[:12], out, how)
            self.store.touch(task_id)

    async def _follow(
        self, task_id: str, job: asyncio.Task[None] | None, deadline: float | None
    ) -> AsyncIterator[PB]:
        sent: set[int] = set()
        started = False
        while True:
            meta = self.store.get(task_id)
            version = -1
            if meta is not None:
                version = meta.version
                if not started and meta.content_length is not None:
                    started = True
                    yield self._response(
                        task_id,
                        download_persistent_cache_task_started_response=dfdaemon_pb2.DownloadPersistentCacheTaskStartedResponse(
                            content_length=meta.content_length
                        ),
                    )
                if started:
                    for number in sorted(meta.pieces.keys() - sent):
                        sent.add(number)
                        yield self._response(
                            task_id,
                            download_piece_finished_response=dfdaemon_pb2.DownloadPieceFinishedResponse(
                                piece=piece_to_pb(meta.pieces[number])
                            ),
                        )
            if job is None or job.done():
                if job is not None and started and meta is not None and len(sent) < len(meta.pieces):
                    continue  # report the last pieces first
                break
            wait = 1.0
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    raise DownloadTimeout("the persistent cache task did not download in time")
            if meta is None:
                await asyncio.wait({job}, timeout=wait)
            else:
                waiter = asyncio.ensure_future(self.store.wait_for_change(task_id, version, wait))
                await asyncio.wait({waiter, job}, return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():
                    waiter.cancel()
                    with contextlib.suppress(BaseException):
                        await waiter
        if job is not None:
            exc = job.exception() if not job.cancelled() else asyncio.CancelledError()
            if exc is not None:
                raise exc
        meta = self.store.get(task_id)
        if meta is None or not meta.is_complete:
            raise DamselflyError("the download ended without the complete content")

    def _response(self, task_id: str, **kw: Any) -> PB:
        return dfdaemon_pb2.DownloadPersistentCacheTaskResponse(host_id=self.host_id, task_id=task_id, **kw)

    # -- stat, delete, forget, restore ---------------------------------------------------------

    async def stat(self, task_id_or_name: str) -> PB:
        task_id = resolve_task_id(task_id_or_name)
        if self.client is not None:
            try:
                return await self.client.stat_task(self.host_id, task_id)
            except UnknownCacheTask:
                pass
        meta = self.store.get(task_id)
        if meta is None or not meta.persistent_cache:
            raise NotFound(f"persistent cache task {task_id} not found")
        return local_task_pb(meta, replicas=0, ttl=0.0)

    async def delete(self, task_id_or_name: str) -> None:
        """Remove the task from every host (through the scheduler), this one included."""
        task_id = resolve_task_id(task_id_or_name)
        known = False
        if self.client is not None:
            try:
                await self.client.delete_task(self.host_id, task_id)
                known = True
            except UnknownCacheTask:
                pass
        if await self.delete_local(task_id):
            known = True
        if not known:
            raise NotFound(f"persistent cache task {task_id} not found")

    async def delete_local(self, task_id: str) -> bool:
        """Drop this host's copy (cancelling a download of it); False when there is none."""
        job = self._running.get(task_id)
        if job is not None:
            job.cancel()
            with contextlib.suppress(BaseException):
                await job
        meta = self.store.get(task_id)
        if meta is None or not meta.persistent_cache:
            return job is not None
        self.store.delete_task(task_id)
        log.info("deleted persistent cache task %s", task_id[:12])
        return True

    async def forget(self, task_id: str) -> None:
        """Before the cache GC removes a copy: the scheduler must stop offering this host for it."""
        if self.client is not None:
            await self.client.delete_peer(self.host_id, task_id)

    async def restore(self) -> int:
        """Tell a (restarted) scheduler which persistent cache tasks this host holds; returns how many."""
        if self.client is None:
            return 0
        count = 0
        now = self.clock()
        for meta in self.store.tasks():
            if not meta.persistent_cache or meta.state != "succeeded" or not meta.is_complete:
                continue
            left = meta.expires_at - now if meta.expires_at else DEFAULT_TTL
            if left <= 0 or meta.content_length is None or meta.piece_length is None:
                continue
            peer_id = ids.peer_id(self.deps.host_ip, self.deps.hostname, seed=self.deps.is_seed)
            try:
                await self.client.upload_started(
                    scheduler_pb2.UploadPersistentCacheTaskStartedRequest(
                        host_id=self.host_id, task_id=meta.task_id, peer_id=peer_id,
                        persistent_replica_count=1, tag=meta.tag or None,
                        application=meta.application or None,
                        piece_length=meta.piece_length, content_length=meta.content_length,
                        piece_count=meta.piece_count or 0, ttl=duration(left),
                    )
                )  # fmt: skip
                await self.client.upload_finished(self.host_id, meta.task_id, peer_id)
                count += 1
            except DamselflyError as e:
                log.warning("could not restore persistent cache task %s: %s", meta.task_id[:12], e)
        return count


def local_task_pb(meta: TaskMeta, *, replicas: int, ttl: float) -> PB:
    """A ``PersistentCacheTask`` from what this host alone knows (no scheduler, or it forgot)."""
    pb = common_pb2.PersistentCacheTask(
        id=meta.task_id,
        persistent_replica_count=replicas,
        current_persistent_replica_count=1 if meta.persistent else 0,
        current_replica_count=1 if meta.is_complete else 0,
        tag=meta.tag or None,
        application=meta.application or None,
        piece_length=meta.piece_length or 0,
        content_length=meta.content_length or 0,
        piece_count=meta.piece_count or 0,
        state="Succeeded" if meta.state == "succeeded" else meta.state.capitalize(),
    )
    if ttl > 0 or meta.expires_at:
        pb.ttl.CopyFrom(duration(ttl if ttl > 0 else max(0.0, meta.expires_at - meta.created_at)))
    pb.created_at.FromNanoseconds(int(meta.created_at * 1e9))
    pb.updated_at.FromNanoseconds(int(meta.updated_at * 1e9))
    return pb


# -- gRPC glue: mixed into the daemon's servicers (daemon/service.py) ------------------------


def _status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, NotFound):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, NoCandidateParents):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, DigestMismatch):
        return grpc.StatusCode.DATA_LOSS, str(exc)
    if isinstance(exc, DownloadTimeout | TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc) or "timed out"
    if isinstance(exc, SchedulerError):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, StorageError | OSError):
        return grpc.StatusCode.INTERNAL, f"storage: {exc}"
    if isinstance(exc, DamselflyError):
        return grpc.StatusCode.INTERNAL, str(exc)
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"


class _PersistentCacheRPCBase:
    persistent_cache: PersistentCache | None = None

    async def _pc(self, context: Any) -> PersistentCache:
        if self.persistent_cache is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "persistent cache is not available on this daemon"
            )
        assert self.persistent_cache is not None
        return self.persistent_cache

    async def _pc_download(self, request: PB, context: Any, *, remote: bool) -> AsyncIterator[PB]:
        pc = await self._pc(context)
        try:
            async for msg in pc.download(request, remote=remote):
                yield msg
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            log.info("persistent cache download failed: %s", e)
            await context.abort(*_status(e))

    async def _pc_unary(self, context: Any, fn: Callable[[PersistentCache], Any]) -> Any:
        pc = await self._pc(context)
        try:
            return await fn(pc)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            await context.abort(*_status(e))


class PersistentCacheDownloadRPCs(_PersistentCacheRPCBase):
    """``DfdaemonDownload`` persistent-cache methods (the local API dfcache uses)."""

    async def UploadPersistentCacheTask(self, request: PB, context: Any) -> PB:
        return await self._pc_unary(context, lambda pc: pc.import_file(request))

    async def DownloadPersistentCacheTask(self, request: PB, context: Any) -> AsyncIterator[PB]:
        async for msg in self._pc_download(request, context, remote=False):
            yield msg

    async def StatPersistentCacheTask(self, request: PB, context: Any) -> PB:
        return await self._pc_unary(context, lambda pc: pc.stat(request.task_id))

    async def DeletePersistentCacheTask(self, request: PB, context: Any) -> PB:
        from google.protobuf import empty_pb2

        await self._pc_unary(context, lambda pc: pc.delete(request.task_id))
        return empty_pb2.Empty()


class PersistentCacheUploadRPCs(_PersistentCacheRPCBase):
    """``DfdaemonUpload`` persistent-cache methods (the scheduler's replication and delete)."""

    async def DownloadPersistentCacheTask(self, request: PB, context: Any) -> AsyncIterator[PB]:
        async for msg in self._pc_download(request, context, remote=True):
            yield msg

    async def DeletePersistentCacheTask(self, request: PB, context: Any) -> PB:
        from google.protobuf import empty_pb2

        async def delete(pc: PersistentCache) -> None:
            if not await pc.delete_local(request.task_id):
                raise NotFound(f"persistent cache task {request.task_id} not found here")

        await self._pc_unary(context, delete)
        return empty_pb2.Empty()


def local_delete_handler(servicer: PersistentCacheDownloadRPCs) -> grpc.GenericRpcHandler:
    """``/dfdaemon.v2.DfdaemonDownload/DeletePersistentCacheTask`` for the unix socket.

    The dragonfly-api version we use has ``DeletePersistentCacheTask`` only on
    ``DfdaemonUpload``; the local API gets the same method (same messages)
    under ``DfdaemonDownload`` so ``damselfly cache delete`` talks to its own
    daemon like every other dfcache command.
    """
    from google.protobuf import empty_pb2

    return grpc.method_handlers_generic_handler(
        "dfdaemon.v2.DfdaemonDownload",
        {
            "DeletePersistentCacheTask": grpc.unary_unary_rpc_method_handler(
                servicer.DeletePersistentCacheTask,
                request_deserializer=dfdaemon_pb2.DeletePersistentCacheTaskRequest.FromString,
                response_serializer=empty_pb2.Empty.SerializeToString,
            )
        },
    )
