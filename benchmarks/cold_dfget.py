"""Cold dfget through the seed vs a direct curl, from the same origin to the same disk.

Target (P2P core issue): a cold dfget (origin -> seed daemon -> peer daemon ->
output file) takes at most 1.3x the time of ``curl -o`` of the same URL.
Each run uses a new URL (``?cold=<i>``), so every dfget is a new task that the
seed must fetch from the origin; curl and dfget alternate, median of ``--runs``.
After each cold run a second peer daemon downloads the same URL: its parents
hold the finished task, so that is one hop through whole daemons (dfget start-up,
scheduling, piece transfer, output) — ``warm_throughput_ratio`` is curl's time
over that dfget's (target >= 0.8). Every timed step starts after ``sync``; the
memory is made resident first (``--memory``, :mod:`damselfly.testbed.machine`).
Also reports the peak RSS (VmHWM) of each daemon after the runs.

    .venv/bin/python benchmarks/cold_dfget.py --size 1GiB --runs 3

Prints JSON; exits 1 if a download failed or a digest was wrong (not for a
missed target: that is a number to report, not a crash).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from damselfly.cli.bench import origin_stats, start_origin, write_random_file
from damselfly.pieces import file_digest
from damselfly.runtime.children import ChildProcess, python_module_command, stop_all
from damselfly.runtime.cluster import LocalCluster, PeerSpec
from damselfly.testbed.machine import MEMORY_HELP, MODES, peak_rss_bytes, resident_memory
from damselfly.units import parse_size


def timed(argv: list[str], timeout: float) -> tuple[float, subprocess.CompletedProcess[str]]:
    began = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return time.monotonic() - began, r


def forget(url: str, sockets: list[Path]) -> None:
    """Delete the run's task from every daemon, as curl's output is deleted after its run:
    each run then starts with the same memory and disk state (a store that kept every run's
    GiBs would make later runs pay for page reclaim that curl never sees)."""
    import grpc

    from damselfly.api import dfdaemon_pb2, dfdaemon_pb2_grpc
    from damselfly.domain import DownloadSpec
    from damselfly.ids import download_task_id

    tid = download_task_id(DownloadSpec(url=url))
    for sock in sockets:
        with grpc.insecure_channel(f"unix://{sock}") as channel:
            try:
                dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel).DeleteTask(
                    dfdaemon_pb2.DeleteTaskRequest(task_id=tid), timeout=30
                )
            except grpc.RpcError as e:
                print(f"cold_dfget: could not delete task {tid[:12]} at {sock}: {e}", file=sys.stderr)


def settle() -> None:
    """Start each measurement with no dirty pages of the previous one still being written back."""
    os.sync()
    time.sleep(0.5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per download")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    ap.add_argument("--log-level", default="WARNING", help="daemons' and scheduler's log level")
    ap.add_argument("--daemon-config", type=Path, help="YAML for seed and peers (to compare)")
    ap.add_argument("--memory", choices=MODES, default="resident", help=MEMORY_HELP)
    args = ap.parse_args()
    size = parse_size(args.size)
    if shutil.which("curl") is None:
        print("cold_dfget: curl is not installed (apt-get install curl)", file=sys.stderr)
        return 2

    root = Path(tempfile.mkdtemp(prefix="dfcold-"))
    origin: ChildProcess | None = None
    cluster: LocalCluster | None = None
    result: dict[str, Any] = {"size_bytes": size, "runs": args.runs, "target_ratio": 1.3}
    ok = True
    memory = contextlib.ExitStack()
    try:
        result["memory"] = memory.enter_context(resident_memory(as_is=args.memory == "as-is")).to_json()
        (root / "origin").mkdir()
        expected = write_random_file(root / "origin" / "blob.bin", size)
        origin = start_origin(root, root / "origin")
        port = int(origin.wait_ready(30)["port"])
        cluster = LocalCluster(
            root,
            [PeerSpec("peer"), PeerSpec("peer2")],
            log_level=args.log_level,
            daemon_config=args.daemon_config.resolve() if args.daemon_config else None,
        )
        cluster.start()
        sock = cluster.socket_of(0)
        sock2 = cluster.socket_of(1)
        out = root / "out.bin"
        curl_s: list[float] = []
        dfget_s: list[float] = []
        warm_s: list[float] = []
        for i in range(args.runs):
            url = f"http://127.0.0.1:{port}/blob.bin?cold={i}"

            def run_curl(url: str = url) -> None:
                nonlocal ok
                settle()
                t, r = timed(["curl", "-sS", "-f", "-o", str(out), url], args.timeout)
                ok &= r.returncode == 0 and out.stat().st_size == size
                curl_s.append(round(t, 4))
                out.unlink(missing_ok=True)

            def run_dfget(url: str = url, endpoint: Path = sock, times: list[float] = dfget_s) -> None:
                nonlocal ok
                settle()
                argv = python_module_command(
                    "damselfly", "get", url, "-O", str(out), "-e", str(endpoint), "--no-progress"
                )
                t, r = timed(argv, args.timeout)
                if r.returncode != 0:
                    print(f"cold_dfget: dfget failed ({r.returncode}): {r.stderr.strip()}", file=sys.stderr)
                    ok = False
                elif file_digest(str(out), "sha256").value != expected:
                    print("cold_dfget: dfget output has the wrong sha256", file=sys.stderr)
                    ok = False
                times.append(round(t, 4))
                out.unlink(missing_ok=True)

            # Alternate which goes first, so neither always inherits the other's dirty pages.
            for step in (run_curl, run_dfget) if i % 2 == 0 else (run_dfget, run_curl):
                step()
            # Single hop through whole daemons: a second peer pulls the now finished task from a parent.
            run_dfget(url, sock2, warm_s)
            forget(url, [root / "seed" / "dfdaemon.sock", sock, sock2])
        result["curl_s"] = curl_s
        result["dfget_s"] = dfget_s
        result["curl_median_s"] = statistics.median(curl_s)
        result["dfget_median_s"] = statistics.median(dfget_s)
        result["ratio"] = round(result["dfget_median_s"] / result["curl_median_s"], 3)
        result["meets_target"] = result["ratio"] <= 1.3
        result["warm_dfget_s"] = warm_s
        result["warm_dfget_median_s"] = statistics.median(warm_s)
        # Throughput of a warm dfget (one hop from a parent) relative to curl from the origin: target >= 0.8.
        result["warm_throughput_ratio"] = round(result["curl_median_s"] / result["warm_dfget_median_s"], 3)
        result["peak_rss_bytes"] = {c.name: peak_rss_bytes(c.pid) for c in cluster.children}
        stats = origin_stats(port)
        result["origin_bytes"] = stats["bytes"]
        result["all_ok"] = ok
    finally:
        if cluster is not None:
            cluster.stop()
        if origin is not None:
            stop_all([origin])
        memory.close()
        if args.keep:
            print(f"cold_dfget: kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
