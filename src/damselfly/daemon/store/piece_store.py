"""The piece store on disk: one content file per task, metadata that survives restarts.

Layout under ``root``::

    tasks/<id[:3]>/<id>/content         the task's bytes, sparse, pieces written in place
    tasks/<id[:3]>/<id>/metadata.json   task fields; the full piece list once succeeded
    tasks/<id[:3]>/<id>/pieces.journal  JSON lines, one per finished piece (unfinished tasks)
    tasks/<id[:3]>/<id>/accessed        empty; its mtime is the last access (LRU order)

Crash consistency:

* A piece is recorded (journal line appended, in-memory ``pieces``) only after
  the caller wrote its bytes and checked its crc32. Journal appends are not
  fsynced: after a crash, a journal line may outlive the bytes it describes.
* Therefore, on restart (:mod:`.recovery`), every journaled piece of an
  unfinished task (pending/running/failed) is **re-verified** against its crc32
  by reading the content; pieces that do not match, a torn last line, and lines that do not
  fit the task's geometry are **dropped**. A task that was running comes back
  ``pending`` with its verified pieces, so a new download resumes from them.
* :meth:`PieceStore.mark_succeeded` fsyncs the content, then writes the final
  metadata (with every piece) atomically (temp file, fsync, rename, fsync dir)
  and removes the journal. Succeeded tasks are trusted on restart without
  re-reading their content. Only such metadata (durable content) is fsynced;
  the metadata of unfinished or not-yet-durable tasks is replaced atomically
  but not fsynced: after a crash it is the old or the new version, or torn
  (the task is dropped), and pieces are re-verified either way.

Sealed content: when a task succeeds its content file is made read-only and its
mtime set to a stamp recorded in the metadata (``sealed_ns``). dfget's output is
a hard link to it; a write through that link by anyone who still may (root)
moves the mtime, and every reader's open (:meth:`PieceStore.open_read_fd`), every
piece served (the piece port's open file) and every local hit check it
(:meth:`PieceStore.check_unchanged`): changed content is dropped, never served.

Task IDs are checked with :func:`damselfly.ids.is_task_id` before any path is
built, so a request cannot reach outside ``root``.

Thread-safety: the store's state is guarded by one lock, so blocking calls
(``mark_succeeded`` fsyncs) may run in ``asyncio.to_thread``; waiters are woken
on their own event loop (:mod:`.changes`).

Long because: every change of a task's state goes through this one object and its
lock (create, pieces, success and sealing, deletion, eviction); the byte-level and
record-level helpers already live in the neighbours.

The store's neighbours: :mod:`.metadata` (the task record and its JSON),
:mod:`.files` (file names, byte helpers), :mod:`.recovery` and :mod:`.loading`
(the load at start), :mod:`.changes` (waiting for a task to change).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ...domain import PieceInfo
from ...errors import InvalidArgument, NotFound, StorageError
from .changes import ChangeWaiters, TaskChanges
from .files import (
    ACCESSED,
    CONTENT,
    JOURNAL,
    TASKS,
    TRASH,
    dir_usage,
    seal_content,
    task_dir,
    unchanged,
    valid_task_id,
)
from .loading import StoreLoader
from .metadata import TaskMeta, journal_line, save_meta
from .receiving import ReceivingPieces
from .recovery import empty_trash

log = logging.getLogger(__name__)


class PieceStore:
    """Pieces of every task this daemon holds, on disk under ``root``.

    Owns the task metadata (in memory, mirrored to disk) and the readers
    waiting for a task to change (:meth:`changes`). Content bytes are written
    by callers through :meth:`open_write_fd` (``os.pwrite`` at the piece
    offset) and recorded with :meth:`finish_piece` once verified.
    """

    def __init__(
        self, root: Path, *, clock: Callable[[], float] = time.time, background_load: bool = False
    ) -> None:
        self.root = Path(root)
        self._clock = clock
        self._lock = threading.RLock()
        self._tasks: dict[str, TaskMeta] = {}
        self._waiters = ChangeWaiters()
        self._journals: dict[str, int] = {}
        # Tasks in use (a piece being sent, an export): eviction skips them. task_id -> holders.
        self._pins: dict[str, int] = {}
        # Pieces on their way in from a parent, served while they land (daemon/store/receiving.py).
        self.receiving = ReceivingPieces(self.notify)
        (self.root / TASKS).mkdir(parents=True, exist_ok=True)
        empty_trash(self.root)
        # Every task on disk into ``_tasks``: now, or (``background_load``, the daemon) in a
        # thread while the store already serves (``loading.loaded``, ``loading.until_loaded``).
        self.loading = StoreLoader(self.root, self._lock, self._tasks)
        self.loading.start(background=background_load)

    # ------------------------------------------------------------------ paths

    def _dir(self, task_id: str) -> Path:
        if not valid_task_id(task_id):
            raise InvalidArgument(f"not a task id: {task_id!r}")
        return task_dir(self.root, task_id)

    def content_path(self, task_id: str) -> Path:
        return self._dir(task_id) / CONTENT

    # ------------------------------------------------------------------ queries

    def get(self, task_id: str) -> TaskMeta | None:
        # Only validated IDs are ever stored (create_task and recovery check them), so a plain
        # lookup is the check: this runs several times per piece on every download.
        meta = self._tasks.get(task_id) if type(task_id) is str else None
        if meta is None and not self.loading.loaded and valid_task_id(task_id):
            return self.loading.load_one(task_id)  # held, but not reached by the load yet?
        return meta

    def tasks(self) -> list[TaskMeta]:
        """The tasks known; while the store still loads (``loading.loaded``), not all of them."""
        with self._lock:
            return list(self._tasks.values())

    def has_piece(self, task_id: str, number: int) -> bool:
        meta = self.get(task_id)
        return meta is not None and number in meta.pieces

    def _require(self, task_id: str) -> TaskMeta:
        meta = self.get(task_id)
        if meta is None:
            if not valid_task_id(task_id):
                raise InvalidArgument(f"not a task id: {task_id!r}")
            raise NotFound(f"task {task_id} is not in the store")
        return meta

    def usage(self) -> int:
        """Bytes on disk (allocated blocks, so sparse content counts what is written)."""
        return sum(self.task_usage(meta.task_id) for meta in self.tasks())

    # ------------------------------------------------------------------ changes

    def _save_meta(self, meta: TaskMeta, *, with_pieces: bool = False) -> None:
        save_meta(self._dir(meta.task_id), meta, with_pieces=with_pieces)

    def notify(self, task_id: str) -> None:
        """Wake the task's waiters (something about it changed besides its pieces)."""
        with self._lock:
            meta = self._tasks.get(task_id)
            if meta is None:
                return
            meta.version += 1
            self._waiters.wake(task_id)

    def _changed(self, meta: TaskMeta) -> None:
        now = self._clock()
        meta.version += 1
        meta.updated_at = now
        self._waiters.wake(meta.task_id)

    def create_task(self, task_id: str, *, url: str = "", tag: str = "", application: str = "") -> TaskMeta:
        """The task's metadata, created if new. Idempotent; a failed task is reset to pending
        (keeping its verified pieces, so a retry resumes). Its creation wakes readers waiting
        for it to appear."""
        path = self._dir(task_id)
        with self._lock:
            meta = self.get(task_id)
            if meta is not None:
                if meta.state == "failed":
                    meta.state = "pending"
                    meta.failure = ""
                    self._changed(meta)
                    self._save_meta(meta)
                return meta
            now = self._clock()
            meta = TaskMeta(
                task_id=task_id,
                url=url,
                tag=tag,
                application=application,
                created_at=now,
                updated_at=now,
                accessed_at=now,
            )
            try:
                path.mkdir(parents=True, exist_ok=True)
                fd = os.open(path / CONTENT, os.O_RDWR | os.O_CREAT, 0o644)
                os.close(fd)
            except OSError as e:
                raise StorageError(e.errno, f"cannot create task {task_id}: {e.strerror}") from e
            self._save_meta(meta)
            self._tasks[task_id] = meta
            self._waiters.wake(task_id)
            return meta

    def set_content_length(
        self,
        task_id: str,
        content_length: int,
        piece_length: int,
        response_header: dict[str, str] | None = None,
    ) -> None:
        """Fix the task's size and piece length; sizes the content file (sparse).

        May be called again with the same numbers (e.g. at the end of a chunked
        download). Changing them while pieces are held is refused.
        """
        if content_length < 0 or piece_length <= 0:
            raise InvalidArgument(f"bad sizes: content_length={content_length} piece_length={piece_length}")
        with self._lock:
            meta = self._require(task_id)
            if meta.pieces and meta.piece_length not in (None, piece_length):
                raise InvalidArgument(
                    f"task {task_id} holds pieces of length {meta.piece_length}, not {piece_length}"
                )
            if meta.pieces and meta.content_length is not None and meta.content_length != content_length:
                raise InvalidArgument(
                    f"task {task_id} holds pieces of {meta.content_length} bytes, not {content_length}"
                )
            geometry = TaskMeta(task_id, content_length=content_length, piece_length=piece_length)
            misfits = [n for n, p in meta.pieces.items() if not geometry.fits(p)]
            if misfits:
                raise InvalidArgument(
                    f"task {task_id}: pieces {sorted(misfits)[:5]} do not fit content length "
                    f"{content_length} with piece length {piece_length}"
                )
            try:
                os.truncate(self.content_path(task_id), content_length)
            except OSError as e:
                raise StorageError(e.errno, f"cannot size task {task_id}: {e.strerror}") from e
            meta.content_length = content_length
            meta.piece_length = piece_length
            if response_header is not None:
                meta.response_header = dict(response_header)
            self._changed(meta)
            self._save_meta(meta)

    def set_piece_length(self, task_id: str, piece_length: int) -> None:
        """Fix the piece length before the content length is known (chunked origin responses)."""
        if piece_length <= 0:
            raise InvalidArgument(f"bad piece length {piece_length}")
        with self._lock:
            meta = self._require(task_id)
            if meta.pieces and meta.piece_length not in (None, piece_length):
                raise InvalidArgument(f"task {task_id} already holds pieces of length {meta.piece_length}")
            meta.piece_length = piece_length
            self._changed(meta)
            self._save_meta(meta)

    def open_write_fd(self, task_id: str) -> int:
        """A raw fd opened O_RDWR on the content; the caller pwrite()s at piece offsets and closes it."""
        self._require(task_id)
        try:
            return os.open(self.content_path(task_id), os.O_RDWR)
        except OSError as e:
            raise StorageError(e.errno, f"cannot open task {task_id} for writing: {e.strerror}") from e

    def open_read_fd(self, task_id: str) -> int:
        """The content opened read-only; a sealed content changed since raises NotFound (and the
        task is dropped: see :meth:`check_unchanged`)."""
        self._require(task_id)
        try:
            fd = os.open(self.content_path(task_id), os.O_RDONLY)
        except OSError as e:
            raise StorageError(e.errno, f"cannot open task {task_id} for reading: {e.strerror}") from e
        try:
            self.check_unchanged(task_id, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def check_unchanged(self, task_id: str, st: os.stat_result | None = None) -> None:
        """Raise NotFound, and drop the task, when its sealed content was written since it
        succeeded (``st``: the content's stat, else taken here).

        dfget's output is a hard link to the content (read-only): a user who can still write
        it (root, or the daemon's own user) and edits their output in place changes these
        bytes. They are then never served as good, to a peer or to the next dfget: the task is
        forgotten and downloaded again when asked for."""
        meta = self.get(task_id)
        if meta is None or not meta.sealed_ns or meta.state != "succeeded":
            return
        if st is not None and unchanged(st, meta.sealed_ns, meta.content_length):
            return
        # The caller's stat may predate the seal (taken as the task completed in another
        # thread, which stamps the file before it records the stamp): look again now.
        try:
            st = os.stat(self.content_path(task_id))
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise StorageError(e.errno, f"cannot stat task {task_id}: {e.strerror}") from e
        if st is not None and unchanged(st, meta.sealed_ns, meta.content_length):
            return
        log.warning(
            "the content of task %s changed on disk after it was stored (an output edited in "
            "place?); dropping the task",
            task_id,
        )
        self.delete_task(task_id)
        raise NotFound(f"task {task_id} is not in the store (its content changed on disk)")

    def finish_piece(self, task_id: str, piece: PieceInfo) -> None:
        """Record a piece whose bytes the caller wrote and verified; wakes waiters.

        Recording the same piece twice is a no-op. A piece that does not fit the
        task's geometry (offset, length) is refused with InvalidArgument.
        """
        with self._lock:
            meta = self._require(task_id)
            if piece.number in meta.pieces:
                return
            if not meta.fits(piece):
                raise InvalidArgument(
                    f"piece {piece.number} (offset {piece.offset}, length {piece.length}) does not fit "
                    f"task {task_id} (content {meta.content_length}, piece length {meta.piece_length})"
                )
            line = journal_line(piece)
            try:
                fd = self._journals.get(task_id)
                if fd is None:
                    fd = os.open(self._dir(task_id) / JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                    self._journals[task_id] = fd
                os.write(fd, line)
            except OSError as e:
                what = f"cannot journal a piece of task {task_id} in the store: {e.strerror}"
                raise StorageError(e.errno, what) from e
            meta.pieces[piece.number] = piece
            self._changed(meta)

    def _close_journal(self, task_id: str) -> None:
        fd = self._journals.pop(task_id, None)
        if fd is not None:
            os.close(fd)

    def _set_state(self, task_id: str, state: str, failure: str = "") -> TaskMeta:
        meta = self._require(task_id)
        meta.state = state
        meta.failure = failure
        self._changed(meta)
        return meta

    def mark_running(self, task_id: str) -> None:
        with self._lock:
            meta = self._set_state(task_id, "running")
            self._save_meta(meta)

    def mark_succeeded(self, task_id: str, *, durable: bool = True) -> None:
        """Record the task as complete and write the final metadata atomically.

        With ``durable`` (the default) the content is fsynced first, which blocks
        on disk I/O (seconds for a large task with dirty pages): call it through
        ``asyncio.to_thread`` from the event loop. With ``durable=False`` the
        content is left to the page cache and the task is marked not yet
        durable; :meth:`make_durable` finishes the job off the critical path. A
        crash in between costs a crc32 check of the task's pieces on the next
        load, never a wrong piece served as good.
        """
        meta = self._require(task_id)
        if not meta.is_complete:
            raise InvalidArgument(
                f"task {task_id} is not complete: {len(meta.pieces)} of {meta.piece_count} pieces"
            )
        if durable:
            self._fsync_content(task_id)
        try:
            sealed = seal_content(self.content_path(task_id))
        except OSError as e:
            raise StorageError(e.errno, f"cannot seal task {task_id}: {e.strerror}") from e
        with self._lock:
            meta = self._require(task_id)
            meta.sealed_ns = sealed
            meta.state = "succeeded"
            meta.failure = ""
            meta.durable = durable
            meta.version += 1
            meta.updated_at = self._clock()
            self._save_meta(meta, with_pieces=True)
            self._close_journal(task_id)
            with contextlib.suppress(FileNotFoundError):
                (self._dir(task_id) / JOURNAL).unlink()
            self._waiters.wake(task_id)

    def make_durable(self, task_id: str) -> None:
        """fsync a succeeded task's content, then record that it is durable (blocking)."""
        meta = self.get(task_id)
        if meta is None or meta.state != "succeeded" or meta.durable:
            return
        # The long fsync runs without the lock, so other tasks' pieces keep flowing.
        self._fsync_content(task_id)
        with self._lock:
            meta = self._tasks.get(task_id)
            if meta is None or meta.state != "succeeded":
                return
            meta.durable = True
            self._save_meta(meta, with_pieces=True)

    def _fsync_content(self, task_id: str) -> None:
        try:
            fd = os.open(self.content_path(task_id), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise StorageError(e.errno, f"cannot sync task {task_id}: {e.strerror}") from e

    def mark_failed(self, task_id: str, reason: str = "") -> None:
        with self._lock:
            meta = self._set_state(task_id, "failed", reason)
            self._save_meta(meta)

    def set_persistent_cache(self, task_id: str, *, persistent: bool, expires_at: float) -> None:
        """Mark the task a persistent cache task (dfcache).

        ``persistent`` copies are kept from LRU eviction (never downgraded once
        set); every copy is removed at ``expires_at``.
        """
        with self._lock:
            meta = self._require(task_id)
            meta.persistent_cache = True
            meta.persistent = persistent or meta.persistent
            meta.expires_at = expires_at
            self._save_meta(meta, with_pieces=meta.state == "succeeded")

    def touch(self, task_id: str) -> None:
        """Note an access (for LRU eviction), kept across restarts as a marker file's mtime."""
        with self._lock:
            meta = self._require(task_id)
            meta.accessed_at = now = self._clock()
            marker = self._dir(task_id) / ACCESSED
        try:
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT, 0o644))
            os.utime(marker, (now, now))
        except FileNotFoundError:
            pass  # deleted meanwhile
        except OSError as e:
            raise StorageError(e.errno, f"cannot note an access to task {task_id}: {e.strerror}") from e

    def delete_task(self, task_id: str) -> None:
        """Forget the task and remove its files. Open fds stay readable (POSIX); waiters wake.

        The task leaves ``tasks/`` at once (a rename into the trash); its files go in a
        background thread, since freeing a large file's blocks takes a while (0.3-0.5 s per
        GiB on an ext4 mounted ``discard``) and callers are often on an event loop. A purge
        cut short by an exit is finished on the next load."""
        trash = self._detach(task_id)
        if trash is not None:
            threading.Thread(target=self.purge, args=(trash,), name="purge", daemon=True).start()

    # ------------------------------------------------------------------ eviction

    @contextlib.contextmanager
    def using(self, task_id: str) -> Iterator[None]:
        """Hold the task in use (eviction skips it) for the ``with`` block; counts as an access."""
        with self._lock:
            self._pins[task_id] = self._pins.get(task_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._pins[task_id] - 1
                if left:
                    self._pins[task_id] = left
                else:
                    del self._pins[task_id]
            self.note_access(task_id)

    def pin_count(self, task_id: str) -> int:
        with self._lock:
            return self._pins.get(task_id, 0)

    def pinned(self) -> set[str]:
        with self._lock:
            return set(self._pins)

    def note_access(self, task_id: str) -> None:
        """Record a use (a piece uploaded) in memory only: the LRU order, without a disk write."""
        meta = self.get(task_id)
        if meta is not None:
            meta.accessed_at = self._clock()

    def task_usage(self, task_id: str) -> int:
        """Bytes the task's files occupy (allocated blocks; sparse content counts what is written)."""
        return dir_usage(task_dir(self.root, task_id)) if valid_task_id(task_id) else 0

    def evict(self, task_id: str, *, busy: set[str] | frozenset[str] = frozenset()) -> Path | None:
        """Take the task out of the store unless it is pinned or in ``busy``; return its trash path.

        The task dir is renamed into ``<root>/trash/`` in one atomic step, so a
        crash leaves either the whole task in place or nothing of it under
        ``tasks/`` (the trash is emptied on the next load). The caller removes
        the files with :meth:`purge`, off the event loop if it likes.
        """
        with self._lock:
            if task_id in self._pins or task_id in busy or task_id not in self._tasks:
                return None
            return self._detach(task_id)

    def _detach(self, task_id: str) -> Path | None:
        path = self._dir(task_id)
        with self._lock:
            self._close_journal(task_id)
            self._tasks.pop(task_id, None)
            trash_dir = self.root / TRASH
            name = f"{task_id}.{os.getpid()}.{time.monotonic_ns()}"
            target: Path | None = trash_dir / name
            try:
                trash_dir.mkdir(exist_ok=True)
                os.rename(path, trash_dir / name)
            except FileNotFoundError:
                target = None
            except OSError as e:
                log.warning("cannot move task %s to the trash (%s); removing it in place", task_id, e)
                shutil.rmtree(path, ignore_errors=True)
                target = None
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only when empty
            self._waiters.wake(task_id)
            return target

    @staticmethod
    def purge(path: Path) -> None:
        """Remove an evicted task's files (blocking; a crash midway is finished on the next load)."""
        shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        """Stop a load under way; close journal fds (the store stays usable; they reopen on demand)."""
        self.loading.stop()
        with self._lock:
            for task_id in list(self._journals):
                self._close_journal(task_id)

    # ------------------------------------------------------------------ waiting

    def readers_waiting(self, task_id: str) -> int:
        """Readers parked on the task's next change (a cursor's wait): a point tests wait for."""
        return self._waiters.waiting(task_id)

    def changes(self, task_id: str, *, until: asyncio.Future[Any] | None = None) -> TaskChanges:
        """A cursor over the task's changes, for a reader that looks at the task and waits in
        turn (see :mod:`.changes`); ``until`` (the download's job) also ends its waits.

        Make it before the first look: a change after that is never missed.
        """
        return TaskChanges(self.get, self._waiters, task_id, until=until)
