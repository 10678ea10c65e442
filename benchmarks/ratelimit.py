"""Rate limits: accuracy, fairness between tasks, and the burst bound, on each limited byte path.

What is measured, on loopback (the daemon's real byte path): a server process
holds four finished tasks in a PieceStore and serves them with a PieceServer;
this process pulls the four tasks over 4, 2, 1 and 1 connections through a
PieceConnectionPool (recv_into, crc32, pwrite to /dev/null; 1 MiB pieces in a
loop) for ``--duration`` seconds (a pull in flight at the end finishes, so a
point at 1 MB/s runs a few seconds over). The limit sits on one of three paths
(``--paths``), the ones the integration tests check by token accounting only
(tests/integration/test_ratelimit.py), with no clock:

* ``upload``: the parent's host upload limit (``upload.bandwidthLimit``), in
  the server process: sendfile in grant-size chunks.
* ``download``: the child's host download limit (``download.bandwidthLimit``),
  the pool's limiter: bytes received in granted chunks.
* ``task``: per-download limits (``dfget --rate-limit``, the
  ``X-Damselfly-Rate-Limit`` header): each task its own quarter of the limit
  (TASK_LIMITER), under no host limit.

Per point (one path, one limit):

* ``rate_error``: bytes received / elapsed, against the limit (target: within
  ±5%). The first bucket's worth rides in at once; it is included.
* ``share_spread``: each task's bytes granted during the timed window against
  a quarter of the total (target: each within ±20%), although the tasks use
  different numbers of connections.
* ``burst_excess``: the largest ``granted(t1..t2) - rate*(t2-t1)`` over every
  window of grant times, against the bucket size (target: <= burst).
* ``task_rate_error`` (``task`` path): the worst task's bytes / elapsed
  against its own limit.
* ``unlimited``: the same setup with no limit, for the ceiling of this machine.

Usage: ``python benchmarks/ratelimit.py --duration 20`` (the issue's 20 s per
point; ``--duration 5`` is a quicker look; ``--paths upload`` for one path).
Prints JSON; each point gives the configured limit and the achieved rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
import zlib
from collections.abc import Hashable
from multiprocessing.connection import Connection
from pathlib import Path

from damselfly.daemon.ratelimit import TASK_LIMITER, ByteLimiter
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.daemon.transfer.piece_client import PieceConnectionPool
from damselfly.daemon.transfer.piece_server import PieceServer
from damselfly.domain import PieceInfo
from damselfly.units import MiB

PIECE = 1 * MiB
PIECES = 16  # 16 MiB per task
TASKS = 4
CONNECTIONS = [4, 2, 1, 1]  # per task: fairness must be per task, not per connection
LIMITS = [1e6, 10e6, 100e6, 500e6]
PATHS = ["upload", "download", "task"]


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

    def __init__(self, rate: float, name: str = "upload") -> None:
        super().__init__(rate, name=name)
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


async def run_point(
    root: Path, ids: list[str], rate: float, duration: float, path: str = "upload"
) -> dict[str, object]:
    """Pull the tasks for ``duration`` seconds with ``rate`` (0: none) on ``path``; the point's report."""
    ours, theirs = multiprocessing.Pipe()
    upload = rate if path == "upload" else 0.0
    proc = multiprocessing.get_context("spawn").Process(target=serve, args=(str(root), upload, theirs))
    proc.start()
    loop = asyncio.get_running_loop()
    port = await loop.run_in_executor(None, ours.recv)
    got = [0] * TASKS
    host = Recorder(rate, name="download") if path == "download" else None
    # One per-download limit per task (each a dfget --rate-limit of a quarter of the limit).
    per_task = [Recorder(rate / TASKS, name=f"task{i}") for i in range(TASKS)] if path == "task" else []
    pool = PieceConnectionPool(limiter=host)
    sink = os.open(os.devnull, os.O_WRONLY)
    stop_at = time.monotonic() + duration

    async def pull(i: int, _: int) -> None:
        if per_task and rate:
            TASK_LIMITER.set(per_task[i])  # this pull's own context, as the daemon's service does
        n = 0
        while time.monotonic() < stop_at:
            number = n % PIECES
            await pool.download_piece(
                "127.0.0.1", port, ids[i], number, sink, number * PIECE, PIECE, timeout=600
            )
            got[i] += PIECE
            n += 1

    began = time.monotonic()
    try:
        await asyncio.gather(*(pull(i, c) for i in range(TASKS) for c in range(CONNECTIONS[i])))
    finally:
        elapsed = time.monotonic() - began
        os.close(sink)
        await pool.close()
        ours.send("stop")
        report = await loop.run_in_executor(None, ours.recv)
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    measured = sum(got) / elapsed
    out: dict[str, object] = {
        "path": path if rate else "none",
        "limit_MBps": rate / 1e6,
        "measured_MBps": round(measured / 1e6, 3),
        "elapsed_s": round(elapsed, 2),
    }
    if not rate:
        return out
    out["rate_error"] = round(measured / rate - 1, 4)
    if path == "upload":
        by_task, burst, excess = report["by_task"], report["burst"], report["excess"]
    elif path == "download":
        assert host is not None
        by_task, burst, excess = host.by_task, host.burst, burst_excess(host.grants, rate)
    else:
        by_task = [grant for lim in per_task for grant in lim.by_task]
        burst = per_task[0].burst
        excess = max(burst_excess(lim.grants, lim.rate) for lim in per_task)
        out["task_rate_error"] = round(max(abs(g / elapsed / (rate / TASKS) - 1) for g in got), 4)
    window = dict.fromkeys(ids, 0)
    for when, key, n in by_task:
        if began <= when <= stop_at and key in window:
            window[key] += n
    share = sum(window.values()) / TASKS
    out["share_spread"] = round(max(abs(g - share) / share for g in window.values()), 4)
    out["task_MB"] = [round(window[t] / 1e6, 1) for t in ids]
    out["burst_bytes"] = burst
    out["burst_excess_bytes"] = round(excess)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per point")
    ap.add_argument(
        "--limits", default=",".join(f"{x / 1e6:g}" for x in LIMITS), help="MB/s, comma-separated"
    )
    ap.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {', '.join(PATHS)}")
    args = ap.parse_args()
    paths = args.paths.split(",")
    if unknown := set(paths) - set(PATHS):
        ap.error(f"unknown path(s): {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="dfrl-") as tmp:
        store, ids = make_store(Path(tmp))
        store.close()
        points = [await run_point(Path(tmp), ids, 0, min(args.duration, 5))]
        for path in paths:
            for mbps in args.limits.split(","):
                point = await run_point(Path(tmp), ids, float(mbps) * 1e6, args.duration, path)
                points.append(point)
                print(  # progress on stderr: achieved against configured, as each point ends
                    f"{path:8} limit {point['limit_MBps']:g} MB/s: achieved {point['measured_MBps']} MB/s"
                    f" ({float(point['rate_error']):+.1%})",  # type: ignore[arg-type]
                    file=sys.stderr,
                )
    print(json.dumps({"duration_s": args.duration, "tasks": TASKS, "points": points}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
