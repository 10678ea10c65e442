import errno
import hashlib
import os
import subprocess

import pytest

from damselfly.daemon.download.output import check_output_path, export, verify_content
from damselfly.errors import DigestMismatch, InvalidArgument, StorageError


def test_check_output_path_errors(tmp_path):
    with pytest.raises(InvalidArgument, match="absolute"):
        check_output_path("relative/file")
    with pytest.raises(InvalidArgument, match="is a directory"):
        check_output_path(str(tmp_path))
    with pytest.raises(InvalidArgument, match="does not exist"):
        check_output_path(str(tmp_path / "missing" / "f"))
    assert check_output_path(str(tmp_path / "f")) == tmp_path / "f"


def test_export_copies_and_replaces_atomically(tmp_path):
    content = tmp_path / "content"
    content.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    out = tmp_path / "out"
    out.write_bytes(b"old")
    assert export(content, out) in ("reflink", "copy")
    assert out.read_bytes() == content.read_bytes()
    assert os.stat(out).st_ino != os.stat(content).st_ino  # never the store's own file
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_an_edit_of_the_output_leaves_the_content_alone(tmp_path):
    data = os.urandom(1024 * 1024)
    content = tmp_path / "content"
    content.write_bytes(data)
    out = tmp_path / "out"
    export(content, out)
    with open(out, "r+b") as f:
        f.write(b"edited")
    assert content.read_bytes() == data


def test_an_output_linked_by_an_earlier_version_becomes_a_copy(tmp_path):
    content = tmp_path / "content"
    content.write_bytes(b"abc" * 1000)
    out = tmp_path / "out"
    os.link(content, out)
    assert export(content, out, overwrite=False) in ("reflink", "copy")
    assert os.stat(out).st_ino != os.stat(content).st_ino and out.read_bytes() == b"abc" * 1000


def test_force_hard_link_gives_the_stores_file_read_only(tmp_path):
    content = tmp_path / "content"
    content.write_bytes(b"abc" * 1000)
    out = tmp_path / "out"
    assert export(content, out, force_hard_link=True) == "link"
    assert os.stat(out).st_ino == os.stat(content).st_ino
    assert os.stat(content).st_mode & 0o222 == 0
    assert export(content, out, force_hard_link=True, overwrite=False) == "kept"


def test_verify_content(tmp_path):
    content = tmp_path / "content"
    content.write_bytes(b"hello")
    verify_content(content, "sha256:" + hashlib.sha256(b"hello").hexdigest())
    with pytest.raises(DigestMismatch):
        verify_content(content, "sha256:" + hashlib.sha256(b"other").hexdigest())


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_output_disk_is_a_clear_storage_error_and_leaves_nothing(tmp_path):
    content = tmp_path / "content"
    content.write_bytes(os.urandom(2 * 1024 * 1024))
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        with pytest.raises(StorageError, match=r"cannot write the output .*No space left on device") as info:
            export(content, disk / "out")
        assert info.value.errno == errno.ENOSPC
        assert list(disk.iterdir()) == []  # no temp file, no partial output
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
