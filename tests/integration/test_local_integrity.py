"""What a daemon serves never changes with what happens on its own host.

* A user who edits dfget's output in place (a hard link to the stored content,
  read-only, but root may write it) never changes what the daemon serves: the
  next dfget and the children get the original bytes.
* The daemon's own disk failing (ENOSPC, for real: its store on an 8 MiB tmpfs)
  fails the download with a clear error, frees the partial task at once, and is
  never blamed on the parent (no piece failure reported, no reschedule, no
  back-to-source).

Real daemons in-process (tests/swarm/harness.py): a scheduler, an origin, real
gRPC and piece sockets on loopback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from damselfly.daemon.download.tasks import task_id_for
from damselfly.domain import DownloadSpec
from helpers.metrics import sample
from swarm.harness import Swarm, sha256_file

MiB = 1024 * 1024
SIZE = 24 * MiB + 5  # six pieces: over the 8 MiB the full disk below can hold


@pytest.fixture
async def swarm(tmp_path: Path) -> AsyncIterator[Swarm]:
    s = Swarm(tmp_path)
    await s.start()
    try:
        yield s
    finally:
        await s.close()


def scheduler_metrics_port(swarm: Swarm) -> int:
    return int(json.loads((swarm.root / "scheduler.ready").read_text())["metrics_port"])


async def announced(swarm: Swarm, kind: str) -> float:
    port = scheduler_metrics_port(swarm)
    return await sample(port, "damselfly_scheduler_announce_peer_request_total", type=kind)


async def test_an_edited_output_changes_nothing_the_daemon_serves(swarm: Swarm, tmp_path: Path) -> None:
    origin = swarm.file("blob.bin", SIZE)
    want = sha256_file(origin)
    await swarm.add_daemon("d1")
    out1, out2, out3 = tmp_path / "out1", tmp_path / "out2", tmp_path / "out3"
    assert (await swarm.download("d1", swarm.url("blob.bin"), out1)).ok
    fd = os.open(out1, os.O_WRONLY)  # the user edits their file in place
    try:
        os.pwrite(fd, b"edited by the user", 5 * MiB)
    finally:
        os.close(fd)
    assert sha256_file(out1) != want
    # The same host again: its stored copy, untouched.
    result = await swarm.download("d1", swarm.url("blob.bin"), out2)
    assert result.ok, result.details
    assert sha256_file(out2) == want
    # A child on another daemon gets every piece from d1, each passing its crc32.
    from_origin = swarm.origin_bytes()
    await swarm.add_daemon("d2")
    result = await swarm.download("d2", swarm.url("blob.bin"), out3)
    assert result.ok, result.details
    assert sha256_file(out3) == want
    assert swarm.origin_bytes() == from_origin  # nothing came from the origin: all from d1


@contextlib.contextmanager
def small_disk(path: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path``, unmounted afterwards."""
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
async def test_a_full_disk_is_the_daemons_own_failure(swarm: Swarm, tmp_path: Path) -> None:
    swarm.file("big.bin", SIZE)
    url = swarm.url("big.bin")
    await swarm.add_daemon("parent")
    assert (await swarm.download("parent", url)).ok
    from_origin = swarm.origin_bytes()
    before = {
        k: await announced(swarm, k) for k in ("download_piece_failed_request", "reschedule_peer_request")
    }
    with small_disk(tmp_path / "full") as disk:
        child = await swarm.add_daemon(
            "child",
            storage={"dir": str(disk), "server": {"ip": "127.0.0.1", "tcp_port": 0}, "local_share": False},
        )
        result = await swarm.download("child", url, tmp_path / "out")
        assert not result.ok
        assert result.code == grpc.StatusCode.RESOURCE_EXHAUSTED, (result.code, result.details)
        assert "No space left on device" in result.details and "store" in result.details, result.details
        # The partial task is gone at once: nothing of it in the store, the space is free again.
        task_id = task_id_for(DownloadSpec(url=url))
        assert child.store.get(task_id) is None
        assert [m.task_id for m in child.store.tasks()] == []
        assert not (tmp_path / "out").exists()
        # The parent was not blamed: no piece failure reported, and the child did not go to the
        # origin instead.
        after = {k: await announced(swarm, k) for k in before}
        assert after == before, (before, after)
        assert await announced(swarm, "download_peer_failed_request") >= 1  # the child itself failed
        assert swarm.origin_bytes() == from_origin
        await swarm.stop_daemon("child")
    # The parent serves on: another child gets the whole file from it.
    await swarm.add_daemon("other")
    out = tmp_path / "other.out"
    result = await swarm.download("other", url, out)
    assert result.ok, result.details
    assert hashlib.sha256(out.read_bytes()).hexdigest() == sha256_file(swarm.root / "origin" / "big.bin")
    assert swarm.origin_bytes() == from_origin


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
async def test_a_full_disk_while_fetching_from_the_origin_fails_clearly_and_frees_the_task(
    swarm: Swarm, tmp_path: Path
) -> None:
    swarm.file("big.bin", SIZE)
    url = swarm.url("big.bin")
    with small_disk(tmp_path / "full") as disk:
        alone = await swarm.add_daemon(
            "alone",
            storage={"dir": str(disk), "server": {"ip": "127.0.0.1", "tcp_port": 0}, "local_share": False},
        )
        result = await swarm.download("alone", url, tmp_path / "out")
        assert result.code == grpc.StatusCode.RESOURCE_EXHAUSTED, (result.code, result.details)
        assert "No space left on device" in result.details, result.details
        assert [m.task_id for m in alone.store.tasks()] == []
        assert not (tmp_path / "out").exists()
        # The space is free again: a file that fits downloads.
        swarm.file("small.bin", 2 * MiB)
        assert (await swarm.download("alone", swarm.url("small.bin"), tmp_path / "small")).ok
        await swarm.stop_daemon("alone")
