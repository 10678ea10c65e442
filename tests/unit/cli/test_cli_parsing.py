"""dfget's argument checks: durations, sizes, headers, digests, URLs, outputs, endpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from damselfly.cli.parsing import (
    DEFAULT_ENDPOINT,
    check_output,
    check_url,
    default_endpoint,
    normalize_endpoint,
    parse_digest,
    parse_duration,
    parse_header,
    parse_headers,
    parse_piece_length,
)
from damselfly.errors import InvalidArgument, StorageError
from damselfly.units import human_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("500ms", 0.5), ("12", 12), ("1.5", 1.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "10x", "m5", "0", "-3", "5s junk", "1h 30m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_duration(text)


def test_piece_length() -> None:
    assert parse_piece_length("4MiB") == 4 * 1024 * 1024
    assert parse_piece_length("64MiB") == 64 * 1024 * 1024
    # Outside Dragonfly's range a scheduler refuses the download: said before anything is asked.
    for out_of_range in ("4096", "3", "65MiB"):
        with pytest.raises(InvalidArgument, match=r"from 4\.0 MiB to 64\.0 MiB"):
            parse_piece_length(out_of_range)
    with pytest.raises(InvalidArgument):
        parse_piece_length("four")
    with pytest.raises(InvalidArgument):
        parse_piece_length("0")


def test_headers() -> None:
    assert parse_header("Authorization: Bearer a:b") == ("Authorization", "Bearer a:b")
    assert parse_header("X-Empty:") == ("X-Empty", "")
    assert parse_headers(["Accept: a", "accept: b", "X-One: 1"]) == {"Accept": "a, b", "X-One": "1"}
    for bad in ["NoColon", ": value", "Bad Name: v", ""]:
        with pytest.raises(InvalidArgument):
            parse_header(bad)


def test_digests() -> None:
    assert parse_digest(None) == ""
    assert parse_digest("SHA256:" + "AB" * 32) == "sha256:" + "ab" * 32
    assert parse_digest("crc32:007") == "crc32:7"
    for bad in ["sha256:abc", "md5:" + "a" * 32, "sha256", "crc32:x"]:
        with pytest.raises(InvalidArgument):
            parse_digest(bad)


def test_urls() -> None:
    assert check_url("http://h/x") == "http://h/x"
    assert check_url("https://h:8443/x?y=1") == "https://h:8443/x?y=1"
    with pytest.raises(InvalidArgument, match="no scheme"):
        check_url("h/x")
    with pytest.raises(InvalidArgument, match="not supported"):
        check_url("ftp://h/x")
    with pytest.raises(InvalidArgument, match="no host"):
        check_url("http:///x")


def test_output_checks(tmp_path: Path) -> None:
    out = check_output(str(tmp_path / "f.bin"))
    assert out == tmp_path / "f.bin" and out.is_absolute()
    with pytest.raises(StorageError, match="is a directory"):
        check_output(str(tmp_path))
    with pytest.raises(StorageError, match="is a directory"):
        check_output(str(tmp_path / "new") + os.sep)
    with pytest.raises(StorageError, match="does not exist"):
        check_output(str(tmp_path / "missing" / "f.bin"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="not a directory"):
        check_output(str(tmp_path / "file" / "f.bin"))


def test_relative_output_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert check_output("f.bin") == tmp_path / "f.bin"


def test_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    assert normalize_endpoint("/run/d.sock") == Path("/run/d.sock")
    assert normalize_endpoint("unix:///run/d.sock") == Path("/run/d.sock")
    assert normalize_endpoint("unix:/run/d.sock") == Path("/run/d.sock")
    for bad in ["unix://", "tcp://127.0.0.1:4000", " "]:
        with pytest.raises(InvalidArgument):
            normalize_endpoint(bad)
    monkeypatch.delenv("DAMSELFLY_ENDPOINT", raising=False)
    assert default_endpoint() == DEFAULT_ENDPOINT
    monkeypatch.setenv("DAMSELFLY_ENDPOINT", "/x.sock")
    assert default_endpoint() == "/x.sock"


def test_human_size() -> None:
    assert human_size(512) == "512 B"
    assert human_size(16 * 1024 * 1024) == "16.0 MiB"
