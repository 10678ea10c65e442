"""Bringing the store's directory back to a state it can trust, at start.

After a crash the disk may hold journal lines whose bytes never reached the
content file, a torn last journal line, metadata written for content that was
still in dirty pages, or an eviction cut short (see :mod:`.piece_store` on
crash consistency). :func:`recover` reads ``root`` and returns the tasks it can
stand behind:

* :func:`plan` decides, from a task's metadata alone, how far to trust it
  (a pure function); :func:`recover_task` carries that out.
* Pieces that are not trusted are re-read and kept only if they fit the task's
  geometry and match their crc32 (:func:`recover_pieces`); the journal is
  rewritten with exactly those.

These functions run before the store serves anything, so they take no lock.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from ...domain import PieceInfo
from ...units import MiB
from .files import ACCESSED, CONTENT, JOURNAL, META, TASKS, TRASH, crc32_of_range, valid_task_id
from .metadata import TaskMeta, journal_lines, piece_from_json, save_meta

log = logging.getLogger(__name__)

_VERIFY_CHUNK = 1 * MiB


class Plan(enum.Enum):
    """How much of a task found on disk is trusted."""

    TRUST = "trust"  # succeeded, durable, complete, content there: taken as it is
    RESUME = "resume"  # unfinished: journaled pieces re-checked; a running task comes back pending
    CONFIRM = "confirm"  # succeeded before the content was synced: every piece re-checked
    REPAIR = "repair"  # succeeded but incomplete on disk: pieces re-checked, the task resumes


def plan(meta: TaskMeta, *, has_content: bool) -> Plan:
    """Decide how to recover a task from its metadata and whether its content file exists."""
    if meta.state != "succeeded":
        return Plan.RESUME
    if not meta.durable:
        return Plan.CONFIRM
    if not meta.is_complete or not has_content:
        return Plan.REPAIR
    return Plan.TRUST


def recover(root: Path) -> list[TaskMeta]:
    """The tasks under ``root`` that can be trusted, each restored to a consistent state.

    Leftovers of interrupted evictions are removed; a task dir whose metadata is
    unreadable is removed; one without metadata (a crash inside ``create_task``)
    or with metadata naming another task is left alone and not loaded.

    A store may hold 100 000 tasks, so the walk is two ``scandir`` levels with
    string paths, one read of each metadata file and one ``stat`` of each
    ``content`` and ``accessed``: 100 k tasks in 8.9 s in one process on the
    shared 2-core machine, against 12.4 s with pathlib's glob, sorted ``Path``
    objects and ``exists()``. The daemon loads in a thread and serves meanwhile
    (:class:`~.piece_store.PieceStore` ``background_load``; benchmarks/daemon_restart.py).
    """
    empty_trash(root)
    tasks = []
    for task_dir in task_dirs(root):
        meta = load_task(task_dir)
        if meta is not None:
            tasks.append(meta)
    return tasks


def load_task(task_dir: Path | str) -> TaskMeta | None:
    """One task dir: its metadata read (:func:`read_task`) and recovered (:func:`recover_task`)."""
    meta = read_task(task_dir)
    return recover_task(meta, task_dir) if meta is not None else None


def empty_trash(root: Path) -> None:
    """Finish evictions a crash interrupted: the task was renamed away whole, so its leftovers go."""
    trash = root / TRASH
    if trash.is_dir():
        for leftover in trash.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)


def task_dirs(root: Path) -> list[str]:
    """The task dirs under ``root/tasks`` named as the layout says (``<id[:3]>/<id>``), by task ID.

    Whether each holds metadata is found when it is read (:func:`read_task`).
    """
    found: list[str] = []
    try:
        prefixes = [e for e in os.scandir(root / TASKS) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return found
    for prefix in prefixes:
        try:
            with os.scandir(prefix.path) as entries:
                for entry in entries:
                    name = entry.name
                    laid_out = name[:3] == prefix.name and valid_task_id(name)
                    if laid_out and entry.is_dir(follow_symlinks=False):
                        found.append(entry.path)
        except FileNotFoundError:
            continue  # its last task was deleted meanwhile (a store loading while it serves)
    found.sort(key=os.path.basename)
    return found


def _read_file(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_task(task_dir: Path | str) -> TaskMeta | None:
    """The task's metadata as written, its last access from the marker file; None if there
    is no metadata (left alone) or it is unusable (the dir is removed)."""
    task_dir = os.fspath(task_dir)
    name = os.path.basename(task_dir)
    try:
        raw = _read_file(os.path.join(task_dir, META))
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("dropping task %s: unreadable metadata (%s)", name, e)
        shutil.rmtree(task_dir, ignore_errors=True)
        return None
    try:
        meta = TaskMeta.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError) as e:
        log.warning("dropping task %s: unreadable metadata (%s)", name, e)
        shutil.rmtree(task_dir, ignore_errors=True)
        return None
    if meta.task_id != name:
        log.warning("dropping task dir %s: metadata names %s", name, meta.task_id)
        return None
    with contextlib.suppress(OSError):
        meta.accessed_at = max(meta.accessed_at, os.stat(os.path.join(task_dir, ACCESSED)).st_mtime)
    return meta


def recover_task(meta: TaskMeta, task_dir: Path | str) -> TaskMeta:
    """Carry out :func:`plan` for the task: re-check what is not trusted, settle its state."""
    how = plan(meta, has_content=os.path.exists(os.path.join(task_dir, CONTENT)))
    if how is Plan.TRUST:
        return meta
    task_dir = Path(task_dir)
    if how is Plan.RESUME:
        meta.pieces = recover_pieces(meta, task_dir)
        if meta.state == "running":
            meta.state = "pending"
        return meta
    if how is Plan.REPAIR:
        log.warning("task %s was succeeded but is incomplete on disk; recovering", meta.task_id)
        meta.state = "pending"
    meta.pieces = recover_pieces(meta, task_dir, extra=list(meta.pieces.values()))
    if how is Plan.CONFIRM:
        if meta.is_complete:
            meta.durable = True
            save_meta(task_dir, meta, with_pieces=True)
            (task_dir / JOURNAL).unlink(missing_ok=True)
        else:
            log.warning("task %s lost pieces in a crash; it will resume", meta.task_id)
            meta.state = "pending"
    return meta


def read_journal(raw: bytes, task_id: str = "") -> list[PieceInfo]:
    """The pieces a journal's lines name, in order; a torn or bad line is skipped."""
    pieces = []
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            pieces.append(piece_from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            log.info("task %s: skipping a torn or bad journal line", task_id)
    return pieces


def recover_pieces(meta: TaskMeta, task_dir: Path, extra: Iterable[PieceInfo] = ()) -> dict[int, PieceInfo]:
    """Pieces (``extra``, then the journal's) whose bytes still match their crc32; the journal
    is rewritten to hold exactly those."""
    candidates = list(extra)
    try:
        candidates += read_journal((task_dir / JOURNAL).read_bytes(), meta.task_id)
    except FileNotFoundError:
        pass
    try:
        kept = verified_pieces(meta, task_dir / CONTENT, candidates)
    except FileNotFoundError:
        return {}
    write_journal(task_dir, kept)
    return kept


def verified_pieces(meta: TaskMeta, content: Path, candidates: Iterable[PieceInfo]) -> dict[int, PieceInfo]:
    """The candidates that fit the task and whose bytes in ``content`` match their crc32
    (the first good one of each number). FileNotFoundError if there is no content file."""
    kept: dict[int, PieceInfo] = {}
    buf = bytearray(_VERIFY_CHUNK)
    fd = os.open(content, os.O_RDONLY)
    try:
        for piece in candidates:
            if piece.number in kept or not meta.fits(piece):
                continue
            crc = crc32_of_range(fd, piece.offset, piece.length, buf)
            if crc is not None and piece.digest == f"crc32:{crc}":
                kept[piece.number] = piece
            else:
                log.info("task %s: dropping piece %d, bytes do not match", meta.task_id, piece.number)
    finally:
        os.close(fd)
    return kept


def write_journal(task_dir: Path, pieces: dict[int, PieceInfo]) -> None:
    """Replace the task's journal with one holding ``pieces`` (temp file, rename)."""
    tmp = task_dir / (JOURNAL + ".tmp")
    tmp.write_bytes(journal_lines(pieces))
    os.replace(tmp, task_dir / JOURNAL)
