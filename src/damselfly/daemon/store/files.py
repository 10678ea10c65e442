"""The files of the piece store: their names under a task dir, and the byte-level helpers.

The layout itself is drawn in :mod:`.piece_store`'s docstring. Every writer of
downloaded bytes (the origin's body, pieces from parents over TCP, local copies)
goes through :func:`pwrite_all`, and every crc32 check of bytes already on disk
(restart recovery, local copies) through :func:`crc32_of_range`, so a short
write or a short read is handled in one place. Each of them first reserves the
piece's blocks (:func:`reserve`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

from ...checksum import crc32
from ...ids import is_task_id

META = "metadata.json"
JOURNAL = "pieces.journal"
CONTENT = "content"
# An empty file whose mtime is the task's last access (the LRU order): stamped
# without rewriting the metadata or an fsync, so a read never waits on the disk.
ACCESSED = "accessed"
TRASH = "trash"  # evicted task dirs wait here (renamed atomically) until removed
TASKS = "tasks"


def valid_task_id(task_id: object) -> bool:
    """Whether ``task_id`` may name a task dir (64 lowercase hex digits, nothing else)."""
    # is_task_id's regex lets a trailing newline through ("$"); a path must not.
    return isinstance(task_id, str) and len(task_id) == 64 and is_task_id(task_id)


def task_dir(root: Path, task_id: str) -> Path:
    """``<root>/tasks/<id[:3]>/<id>``; the caller checked the ID with :func:`valid_task_id`."""
    return root / TASKS / task_id[:3] / task_id


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dir_usage(path: Path) -> int:
    """Bytes the files directly in ``path`` occupy: allocated blocks, so a sparse
    content file counts only what is written. 0 for a dir that is gone."""
    total = 0
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                total += entry.stat(follow_symlinks=False).st_blocks * 512
    except FileNotFoundError:
        pass  # removed meanwhile: what was counted stands
    return total


def _fallocate() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.fallocate
    except (OSError, AttributeError):  # no C library to ask, or one without fallocate(2)
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    call.restype = ctypes.c_int
    return call


_FALLOCATE = _fallocate()
_KEEP_SIZE = 0x01  # FALLOC_FL_KEEP_SIZE (linux/falloc.h)


def reserve(fd: int, offset: int, length: int) -> bool:
    """Allocate the blocks of ``length`` bytes at ``offset`` before they are written
    (``fallocate(2)`` with ``FALLOC_FL_KEEP_SIZE``: the file's size never changes, the
    range reads as zeros until written).

    Why: ext4 (delayed allocation) otherwise reserves a block for each page as it is
    written; one call per piece is cheaper. Measured, 256 MiB written in 128 KiB steps:
    0.044 CPU-s into a sparse file, 0.027 with each 4 MiB reserved first (the machine's
    CPU including the ``fsync`` 0.07 against 0.055). Only what is about to be written is
    reserved, so the disk holds what it would hold anyway. Best effort: a file system
    that cannot (``EOPNOTSUPP``), a full disk, anything else: the range stays as it was
    and the write that follows says what is wrong. Whether it was reserved."""
    if _FALLOCATE is None or length <= 0:
        return False
    if _FALLOCATE(fd, _KEEP_SIZE, offset, length) == 0:
        return True
    if ctypes.get_errno() == errno.EINTR:  # a signal came first: once more
        return _FALLOCATE(fd, _KEEP_SIZE, offset, length) == 0
    return False


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


def seal_content(path: Path) -> int:
    """Make a finished task's content read-only and stamp it; return the stamp (an mtime in ns).

    dfget's output is a hard link to this file (:mod:`damselfly.daemon.download.output`):
    read-only keeps users other than the daemon's from writing it, and the stamp lets the
    store notice a write by anyone who still can (:func:`unchanged`). The stamp is a whole
    second before now, so even a write within the same clock tick moves the mtime off it."""
    st = os.stat(path)
    os.chmod(path, st.st_mode & 0o7555)
    sealed = (time.time_ns() // 1_000_000_000 - 1) * 1_000_000_000
    os.utime(path, ns=(st.st_atime_ns, sealed))
    return sealed


def unchanged(st: os.stat_result, sealed_ns: int, length: int | None) -> bool:
    """Whether a sealed content file (``st``, its stat) is as the store sealed it."""
    return st.st_mtime_ns == sealed_ns and (length is None or st.st_size == length)
