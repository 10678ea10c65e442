"""A daemon's restart with a large store: time until it serves again, its RSS, the re-announce.

Builds a store of ``--tasks`` held tasks (small files, written in the store's
own layout with its own codec: :mod:`damselfly.daemon.store.metadata`, as a
daemon leaves them after downloads that finished and were flushed), then, for
each run, starts a real scheduler and a real daemon process on that store and
measures, from the daemon's spawn:

* ``health_s``: its local socket's ``grpc.health.v1`` answers SERVING;
* ``piece_s``: a held task (a different one each poll) is served over the
  socket, its content streamed back (``need_piece_content``) and checked;
* ``ready_s``: its ready file is written (after its first AnnounceHost and the
  re-announce of the store, or 15 s, as ``damselfly daemon`` does);
* ``registered_s``: the scheduler counts every held task (``damselfly_scheduler_tasks``);
* ``rss_mb`` (VmRSS once registered) and ``peak_rss_mb`` (VmHWM).

Targets (issue 17): serving again (``piece_s``) <= 10 s, RSS <= 300 MB, with 100 k tasks.
``--baseline-src DIR`` runs the same rounds with another tree's ``src`` (e.g. an
export of the commit before a change) for the scheduler and the daemon,
alternating, on the same store. The page cache is warm (the store was just
built or used by the previous run): the machine is shared, so caches are not dropped.

    .venv/bin/python benchmarks/daemon_restart.py --tasks 100000 --runs 3 [--baseline-src /tmp/base/src]

Prints JSON (each run, then medians); exits 1 if a run failed (a held task not
served, a wrong byte, not every task registered in ``--timeout``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from damselfly.daemon.store.files import CONTENT, META, task_dir
from damselfly.daemon.store.metadata import TaskMeta, atomic_write_json
from damselfly.domain import DownloadSpec, PieceInfo, TrafficType
from damselfly.ids import download_task_id
from damselfly.runtime.children import ChildProcess, spawn, stop_all
from damselfly.runtime.cluster import daemon_command, scheduler_command
from damselfly.testbed.machine import current_rss_bytes, peak_rss_bytes
from damselfly.units import MiB, parse_size

NAME = "held"
# The discard port: nothing answers there, so a held task cannot come from the origin.
ORIGIN = "http://127.0.0.1:9/held/"


def url_of(i: int) -> str:
    return f"{ORIGIN}{i}"


def build_store(root: Path, tasks: int, size: int) -> float:
    """Write ``tasks`` succeeded, durable tasks of ``size`` bytes under ``root``; returns seconds."""
    began = time.monotonic()
    now = time.time()
    for i in range(tasks):
        url = url_of(i)
        tid = download_task_id(DownloadSpec(url=url))
        d = task_dir(root, tid)
        d.mkdir(parents=True, exist_ok=True)
        data = os.urandom(size)
        (d / CONTENT).write_bytes(data)
        piece = PieceInfo(0, 0, size, f"crc32:{zlib.crc32(data)}", traffic_type=TrafficType.BACK_TO_SOURCE)
        meta = TaskMeta(
            task_id=tid, url=url, content_length=size, piece_length=4 * MiB, state="succeeded",
            pieces={0: piece}, created_at=now, updated_at=now, accessed_at=now, durable=True,
        )  # fmt: skip
        atomic_write_json(d / META, meta.to_json(with_pieces=True), sync=False)
    os.sync()
    return time.monotonic() - began


def scheduler_tasks(metrics_port: int) -> int | None:
    """The tasks the scheduler knows; None when it is too busy to answer in time."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=15) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("damselfly_scheduler_tasks "):
                    return int(float(line.split()[1]))
    except (OSError, TimeoutError):
        return None
    return -1


def warm_up(store: Path) -> float:
    """Read every task's metadata once, so each run starts with the same (warm) page cache."""
    from damselfly.daemon.store.recovery import read_task, task_dirs

    began = time.monotonic()
    for path in task_dirs(store):
        read_task(path)
    return time.monotonic() - began


@dataclass
class Probe:
    """Polls the daemon's socket from a thread: health, then a held task's content."""

    socket: Path
    store: Path
    tasks: int
    began: float
    health_s: float | None = None
    piece_s: float | None = None
    error: str = ""
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from damselfly.api import dfdaemon_pb2, dfdaemon_pb2_grpc
        from damselfly.api.convert import download_to_pb

        i = 0
        while not self.stop.is_set() and self.piece_s is None:
            if not self.socket.exists():
                time.sleep(0.01)
                continue
            try:
                with grpc.insecure_channel(f"unix://{self.socket}") as ch:
                    if self.health_s is None:
                        status = health_pb2_grpc.HealthStub(ch).Check(
                            health_pb2.HealthCheckRequest(), timeout=2
                        )
                        if status.status != health_pb2.HealthCheckResponse.SERVING:
                            time.sleep(0.01)
                            continue
                        self.health_s = time.monotonic() - self.began
                    i = (i * 7919 + 104729) % self.tasks  # another held task each time
                    url = url_of(i)
                    download = download_to_pb(DownloadSpec(url=url))
                    download.need_piece_content = True
                    got = b""
                    stub = dfdaemon_pb2_grpc.DfdaemonDownloadStub(ch)
                    for resp in stub.DownloadTask(
                        dfdaemon_pb2.DownloadTaskRequest(download=download), timeout=10
                    ):
                        if resp.WhichOneof("response") == "download_piece_finished_response":
                            got += resp.download_piece_finished_response.piece.content
                    want = (
                        task_dir(self.store, download_task_id(DownloadSpec(url=url))) / CONTENT
                    ).read_bytes()
                    if got != want:
                        self.error = f"task {i}: {len(got)} bytes served, not the {len(want)} held"
                        return
                    self.piece_s = time.monotonic() - self.began
            except grpc.RpcError:
                time.sleep(0.02)


def run_once(root: Path, store: Path, tasks: int, src: Path | None, timeout: float) -> dict[str, Any]:
    env = {"PYTHONPATH": str(src)} if src is not None else None
    run = root / "run"
    sched = spawn(
        "scheduler", scheduler_command(root, name="scheduler"), log_path=root / "logs" / "scheduler.log",
        ready_file=run / "scheduler.ready.json", env=env,
    )  # fmt: skip
    children: list[ChildProcess] = [sched]
    try:
        sched.wait_ready(60)
        port, metrics_port = int(sched.ready["grpc_port"]), int(sched.ready["metrics_port"])
        argv = daemon_command(root, NAME, scheduler_port=port, hostname=f"bench-{NAME}")
        began = time.monotonic()
        daemon = spawn(
            NAME, argv, log_path=root / "logs" / f"{NAME}.log", ready_file=run / f"{NAME}.ready.json", env=env
        )
        children.insert(0, daemon)
        probe = Probe(store / "dfdaemon.sock", store, tasks, began)
        thread = threading.Thread(target=probe.run, daemon=True)
        thread.start()
        daemon.wait_ready(timeout)
        ready_s = time.monotonic() - began
        rss_ready = current_rss_bytes(daemon.pid) or 0
        registered_s = None
        deadline = began + timeout
        count = 0
        while time.monotonic() < deadline:
            count = scheduler_tasks(metrics_port) or count
            if count >= tasks:
                registered_s = time.monotonic() - began
                break
            time.sleep(0.2)
        thread.join(max(0.0, deadline - time.monotonic()))
        probe.stop.set()
        thread.join(5)
        return {
            "health_s": probe.health_s,
            "piece_s": probe.piece_s,
            "ready_s": ready_s,
            "registered_s": registered_s,
            "registered": count,
            "rss_ready_mb": rss_ready / MiB,
            "rss_mb": (current_rss_bytes(daemon.pid) or 0) / MiB,
            "peak_rss_mb": (peak_rss_bytes(daemon.pid) or 0) / MiB,
            "error": probe.error or ("" if registered_s is not None else f"{count} of {tasks} registered"),
        }
    finally:
        stop_all(children, grace=30)


def median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--size", default="4KiB", help="bytes per task (one piece)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--timeout", type=float, default=600.0, help="seconds a run may take to register every task"
    )
    ap.add_argument(
        "--baseline-src", type=Path, help="another tree's src dir, run alternating on the same store"
    )
    ap.add_argument("--store", type=Path, help="reuse (or build once, and keep) the store here")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="dfrs-", dir="/tmp"))
    store = args.store or root / NAME
    keep = args.store is not None
    report: dict[str, Any] = {"tasks": args.tasks, "size": parse_size(args.size)}
    try:
        if not (store / "tasks").is_dir():
            report["build_s"] = round(build_store(store, args.tasks, parse_size(args.size)), 1)
        if store != root / NAME:
            (root / NAME).symlink_to(store)
        report["warm_up_s"] = round(warm_up(store), 1)
        variants: list[tuple[str, Path | None]] = [("new", None)]
        if args.baseline_src is not None:
            variants.insert(0, ("base", args.baseline_src.resolve()))
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
        for i in range(args.runs):
            for name, src in variants:
                result = run_once(root, store, args.tasks, src, args.timeout)
                runs[name].append(result)
                print(f"{name} run {i + 1}: {json.dumps(result)}", file=sys.stderr, flush=True)
        report["runs"] = runs
        report["median"] = {
            name: {
                k: median(rs, k)
                for k in ("health_s", "piece_s", "ready_s", "registered_s", "rss_mb", "peak_rss_mb")
            }
            for name, rs in runs.items()
        }
        print(json.dumps(report, indent=2))
        return 1 if any(r["error"] for rs in runs.values() for r in rs) else 0
    finally:
        if keep:
            (root / NAME).unlink(missing_ok=True)  # the symlink: the store itself stays
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
