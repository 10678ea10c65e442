"""dfcache with real processes: import on one host, export on another after the importer is gone.

A scheduler and three daemons (real processes on loopback, tests/helpers/processes.py).
``damselfly cache import`` on host A with two replicas waits until the
scheduler has placed the second one; A is then stopped; another host exports
the task byte-exact from the replica. Also: an unknown ID fails with its own
exit code and a message; ``cache delete`` removes the task from every host.
In one process (tests/swarm, short scheduler interval): a lost replica is
replaced, and the TTL removes every copy.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest

from damselfly.api import dfdaemon_pb2, dfdaemon_pb2_grpc
from damselfly.api.convert import duration
from damselfly.daemon.app import Daemon
from damselfly.runtime.children import ChildProcess, python_module_command, stop_all
from helpers.processes import Procs, random_file, sha256_of, short_tempdir
from swarm.harness import Swarm, sha256_file

SIZE = 9 * 1024 * 1024 + 12345  # three pieces of 4 MiB, the last one short


def cache(endpoint: str | Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    argv = python_module_command("damselfly", "cache", *args, "-e", str(endpoint))
    env = {k: v for k, v in os.environ.items() if k != "DAMSELFLY_ENDPOINT"}
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env
    )


def store_holds(daemon: ChildProcess, task_id: str) -> bool:
    data_dir = Path(daemon.ready["socket"]).parent
    return (data_dir / "tasks" / task_id[:3] / task_id / "content").exists()


@pytest.fixture
def cluster() -> Iterator[tuple[Procs, dict[str, ChildProcess]]]:
    procs = Procs(short_tempdir("dfc-"))
    try:
        scheduler = procs.scheduler()
        port = int(scheduler.ready["grpc_port"])
        daemons = {name: procs.daemon(name, scheduler_port=port) for name in ("a", "b", "c")}
        yield procs, daemons
    finally:
        procs.cleanup()


def test_export_from_a_replica_after_the_importer_stopped(
    cluster: tuple[Procs, dict[str, ChildProcess]],
) -> None:
    procs, d = cluster
    src = procs.root / "model.bin"
    digest = random_file(src, SIZE)

    r = cache(d["a"].ready["socket"], "import", str(src), "--replicas", "2", "--ttl", "1h", "--json")
    assert r.returncode == 0, r.stderr + "\n" + procs.children[1].log_tail()
    imported = json.loads(r.stdout)
    task_id = imported["id"]
    assert imported["content_length"] == SIZE
    assert imported["persistent_replicas"] == 2, imported  # import waited for the replica
    holders = [name for name, daemon in d.items() if store_holds(daemon, task_id)]
    assert "a" in holders and len(holders) == 2, holders

    # The importer goes away; the task lives on in its replica.
    stop_all([d["a"]], grace=10)
    exporter = "c" if "c" not in holders else "b"
    out = procs.root / "exported.bin"
    r = cache(d[exporter].ready["socket"], "export", task_id, "-O", str(out))
    assert r.returncode == 0, r.stderr
    assert sha256_of(out) == digest

    s = cache(d[exporter].ready["socket"], "stat", task_id, "--json")
    assert s.returncode == 0, s.stderr
    assert json.loads(s.stdout)["replicas"] >= 2  # the replica and the exporter's own copy


def test_unknown_id_fails_clearly_and_leaves_no_output(
    cluster: tuple[Procs, dict[str, ChildProcess]],
) -> None:
    procs, d = cluster
    out = procs.root / "nothing.bin"
    r = cache(d["b"].ready["socket"], "export", "0" * 64, "-O", str(out))
    assert r.returncode == 4, (r.returncode, r.stderr)
    assert "no persistent cache task" in r.stderr and "0" * 64 in r.stderr
    assert not out.exists()
    r = cache(d["b"].ready["socket"], "delete", "no-such-name")
    assert r.returncode == 4, (r.returncode, r.stderr)


def test_delete_removes_the_task_from_every_host(cluster: tuple[Procs, dict[str, ChildProcess]]) -> None:
    procs, d = cluster
    src = procs.root / "small.bin"
    random_file(src, 100_000)
    r = cache(d["b"].ready["socket"], "import", str(src), "--id", "dataset-v1", "--replicas", "2")
    assert r.returncode == 0, r.stderr
    task_id = r.stdout.strip()
    out = procs.root / "copy.bin"
    assert cache(d["c"].ready["socket"], "export", "dataset-v1", "-O", str(out)).returncode == 0
    assert sum(store_holds(daemon, task_id) for daemon in d.values()) == 3

    r = cache(d["a"].ready["socket"], "delete", "dataset-v1")
    assert r.returncode == 0, r.stderr
    assert not any(store_holds(daemon, task_id) for daemon in d.values())
    r = cache(d["c"].ready["socket"], "export", task_id, "-O", str(procs.root / "again.bin"))
    assert r.returncode == 4, r.stderr


# -- in one process (tests/swarm): the scheduler's repair and TTL steps, on a short interval ------


async def _upload(d: Daemon, path: Path, *, replicas: int, ttl_s: float) -> str:
    async with grpc.aio.insecure_channel(f"unix:{d.config.socket_path}") as ch:
        task = await dfdaemon_pb2_grpc.DfdaemonDownloadStub(ch).UploadPersistentCacheTask(
            dfdaemon_pb2.UploadPersistentCacheTaskRequest(
                path=str(path), persistent_replica_count=replicas, ttl=duration(ttl_s)
            )
        )
    return str(task.id)


async def _until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll ``condition`` (a bound on waiting, not a timing assertion)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still not the case after {timeout:.0f}s: {what}")
        await asyncio.sleep(0.05)


def _holders(s: Swarm, task_id: str) -> set[str]:
    out = set()
    for name, d in s.daemons.items():
        meta = d.store.get(task_id)
        if meta is not None and meta.is_complete and meta.state == "succeeded":
            out.add(name)
    return out


@pytest.fixture
async def swarm(tmp_path: Path) -> AsyncIterator[Swarm]:
    s = Swarm(tmp_path)
    await s.start(scheduler={"gc": {"interval": 0.1}})
    try:
        yield s
    finally:
        await s.close()


async def test_a_lost_replica_is_replaced(swarm: Swarm, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        await swarm.add_daemon(name)
    src = swarm.file("pc.bin", 5 * 1024 * 1024 + 1)
    task_id = await _upload(swarm.daemons["a"], src, replicas=2, ttl_s=3600)
    await _until(lambda: len(_holders(swarm, task_id)) == 2, "a second replica")
    first = _holders(swarm, task_id)
    assert "a" in first
    meta = next(swarm.daemons[n].store.get(task_id) for n in first if n != "a")
    assert meta is not None and meta.persistent and meta.expires_at > 0

    await swarm.stop_daemon("a")  # the importer leaves (DeleteHost): one replica short
    await _until(lambda: _holders(swarm, task_id) == {"b", "c"}, "the scheduler placing a new replica")
    for name in ("b", "c"):
        assert sha256_file(swarm.daemons[name].store.content_path(task_id)) == sha256_file(src)


async def test_ttl_removes_every_copy(swarm: Swarm) -> None:
    for name in ("a", "b"):
        await swarm.add_daemon(name)
    src = swarm.file("short.bin", 100_000)
    task_id = await _upload(swarm.daemons["a"], src, replicas=2, ttl_s=1.5)
    await _until(lambda: len(_holders(swarm, task_id)) == 2, "the replica")
    await _until(lambda: not any(d.store.get(task_id) for d in swarm.daemons.values()), "expiry everywhere")
