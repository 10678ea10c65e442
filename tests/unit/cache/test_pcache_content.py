"""Persistent cache task IDs and the one-pass import copy (pieces with crc32, the sha256)."""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import pytest

from damselfly.daemon.persistent_cache import (
    named_task_id,
    persistent_cache_task_id,
    resolve_task_id,
    stage_file,
    task_id_suffix,
)
from damselfly.errors import InvalidArgument, StorageError
from damselfly.ids import is_task_id


def test_ids_depend_on_content_tag_application_and_requested_piece_length() -> None:
    a = persistent_cache_task_id(b"content")
    assert is_task_id(a) and len(a) == 64
    assert a == hashlib.sha256(b"contentPERSISTENT_CACHE").hexdigest()
    assert persistent_cache_task_id(b"content") == a
    assert persistent_cache_task_id(b"other") != a
    assert persistent_cache_task_id(b"content", tag="v2") != a
    assert persistent_cache_task_id(b"content", application="x") != a
    assert persistent_cache_task_id(b"content", piece_length=4096) != a
    # Dragonfly's formula has no separators: only the concatenation counts.
    assert persistent_cache_task_id(b"b", tag="ta", application="g") == persistent_cache_task_id(
        b"b", tag="t", application="ag"
    )


def test_resolve_keeps_a_hex_id_and_hashes_a_name() -> None:
    hex_id = "0123456789abcdef" * 4
    assert resolve_task_id(hex_id) == hex_id
    assert resolve_task_id(f"  {hex_id}\n") == hex_id
    named = resolve_task_id("model-v1")
    assert is_task_id(named) and named == named_task_id("model-v1")
    assert named == hashlib.sha256(b"model-v1").hexdigest()
    with pytest.raises(InvalidArgument):
        resolve_task_id("  ")


def test_stage_file_names_the_content_as_a_second_read_would(tmp_path: Path) -> None:
    data = os.urandom(3 * 4096 + 5)
    (tmp_path / "src").write_bytes(data)
    suffix = task_id_suffix(tag="t", application="a", piece_length=4096)
    staged = stage_file(tmp_path / "src", tmp_path / "dst", 4096, id_suffix=suffix)
    assert staged.task_id == persistent_cache_task_id(data, tag="t", application="a", piece_length=4096)
    assert staged.sha256 == hashlib.sha256(data).hexdigest()  # the content's own digest is unchanged
    assert stage_file(tmp_path / "src", tmp_path / "dst2", 4096).task_id == ""  # no suffix, no ID


@pytest.mark.parametrize("size", [0, 1, 4096, 4096 * 3, 4096 * 3 + 17])
def test_stage_file_copies_and_records_every_piece(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    src = tmp_path / "src"
    src.write_bytes(data)
    staged = stage_file(src, tmp_path / "dst", 4096)
    assert (tmp_path / "dst").read_bytes() == data
    assert staged.size == size
    assert staged.sha256 == hashlib.sha256(data).hexdigest()
    assert [p.number for p in staged.pieces] == list(range((size + 4095) // 4096))
    for p in staged.pieces:
        chunk = data[p.offset : p.offset + p.length]
        assert p.offset == p.number * 4096 and 0 < p.length <= 4096
        assert p.digest == f"crc32:{zlib.crc32(chunk)}"
    assert sum(p.length for p in staged.pieces) == size


def test_stage_file_without_hashing_and_with_pieces_larger_than_the_buffer(tmp_path: Path) -> None:
    data = os.urandom(9 * 1024 * 1024 + 5)
    (tmp_path / "src").write_bytes(data)
    staged = stage_file(tmp_path / "src", tmp_path / "dst", 8 * 1024 * 1024, hash_content=False)
    assert staged.sha256 == ""
    assert [(p.offset, p.length) for p in staged.pieces] == [
        (0, 8 * 1024 * 1024),
        (8 * 1024 * 1024, 1024 * 1024 + 5),
    ]
    assert staged.pieces[0].digest == f"crc32:{zlib.crc32(data[: 8 * 1024 * 1024])}"


def test_stage_file_errors_are_storage_errors_and_leave_nothing(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        stage_file(tmp_path / "missing", tmp_path / "dst", 4096)
    (tmp_path / "src").write_bytes(b"x")
    (tmp_path / "dst").write_bytes(b"already here")
    with pytest.raises(StorageError):  # never overwrites
        stage_file(tmp_path / "src", tmp_path / "dst", 4096)
    assert (tmp_path / "dst").read_bytes() == b"already here"
