"""Where a cold dfget's second hop goes: curl, a dfget that the seed serves alone, and a
dfget through the seed to a peer, of a new URL each round; wall time and CPU per process.

    .venv/bin/python benchmarks/second_hop.py --size 1GiB --rounds 4

"seed" is a dfget against the seed daemon's own socket (origin -> seed, one hop); "peer" is
the cold path of cold_dfget.py (origin -> seed -> peer). The CPU columns are each process's
user + system seconds over the round (/proc/PID/stat). Prints JSON; exits 1 if a download failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cold_dfget import forget, settle, timed

from damselfly.cli.bench import start_origin, write_random_file
from damselfly.runtime.children import python_module_command, stop_all
from damselfly.runtime.cluster import LocalCluster, PeerSpec
from damselfly.units import parse_size

HZ = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    size = parse_size(args.size)
    root = Path(tempfile.mkdtemp(prefix="dfhop-"))
    origin = cluster = None
    rows: dict[str, list[dict[str, float]]] = {"curl": [], "seed": [], "peer": []}
    ok = True
    try:
        (root / "origin").mkdir()
        write_random_file(root / "origin" / "blob.bin", size)
        origin = start_origin(root, root / "origin")
        port = int(origin.wait_ready(30)["port"])
        cluster = LocalCluster(root, [PeerSpec("peer")], log_level="WARNING")
        cluster.start()
        pids = {c.name: c.pid for c in cluster.children} | {"origin": origin.pid}
        sockets = {"seed": root / "seed" / "dfdaemon.sock", "peer": cluster.socket_of(0)}
        out = root / "out.bin"
        for r in range(args.rounds):
            for who in ("curl", "seed", "peer"):
                url = f"http://127.0.0.1:{port}/blob.bin?round={r}&via={who}"
                settle()
                before = {n: cpu_s(p) for n, p in pids.items()}
                if who == "curl":
                    t, res = timed(["curl", "-sS", "-f", "-o", str(out), url], 600)
                else:
                    argv = ["damselfly", "get", url, "-O", str(out), "-e", str(sockets[who]), "--no-progress"]
                    t, res = timed(python_module_command(*argv), 600)
                ok &= res.returncode == 0 and out.exists() and out.stat().st_size == size
                row = {"wall_s": round(t, 3)} | {
                    f"{n}_cpu_s": round(cpu_s(p) - before[n], 2) for n, p in pids.items()
                }
                rows[who].append(row)
                out.unlink(missing_ok=True)
                forget(url, list(sockets.values()))
    finally:
        if cluster is not None:
            cluster.stop()
        if origin is not None:
            stop_all([origin])
        shutil.rmtree(root, ignore_errors=True)
    result: dict[str, Any] = {"size_bytes": size, "rounds": rows, "all_ok": ok}
    result["median_wall_s"] = {k: statistics.median(r["wall_s"] for r in v) for k, v in rows.items() if v}
    print(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
