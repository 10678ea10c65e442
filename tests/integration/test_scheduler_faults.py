"""A scheduler killed mid-download (SIGKILL, real processes): restarted on its port, or gone for good
with another scheduler beside it. Downloads succeed, the origin serves the file once (plus the
pieces in flight), and a task goes to the same scheduler from every daemon (the hash ring)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from damselfly import ids
from damselfly.api import scheduler_pb2, scheduler_pb2_grpc
from damselfly.daemon.scheduler_ring import HashRing
from damselfly.domain import DownloadSpec
from damselfly.runtime.children import ChildProcess, python_module_command
from helpers.processes import OriginProcess, Procs, random_file, run_dfget, sha256_of

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
SIZE = 24 * MiB
PIECE = 4 * MiB  # the piece length of a 24 MiB task: what may be in flight when the scheduler dies
RATE = f"rate={4 * MiB}"  # the origin trickles: a download takes ~6 s


def _start_dfget(url: str, output: Path, endpoint: str) -> subprocess.Popen[str]:
    argv = python_module_command("damselfly", "get", url, "-O", str(output), "-e", endpoint, "--no-progress")
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )


def _wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _content_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in data_dir.glob("tasks/*/*/content"))


def _kill(procs: Procs, child: ChildProcess) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.popen.wait(timeout=10)
    procs.children.remove(child)


def _knows_task(port: int, task_id: str) -> bool:
    """Whether the scheduler on ``port`` has the task (StatTask)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        try:
            stub.StatTask(scheduler_pb2.StatTaskRequest(host_id="test", task_id=task_id), timeout=5)
        except grpc.RpcError as e:
            if e.code() is grpc.StatusCode.NOT_FOUND:
                return False
            raise
    return True


def _origin(procs: Procs, root: Path, *names: str) -> tuple[OriginProcess, dict[str, str]]:
    files = root / "files"
    files.mkdir()
    want = {name: random_file(files / name, SIZE) for name in names}
    return procs.origin(files), want


def test_scheduler_killed_mid_download_and_restarted_loses_nothing(procs: Procs, short_tmp: Path) -> None:
    origin, want = _origin(procs, short_tmp, "big.bin")
    scheduler = procs.scheduler()
    port = int(scheduler.ready["grpc_port"])
    procs.daemon("seed", scheduler_port=port, seed=True)
    peer = procs.daemon("peer", scheduler_port=port)
    url = origin.url("big.bin", fault="slow", query=RATE)
    out = short_tmp / "out.bin"
    job = _start_dfget(url, out, peer.ready["socket"])
    _wait_for(lambda: _content_bytes(short_tmp / "peer") >= 7 * MiB)  # ~30 %
    _kill(procs, scheduler)
    time.sleep(1.0)
    procs.scheduler(port=port)  # the same address: the daemons find it again

    _stdout, stderr = job.communicate(timeout=90)
    assert job.returncode == 0, stderr
    assert sha256_of(out) == want["big.bin"]
    served = origin.bytes_for("/_fault/slow/big.bin")
    assert SIZE <= served <= SIZE + PIECE, served

    # The restarted scheduler learnt who holds the task: a newcomer gets it from them, not the origin.
    late = procs.daemon("late", scheduler_port=port)
    r = run_dfget(url, short_tmp / "late.bin", late.ready["socket"], timeout=90)
    assert r.returncode == 0, r.stderr
    assert sha256_of(short_tmp / "late.bin") == want["big.bin"]
    assert origin.bytes_for("/_fault/slow/big.bin") == served


def test_two_schedulers_one_killed_for_good(procs: Procs, short_tmp: Path) -> None:
    schedulers = {
        int(s.ready["grpc_port"]): s for s in (procs.scheduler("sched-a"), procs.scheduler("sched-b"))
    }
    ports = sorted(schedulers)
    ring = HashRing(f"127.0.0.1:{p}" for p in ports)

    def owner(url: str) -> int:
        addr = ring.lookup(ids.download_task_id(DownloadSpec(url=url)))
        assert addr is not None
        return int(addr.rsplit(":", 1)[1])

    # Two files whose tasks the ring gives the same scheduler: the one to be killed.
    origin, want = _origin(procs, short_tmp, *[f"f{i}.bin" for i in range(12)])
    urls = {name: origin.url(name, fault="slow", query=RATE) for name in want}
    doomed = owner(urls["f0.bin"])
    names = [n for n in sorted(want) if owner(urls[n]) == doomed][:2]
    assert len(names) == 2
    first, second = names
    survivor = next(p for p in ports if p != doomed)

    procs.daemon("seed", scheduler_port=ports, seed=True)
    peers = [procs.daemon(name, scheduler_port=ports) for name in ("p1", "p2")]
    jobs = [
        _start_dfget(urls[first], short_tmp / f"{first}.{i}", p.ready["socket"]) for i, p in enumerate(peers)
    ]
    _wait_for(lambda: _content_bytes(short_tmp / "p1") >= 7 * MiB)
    # Every daemon went to the ring's scheduler for the task, and only to it.
    task = ids.download_task_id(DownloadSpec(url=urls[first]))
    assert _knows_task(doomed, task) and not _knows_task(survivor, task)
    _kill(procs, schedulers[doomed])

    for i, job in enumerate(jobs):
        _stdout, stderr = job.communicate(timeout=90)
        assert job.returncode == 0, stderr
        assert sha256_of(short_tmp / f"{first}.{i}") == want[first]
    assert origin.bytes_for(f"/_fault/slow/{first}") <= SIZE + PIECE
    assert _knows_task(survivor, task)  # the daemons registered it again with the next one

    # A new task whose scheduler is the dead one goes to the live one, and is served once.
    r = run_dfget(urls[second], short_tmp / second, peers[0].ready["socket"], timeout=90)
    assert r.returncode == 0, r.stderr
    assert sha256_of(short_tmp / second) == want[second]
    assert _knows_task(survivor, ids.download_task_id(DownloadSpec(url=urls[second])))
    assert origin.bytes_for(f"/_fault/slow/{second}") == SIZE
