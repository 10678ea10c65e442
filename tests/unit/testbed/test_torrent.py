"""The torrent maker of the BitTorrent baseline: bencode both ways, and piece hashes aria2c accepts."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from damselfly.testbed.torrent import BencodeError, bdecode, bencode, info_hash, make_torrent, piece_hashes


def test_bencode_known_forms() -> None:
    assert bencode(42) == b"i42e"
    assert bencode(-3) == b"i-3e"
    assert bencode("spam") == b"4:spam"
    assert bencode([1, b"a"]) == b"li1e1:ae"
    # Keys sorted as raw bytes, whatever order they were given in.
    assert bencode({"b": 1, "a": [2]}) == b"d1:ali2ee1:bi1ee"


def test_bencode_round_trip() -> None:
    value = {b"announce": b"http://t/announce", b"info": {b"length": 5, b"pieces": bytes(range(40))}}
    assert bdecode(bencode(value)) == value


@pytest.mark.parametrize("bad", [b"i12", b"4:ab", b"d1:ai1e", b"x", b"i1ei2e", b"di1ei2ee"])
def test_bdecode_refuses_malformed(bad: bytes) -> None:
    with pytest.raises(BencodeError):
        bdecode(bad)


def test_bencode_refuses_booleans() -> None:
    with pytest.raises(TypeError):
        bencode(True)


def test_torrent_fields_and_piece_hashes(tmp_path: Path) -> None:
    data = os.urandom(3 * 16384 + 100)  # three whole pieces and a short last one
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    torrent = make_torrent(path, "http://10.0.0.1:6969/announce", 16384)
    meta = bdecode(torrent)
    info = meta[b"info"]
    assert meta[b"announce"] == b"http://10.0.0.1:6969/announce"
    assert (info[b"name"], info[b"length"], info[b"piece length"]) == (b"blob.bin", len(data), 16384)
    want = b"".join(hashlib.sha1(data[i : i + 16384]).digest() for i in range(0, len(data), 16384))
    assert info[b"pieces"] == want == piece_hashes(path, 16384)
    assert info_hash(torrent) == hashlib.sha1(bencode(info)).hexdigest()
    with pytest.raises(ValueError, match="16 KiB"):
        make_torrent(path, "http://t/announce", 1000)


@pytest.mark.skipif(shutil.which("aria2c") is None, reason="aria2c (Debian package aria2) is not installed")
def test_aria2c_checks_the_pieces(tmp_path: Path) -> None:
    """aria2c --check-integrity hashes the file against the torrent: a right file is complete
    (exit 0 with nothing to fetch), a file with one byte changed is not."""
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(5 * 16384))
    (tmp_path / "t.torrent").write_bytes(make_torrent(path, "http://127.0.0.1:9/announce", 16384))
    args = [
        "aria2c", "--check-integrity=true", "--seed-time=0", "--enable-dht=false", "--bt-enable-lpd=false",
        "--bt-stop-timeout=5", "--console-log-level=error", "--summary-interval=0", f"--dir={tmp_path}",
        str(tmp_path / "t.torrent"),
    ]  # fmt: skip
    ok = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    with path.open("r+b") as f:
        f.seek(3 * 16384 + 7)
        byte = f.read(1)
        f.seek(3 * 16384 + 7)
        f.write(bytes([byte[0] ^ 0xFF]))
    bad = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode != 0  # piece 3 fails its hash; no tracker answers, so it cannot be fetched
