"""``damselfly bench local`` and ``damselfly demo``: a real swarm on this machine.

In a temp dir: a random file of the given size, an origin that counts what it
serves (:mod:`damselfly.testbed.origin`), a scheduler, a seed daemon and N peer
daemons as separate processes on 127.0.0.1, then dfget on every peer at once.
Reports each peer's completion time, whether every output's sha256 is right,
and how many bytes the origin served: the number P2P exists to keep near F.
Every process is stopped by PID and the temp dir removed (unless ``--keep``),
also on Ctrl-C or failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..pieces import file_digest
from ..runtime.children import ChildFailed, ChildProcess, log_tail, python_module_command, spawn, stop_all
from ..runtime.cluster import LocalCluster, PeerSpec
from ..runtime.supervisor import Interrupted, ignore_signals, interrupt_on_signals
from ..units import MiB, human_size


@dataclass
class BenchResult:
    peers: int
    size_bytes: int
    origin_bytes: int = 0
    origin_requests: int = 0
    completion_s: list[float | None] = field(default_factory=list)
    exit_codes: list[int | None] = field(default_factory=list)
    wall_s: float = 0.0
    all_digests_ok: bool = False
    digests_ok: list[bool] = field(default_factory=list)
    workdir: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.all_digests_ok and all(c == 0 for c in self.exit_codes) and not self.error

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


def write_random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; return their sha256 hex."""
    h = hashlib.sha256()
    block = 4 * MiB
    with path.open("wb") as f:
        left = size
        while left > 0:
            chunk = os.urandom(min(block, left))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def origin_stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=10) as r:
        data: dict[str, Any] = json.loads(r.read())
    return data


def start_origin(root: Path, directory: Path) -> ChildProcess:
    ready = root / "run" / "origin.ready.json"
    argv = python_module_command(
        "damselfly.testbed.origin", "--dir", str(directory), "--port", "0", "--ready-file", str(ready)
    )
    child = spawn("origin", argv, log_path=root / "logs" / "origin.log", ready_file=ready)
    return child


def _run_dfgets(
    root: Path,
    url: str,
    sockets: list[Path],
    outputs: list[Path],
    timeout_s: float,
    children: list[ChildProcess],
) -> tuple[list[float | None], list[int | None], float]:
    """Start one dfget per peer at once (into ``children``, which the caller owns and
    cleans up); wait for all; return times, exit codes and the wall time."""
    n = len(sockets)
    times: list[float | None] = [None] * n
    codes: list[int | None] = [None] * n
    began = time.monotonic()
    for i in range(n):
        argv = python_module_command(
            "damselfly", "get", url, "-O", str(outputs[i]), "-e", str(sockets[i]), "--no-progress",
            "--timeout", f"{int(timeout_s)}s",
        )  # fmt: skip
        children.append(spawn(f"dfget-{i}", argv, log_path=root / "logs" / f"dfget-{i}.log"))

    def wait(i: int) -> None:
        try:
            codes[i] = children[i].popen.wait(timeout=timeout_s + 30)
            times[i] = round(time.monotonic() - began, 4)
        except subprocess.TimeoutExpired:
            codes[i] = None

    threads = [threading.Thread(target=wait, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times, codes, round(time.monotonic() - began, 4)


def run_bench(
    peers: int,
    size: int,
    *,
    keep: bool = False,
    log_level: str = "INFO",
    timeout_s: float = 600.0,
    progress: bool = True,
) -> BenchResult:
    """The whole benchmark; always cleans up its processes (and the dir unless ``keep``)."""
    root = Path(tempfile.mkdtemp(prefix="dfbench-"))
    result = BenchResult(peers=peers, size_bytes=size, workdir=str(root))
    origin: ChildProcess | None = None
    cluster: LocalCluster | None = None
    dfgets: list[ChildProcess] = []

    def say(msg: str, *, always: bool = False) -> None:
        if progress or always:
            print(msg, file=sys.stderr, flush=True)

    with interrupt_on_signals():
        try:
            (root / "origin").mkdir()
            (root / "out").mkdir()
            say(f"bench: writing a {human_size(size)} random file in {root}")
            expected = write_random_file(root / "origin" / "blob.bin", size)
            origin = start_origin(root, root / "origin")
            port = int(origin.wait_ready(30)["port"])
            say(f"bench: starting a scheduler, a seed and {peers} peer daemons")
            cluster = LocalCluster(root, [PeerSpec(f"peer{i}") for i in range(peers)], log_level=log_level)
            cluster.start()
            url = f"http://127.0.0.1:{port}/blob.bin"
            outputs = [root / "out" / f"peer{i}.bin" for i in range(peers)]
            sockets = [cluster.socket_of(i) for i in range(peers)]
            say(f"bench: {peers} dfgets at once")
            times, codes, wall = _run_dfgets(root, url, sockets, outputs, timeout_s, dfgets)
            result.completion_s, result.exit_codes, result.wall_s = times, codes, wall
            for i, out in enumerate(outputs):
                ok = out.is_file() and file_digest(str(out), "sha256").value == expected
                result.digests_ok.append(ok)
                if codes[i] != 0:
                    tail = log_tail(dfgets[i].log_path, 5)
                    say(f"bench: dfget on peer{i} exited {codes[i]}:\n{tail}", always=True)
            result.all_digests_ok = all(result.digests_ok)
            stats = origin_stats(port)
            result.origin_bytes = int(stats["bytes"])
            result.origin_requests = int(stats["requests"])
            if not result.ok:
                for child in cluster.children:
                    say(f"bench: log tail of {child.name}:\n{child.log_tail(8)}", always=True)
        except ChildFailed as e:
            result.error = str(e).splitlines()[0]
            say(f"bench: {e}", always=True)
        except Interrupted:
            result.error = "interrupted"
            say("bench: interrupted; cleaning up", always=True)
        finally:
            ignore_signals()
            stop_all(dfgets, grace=5)
            if cluster is not None:
                cluster.stop(grace=10)
            if origin is not None:
                stop_all([origin], grace=5)
            if keep:
                say(f"bench: kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)
    return result


def human_summary(r: BenchResult) -> str:
    delivered = r.size_bytes * sum(1 for ok in r.digests_ok if ok)
    lines = [f"{r.peers} peers, {human_size(r.size_bytes)} each"]
    if r.error:
        lines.append(f"  error: {r.error}")
    for i, t in enumerate(r.completion_s):
        status = "ok" if i < len(r.digests_ok) and r.digests_ok[i] else f"FAILED (exit {r.exit_codes[i]})"
        lines.append(f"  peer{i}: {t if t is not None else '-'} s  {status}")
    if r.completion_s:
        lines.append(f"  wall time {r.wall_s:.2f} s")
    saved = max(0, delivered - r.origin_bytes)
    lines.append(
        f"  origin served {human_size(r.origin_bytes)} in {r.origin_requests} requests "
        f"for {human_size(delivered)} delivered"
        + (f" (P2P saved {human_size(saved)}, {100 * saved / delivered:.0f}%)" if delivered else "")
    )
    lines.append("  all digests ok" if r.all_digests_ok else "  DIGEST CHECK FAILED")
    return "\n".join(lines)


def print_result(r: BenchResult, *, as_json: bool) -> int:
    if as_json:
        print(json.dumps(r.to_json(), indent=2))
    else:
        print(human_summary(r))
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0 if r.ok else 1
