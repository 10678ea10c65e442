"""Cache GC in a real swarm: eviction tells the scheduler, uploads in flight are safe.

A scheduler, an origin and daemons on loopback in one process (tests/swarm).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from damselfly.daemon.app import Daemon
from damselfly.daemon.download.tasks import task_id_for
from damselfly.domain import DownloadSpec
from damselfly.units import MiB
from swarm.harness import Swarm, sha256_file

SIZE = 6 * MiB


@pytest.fixture
async def swarm(tmp_path: Path) -> AsyncIterator[Swarm]:
    s = Swarm(tmp_path)
    # No seed peers here: a peer with no parent goes to the origin quickly.
    await s.start(scheduler={"scheduler": {"back_to_source_after": 1.0, "retry_interval": 0.05}})
    try:
        yield s
    finally:
        await s.close()


def evict_everything_idle(d: Daemon) -> None:
    """A TTL so short that every task not in use is expired."""
    d.gc.policy = dataclasses.replace(d.gc.policy, task_ttl=1e-6, recent_window=0.0)


async def test_evicted_task_is_forgotten_and_no_peer_is_sent_to_it(swarm: Swarm, tmp_path: Path) -> None:
    swarm.file("gc.bin", SIZE)
    url = swarm.url("gc.bin")
    tid = task_id_for(DownloadSpec(url=url))
    a = await swarm.add_daemon("a")
    assert (await swarm.download("a", url, tmp_path / "a.out")).ok
    assert swarm.origin_bytes() == SIZE

    evict_everything_idle(a)
    evicted = await a.gc.run_once()
    assert [e.task_id for e in evicted] == [tid]
    assert a.store.get(tid) is None
    assert not a.store.content_path(tid).exists()

    b = await swarm.add_daemon("b")
    r = await swarm.download("b", url, tmp_path / "b.out")
    assert r.ok, r.details
    assert sha256_file(tmp_path / "b.out") == sha256_file(swarm.root / "origin" / "gc.bin")
    # Nobody asked the evicting host for the task: the scheduler had forgotten it.
    assert a.upload_service is not None
    assert a.upload_service.calls["SyncPieces"] == a.piece_server.sync_streams.answered == 0
    assert a.piece_server.pieces_sent == 0
    assert swarm.origin_bytes() == 2 * SIZE
    assert b.store.get(tid) is not None


async def test_without_forgetting_the_scheduler_sends_peers_to_the_empty_host(
    swarm: Swarm, tmp_path: Path
) -> None:
    """The control for the test above: it can fail."""
    swarm.file("ctl.bin", SIZE)
    url = swarm.url("ctl.bin")
    a = await swarm.add_daemon("a")
    assert (await swarm.download("a", url, tmp_path / "a.out")).ok

    async def nothing(task_id: str) -> None:
        return None

    a.gc._forget = nothing
    evict_everything_idle(a)
    assert len(await a.gc.run_once()) == 1
    await swarm.add_daemon("b")
    r = await swarm.download("b", url, tmp_path / "b.out")
    assert r.ok, r.details
    assert a.upload_service is not None
    assert a.upload_service.calls["SyncPieces"] + a.piece_server.sync_streams.answered >= 1


async def test_a_task_being_uploaded_is_not_evicted(swarm: Swarm, tmp_path: Path) -> None:
    swarm.file("busy.bin", SIZE)
    url = swarm.url("busy.bin")
    tid = task_id_for(DownloadSpec(url=url))
    a = await swarm.add_daemon("a", upload={"bandwidth_limit": 3 * MiB})  # ~2 s to serve
    assert (await swarm.download("a", url, tmp_path / "a.out")).ok
    a.store.note_access(tid)
    await swarm.add_daemon("b")
    a.gc.policy = dataclasses.replace(a.gc.policy, task_ttl=1e-6)  # default recent window
    job = asyncio.ensure_future(swarm.download("b", url, tmp_path / "b.out"))
    evictions = []
    while not job.done():
        evictions += await a.gc.run_once()  # as often as it can, while b pulls from a
        await asyncio.sleep(0.05)
    r = job.result()
    assert r.ok, r.details
    assert evictions == []
    assert a.piece_server.pieces_sent >= 1  # b really was served by a
    assert sha256_file(tmp_path / "b.out") == sha256_file(swarm.root / "origin" / "busy.bin")


async def test_cache_stat_api_reports_usage_per_task(swarm: Swarm, tmp_path: Path) -> None:
    from damselfly.cli.cache.local_store import fetch_stats

    swarm.file("s1.bin", 3 * MiB)
    swarm.file("s2.bin", 1 * MiB)
    a = await swarm.add_daemon("a")
    for name in ("s1.bin", "s2.bin"):
        assert (await swarm.download("a", swarm.url(name), tmp_path / name)).ok
    stats = await fetch_stats(a.config.socket_path)
    by_url = {t.url.rsplit("/", 1)[-1]: t for t in stats.tasks}
    assert set(by_url) == {"s1.bin", "s2.bin"}
    assert by_url["s1.bin"].content_length == 3 * MiB
    assert 3 * MiB <= by_url["s1.bin"].disk_bytes < 4 * MiB
    assert by_url["s1.bin"].state == "succeeded"
    assert stats.usage == a.store.usage()
    assert stats.capacity > 0
    one = await fetch_stats(a.config.socket_path, task_id=by_url["s2.bin"].task_id)
    assert [t.url for t in one.tasks] == [by_url["s2.bin"].url]


async def test_cache_stat_command_prints_the_store(swarm: Swarm, tmp_path: Path) -> None:
    import json
    import sys

    swarm.file("cli.bin", 2 * MiB)
    a = await swarm.add_daemon("a")
    assert (await swarm.download("a", swarm.url("cli.bin"), tmp_path / "cli.out")).ok
    for args in (["--json"], []):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "damselfly", "cache", "stat", "-e", str(a.config.socket_path), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, err.decode()
        if args:
            data = json.loads(out)
            assert [t["url"] for t in data["tasks"]] == [swarm.url("cli.bin")]
            assert data["tasks"][0]["disk_bytes"] >= 2 * MiB
        else:
            assert "cli.bin" in out.decode() and "1 task(s)" in out.decode()
