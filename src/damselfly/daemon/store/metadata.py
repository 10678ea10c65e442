"""What the store records of a task, and how it is written to disk.

:class:`TaskMeta` is the record (``metadata.json``); a finished piece is one
JSON line of the journal (``pieces.journal``) until the task succeeds, when the
whole piece list moves into the metadata. Metadata is always replaced whole,
through a temp file and a rename (:func:`save_meta`), so a reader finds the old
or the new version; only metadata that records durable content is fsynced (see
:mod:`.piece_store` on crash consistency).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...domain import PieceInfo, TrafficType
from ...errors import StorageError
from ...pieces import piece_count as _piece_count
from .files import META, fsync_dir

STATES = ("pending", "running", "succeeded", "failed")


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
    # The content file's mtime (ns) set when the task succeeded and its content was made
    # read-only (PieceStore.seal); any later write to the file changes it. 0: not sealed.
    sealed_ns: int = 0

    @property
    def piece_count(self) -> int | None:
        if self.content_length is None or not self.piece_length:
            return None
        return _piece_count(self.content_length, self.piece_length)

    @property
    def is_complete(self) -> bool:
        count = self.piece_count
        return count is not None and len(self.pieces) == count

    def fits(self, piece: PieceInfo) -> bool:
        """Whether ``piece`` lies where the task's geometry (as far as known) puts piece ``number``."""
        if piece.number < 0 or piece.offset < 0 or piece.length <= 0:
            return False
        if self.piece_length and piece.offset != piece.number * self.piece_length:
            return False
        if self.piece_length and piece.length > self.piece_length:
            return False
        if self.content_length is not None:
            end = min(self.content_length, piece.offset + (self.piece_length or piece.length))
            if piece.offset >= self.content_length or piece.offset + piece.length != end:
                return False
        return True

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
        if self.sealed_ns:
            data["sealed_ns"] = self.sealed_ns
        if with_pieces:
            data["pieces"] = [piece_to_json(p) for p in sorted(self.pieces.values(), key=_number)]
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
            sealed_ns=int(data.get("sealed_ns", 0)),
        )
        for raw in data.get("pieces", []):
            piece = piece_from_json(raw)
            meta.pieces[piece.number] = piece
        return meta


def _number(p: PieceInfo) -> int:
    return p.number


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def piece_to_json(p: PieceInfo) -> dict[str, Any]:
    return {
        "n": p.number,
        "o": p.offset,
        "l": p.length,
        "d": p.digest,
        "t": int(p.traffic_type),
        "c": p.cost_s,
        "p": p.parent_id,
    }


def piece_from_json(raw: dict[str, Any]) -> PieceInfo:
    return PieceInfo(
        number=int(raw["n"]),
        offset=int(raw["o"]),
        length=int(raw["l"]),
        digest=str(raw["d"]),
        traffic_type=TrafficType(int(raw.get("t", 1))),
        cost_s=float(raw.get("c", 0.0)),
        parent_id=str(raw.get("p", "")),
    )


def journal_line(piece: PieceInfo) -> bytes:
    """The piece as one line of ``pieces.journal``."""
    return json.dumps(piece_to_json(piece), separators=(",", ":")).encode() + b"\n"


def journal_lines(pieces: dict[int, PieceInfo]) -> bytes:
    """A whole journal holding ``pieces``, in piece order."""
    return b"".join(journal_line(p) for p in sorted(pieces.values(), key=_number))


def atomic_write_json(path: Path, data: dict[str, Any], *, sync: bool) -> None:
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
        fsync_dir(path.parent)


def save_meta(task_dir: Path, meta: TaskMeta, *, with_pieces: bool = False) -> None:
    """Write the task's ``metadata.json`` in ``task_dir`` (atomically; fsynced only when durable).

    Only metadata that records durable content is fsynced. Every other state
    is rebuilt from the journal and the pieces' crc32 after a crash, and a
    torn file drops the task (never a wrong piece). An fsync here would wait,
    on ext4, for other files' dirty data in the same journal commit: seconds
    on the event loop while a large task is being flushed.
    """
    sync = meta.state == "succeeded" and meta.durable
    try:
        atomic_write_json(task_dir / META, meta.to_json(with_pieces=with_pieces), sync=sync)
    except OSError as e:
        raise StorageError(e.errno, f"cannot write metadata of task {meta.task_id}: {e.strerror}") from e
