"""A piece's blocks reserved before it is written: the file's size and bytes untouched, any fd safe."""

from __future__ import annotations

import os
from pathlib import Path

from damselfly.daemon.store.files import pwrite_all, reserve
from damselfly.units import MiB


def test_a_range_is_reserved_without_changing_the_file(tmp_path: Path) -> None:
    path = tmp_path / "content"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 8 * MiB)  # as the store sizes a task
        pwrite_all(fd, b"x" * 100, 0)
        before = os.fstat(fd).st_blocks
        assert reserve(fd, 4 * MiB, 4 * MiB)  # the test dir's file system allocates (ext4, tmpfs)
        st = os.fstat(fd)
        assert st.st_size == 8 * MiB  # the size never moves
        assert (st.st_blocks - before) * 512 >= 4 * MiB  # the piece's blocks are held now
        assert os.pread(fd, 4 * MiB, 4 * MiB) == bytes(4 * MiB)  # and read as zeros until written
        assert os.pread(fd, 100, 0) == b"x" * 100  # what was written before stays
        pwrite_all(fd, b"y" * MiB, 5 * MiB)
        assert os.pread(fd, MiB, 5 * MiB) == b"y" * MiB
    finally:
        os.close(fd)


def test_past_the_end_the_size_stays(tmp_path: Path) -> None:
    path = tmp_path / "content"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, MiB)
        reserve(fd, 0, 4 * MiB)
        assert os.fstat(fd).st_size == MiB
    finally:
        os.close(fd)


def test_what_cannot_be_reserved_is_left_to_the_write() -> None:
    r, w = os.pipe()  # fallocate(2) refuses a pipe (ESPIPE): no exception, nothing reserved
    try:
        assert reserve(w, 0, MiB) is False
        assert reserve(w, 0, 0) is False
    finally:
        os.close(r)
        os.close(w)
