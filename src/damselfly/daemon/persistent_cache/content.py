"""Persistent cache task IDs (see the package docstring for the choice) and the one-pass import copy.

No asyncio here: :func:`stage_file` blocks and runs in a thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ... import ids
from ...checksum import crc32
from ...domain import PieceInfo, TrafficType
from ...errors import InvalidArgument, StorageError
from ...units import MiB

_CHUNK = 4 * MiB


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
    """Copy ``src`` to a new file ``dst``, computing each piece's crc32 (and the sha256) on the way.

    Blocking; run it in a thread. ``dst`` must not exist (it is never
    overwritten); on failure it is removed.
    """
    sha = hashlib.sha256() if hash_content else None
    buf = bytearray(min(_CHUNK, piece_length))
    view = memoryview(buf)
    pieces: list[PieceInfo] = []
    try:
        fin = open(src, "rb", buffering=0)  # noqa: SIM115 - closed below
    except OSError as e:
        raise StorageError(e.errno, f"cannot read {src}: {e.strerror}") from e
    try:
        try:
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as e:
            raise StorageError(e.errno, f"cannot create {dst}: {e.strerror}") from e
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
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(dst)
            raise StorageError(e.errno, f"cannot copy {src} into the store: {e.strerror}") from e
        finally:
            os.close(fd)
    finally:
        fin.close()
    return StagedFile(dst, offset, piece_length, sha.hexdigest() if sha else "", pieces)
