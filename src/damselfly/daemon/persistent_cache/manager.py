"""One daemon's persistent cache tasks: import, export/replication downloads, stat, delete, restore.

Domain types in and out (:mod:`damselfly.domain`); the messages are made in ``rpc.py``
(the daemon's servicers) and ``client.py`` (the scheduler's RPCs).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import stat
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path

from ... import ids
from ...domain import (
    CacheExport,
    CacheImport,
    DownloadProgress,
    DownloadSpec,
    NormalTask,
    PersistentCacheTaskInfo,
)
from ...errors import (
    DamselflyError,
    InvalidArgument,
    NoCandidateParents,
    NotFound,
    SchedulerError,
)
from ...pieces import piece_length_for
from ...security.tls import TLSFiles
from ...units import HOURS
from ..download import output
from ..download.conductor import Conductor, ConductorDeps
from ..download.progress import follow_download
from ..download.tasks import RunningDownloads
from ..store.metadata import TaskMeta
from ..store.piece_store import PieceStore
from ..threads import cancel_and_wait
from .client import CachePeerRPC, CacheSchedulerClient, UnknownCacheTask
from .content import StagedFile, named_task_id, resolve_task_id, stage_file, task_id_suffix

log = logging.getLogger(__name__)

DEFAULT_TTL = 1 * HOURS
DEFAULT_REPLICAS = 2
_STAGING = "import-staging"  # under the store root: same file system, so the rename is atomic


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
                info = await self.client.stat_task(self.deps.host_id, self.task_id)
            if isinstance(answer, NormalTask):
                self.deps.store.set_content_length(self.task_id, info.content_length, info.piece_length)
            self.deps.store.set_persistent_cache(
                self.task_id, persistent=self.persistent, expires_at=info.expires_at(time.time())
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
        tls: TLSFiles | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.clock = clock
        self.client = CacheSchedulerClient(scheduler_addr, tls=tls) if scheduler_addr else None
        self.peer_rpc = CachePeerRPC(tls=tls)
        # Content fsynced before the task counts as held (on_success=None): no origin to refetch it from.
        self.deps = dataclasses.replace(deps, peer_rpc=self.peer_rpc, on_success=None)
        self.staging = store.root / _STAGING
        shutil.rmtree(self.staging, ignore_errors=True)  # imports a crash interrupted
        self._running: RunningDownloads[CacheConductor] = RunningDownloads("pcache", self._failed)

    @property
    def host_id(self) -> str:
        return self.deps.host_id

    def running(self) -> set[str]:
        return set(self._running.conductors())

    async def close(self) -> None:
        await self._running.close()
        await self.peer_rpc.close()
        if self.client is not None:
            await self.client.close()

    def _require_client(self) -> CacheSchedulerClient:
        if self.client is None:
            raise SchedulerError("no scheduler configured: persistent cache tasks need one")
        return self.client

    # -- import -------------------------------------------------------------------------

    async def import_file(self, req: CacheImport) -> PersistentCacheTaskInfo:
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
        piece_length = piece_length_for(size, req.piece_length)
        ttl = req.ttl_s if req.ttl_s is not None and req.ttl_s > 0 else DEFAULT_TTL
        replicas = req.persistent_replica_count or DEFAULT_REPLICAS
        tag, app = req.tag, req.application
        named = req.content_for_calculating_task_id
        self.staging.mkdir(exist_ok=True)
        staged_path = self.staging / f"{secrets.token_hex(8)}.part"
        suffix = None if named else task_id_suffix(tag=tag, application=app, piece_length=req.piece_length)
        staged = await asyncio.to_thread(
            stage_file, path, staged_path, piece_length, hash_content=not named, id_suffix=suffix
        )
        try:
            task_id = named_task_id(named) if named else staged.task_id
            peer_id = ids.peer_id(self.deps.host_ip, self.deps.hostname, seed=self.deps.is_seed)
            if self.client is not None:
                await self.client.upload_started(
                    self.host_id, peer_id,
                    PersistentCacheTaskInfo(
                        task_id, persistent_replica_count=replicas, tag=tag, application=app,
                        piece_length=staged.piece_length, content_length=staged.size,
                        piece_count=len(staged.pieces), ttl_s=ttl,
                    ),
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
            return local_task_info(meta, replicas=replicas, ttl=ttl)
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
        client = self._require_client()
        job, _ = self._running.start_or_join(
            task_id,
            lambda: CacheConductor(self.deps, task_id, spec, client, persistent=persistent),
            CacheConductor.run,
        )
        return job

    def _failed(self, task_id: str, error: BaseException) -> None:
        meta = self.store.get(task_id)
        if meta is not None and not meta.pieces:  # nothing worth keeping (e.g. unknown ID)
            with contextlib.suppress(DamselflyError, OSError):
                self.store.delete_task(task_id)

    async def download(self, req: CacheExport, *, remote: bool) -> AsyncGenerator[DownloadProgress, None]:
        """``DownloadPersistentCacheTask``: progress as it goes; the output (local callers only) last."""
        task_id = resolve_task_id(req.task_id)
        out = None
        if not remote and req.output_path:
            out = output.check_output_path(req.output_path)
        spec = DownloadSpec(url="", tag=req.tag, application=req.application)
        timeout = req.timeout_s
        deadline = time.monotonic() + timeout if timeout else None
        with self.store.using(task_id):
            held = self.store.get(task_id)
            if held is None or held.state != "succeeded" or not held.is_complete:
                job: asyncio.Task[None] | None = self.ensure(task_id, spec, persistent=req.persistent)
            else:
                job = None
                if req.persistent and not held.persistent:
                    self.store.set_persistent_cache(task_id, persistent=True, expires_at=held.expires_at)
                if remote:  # the scheduler asks for a replica this host holds: make sure it counts it
                    await self.announce_held(held)
            try:
                async for msg in self._follow(task_id, job, deadline):
                    yield msg
            except UnknownCacheTask:
                raise UnknownCacheTask(_unknown(req.task_id, task_id)) from None
            if req.digest:
                await asyncio.to_thread(output.verify_content, self.store.content_path(task_id), req.digest)
            if out is not None:
                how = await asyncio.to_thread(
                    output.export, self.store.content_path(task_id), out, force_hard_link=req.force_hard_link
                )
                log.info("exported persistent cache task %s to %s (%s)", task_id[:12], out, how)
            self.store.touch(task_id)

    def _follow(
        self, task_id: str, job: asyncio.Task[None] | None, deadline: float | None
    ) -> AsyncIterator[DownloadProgress]:
        late = "the persistent cache task did not download in time"
        return follow_download(self.store, task_id, job, deadline=deadline, late=late)

    # -- stat, delete, forget, restore ---------------------------------------------------------

    async def stat(self, task_id_or_name: str) -> PersistentCacheTaskInfo:
        task_id = resolve_task_id(task_id_or_name)
        if self.client is not None:
            try:
                return await self.client.stat_task(self.host_id, task_id)
            except UnknownCacheTask:
                pass
        meta = self.store.get(task_id)
        if meta is None or not meta.persistent_cache:
            raise NotFound(_unknown(task_id_or_name, task_id))
        return local_task_info(meta, replicas=0, ttl=0.0)

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
            raise NotFound(_unknown(task_id_or_name, task_id))

    async def delete_local(self, task_id: str) -> bool:
        """Drop this host's copy (cancelling a download of it); False when there is none."""
        job = self._running.job(task_id)
        if job is not None:
            await cancel_and_wait([job])
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
        count = 0
        for meta in self.store.tasks():
            if meta.persistent_cache and await self.announce_held(meta):
                count += 1
        return count

    async def announce_held(self, meta: TaskMeta) -> bool:
        """Register a complete copy this host holds with the scheduler (Started + Finished).

        After a scheduler restart, and when the scheduler asks for a replica this
        host already has: otherwise it would not count it, and ask again.
        """
        if self.client is None or meta.state != "succeeded" or not meta.is_complete:
            return False
        left = meta.expires_at - self.clock() if meta.expires_at else DEFAULT_TTL
        if left <= 0 or meta.content_length is None or meta.piece_length is None:
            return False
        peer_id = ids.peer_id(self.deps.host_ip, self.deps.hostname, seed=self.deps.is_seed)
        try:
            await self.client.upload_started(
                self.host_id, peer_id,
                PersistentCacheTaskInfo(
                    meta.task_id, persistent_replica_count=1, tag=meta.tag, application=meta.application,
                    piece_length=meta.piece_length, content_length=meta.content_length,
                    piece_count=meta.piece_count or 0, ttl_s=left,
                ),
            )  # fmt: skip
            await self.client.upload_finished(self.host_id, meta.task_id, peer_id)
        except DamselflyError as e:
            log.warning("could not announce persistent cache task %s: %s", meta.task_id[:12], e)
            return False
        return True


def _unknown(given: str, task_id: str) -> str:
    named = "" if given.strip() == task_id else f"{given.strip()!r} (ID {task_id})"
    return f"no persistent cache task {named or task_id}: never imported, expired or deleted"


def local_task_info(meta: TaskMeta, *, replicas: int, ttl: float) -> PersistentCacheTaskInfo:
    """The task from what this host alone knows (no scheduler, or it forgot)."""
    return PersistentCacheTaskInfo(
        meta.task_id,
        persistent_replica_count=replicas,
        current_persistent_replica_count=1 if meta.persistent else 0,
        current_replica_count=1 if meta.is_complete else 0,
        tag=meta.tag,
        application=meta.application,
        piece_length=meta.piece_length or 0,
        content_length=meta.content_length or 0,
        piece_count=meta.piece_count or 0,
        state=meta.state.capitalize(),  # Dragonfly's spelling: "Succeeded"
        ttl_s=ttl if ttl > 0 else (max(0.0, meta.expires_at - meta.created_at) if meta.expires_at else None),
        created_at=meta.created_at,
        updated_at=meta.updated_at,
    )
