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


def task_id_suffix(*, tag: str = "", application: str = "", piece_length: int | None = None) -> bytes:
    """What follows the content's bytes in the hash that names an imported file.

    Dragonfly's formula (dragonfly-client-util/src/id_generator/mod.rs,
    ``persistent_cache_task_id`` with ``FileContentBased``): the tag, the
    application, the *requested* piece length as a decimal string (none when
    the daemon chose it), then ``PERSISTENT_CACHE``. No separators: an empty
    tag adds nothing, exactly as Dragonfly's absent one.
    """
    parts = [tag.encode(), application.encode()]
    if piece_length is not None:
        parts.append(str(piece_length).encode())
    parts.append(b"PERSISTENT_CACHE")
    return b"".join(parts)


def persistent_cache_task_id(
    content: bytes, *, tag: str = "", application: str = "", piece_length: int | None = None
) -> str:
    """The task ID of ``content`` imported as a file (in memory; imports use :func:`stage_file`)."""
    suffix = task_id_suffix(tag=tag, application=application, piece_length=piece_length)
    return hashlib.sha256(content + suffix).hexdigest()


def named_task_id(name: str) -> str:
    """The task ID of an import named by ``--id`` (``content_for_calculating_task_id``).

    Dragonfly's ``Content`` rule: the sha256 of the name alone, whatever the
    tag or application, so a Dragonfly and a Damselfly daemon name it alike.
    """
    return hashlib.sha256(name.encode()).hexdigest()


def resolve_task_id(text: str) -> str:
    """What export, stat and delete were given: a 64-hex ID as is, any other text as an ``--id`` name."""
    if not text.strip():
        raise InvalidArgument("no persistent cache task ID given")
    hex_id = text.strip()
    if len(hex_id) == 64 and ids.is_task_id(hex_id):
        return hex_id
    return named_task_id(text)


# -- import: one pass over the file ------------------------------------------------


@dataclass(slots=True)
class StagedFile:
    path: Path
    size: int
    piece_length: int
    sha256: str
    pieces: list[PieceInfo]
    task_id: str = ""  # with ``id_suffix``: the content's ID (:func:`task_id_suffix`)


def stage_file(
    src: Path, dst: Path, piece_length: int, *, hash_content: bool = True, id_suffix: bytes | None = None
) -> StagedFile:
    """Copy ``src`` to a new file ``dst``, computing each piece's crc32 (and the sha256) on the way.

    With ``id_suffix`` (and ``hash_content``), also the task ID: a copy of the
    content's hasher continued with the suffix, so naming the file costs no
    second read. Blocking; run it in a thread. ``dst`` must not exist (it is
    never overwritten); on failure it is removed.
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
    if sha is None:
        return StagedFile(dst, offset, piece_length, "", pieces)
    task_id = ""
    if id_suffix is not None:
        named = sha.copy()
        named.update(id_suffix)
        task_id = named.hexdigest()
    return StagedFile(dst, offset, piece_length, sha.hexdigest(), pieces, task_id)
