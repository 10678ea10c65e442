"""Faults with real processes: a parent killed mid-task, a daemon killed and restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from damselfly.runtime.children import ChildProcess, python_module_command
from helpers.processes import OriginProcess, Procs, random_file, run_dfget, sha256_of

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def _start_dfget(url: str, output: Path, endpoint: str) -> subprocess.Popen[str]:
    argv = python_module_command("damselfly", "get", url, "-O", str(output), "-e", endpoint, "--no-progress")
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _content_bytes(data_dir: Path) -> int:
    """Bytes of piece content on disk under a daemon's data dir (sparse files count real blocks)."""
    total = 0
    for p in data_dir.glob("tasks/*/*/content"):
        total += p.stat().st_blocks * 512
    return total


def _slow_origin_and_seed(procs: Procs, short_tmp: Path) -> tuple[OriginProcess, str, int, ChildProcess]:
    """A 24 MiB file at an origin that trickles it at 4 MiB/s (so downloads are mid-task for
    seconds), a scheduler and a seed daemon: (origin, the file's sha256, scheduler port, seed)."""
    origin_dir = short_tmp / "files"
    origin_dir.mkdir()
    want = random_file(origin_dir / "big.bin", 24 * MiB)
    origin = procs.origin(origin_dir)
    port = int(procs.scheduler().ready["grpc_port"])
    seed = procs.daemon("seed", scheduler_port=port, seed=True)
    return origin, want, port, seed


SLOW_URL_QUERY = f"rate={4 * MiB}"


def test_seed_killed_mid_task_child_still_finishes(procs: Procs, short_tmp: Path) -> None:
    origin, want, port, seed = _slow_origin_and_seed(procs, short_tmp)
    peer = procs.daemon("peer", scheduler_port=port)
    # The origin trickles, so the seed is mid-task when it dies.
    url = origin.url("big.bin", fault="slow", query=SLOW_URL_QUERY)
    out = short_tmp / "out.bin"
    job = _start_dfget(url, out, peer.ready["socket"])
    _wait_for(lambda: _content_bytes(short_tmp / "peer") >= 4 * MiB)
    os.kill(seed.pid, signal.SIGKILL)
    _stdout, stderr = job.communicate(timeout=90)
    assert job.returncode == 0, stderr
    assert sha256_of(out) == want


def test_a_peer_killed_mid_line_is_stepped_over(procs: Procs, short_tmp: Path) -> None:
    # The default topology lines peers up in the order they register: seed -> a -> b -> c.
    origin, want, port, _seed = _slow_origin_and_seed(procs, short_tmp)
    peers = {name: procs.daemon(name, scheduler_port=port) for name in ("a", "b", "c")}
    url = origin.url("big.bin", fault="slow", query=SLOW_URL_QUERY)
    jobs = {}
    for name in ("a", "b", "c"):  # one after another, so the line's order is known
        jobs[name] = _start_dfget(url, short_tmp / f"{name}.bin", peers[name].ready["socket"])
        _wait_for(lambda name=name: _content_bytes(short_tmp / name) > 0)
    _wait_for(lambda: _content_bytes(short_tmp / "c") >= 4 * MiB)
    os.kill(peers["b"].pid, signal.SIGKILL)  # c's parent, mid-task
    for name in ("a", "c"):
        _stdout, stderr = jobs[name].communicate(timeout=90)
        assert jobs[name].returncode == 0, stderr
        assert sha256_of(short_tmp / f"{name}.bin") == want
    jobs["b"].communicate(timeout=30)  # its daemon is gone: it fails, and that is all
    assert jobs["b"].returncode != 0
    # c went round the dead peer, not to the origin: the origin sent the file once.
    assert 24 * MiB <= origin.bytes_for("/_fault/slow/big.bin") <= 24 * MiB * 1.01
    # And it was c's parent that died: c asked to be rescheduled, away from b.
    scheduler_log = (procs.root / "logs" / "scheduler.log").read_text()
    c_peer = peers["c"].ready["host_id"]
    assert any("reschedule" in line and c_peer in line for line in scheduler_log.splitlines()), scheduler_log[
        -3000:
    ]


def test_daemon_killed_mid_download_restarts_consistent_and_serves(procs: Procs, short_tmp: Path) -> None:
    origin_dir = short_tmp / "files"
    origin_dir.mkdir()
    want = random_file(origin_dir / "f.bin", 20 * MiB)
    origin = procs.origin(origin_dir)
    port = int(procs.scheduler().ready["grpc_port"])
    peer = procs.daemon("peer", scheduler_port=port)  # no seed: the peer fetches from the origin
    url = origin.url("f.bin", fault="slow", query=f"rate={4 * MiB}")
    out = short_tmp / "out.bin"
    job = _start_dfget(url, out, peer.ready["socket"])
    _wait_for(lambda: _content_bytes(short_tmp / "peer") >= 8 * MiB)
    os.kill(peer.pid, signal.SIGKILL)
    peer.popen.wait(timeout=10)
    job.communicate(timeout=30)
    assert job.returncode != 0 and not out.exists()  # no partial output, ever
    procs.children.remove(peer)
    # Same data dir: the store loads, keeps the verified pieces, resumes.
    peer = procs.daemon("peer", scheduler_port=port)
    r = run_dfget(url, out, peer.ready["socket"], timeout=90)
    assert r.returncode == 0, r.stderr
    assert sha256_of(out) == want
    # And it serves what it had to a new peer without going back to the origin.
    before = origin.bytes_for("/_fault/slow/f.bin")
    other = procs.daemon("other", scheduler_port=port)
    out2 = short_tmp / "out2.bin"
    r = run_dfget(url, out2, other.ready["socket"], timeout=90)
    assert r.returncode == 0, r.stderr
    assert sha256_of(out2) == want
    assert origin.bytes_for("/_fault/slow/f.bin") == before
