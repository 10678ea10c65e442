import hashlib
import os

import pytest

from damselfly.daemon.download.output import check_output_path, export, verify_content
from damselfly.errors import DigestMismatch, InvalidArgument


def test_check_output_path_errors(tmp_path):
    with pytest.raises(InvalidArgument, match="absolute"):
        check_output_path("relative/file")
    with pytest.raises(InvalidArgument, match="is a directory"):
        check_output_path(str(tmp_path))
    with pytest.raises(InvalidArgument, match="does not exist"):
        check_output_path(str(tmp_path / "missing" / "f"))
    assert check_output_path(str(tmp_path / "f")) == tmp_path / "f"


def test_export_links_and_replaces_atomically(tmp_path):
    content = tmp_path / "content"
    content.write_bytes(b"abc" * 1000)
    out = tmp_path / "out"
    out.write_bytes(b"old")
    assert export(content, out) == "link"
    assert out.read_bytes() == b"abc" * 1000
    assert os.stat(out).st_ino == os.stat(content).st_ino
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_export_copy_is_a_separate_file(tmp_path):
    content = tmp_path / "content"
    content.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    out = tmp_path / "out"
    assert export(content, out, link=False) == "copy"
    assert out.read_bytes() == content.read_bytes()
    assert os.stat(out).st_ino != os.stat(content).st_ino


def test_verify_content(tmp_path):
    content = tmp_path / "content"
    content.write_bytes(b"hello")
    verify_content(content, "sha256:" + hashlib.sha256(b"hello").hexdigest())
    with pytest.raises(DigestMismatch):
        verify_content(content, "sha256:" + hashlib.sha256(b"other").hexdigest())
