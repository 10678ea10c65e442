"""Host-wide rate limits: accuracy, fairness between tasks, and the burst bound.

What is measured, on loopback (the daemon's real byte path): a server process
holds four finished tasks in a PieceStore and serves them with a PieceServer
limited by the host's upload :class:`ByteLimiter` (sendfile in grant-size
chunks); this process pulls the four tasks over 4, 2, 1 and 1 connections
(recv_into, crc32, pwrite to /dev/null; 1 MiB pieces in a loop) for
``--duration`` seconds (a pull in flight at the end finishes, so a point at
1 MB/s runs a few seconds over). Per point (one limit):

* ``rate_error``: bytes received / elapsed, against the limit (target: within
  ±5%). The first bucket's worth rides in at once; it is included.
* ``share_spread``: each task's bytes granted during the timed window against
  a quarter of the total (target: each within ±20%), although the tasks use
  different numbers of connections.
* ``burst_excess``: the largest ``granted(t1..t2) - rate*(t2-t1)`` over every
  window of grant times, against the bucket size (target: <= burst).
* ``unlimited``: the same setup with no limit, for the ceiling of this machine.

Usage: ``python benchmarks/ratelimit.py --duration 20`` (the issue's 20 s per
point; ``--duration 5`` is a quicker look). Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import tempfile
import time
import zlib
from collections.abc import Hashable
from multiprocessing.connection import Connection
from pathlib import Path

from damselfly.daemon.transfer.piece_client import PieceClient
from damselfly.daemon.transfer.piece_server import PieceServer
from damselfly.daemon.ratelimit import ByteLimiter
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.domain import PieceInfo
from damselfly.units import MiB

PIECE = 1 * MiB
PIECES = 16  # 16 MiB per task
TASKS = 4
CONNECTIONS = [4, 2, 1, 1]  # per task: fairness must be per task, not per connection
LIMITS = [1e6, 10e6, 100e6, 500e6]


def make_store(root: Path) -> tuple[PieceStore, list[str]]:
    store = PieceStore(root)
    ids = []
    for t in range(TASKS):
        task_id = f"{t + 1:064x}"
        store.create_task(task_id, url=f"http://bench/{t}")
        store.set_content_length(task_id, PIECE * PIECES, PIECE)
        fd = store.open_write_fd(task_id)
        try:
            for n in range(PIECES):
                data = os.urandom(PIECE)
                os.pwrite(fd, data, n * PIECE)
                store.finish_piece(task_id, PieceInfo(n, n * PIECE, PIECE, f"crc32:{zlib.crc32(data)}"))
        finally:
            os.close(fd)
        store.mark_succeeded(task_id, durable=False)
        ids.append(task_id)
    return store, ids


class Recorder(ByteLimiter):
    """A ByteLimiter that remembers when it granted what (for the burst bound)."""

    def __init__(self, rate: float) -> None:
        super().__init__(rate, name="upload")
        self.grants: list[tuple[float, int]] = []
        self.by_task: list[tuple[float, str, int]] = []

    async def acquire(self, want: int, key: Hashable = None) -> int:
        n = await super().acquire(want, key)
        now = time.monotonic()
        self.grants.append((now, n))
        self.by_task.append((now, str(key), n))
        return n


def burst_excess(grants: list[tuple[float, int]], rate: float) -> float:
    """max over windows [t_i, t_j] of granted - rate*(t_j - t_i) (O(n) with a running minimum)."""
    best = 0.0
    cum = 0.0
    low = float("inf")  # min over i of (cum before i) - rate*t_i
    for t, n in grants:
        low = min(low, cum - rate * t)
        cum += n
        best = max(best, cum - rate * t - low)
    return best


def serve(root: str, rate: float, conn: Connection) -> None:
    """The parent host, in its own process: serve until told to stop, then report the grants."""

    async def run() -> None:
        store = PieceStore(Path(root))
        limiter = Recorder(rate)
        server = PieceServer(store, limiter=limiter)
        conn.send(await server.start("127.0.0.1", 0))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)
        await server.close()
        excess = burst_excess(limiter.grants, rate) if rate else 0.0
        conn.send({"burst": limiter.burst, "excess": excess, "by_task": limiter.by_task})

    asyncio.run(run())


async def run_point(root: Path, ids: list[str], rate: float, duration: float) -> dict[str, float]:
    ours, theirs = multiprocessing.Pipe()
    proc = multiprocessing.get_context("spawn").Process(target=serve, args=(str(root), rate, theirs))
    proc.start()
    loop = asyncio.get_running_loop()
    port = await loop.run_in_executor(None, ours.recv)
    got = [0] * TASKS
    sink = os.open(os.devnull, os.O_WRONLY)
    stop_at = time.monotonic() + duration

    async def pull(i: int, _: int) -> None:
        client = await PieceClient.connect("127.0.0.1", port)
        try:
            n = 0
            while time.monotonic() < stop_at:
                await client.download_piece(
                    ids[i], n % PIECES, sink, (n % PIECES) * PIECE, PIECE, timeout=600
                )
                got[i] += PIECE
                n += 1
        finally:
            await client.close()

    began = time.monotonic()
    try:
        await asyncio.gather(*(pull(i, c) for i in range(TASKS) for c in range(CONNECTIONS[i])))
    finally:
        elapsed = time.monotonic() - began
        os.close(sink)
        ours.send("stop")
        report = await loop.run_in_executor(None, ours.recv)
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    total = sum(got)
    measured = total / elapsed
    out: dict[str, float] = {
        "limit_MBps": rate / 1e6,
        "measured_MBps": round(measured / 1e6, 3),
        "elapsed_s": round(elapsed, 2),
    }
    if rate:
        window = dict.fromkeys(ids, 0)
        for when, key, n in report["by_task"]:
            if began <= when <= stop_at and key in window:
                window[key] += n
        share = sum(window.values()) / TASKS
        out["share_spread"] = round(max(abs(g - share) / share for g in window.values()), 4)
        out["task_MB"] = [round(window[t] / 1e6, 1) for t in ids]  # type: ignore[assignment]
        out["rate_error"] = round(measured / rate - 1, 4)
        out["burst_bytes"] = report["burst"]
        out["burst_excess_bytes"] = round(report["excess"])
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per point")
    ap.add_argument(
        "--limits", default=",".join(f"{x / 1e6:g}" for x in LIMITS), help="MB/s, comma-separated"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dfrl-") as tmp:
        store, ids = make_store(Path(tmp))
        store.close()
        points = [await run_point(Path(tmp), ids, 0, min(args.duration, 5))]
        for mbps in args.limits.split(","):
            points.append(await run_point(Path(tmp), ids, float(mbps) * 1e6, args.duration))
    print(json.dumps({"duration_s": args.duration, "tasks": TASKS, "points": points}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
