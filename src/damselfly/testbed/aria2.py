"""The BitTorrent baseline of ``bench swarm --baseline aria2``: aria2 + opentracker on the same testbed.

Why: every figure a swarm run reports (completion over T_min, the testbed's CPU
seconds) means more beside a mature C++ BitTorrent client's on the same
namespaces, links and file, measured in the same sitting.

Layout: the hosts and shaping of :class:`~damselfly.testbed.swarm.SwarmRun`
(same names, addresses, rates, link queue). The origin's host runs one aria2c
*seeder* holding the file; the scheduler's host runs opentracker (its whitelist
holds the torrent's info hash: Debian's build serves only whitelisted
torrents); each peer host runs one aria2c *leecher* from its arrival time,
which goes on seeding once complete, as a Damselfly peer goes on serving.
Seed hosts stay idle (BitTorrent has no seed tier between origin and peers).
DHT, local peer discovery and peer exchange are off: the tracker alone
introduces peers. A leecher's completion is the time its
``--on-bt-download-complete`` hook wrote; its bytes up and down come from its
JSON-RPC (listening on the namespace's loopback only) at the end. CPU seconds
are each process's user + system time over the transfer (``/proc/PID/stat``).
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

from ..runtime.children import ChildFailed, ChildProcess, log_tail, stop_all
from ..runtime.supervisor import Interrupted, ignore_signals, interrupt_on_signals
from ..units import MiB
from .machine import process_cpu_s
from .netns import TestbedError, call_in_netns, sweep_stale
from .report import HostResult, SwarmResult, busy_fraction, read_cpu_times
from .swarm import FILE_NAME, Say, SwarmOptions, SwarmRun, sha256_file, write_random_file
from .torrent import DEFAULT_PIECE_LENGTH, info_hash, make_torrent

TRACKER_PORT = 6969
RPC_PORT = 6800
COMMON = [
    "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false",
    "--seed-ratio=0.0", "--file-allocation=none", "--summary-interval=0", "--console-log-level=warn",
    "--enable-rpc=true", f"--rpc-listen-port={RPC_PORT}", "--rpc-listen-all=false",
    "--bt-detach-seed-only=true", "--auto-save-interval=0",
]  # fmt: skip
# aria2 calls this with GID, file count and path once a torrent is complete.
HOOK = '#!/bin/sh\ndate +%s.%N > "$3.done"\n'


def check_installed() -> None:
    missing = [b for b in ("aria2c", "opentracker") if shutil.which(b) is None]
    if missing:
        raise TestbedError(
            f"--baseline aria2 needs {' and '.join(missing)} (Debian packages aria2, opentracker)"
        )


def _rpc(method: str) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": "1", "method": method, "params": []}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{RPC_PORT}/jsonrpc", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())["result"]


def transfer_totals(netns: str) -> tuple[int, int]:
    """(bytes downloaded, bytes uploaded) of the aria2c in ``netns``, from its RPC."""
    active = call_in_netns(netns, lambda: _rpc("aria2.tellActive"))
    stopped = call_in_netns(netns, lambda: _rpc("aria2.tellStopped")) if not active else []
    items = list(active) + list(stopped)
    return sum(int(i.get("completedLength", 0)) for i in items), sum(
        int(i.get("uploadLength", 0)) for i in items
    )


class Aria2Run(SwarmRun):
    """One run of the scenario with aria2 and opentracker in place of Damselfly's processes."""

    def __init__(self, scenario: Any, options: SwarmOptions, say: Say) -> None:
        super().__init__(scenario, options, say)
        self.piece_length = options.piece_length or DEFAULT_PIECE_LENGTH
        self.result.piece_length = self.piece_length
        self.leechers: dict[str, ChildProcess] = {}

    @property
    def torrent(self) -> Path:
        return self.root / "run" / "blob.torrent"

    def _aria2(self, host: str, name: str, directory: Path, *extra: str) -> ChildProcess:
        argv = ["aria2c", *COMMON, f"--dir={directory}", *extra, str(self.torrent)]
        child = self._spawn(host, name, argv, ready=False)
        self.children.append(child)
        return child

    def _start(self) -> None:
        tracker_ip = self.host_nets["scheduler"].ip
        torrent = make_torrent(
            self.root / "origin" / FILE_NAME,
            f"http://{tracker_ip}:{TRACKER_PORT}/announce",
            self.piece_length,
        )
        self.torrent.write_bytes(torrent)
        jail = self.root / "tracker"
        jail.mkdir()
        (jail / "whitelist").write_text(info_hash(torrent) + "\n")
        port = str(TRACKER_PORT)
        argv = ["opentracker", "-i", tracker_ip, "-p", port, "-P", port, "-d", str(jail), "-w", "whitelist"]
        self.children.append(self._spawn("scheduler", "tracker", argv, ready=False))
        (self.root / "run" / "done.sh").write_text(HOOK)
        (self.root / "run" / "done.sh").chmod(0o755)
        self._aria2(
            "origin", "seeder", self.root / "origin", "--bt-seed-unverified=true", "--check-integrity=false"
        )
        time.sleep(0.5)  # the seeder announces first, as the origin is up before any dfget
        dead = next((c for c in self.children if not c.alive()), None)
        if dead is not None:
            raise ChildFailed(dead, f"{dead.name} exited at start:\n{dead.log_tail(8)}")

    def _done_at(self, name: str) -> float | None:
        marker = self.root / "out" / name / f"{FILE_NAME}.done"
        try:
            return float(marker.read_text().strip())
        except (OSError, ValueError):
            return None

    def _run_leechers(self) -> None:
        sc, opts = self.scenario, self.options
        peers = sorted(sc.peers, key=lambda p: p.arrival_s)
        hosts = {h.name: h for h in self.result.hosts}
        servers = list(self.children)
        cpu0 = read_cpu_times()
        proc0 = {c.name: process_cpu_s(c.pid) or 0.0 for c in servers}
        t0, wall0 = time.monotonic(), time.time()
        deadline = t0 + (peers[-1].arrival_s if peers else 0) + opts.timeout_s + 30
        next_report = t0
        try:
            while True:
                now = time.monotonic()
                for spec in peers:
                    if spec.name not in self.leechers and now - t0 >= spec.arrival_s:
                        out = self.root / "out" / spec.name
                        out.mkdir(parents=True, exist_ok=True)
                        self.leechers[spec.name] = self._aria2(
                            spec.name,
                            spec.name,
                            out,
                            f"--on-bt-download-complete={self.root / 'run' / 'done.sh'}",
                        )
                for name in self.leechers:
                    h = hosts[name]
                    if h.completion_s is None and (at := self._done_at(name)) is not None:
                        h.completion_s, h.exit_code = round(at - wall0, 4), 0
                finished = sum(1 for h in self.result.peers if h.completion_s is not None)
                if now >= next_report or finished == len(peers):
                    self.say(f"[{now - t0:6.1f}s] aria2: {finished}/{len(peers)} done")
                    next_report = now + opts.report_every_s
                if finished == len(peers):
                    break
                if now > deadline:
                    raise TestbedError(
                        f"aria2 peers still downloading {opts.timeout_s:.0f} s after their start"
                    )
                dead = next((c for c in self.children if not c.alive()), None)
                if dead is not None:
                    raise ChildFailed(
                        dead, f"{dead.name} exited during the run:\n{log_tail(dead.log_path, 8)}"
                    )
                time.sleep(0.02)
        finally:
            self.result.cpu_busy_fraction = busy_fraction(cpu0, read_cpu_times())
            self.result.wall_s = time.monotonic() - t0
            self.result.testbed_cpu_s = {
                c.name: (process_cpu_s(c.pid) or 0.0) - proc0.get(c.name, 0.0)
                for c in self.children
                if c.alive()
            }

    def _collect_aria2(self, expected: str) -> None:
        for h in self.result.peers:
            try:
                down, up = transfer_totals(self.host_nets[h.name].netns)
            except (OSError, TestbedError, KeyError, ValueError) as e:
                self.say(f"aria2: no totals from {h.name}: {e}")
            else:
                h.downloaded, h.uploaded_bytes = {"remote_peer": down}, up
            out = self.root / "out" / h.name / FILE_NAME
            h.digest_ok = out.is_file() and sha256_file(out) == expected
        try:
            _, up = transfer_totals(self.host_nets["origin"].netns)
            self.result.origin_bytes = up
        except (OSError, TestbedError, KeyError, ValueError) as e:
            self.say(f"aria2: no totals from the seeder: {e}")

    def run(self) -> SwarmResult:
        sc = self.scenario
        with interrupt_on_signals():
            try:
                check_installed()
                for d in ("origin", "out", "logs", "run"):
                    (self.root / d).mkdir(parents=True, exist_ok=True)
                if self.options.sweep:
                    sweep_stale()
                self.say(
                    f"aria2: {sc.name}, writing a {sc.file_size / MiB:.0f} MiB random file in {self.root}"
                )
                expected = write_random_file(self.root / "origin" / FILE_NAME, sc.file_size)
                self.network.create()
                self.result.hosts = [
                    HostResult(spec.name, role, self.host_nets[spec.name].ip, spec.up_bits, spec.down_bits,
                               spec.arrival_s, wire="bittorrent")
                    for role, spec in self.downloaders
                    if role == "peer"
                ]  # fmt: skip
                self.say("aria2: starting opentracker and the seeder")
                self._start()
                self.say(f"aria2: {len(sc.peers)} leechers; T_min = {sc.bound().t_min:.2f} s")
                self._run_leechers()
                self._collect_aria2(expected)
            except ChildFailed as e:
                self.result.error = str(e).splitlines()[0]
                self.say(f"aria2: {e}")
            except TestbedError as e:
                self.result.error = str(e)
                self.say(f"aria2: {e}")
            except Interrupted:
                self.result.error = "interrupted"
            finally:
                ignore_signals()
                stop_all(list(reversed(self.children)), grace=5)
                self.children.clear()
                self.cleanup()
        return self.result
