"""A relaying daemon's CPU per byte on loopback, beside the kernel's own relay of the same bytes.

Why: in a swarm every peer is a relay (it receives each piece once and sends it on
to its children), so the CPU a daemon spends per relayed byte bounds how many
hosts one machine's cores can serve. Links are not shaped here: the question is
CPU per byte, not time.

One round for ``k`` children (:func:`run_relay`):

* **damselfly**: an origin, a scheduler, a seed daemon (the *parent*, warmed with
  the file first) and one peer daemon (the *relay*), all on 127.0.0.1 with
  ``storage.localShare`` off so pieces cross TCP as between two hosts. A dfget on
  the relay pulls the file from the parent while ``k`` children pull every piece
  from the relay as a daemon's children do: a SyncPieces stream each (Damselfly's
  extensions on, so pieces still landing are announced), each announced piece from
  the relay's piece server as it lands, crc32-checked by
  :class:`~damselfly.daemon.transfer.piece_client.PieceClient`.
  Counted: the relay daemon's CPU seconds (``/proc/PID/stat``) from the dfget's
  start to the last child's last piece.
* **kernel**: :mod:`damselfly.testbed.kernel_relay` in a process of its own
  receives the same number of bytes from a parent socket with ``splice``
  (socket -> pipe -> file) and sends them to ``k`` children with ``sendfile``
  once all are in (store and forward);
* **kernel-cut-through**: the same, each step sent on as soon as it is in the
  file, as the daemon sends a piece on while it lands.

Reported per round: bytes in and out, the relay's CPU seconds, GB relayed (sent
on) per CPU second, CPU seconds per GiB in + out, and the ratio of the daemon's
rate to each kernel relay's. Rounds alternate the three kinds; the summary takes
medians per ``k``. Every process is stopped by PID, the temp dir removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..daemon.store.files import TRASH
from ..domain import HostInfo
from ..errors import NotFound, PeerError, ResourceExhausted
from ..pieces import piece_count, piece_length_for, piece_span
from ..runtime.children import ChildFailed, ChildProcess, log_tail, python_module_command, spawn, stop_all
from ..runtime.cluster import LocalCluster, PeerSpec
from ..runtime.supervisor import Interrupted, ignore_signals, interrupt_on_signals
from ..units import GiB, MiB
from .machine import describe, process_cpu_split

Say = Callable[[str], None]
FILE_NAME = "blob.bin"
RETRY_S = 0.01  # a child's piece ask or SyncPieces stream was refused: again after this
DAEMON_CONFIG = "storage:\n  localShare: false\n"
ROUND_TIMEOUT_S = 600.0
KERNEL_KINDS = ("kernel", "kernel-cut-through")  # store and forward; each step on as it lands
KINDS = ("damselfly", *KERNEL_KINDS)
FORGET_TRIES = 30  # asks to drop a round's task ...
FORGET_RETRY_S = 0.1  # ... this far apart


@dataclass
class RelayRound:
    """One measured relay of ``bytes_in`` to ``children`` children."""

    kind: str  # "damselfly", "kernel" or "kernel-cut-through"
    children: int
    bytes_in: int = 0
    bytes_out: int = 0
    cpu_s: float = 0.0
    user_s: float = 0.0  # of cpu_s: in user space (the interpreter, for the daemon) ...
    sys_s: float = 0.0  # ... and in the kernel on the relay's behalf
    wall_s: float = 0.0
    retries: int = 0  # damselfly: children's piece asks and SyncPieces streams refused (asked again)
    ok: bool = False

    @property
    def gb_per_cpu_s(self) -> float | None:
        """GB (1e9 bytes) sent on to children per CPU second of the relay."""
        return None if self.cpu_s <= 0 else round(self.bytes_out / 1e9 / self.cpu_s, 4)

    @property
    def cpu_s_per_gib(self) -> float | None:
        """CPU seconds per GiB moved through the relay (received plus sent)."""
        moved = self.bytes_in + self.bytes_out
        return None if moved <= 0 else round(self.cpu_s / (moved / GiB), 4)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("cpu_s", "user_s", "sys_s"):
            out[key] = round(getattr(self, key), 6)
        out["wall_s"] = round(self.wall_s, 3)
        out["gb_per_cpu_s"] = self.gb_per_cpu_s
        out["cpu_s_per_gib"] = self.cpu_s_per_gib
        return out


@dataclass
class RelayResult:
    size: int
    children: list[int]
    rounds: list[RelayRound] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.rounds) and all(r.ok for r in self.rounds)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Medians per ``k``: each kind's GB per CPU second and CPU-s per GiB, and damselfly / each
        kernel relay (``damselfly_over_kernel``: store and forward, ``..._cut_through``)."""
        out: dict[str, dict[str, Any]] = {}
        for k in self.children:
            row: dict[str, Any] = {}
            for kind in KINDS:
                rs = [r for r in self.rounds if r.children == k and r.kind == kind and r.ok]
                rates = [r.gb_per_cpu_s for r in rs if r.gb_per_cpu_s is not None]
                per_gib = [r.cpu_s_per_gib for r in rs if r.cpu_s_per_gib is not None]
                row[kind] = {
                    "runs": len(rs),
                    "gb_per_cpu_s": round(statistics.median(rates), 4) if rates else None,
                    "cpu_s_per_gib": round(statistics.median(per_gib), 4) if per_gib else None,
                    "user_s": round(statistics.median(r.user_s for r in rs), 4) if rs else None,
                    "sys_s": round(statistics.median(r.sys_s for r in rs), 4) if rs else None,
                }
            d = row["damselfly"]["gb_per_cpu_s"]
            for kind in KERNEL_KINDS:
                kern = row[kind]["gb_per_cpu_s"]
                ratio = "damselfly_over_" + kind.replace("-", "_")
                row[ratio] = round(d / kern, 4) if d and kern else None
            out[str(k)] = row
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "error": self.error,
            "size": self.size,
            "children": self.children,
            "summary": self.summary(),
            "rounds": [r.to_json() for r in self.rounds],
        }


def human_summary(data: dict[str, Any]) -> str:
    lines = [f"relay of {data['size'] / MiB:.0f} MiB on loopback (medians per k; GB sent on per CPU-s)"]
    if "memory" in data:
        lines.append(f"  {describe(data['memory'])}")
    if data["error"]:
        lines.append(f"  error: {data['error']}")

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    for k, row in data["summary"].items():
        d, kern, cut = row["damselfly"], row["kernel"], row["kernel-cut-through"]
        lines.append(
            f"  k={k}: damselfly {num(d['gb_per_cpu_s'])} GB/CPU-s ({num(d['cpu_s_per_gib'])} CPU-s/GiB); "
            f"kernel {num(kern['gb_per_cpu_s'])} store and forward, {num(cut['gb_per_cpu_s'])} cut-through; "
            f"ratio {num(row['damselfly_over_kernel'])} / {num(row['damselfly_over_kernel_cut_through'])}"
        )
        split = ", ".join(
            f"{name} {num(part['user_s'])} + {num(part['sys_s'])}"
            for name, part in (("damselfly", d), ("store and forward", kern), ("cut-through", cut))
        )
        lines.append(f"       CPU-s a round, user + system: {split}")
    lines.append("  all rounds ok" if data["ok"] else "  RUN FAILED")
    return "\n".join(lines)


def find_task_ids(storage: Path) -> set[str]:
    """The task IDs whose dirs are under a daemon's storage (``tasks/<3 hex>/<id>``)."""
    tasks = storage / "tasks"
    if not tasks.is_dir():
        return set()
    return {d.name for shard in tasks.iterdir() if shard.is_dir() for d in shard.iterdir() if d.is_dir()}


async def _pull_all(
    relay: HostInfo, task_id: str, size: int, out: Path, counters: list[int], index: int
) -> None:
    """One child, as a daemon's child of the relay: a SyncPieces stream (on the relay's piece
    port, as between Damselfly daemons) tells it which pieces the relay holds or is receiving
    (pieces still landing announced and streamed as they land), and it takes each announced
    piece from the relay's piece server through a daemon's connection pool, crc32-checked. A
    stream that fails (the relay has no task yet) or ends early is opened again for the pieces
    still missing."""
    from ..daemon.transfer.peer_rpc import PeerRPC
    from ..daemon.transfer.piece_client import PieceConnectionPool

    piece_length = piece_length_for(size)
    missing = set(range(piece_count(size, piece_length)))
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    rpc, pool = PeerRPC(), PieceConnectionPool()

    async def take(number: int) -> None:
        span = piece_span(number, size, piece_length)
        while True:
            try:
                await pool.download_piece(
                    relay.ip, relay.download_port, task_id, number, fd, span.offset, span.length, timeout=60
                )
                return
            except (NotFound, ResourceExhausted):
                counters[index] += 1
                await asyncio.sleep(RETRY_S)

    try:
        while missing:
            try:
                stream = rpc.sync_pieces(relay, f"bench-child-{index}", task_id, missing, extensions=True)
                async with contextlib.aclosing(stream):
                    async for piece in stream:
                        if piece.number in missing:  # else announced again once held
                            await take(piece.number)
                            missing.discard(piece.number)
                        if not missing:
                            break
            except PeerError:
                counters[index] += 1
                await asyncio.sleep(RETRY_S)
    finally:
        await pool.close()
        await rpc.close()
        os.close(fd)


async def _children(relay: HostInfo, task_id: str, size: int, outs: Sequence[Path]) -> list[int]:
    counters = [0] * len(outs)
    await asyncio.gather(*(_pull_all(relay, task_id, size, out, counters, i) for i, out in enumerate(outs)))
    return counters


async def _forget(task_id: str, sockets: Sequence[Path]) -> None:
    """Each daemon drops its copy of ``task_id`` (DeleteLocalTask on its unix socket), asked
    again for a while when the daemon is still winding the download up."""
    from ..api import dfdaemon_pb2
    from ..cli.cache.persistent_tasks import CacheFailure, LocalDaemon

    request = dfdaemon_pb2.DeleteLocalTaskRequest(task_id=task_id)
    for path in sockets:
        for _ in range(FORGET_TRIES):
            try:
                async with LocalDaemon(path) as daemon:
                    await daemon.call("DeleteLocalTask", request, timeout=30)
                break
            except CacheFailure as e:
                failure = e
                await asyncio.sleep(FORGET_RETRY_S)
        else:
            raise RuntimeError(f"the daemon at {path} kept task {task_id[:12]}: {failure}")


def _await_empty_trash(storages: Sequence[Path], timeout: float = 60.0) -> None:
    """Wait until no dropped task waits in any of these daemons' trash (``PieceStore.delete_task``
    moves a task there and removes its files in a thread)."""
    deadline = time.monotonic() + timeout
    for storage in storages:
        trash = storage / TRASH
        while trash.is_dir() and any(trash.iterdir()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{trash} still holds dropped tasks after {timeout:.0f} s")
            time.sleep(FORGET_RETRY_S)


class RelayBench:
    """The processes of a relay benchmark under one temp dir; :meth:`close` stops them all."""

    def __init__(self, size: int, say: Say) -> None:
        self.size = size
        self.say = say
        self.root = Path(tempfile.mkdtemp(prefix="dfrelay-"))
        self.origin: ChildProcess | None = None
        self.cluster: LocalCluster | None = None
        self.extra: list[ChildProcess] = []
        self.rounds = 0

    def start(self) -> None:
        from ..cli.bench import start_origin, write_random_file

        for d in ("origin", "out", "logs", "run"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        write_random_file(self.root / "origin" / FILE_NAME, self.size)
        self.origin = start_origin(self.root, self.root / "origin")
        self.origin_port = int(self.origin.wait_ready(30)["port"])
        config = self.root / "run" / "daemon.yaml"
        config.write_text(DAEMON_CONFIG)
        self.cluster = LocalCluster(self.root, [PeerSpec("relay")], log_level="WARNING", daemon_config=config)
        self.cluster.start()

    @property
    def relay(self) -> ChildProcess:
        assert self.cluster is not None and self.cluster.peers
        return self.cluster.peers[0]

    def _dfget(self, name: str, url: str, socket_path: Path) -> ChildProcess:
        argv = python_module_command(
            "damselfly", "get", url, "-O", str(self.root / "out" / f"{name}.bin"), "-e", str(socket_path),
            "--no-progress", "--timeout", f"{int(ROUND_TIMEOUT_S)}s",
        )  # fmt: skip
        child = spawn(name, argv, log_path=self.root / "logs" / f"{name}.log")
        self.extra.append(child)
        return child

    def _finish(self, child: ChildProcess) -> None:
        code = child.popen.wait(timeout=ROUND_TIMEOUT_S)
        if code != 0:
            raise ChildFailed(child, f"{child.name} exited {code}:\n{log_tail(child.log_path, 8)}")
        self.extra.remove(child)

    def damselfly_round(self, k: int) -> RelayRound:
        assert self.cluster is not None and self.cluster.seed is not None
        self.rounds += 1
        url = f"http://127.0.0.1:{self.origin_port}/{FILE_NAME}?round={self.rounds}"
        seed_storage = self.root / "seed"
        before = find_task_ids(seed_storage)
        self._finish(self._dfget("warm", url, seed_storage / "dfdaemon.sock"))
        new = find_task_ids(seed_storage) - before
        if len(new) != 1:
            raise RuntimeError(f"expected one new task on the parent, found {len(new)}")
        task_id = new.pop()
        ready = self.relay.ready
        relay = HostInfo(
            id="relay", hostname="relay", ip="127.0.0.1",
            port=int(ready["upload_port"]), download_port=int(ready["piece_port"]),
        )  # fmt: skip
        outs = [self.root / "out" / f"child{i}.bin" for i in range(k)]
        result = RelayRound("damselfly", k)
        user0, sys0 = process_cpu_split(self.relay.pid) or (0.0, 0.0)
        began = time.monotonic()
        dfget = self._dfget("relay-get", url, self.cluster.socket_of(0))
        counters = asyncio.run(_children(relay, task_id, self.size, outs))
        self._finish(dfget)
        result.wall_s = time.monotonic() - began
        user1, sys1 = process_cpu_split(self.relay.pid) or (0.0, 0.0)
        result.user_s, result.sys_s = user1 - user0, sys1 - sys0
        result.cpu_s = result.user_s + result.sys_s
        result.retries = sum(counters)
        from ..pieces import file_digest

        expected = file_digest(str(self.root / "origin" / FILE_NAME), "sha256")
        result.ok = all(file_digest(str(o), "sha256") == expected for o in outs)
        result.bytes_in = self.size
        result.bytes_out = sum(o.stat().st_size for o in outs)
        for o in (*outs, self.root / "out" / "warm.bin", self.root / "out" / "relay-get.bin"):
            o.unlink(missing_ok=True)
        # The kernel's round unlinks its file too: both kinds then write into page-cache pages
        # freed by the round before. Pages the machine never touched cost far more (a VM's
        # host backs each on first touch: 0.5-0.6 CPU-s per 256 MiB here, against 0.05).
        asyncio.run(_forget(task_id, (seed_storage / "dfdaemon.sock", self.cluster.socket_of(0))))
        # A dropped task's files are removed by a thread of the daemon's: done before the next
        # round starts counting, as the kernel's unlink is never in its own count.
        _await_empty_trash((seed_storage, self.root / "relay"))
        return result

    def kernel_round(self, k: int, *, cut_through: bool = False) -> RelayRound:
        src = self.root / "origin" / FILE_NAME
        ready = self.root / "run" / "kernel-relay.ready.json"
        result_file = self.root / "run" / "kernel-relay.result.json"
        result_file.unlink(missing_ok=True)
        out = self.root / "out" / "kernel-relay.bin"
        with socket.create_server(("127.0.0.1", 0)) as parent:
            argv = python_module_command(
                "damselfly.testbed.kernel_relay", "--parent", f"127.0.0.1:{parent.getsockname()[1]}",
                "--size", str(self.size), "--children", str(k), "--out", str(out),
                "--ready-file", str(ready), "--result", str(result_file),
                *(["--cut-through"] if cut_through else []),
            )  # fmt: skip
            child = spawn(
                "kernel-relay", argv, log_path=self.root / "logs" / "kernel-relay.log", ready_file=ready
            )
            self.extra.append(child)
            port = int(child.wait_ready(30)["port"])
            received = [0] * k
            began = time.monotonic()

            def drain(i: int) -> None:
                buf = bytearray(1 * MiB)
                with socket.create_connection(("127.0.0.1", port)) as s:
                    while n := s.recv_into(buf):
                        received[i] += n

            threads = [threading.Thread(target=drain, args=(i,), daemon=True) for i in range(k)]
            for t in threads:
                t.start()
            conn, _ = parent.accept()
            with conn, open(src, "rb") as f:
                sent = 0
                while sent < self.size:
                    sent += os.sendfile(conn.fileno(), f.fileno(), sent, self.size - sent)
            for t in threads:
                t.join(ROUND_TIMEOUT_S)
            self._finish(child)
        import json

        data = json.loads(result_file.read_text())
        out.unlink(missing_ok=True)
        return RelayRound(
            "kernel-cut-through" if cut_through else "kernel",
            k,
            bytes_in=int(data["bytes_in"]),
            bytes_out=int(data["bytes_out"]),
            cpu_s=float(data["cpu_s"]),
            user_s=float(data["user_s"]),
            sys_s=float(data["sys_s"]),
            wall_s=time.monotonic() - began,
            ok=data["bytes_in"] == self.size and received == [self.size] * k,
        )

    def close(self) -> None:
        stop_all(self.extra, grace=5)
        if self.cluster is not None:
            self.cluster.stop(grace=10)
        if self.origin is not None:
            stop_all([self.origin], grace=5)
        shutil.rmtree(self.root, ignore_errors=True)


def run_relay(
    size: int, children: Sequence[int] = (1, 2, 4), runs: int = 3, say: Say | None = None
) -> RelayResult:
    """``runs`` rounds of each kind for each ``k`` in ``children``, damselfly and kernel alternating."""
    printer = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    result = RelayResult(size=size, children=list(children))
    bench = RelayBench(size, printer)
    with interrupt_on_signals():
        try:
            bench.start()
            bench.damselfly_round(1)  # not counted: the relay's first task pays its imports and caches
            for run in range(runs):
                for k in children:
                    for kind in KINDS if run % 2 == 0 else KINDS[::-1]:
                        if kind == "damselfly":
                            r = bench.damselfly_round(k)
                        else:
                            r = bench.kernel_round(k, cut_through=kind == "kernel-cut-through")
                        result.rounds.append(r)
                        printer(
                            f"relay: run {run + 1} k={k} {kind}: {r.cpu_s:.2f} CPU-s "
                            f"({r.user_s:.2f} user + {r.sys_s:.2f} sys), "
                            f"{r.gb_per_cpu_s} GB/CPU-s, {r.cpu_s_per_gib} CPU-s/GiB"
                            + (f", {r.retries} asks again" if kind == "damselfly" else "")
                            + ("" if r.ok else "  FAILED")
                        )
        except (ChildFailed, RuntimeError, OSError) as e:
            result.error = str(e).splitlines()[0]
            printer(f"relay: {e}")
        except Interrupted:
            result.error = "interrupted"
        finally:
            ignore_signals()
            bench.close()
    return result
