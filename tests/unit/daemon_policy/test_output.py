import errno
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

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


def test_export_links_the_stored_content_and_replaces_atomically(tmp_path):
    content = tmp_path / "content"
    content.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    out = tmp_path / "out"
    out.write_bytes(b"old")
    assert export(content, out) == "link"
    assert os.stat(out).st_ino == os.stat(content).st_ino  # no byte written twice
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert export(content, out, overwrite=False) == "kept"  # already the stored content


def other_file_system(tmp_path):
    """A folder on another file system than ``tmp_path`` (a tmpfs), or skip."""
    for root in ("/dev/shm", "/run"):
        if os.path.isdir(root) and os.stat(root).st_dev != os.stat(tmp_path).st_dev:
            return tempfile.TemporaryDirectory(dir=root)
    pytest.skip("no second file system to export across")


def test_across_file_systems_the_output_is_a_copy(tmp_path):
    data = os.urandom(1024 * 1024 + 3)
    content = tmp_path / "content"
    content.write_bytes(data)
    with other_file_system(tmp_path) as there:
        out = Path(there) / "out"
        assert export(content, out) in ("reflink", "copy")
        with open(out, "r+b") as f:  # a copy is the user's own: editing it changes nothing held
            f.write(b"edited")
        assert content.read_bytes() == data
        with pytest.raises(StorageError, match="cannot hard-link"):
            export(content, Path(there) / "linked", force_hard_link=True)
        assert sorted(os.listdir(there)) == ["out"]


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
