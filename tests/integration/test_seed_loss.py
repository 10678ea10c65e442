"""A seed peer SIGKILLed mid-swarm (real processes): two seed hosts, the one the scheduler
triggered for the task killed while several peers download from it and from each other.
Every download succeeds, one peer (not every one) goes back to source for the pieces nobody
holds, and the origin sends the file once plus what was in flight when the seed died."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from damselfly.runtime.children import ChildProcess, python_module_command, spawn
from damselfly.runtime.cluster import scheduler_command
from helpers.metrics import sample_now
from helpers.processes import Procs, random_file, sha256_of

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
SIZE = 48 * MiB
PIECE = 4 * MiB  # the smallest piece length: 12 pieces
RATE = f"rate={6 * MiB}"  # the origin trickles: the seed takes ~8 s
# What may be in flight when the seed dies: the piece it was receiving from the origin (with
# the origin's last counted slice and what sat in socket buffers), and the piece the peer sent
# back to source was receiving from the seed. Everything else the origin sends once.
IN_FLIGHT = 2 * PIECE + 1 * MiB


def _start_dfget(url: str, output: Path, endpoint: str) -> subprocess.Popen[str]:
    argv = python_module_command(
        "damselfly", "get", url, "-O", str(output), "-e", endpoint, "--no-progress",
        "--piece-length", str(PIECE),
    )  # fmt: skip
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )


def _wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _content_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in data_dir.glob("tasks/*/*/content"))


def _from_origin(daemon: ChildProcess) -> float:
    port = int(daemon.ready["metrics_port"])
    return sample_now(port, "dragonfly_client_download_traffic", type="BACK_TO_SOURCE")


def _scheduler(procs: Procs, root: Path, topology: str) -> ChildProcess:
    config = root / "scheduler.yaml"
    config.write_text(f"scheduler:\n  topology: {topology}\n")
    argv = [*scheduler_command(root), "--config", str(config)]
    child = spawn("scheduler", argv, log_path=root / "logs" / "scheduler.log",
                  ready_file=root / "run" / "scheduler.ready.json")  # fmt: skip
    procs.children.append(child)
    child.wait_ready(60)
    return child


# The line (chain, the default): the head of the line had the seed as its only parent and goes to
# the origin when it asks again. The mesh: every peer has other parents, so none would ask; the
# scheduler, seeing the seed's stream break, sends the peer holding most.
@pytest.mark.parametrize("topology", ["chain", "mesh"])
def test_a_seed_killed_mid_swarm_costs_the_origin_only_what_was_in_flight(
    procs: Procs, short_tmp: Path, topology: str
) -> None:
    files = short_tmp / "files"
    files.mkdir()
    want = random_file(files / "big.bin", SIZE)
    origin = procs.origin(files)
    scheduler = _scheduler(procs, short_tmp, topology)
    port = int(scheduler.ready["grpc_port"])
    seeds = {name: procs.daemon(name, scheduler_port=port, seed=True) for name in ("seed-a", "seed-b")}
    peers = {name: procs.daemon(name, scheduler_port=port) for name in ("p1", "p2", "p3")}
    url = origin.url("big.bin", fault="slow", query=RATE)
    jobs = {
        name: _start_dfget(url, short_tmp / f"{name}.bin", p.ready["socket"]) for name, p in peers.items()
    }

    # The seed the scheduler triggered fetches the origin; the peers follow it.
    def seed_at_30() -> bool:
        for name, job in jobs.items():
            assert job.poll() is None, f"{name} ended early: {job.communicate()}"
        return any(_content_bytes(short_tmp / s) >= 0.3 * SIZE for s in seeds)

    _wait_for(seed_at_30)
    serving = next(s for s in seeds if _content_bytes(short_tmp / s) > 0)
    spare = next(s for s in seeds if s != serving)
    _wait_for(lambda: all(_content_bytes(short_tmp / p) >= 4 * PIECE for p in peers))
    victim = seeds[serving]
    os.kill(victim.pid, signal.SIGKILL)
    victim.popen.wait(timeout=10)
    procs.children.remove(victim)

    for name, job in jobs.items():
        _stdout, stderr = job.communicate(timeout=120)
        assert job.returncode == 0, f"{name}: {stderr}"
        assert sha256_of(short_tmp / f"{name}.bin") == want, name
    sent = origin.bytes_for("/_fault/slow/big.bin", "bytes_sent")
    assert SIZE <= sent <= SIZE + IN_FLIGHT, (sent - SIZE) / PIECE
    # One peer fetched the rest from the origin; the others had it from the peers.
    fetched = {name: _from_origin(p) for name, p in peers.items()}
    assert sum(1 for v in fetched.values() if v > 0) == 1, fetched
    assert _from_origin(seeds[spare]) == 0  # a fresh seed would have fetched it all again
