"""dfget through real processes: origin -> seed daemon -> peer daemon -> output file.

One scheduler, seed, peer and origin serve the whole module (distinct URLs per
test keep the tasks apart); every process is stopped by PID at the end.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from damselfly.runtime.children import python_module_command
from damselfly.units import MiB
from helpers.processes import (
    Cluster,
    closed_port,
    random_file,
    run_dfget,
    sha256_of,
    short_tempdir,
    start_cluster,
)

pytestmark = pytest.mark.integration

SIZE = 9 * MiB  # three 4 MiB pieces, the last one short


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    root = short_tempdir("dfg-")
    c = start_cluster(root)
    try:
        yield c
    finally:
        c.procs.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def blob(cluster: Cluster) -> tuple[str, str]:
    """(name, sha256) of a file the origin serves."""
    digest = random_file(cluster.origin_dir / "blob.bin", SIZE)
    return "blob.bin", digest


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("dfget: error: "), stderr
    return lines[0]


def test_download_is_byte_exact_and_the_origin_serves_it_once(
    cluster: Cluster, blob: tuple[str, str], short_tmp: Path
) -> None:
    name, digest = blob
    out = short_tmp / "out.bin"
    r = run_dfget(cluster.origin.url(name), out, cluster.socket)
    assert r.returncode == 0, r.stderr + cluster.logs()
    assert sha256_of(out) == digest
    assert "9.0 MiB" in r.stderr and str(out) in r.stderr
    # The seed fetched it from the origin; the peer from the seed.
    assert cluster.origin.bytes_for(f"/{name}") <= SIZE * 1.01, cluster.logs()

    # Again, to another file: served from the peer's store, not the origin.
    again = short_tmp / "again.bin"
    r = run_dfget(cluster.origin.url(name), again, cluster.socket, "--digest", f"sha256:{digest}")
    assert r.returncode == 0, r.stderr + cluster.logs()
    assert sha256_of(again) == digest
    assert cluster.origin.bytes_for(f"/{name}") <= SIZE * 1.01, cluster.logs()


def test_small_file_with_a_relative_output(
    cluster: Cluster, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (cluster.origin_dir / "small.txt").write_bytes(b"hello damselfly\n")
    monkeypatch.chdir(short_tmp)
    r = run_dfget(cluster.origin.url("small.txt"), Path("small.txt"), cluster.socket)
    assert r.returncode == 0, r.stderr + cluster.logs()
    assert (short_tmp / "small.txt").read_bytes() == b"hello damselfly\n"


@pytest.mark.parametrize(
    ("case", "code", "words"),
    [
        ("404", 4, "404"),
        ("500", 4, "500"),
        ("unreachable", 4, "origin"),
        ("wrong-digest", 5, "digest"),
        ("missing-folder", 7, "does not exist"),
        ("output-is-directory", 7, "directory"),
    ],
)
def test_failures_have_distinct_codes_and_leave_no_file(
    cluster: Cluster, blob: tuple[str, str], short_tmp: Path, case: str, code: int, words: str
) -> None:
    name, _ = blob
    out = short_tmp / f"{case}.bin"
    extra: list[str] = []
    url = cluster.origin.url(name, query=f"case={case}")
    if case in ("404", "500"):
        url = cluster.origin.url(name, fault=case)
    elif case == "unreachable":
        url = f"http://127.0.0.1:{closed_port()}/{name}"
    elif case == "wrong-digest":
        extra = ["--digest", "sha256:" + hashlib.sha256(b"something else").hexdigest()]
    elif case == "missing-folder":
        out = short_tmp / "no" / "such" / "dir" / "f.bin"
    elif case == "output-is-directory":
        out = short_tmp / "adir"
        out.mkdir()
    r = run_dfget(url, out, cluster.socket, *extra)
    assert r.returncode == code, r.stderr + cluster.logs()
    assert words in _one_error_line(r.stderr).lower()
    if case == "output-is-directory":
        assert out.is_dir() and not any(out.iterdir())
    else:
        assert not out.exists()


def test_no_daemon_exits_3_with_a_hint(short_tmp: Path) -> None:
    r = run_dfget("http://127.0.0.1:1/x", short_tmp / "o", short_tmp / "nobody.sock")
    assert r.returncode == 3
    line = _one_error_line(r.stderr)
    assert "damselfly up --data-dir" in line and "-e" in line
    assert not (short_tmp / "o").exists()


def test_bad_digest_flag_fails_before_contacting_anything(short_tmp: Path) -> None:
    r = run_dfget("http://127.0.0.1:1/x", short_tmp / "o", short_tmp / "nobody.sock", "--digest", "md5:00")
    assert r.returncode == 2
    assert "digest" in _one_error_line(r.stderr)


def _wait_for_origin_request(cluster: Cluster, path: str) -> None:
    """Block until the origin has seen a request for ``path`` (a condition, not a timing)."""
    deadline = time.monotonic() + 30
    while cluster.origin.stats()["paths"].get(path, {}).get("requests", 0) < 1:
        assert time.monotonic() < deadline, f"the origin never saw {path}\n{cluster.logs()}"
        time.sleep(0.05)


def test_ctrl_c_cancels_with_130_and_no_file(cluster: Cluster, short_tmp: Path) -> None:
    random_file(cluster.origin_dir / "stall1.bin", 1 * MiB)
    url = cluster.origin.url("stall1.bin", fault="stall", query="stall_s=20")
    out = short_tmp / "o.bin"
    argv = python_module_command(
        "damselfly", "get", url, "-O", str(out), "-e", str(cluster.socket), "--no-progress"
    )
    # Ctrl-C as at a terminal: a test run started in the background (a shell's `&`) hands its
    # children SIGINT ignored, and a Python started so keeps ignoring it.
    p = subprocess.Popen(
        argv,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        _wait_for_origin_request(cluster, "/_fault/stall/stall1.bin")
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=30) == 130
        assert p.stderr is not None and "cancelled" in p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if p.stderr is not None:
            p.stderr.close()
    assert not out.exists()


def test_timeout_exits_6_and_leaves_no_file(cluster: Cluster, short_tmp: Path) -> None:
    random_file(cluster.origin_dir / "stall2.bin", 1 * MiB)
    url = cluster.origin.url("stall2.bin", fault="stall", query="stall_s=30")
    out = short_tmp / "o.bin"
    r = run_dfget(url, out, cluster.socket, "--timeout", "1s")
    assert r.returncode == 6, r.stderr + cluster.logs()
    assert "timed out" in _one_error_line(r.stderr)
    assert not out.exists()


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_transfer_from_dfdaemon_writes_the_streamed_content(
    cluster: Cluster, blob: tuple[str, str], short_tmp: Path
) -> None:
    name, digest = blob
    out = short_tmp / "streamed.bin"
    r = run_dfget(
        cluster.origin.url(name, query="run=transfer"),
        out,
        cluster.socket,
        "--transfer-from-dfdaemon",
        "--digest",
        f"sha256:{digest}",
    )
    assert r.returncode == 0, r.stderr + cluster.logs()
    assert sha256_of(out) == digest
    assert _names(short_tmp) == ["streamed.bin"]  # no temp file left beside it


def test_transfer_from_dfdaemon_failing_midway_leaves_no_file(cluster: Cluster, short_tmp: Path) -> None:
    # The origin sends half the body and hangs up: some pieces reach dfget, then the call fails.
    random_file(cluster.origin_dir / "half.bin", SIZE)
    out = short_tmp / "half.bin"
    r = run_dfget(
        cluster.origin.url("half.bin", fault="truncate"), out, cluster.socket, "--transfer-from-dfdaemon"
    )
    assert r.returncode != 0, r.stderr + cluster.logs()
    _one_error_line(r.stderr)
    assert _names(short_tmp) == []


@pytest.mark.parametrize("transfer", [False, True])
def test_an_existing_output_is_refused_unless_overwrite(
    cluster: Cluster, blob: tuple[str, str], short_tmp: Path, transfer: bool
) -> None:
    name, digest = blob
    out = short_tmp / "exists.bin"
    out.write_bytes(b"keep me")
    extra = ["--transfer-from-dfdaemon"] if transfer else []
    r = run_dfget(cluster.origin.url(name), out, cluster.socket, *extra)
    assert r.returncode == 7, r.stderr + cluster.logs()
    assert "already exists" in _one_error_line(r.stderr) and "--overwrite" in r.stderr
    assert out.read_bytes() == b"keep me"

    r = run_dfget(cluster.origin.url(name), out, cluster.socket, "--overwrite", *extra)
    assert r.returncode == 0, r.stderr + cluster.logs()
    assert sha256_of(out) == digest
    assert _names(short_tmp) == ["exists.bin"]
