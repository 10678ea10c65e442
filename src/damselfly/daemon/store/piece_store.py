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
* Therefore, on restart, every journaled piece of an unfinished task
  (pending/running/failed) is **re-verified** against its crc32 by reading the
  content; pieces that do not match, a torn last line, and lines that do not
  fit the task's geometry are **dropped**. A task that was running comes back
  ``pending`` with its verified pieces, so a new download resumes from them.
* :meth:`PieceStore.mark_succeeded` fsyncs the content, then writes the final
  metadata (with every piece) atomically (temp file, fsync, rename, fsync dir)
  and removes the journal. Succeeded tasks are trusted on restart without
  re-reading their content. Only such metadata (durable content) is fsynced;
  the metadata of unfinished or not-yet-durable tasks is replaced atomically
  but not fsynced: after a crash it is the old or the new version, or torn
  (the task is dropped), and pieces are re-verified either way.

Task IDs are checked with :func:`damselfly.ids.is_task_id` before any path is
built, so a request cannot reach outside ``root``.

Thread-safety: the store's state is guarded by one lock, so blocking calls
(``mark_succeeded`` fsyncs) may run in ``asyncio.to_thread``; waiters are woken
on their own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...checksum import crc32
from ...domain import PieceInfo, TrafficType
from ...errors import InvalidArgument, NotFound, StorageError
from ...ids import is_task_id
from ...pieces import piece_count as _piece_count
from ...units import MiB
from .receiving import ReceivingPieces

log = logging.getLogger(__name__)

STATES = ("pending", "running", "succeeded", "failed")
_META = "metadata.json"
_JOURNAL = "pieces.journal"
_CONTENT = "content"
# An empty file whose mtime is the task's last access (the LRU order): stamped
# without rewriting the metadata or an fsync, so a read never waits on the disk.
_ACCESSED = "accessed"
_VERIFY_CHUNK = 1 * MiB
_TRASH = "trash"  # evicted task dirs wait here (renamed atomically) until removed


@dataclass(slots=True)
class TaskMeta:
    """What the store knows about one task. Owned by :class:`PieceStore`; treat as read-only."""

    task_id: str
    url: str = ""
    tag: str = ""
    application: str = ""
    content_length: int | None = None
    piece_length: int | None = None
    state: str = "pending"
    pieces: dict[int, PieceInfo] = field(default_factory=dict)
    response_header: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0
    accessed_at: float = 0.0
    version: int = 0
    failure: str = ""
    # False between mark_succeeded and make_durable: the content may still sit
    # in dirty pages, so after a crash the pieces are re-verified on load.
    durable: bool = True
    # Persistent cache tasks (dfcache, daemon/persistent_cache.py): no origin; ``persistent``
    # copies are never evicted by LRU; every copy goes at ``expires_at`` (wall clock; 0: never).
    persistent_cache: bool = False
    persistent: bool = False
    expires_at: float = 0.0

    @property
    def piece_count(self) -> int | None:
        if self.content_length is None or not self.piece_length:
            return None
        return _piece_count(self.content_length, self.piece_length)

    @property
    def is_complete(self) -> bool:
        count = self.piece_count
        return count is not None and len(self.pieces) == count

    def to_json(self, *, with_pieces: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "task_id": self.task_id,
            "url": self.url,
            "tag": self.tag,
            "application": self.application,
            "content_length": self.content_length,
            "piece_length": self.piece_length,
            "state": self.state,
            "response_header": self.response_header,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "accessed_at": self.accessed_at,
            "version": self.version,
            "failure": self.failure,
            "durable": self.durable,
        }
        if self.persistent_cache:
            data.update(persistent_cache=True, persistent=self.persistent, expires_at=self.expires_at)
        if with_pieces:
            data["pieces"] = [_piece_to_json(p) for p in sorted(self.pieces.values(), key=_number)]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskMeta:
        meta = cls(
            task_id=str(data["task_id"]),
            url=str(data.get("url", "")),
            tag=str(data.get("tag", "")),
            application=str(data.get("application", "")),
            content_length=_opt_int(data.get("content_length")),
            piece_length=_opt_int(data.get("piece_length")),
            state=str(data.get("state", "pending")),
            response_header={str(k): str(v) for k, v in dict(data.get("response_header", {})).items()},
            created_at=float(data.get("created_at", 0.0)),
            updated_at=float(data.get("updated_at", 0.0)),
            accessed_at=float(data.get("accessed_at", 0.0)),
            version=int(data.get("version", 0)),
            failure=str(data.get("failure", "")),
            durable=bool(data.get("durable", True)),
            persistent_cache=bool(data.get("persistent_cache", False)),
            persistent=bool(data.get("persistent", False)),
            expires_at=float(data.get("expires_at", 0.0)),
        )
        for raw in data.get("pieces", []):
            piece = _piece_from_json(raw)
            meta.pieces[piece.number] = piece
        return meta


def _number(p: PieceInfo) -> int:
    return p.number


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _piece_to_json(p: PieceInfo) -> dict[str, Any]:
    return {
        "n": p.number,
        "o": p.offset,
        "l": p.length,
        "d": p.digest,
        "t": int(p.traffic_type),
        "c": p.cost_s,
        "p": p.parent_id,
    }


def _piece_from_json(raw: dict[str, Any]) -> PieceInfo:
    return PieceInfo(
        number=int(raw["n"]),
        offset=int(raw["o"]),
        length=int(raw["l"]),
        digest=str(raw["d"]),
        traffic_type=TrafficType(int(raw.get("t", 1))),
        cost_s=float(raw.get("c", 0.0)),
        parent_id=str(raw.get("p", "")),
    )


def _valid_id(task_id: object) -> bool:
    # is_task_id's regex lets a trailing newline through ("$"); a path must not.
    return isinstance(task_id, str) and len(task_id) == 64 and is_task_id(task_id)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_json(path: Path, data: dict[str, Any], *, sync: bool) -> None:
    """Replace ``path`` with ``data`` (temp file, rename); with ``sync``, durably (fsyncs)."""
    tmp = path.with_name(path.name + ".tmp")
    raw = json.dumps(data, separators=(",", ":")).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, raw)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync:
        _fsync_dir(path.parent)


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (``os.pwrite`` may write less than asked)."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def crc32_of_range(
    fd: int,
    offset: int,
    length: int,
    buf: bytearray,
    each: Callable[[memoryview, int], None] | None = None,
) -> int | None:
    """crc32 of ``length`` bytes at ``offset``, or None if the file is shorter.

    ``each(chunk, position)`` sees every chunk read, in order, while it is in ``buf``.
    """
    view = memoryview(buf)
    crc = 0
    pos, end = offset, offset + length
    while pos < end:
        n = os.preadv(fd, [view[: min(len(buf), end - pos)]], pos)
        if n <= 0:
            return None
        crc = crc32(view[:n], crc)
        if each is not None:
            each(view[:n], pos)
        pos += n
    return crc


class PieceStore:
    """Pieces of every task this daemon holds, on disk under ``root``.

    Owns the task metadata (in memory, mirrored to disk) and the waiters of
    :meth:`wait_for_change`. Content bytes are written by callers through
    :meth:`open_write_fd` (``os.pwrite`` at the piece offset) and recorded with
    :meth:`finish_piece` once verified.
    """

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self._clock = clock
        self._lock = threading.RLock()
        self._tasks: dict[str, TaskMeta] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._journals: dict[str, int] = {}
        # Tasks in use (a piece being sent, an export): eviction skips them. task_id -> holders.
        self._pins: dict[str, int] = {}
        # Pieces on their way in from a parent, served while they land (daemon/store/receiving.py).
        self.receiving = ReceivingPieces(self.notify)
        (self.root / "tasks").mkdir(parents=True, exist_ok=True)
        self._load()

    # ------------------------------------------------------------------ paths

    def _dir(self, task_id: str) -> Path:
        if not _valid_id(task_id):
            raise InvalidArgument(f"not a task id: {task_id!r}")
        return self.root / "tasks" / task_id[:3] / task_id

    def content_path(self, task_id: str) -> Path:
        return self._dir(task_id) / _CONTENT

    # ------------------------------------------------------------------ loading

    def _load(self) -> None:
        # Evictions a crash interrupted: the task was renamed away whole, so its
        # leftovers are just removed.
        trash = self.root / _TRASH
        if trash.is_dir():
            for leftover in trash.iterdir():
                self.purge(leftover)
        for meta_path in sorted((self.root / "tasks").glob(f"*/*/{_META}")):
            task_dir = meta_path.parent
            if not _valid_id(task_dir.name) or task_dir.parent.name != task_dir.name[:3]:
                continue
            try:
                meta = TaskMeta.from_json(json.loads(meta_path.read_bytes()))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("dropping task %s: unreadable metadata (%s)", task_dir.name, e)
                shutil.rmtree(task_dir, ignore_errors=True)
                continue
            if meta.task_id != task_dir.name:
                log.warning("dropping task dir %s: metadata names %s", task_dir.name, meta.task_id)
                continue
            with contextlib.suppress(OSError):
                meta.accessed_at = max(meta.accessed_at, (task_dir / _ACCESSED).stat().st_mtime)
            if meta.state != "succeeded":
                meta.pieces = self._recover_pieces(meta, task_dir)
                if meta.state == "running":
                    meta.state = "pending"
            elif not meta.durable:
                # Stopped before the content reached the disk: trust only verified pieces.
                pieces = list(meta.pieces.values())
                meta.pieces = self._recover_pieces(meta, task_dir, extra=pieces)
                if meta.is_complete:
                    meta.durable = True
                    self._save_meta(meta, with_pieces=True)
                    self._dir(meta.task_id).joinpath(_JOURNAL).unlink(missing_ok=True)
                else:
                    log.warning("task %s lost pieces in a crash; it will resume", meta.task_id)
                    meta.state = "pending"
            elif not meta.is_complete or not (task_dir / _CONTENT).exists():
                log.warning("task %s was succeeded but is incomplete on disk; recovering", meta.task_id)
                meta.state = "pending"
                meta.pieces = self._recover_pieces(meta, task_dir, extra=list(meta.pieces.values()))
            self._tasks[meta.task_id] = meta

    def _recover_pieces(
        self, meta: TaskMeta, task_dir: Path, extra: list[PieceInfo] | None = None
    ) -> dict[int, PieceInfo]:
        """Journaled pieces of an unfinished task whose bytes still match their crc32."""
        candidates: list[PieceInfo] = list(extra or [])
        try:
            lines = (task_dir / _JOURNAL).read_bytes().split(b"\n")
        except FileNotFoundError:
            lines = []
        for line in lines:
            if not line.strip():
                continue
            try:
                candidates.append(_piece_from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                log.info("task %s: skipping a torn or bad journal line", meta.task_id)
        kept: dict[int, PieceInfo] = {}
        try:
            fd = os.open(task_dir / _CONTENT, os.O_RDONLY)
        except FileNotFoundError:
            return kept
        buf = bytearray(_VERIFY_CHUNK)
        try:
            for piece in candidates:
                if piece.number in kept or not self._fits(meta, piece):
                    continue
                crc = crc32_of_range(fd, piece.offset, piece.length, buf)
                if crc is not None and piece.digest == f"crc32:{crc}":
                    kept[piece.number] = piece
                else:
                    log.info("task %s: dropping piece %d, bytes do not match", meta.task_id, piece.number)
        finally:
            os.close(fd)
        self._rewrite_journal(task_dir, kept)
        return kept

    def _rewrite_journal(self, task_dir: Path, pieces: dict[int, PieceInfo]) -> None:
        tmp = task_dir / (_JOURNAL + ".tmp")
        lines = b"".join(
            json.dumps(_piece_to_json(p), separators=(",", ":")).encode() + b"\n"
            for p in sorted(pieces.values(), key=_number)
        )
        tmp.write_bytes(lines)
        os.replace(tmp, task_dir / _JOURNAL)

    @staticmethod
    def _fits(meta: TaskMeta, piece: PieceInfo) -> bool:
        if piece.number < 0 or piece.offset < 0 or piece.length <= 0:
            return False
        if meta.piece_length and piece.offset != piece.number * meta.piece_length:
            return False
        if meta.piece_length and piece.length > meta.piece_length:
            return False
        if meta.content_length is not None:
            end = min(meta.content_length, piece.offset + (meta.piece_length or piece.length))
            if piece.offset >= meta.content_length or piece.offset + piece.length != end:
                return False
        return True

    # ------------------------------------------------------------------ queries

    def get(self, task_id: str) -> TaskMeta | None:
        # Only validated IDs are ever stored (create_task and _load check them), so a plain
        # lookup is the check: this runs several times per piece on every download.
        return self._tasks.get(task_id) if type(task_id) is str else None

    def tasks(self) -> list[TaskMeta]:
        with self._lock:
            return list(self._tasks.values())

    def has_piece(self, task_id: str, number: int) -> bool:
        meta = self.get(task_id)
        return meta is not None and number in meta.pieces

    def _require(self, task_id: str) -> TaskMeta:
        meta = self.get(task_id)
        if meta is None:
            if not _valid_id(task_id):
                raise InvalidArgument(f"not a task id: {task_id!r}")
            raise NotFound(f"task {task_id} is not in the store")
        return meta

    def usage(self) -> int:
        """Bytes on disk (allocated blocks, so sparse content counts what is written)."""
        total = 0
        for meta in self.tasks():
            try:
                for entry in os.scandir(self._dir(meta.task_id)):
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
            except FileNotFoundError:
                continue
        return total

    # ------------------------------------------------------------------ changes

    def _save_meta(self, meta: TaskMeta, *, with_pieces: bool = False) -> None:
        # Only metadata that records durable content is fsynced. Every other state
        # is rebuilt from the journal and the pieces' crc32 after a crash, and a
        # torn file drops the task (never a wrong piece). An fsync here would wait,
        # on ext4, for other files' dirty data in the same journal commit: seconds
        # on the event loop while a large task is being flushed.
        sync = meta.state == "succeeded" and meta.durable
        try:
            _atomic_write_json(
                self._dir(meta.task_id) / _META, meta.to_json(with_pieces=with_pieces), sync=sync
            )
        except OSError as e:
            raise StorageError(e.errno, f"cannot write metadata of task {meta.task_id}: {e.strerror}") from e

    def notify(self, task_id: str) -> None:
        """Wake the task's waiters (something about it changed besides its pieces)."""
        with self._lock:
            meta = self._tasks.get(task_id)
            if meta is None:
                return
            meta.version += 1
            self._wake(task_id)

    def _changed(self, meta: TaskMeta) -> None:
        now = self._clock()
        meta.version += 1
        meta.updated_at = now
        self._wake(meta.task_id)

    def create_task(self, task_id: str, *, url: str = "", tag: str = "", application: str = "") -> TaskMeta:
        """The task's metadata, created if new. Idempotent; a failed task is reset to pending
        (keeping its verified pieces, so a retry resumes)."""
        task_dir = self._dir(task_id)
        with self._lock:
            meta = self._tasks.get(task_id)
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
                task_dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(task_dir / _CONTENT, os.O_RDWR | os.O_CREAT, 0o644)
                os.close(fd)
            except OSError as e:
                raise StorageError(e.errno, f"cannot create task {task_id}: {e.strerror}") from e
            self._save_meta(meta)
            self._tasks[task_id] = meta
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
            misfits = [n for n, p in meta.pieces.items() if not self._fits(geometry, p)]
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
        self._require(task_id)
        try:
            return os.open(self.content_path(task_id), os.O_RDONLY)
        except OSError as e:
            raise StorageError(e.errno, f"cannot open task {task_id} for reading: {e.strerror}") from e

    def finish_piece(self, task_id: str, piece: PieceInfo) -> None:
        """Record a piece whose bytes the caller wrote and verified; wakes waiters.

        Recording the same piece twice is a no-op. A piece that does not fit the
        task's geometry (offset, length) is refused with InvalidArgument.
        """
        with self._lock:
            meta = self._require(task_id)
            if piece.number in meta.pieces:
                return
            if not self._fits(meta, piece):
                raise InvalidArgument(
                    f"piece {piece.number} (offset {piece.offset}, length {piece.length}) does not fit "
                    f"task {task_id} (content {meta.content_length}, piece length {meta.piece_length})"
                )
            line = json.dumps(_piece_to_json(piece), separators=(",", ":")).encode() + b"\n"
            try:
                fd = self._journals.get(task_id)
                if fd is None:
                    fd = os.open(self._dir(task_id) / _JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                    self._journals[task_id] = fd
                os.write(fd, line)
            except OSError as e:
                raise StorageError(e.errno, f"cannot journal piece of task {task_id}: {e.strerror}") from e
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
        with self._lock:
            meta = self._require(task_id)
            meta.state = "succeeded"
            meta.failure = ""
            meta.durable = durable
            meta.version += 1
            meta.updated_at = self._clock()
            self._save_meta(meta, with_pieces=True)
            self._close_journal(task_id)
            with contextlib.suppress(FileNotFoundError):
                (self._dir(task_id) / _JOURNAL).unlink()
            self._wake(task_id)

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
            marker = self._dir(task_id) / _ACCESSED
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
        total = 0
        try:
            for entry in os.scandir(self._dir(task_id)):
                total += entry.stat(follow_symlinks=False).st_blocks * 512
        except (FileNotFoundError, InvalidArgument):
            pass
        return total

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
        task_dir = self._dir(task_id)
        with self._lock:
            self._close_journal(task_id)
            self._tasks.pop(task_id, None)
            trash_dir = self.root / _TRASH
            name = f"{task_id}.{os.getpid()}.{time.monotonic_ns()}"
            target: Path | None = trash_dir / name
            try:
                trash_dir.mkdir(exist_ok=True)
                os.rename(task_dir, trash_dir / name)
            except FileNotFoundError:
                target = None
            except OSError as e:
                log.warning("cannot move task %s to the trash (%s); removing it in place", task_id, e)
                shutil.rmtree(task_dir, ignore_errors=True)
                target = None
            with contextlib.suppress(OSError):
                task_dir.parent.rmdir()  # only when empty
            self._wake(task_id)
            return target

    @staticmethod
    def purge(path: Path) -> None:
        """Remove an evicted task's files (blocking; a crash midway is finished on the next load)."""
        shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        """Close journal fds (the store stays usable; they reopen on demand)."""
        with self._lock:
            for task_id in list(self._journals):
                self._close_journal(task_id)

    # ------------------------------------------------------------------ waiting

    def _wake(self, task_id: str) -> None:
        for fut in self._waiters.pop(task_id, ()):
            loop = fut.get_loop()
            if loop.is_closed():
                continue
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                _resolve(fut)
            else:
                loop.call_soon_threadsafe(_resolve, fut)

    async def wait_for_change(self, task_id: str, seen_version: int, timeout: float | None = None) -> int:
        """Wait until the task's version differs from ``seen_version``; return the version.

        Returns at once when it already differs, and the current version on
        timeout. Any number of waiters may wait on one task; every change wakes
        them all. Raises NotFound when the task is (or becomes) unknown.
        """
        meta = self._require(task_id)
        if meta.version != seen_version:
            return meta.version
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            meta = self._require(task_id)
            if meta.version != seen_version:
                return meta.version
            self._waiters.setdefault(task_id, set()).add(fut)
        try:
            await asyncio.wait({fut}, timeout=timeout)
        finally:
            with self._lock:
                waiters = self._waiters.get(task_id)
                if waiters is not None:
                    waiters.discard(fut)
                    if not waiters:
                        del self._waiters[task_id]
        return self._require(task_id).version


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
