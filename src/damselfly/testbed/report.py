"""What a swarm run measured, and the arithmetic over it (no I/O but reading /proc/stat).

Why apart from :mod:`damselfly.testbed.swarm`: the numbers a benchmark
reports (percentiles, ratios to the fluid bound, origin bytes / F, the CPU busy
fraction) are easy to get subtly wrong, so they live in plain functions over
plain data that unit tests pin down.
"""

from __future__ import annotations

import os
import re
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..units import GiB, human_size
from .machine import process_cpu_s
from .scenarios import Scenario
from .wire import DAMSELFLY, WIRES

# Dragonfly's client names (Damselfly's and the Rust dfdaemon's pages alike), counters without _total.
UPLOAD_METRIC = "dragonfly_client_upload_traffic"
DOWNLOAD_METRIC = "dragonfly_client_download_traffic"

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_values(text: str, name: str) -> dict[str, float]:
    """The samples of ``name`` in Prometheus text, keyed by their ``type`` label in lower case
    (``back_to_source``; "" when unlabelled)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        try:
            out[labels.get("type", "").lower()] = float(m.group(3))
        except ValueError:
            continue
    return out


@dataclass(frozen=True, slots=True)
class CpuTimes:
    busy: int
    total: int


def parse_proc_stat(text: str) -> CpuTimes:
    """The machine-wide ``cpu`` line: busy = everything but idle and iowait (guest is inside user)."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            fields = [int(x) for x in line.split()[1:]]
            user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
            busy = user + nice + system + irq + softirq + steal
            return CpuTimes(busy=busy, total=busy + idle + iowait)
    raise ValueError("no cpu line in /proc/stat")


def read_cpu_times(path: Path = Path("/proc/stat")) -> CpuTimes:
    return parse_proc_stat(path.read_text())


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used (0 if it is gone)."""
    return process_cpu_s(pid) or 0.0


def busy_fraction(start: CpuTimes, end: CpuTimes) -> float:
    """Share of all cores' time spent busy between two readings (0..1)."""
    total = end.total - start.total
    return (end.busy - start.busy) / total if total > 0 else 0.0


@dataclass
class HostResult:
    """One seed or peer after the run."""

    name: str
    role: str  # "seed" or "peer"
    ip: str
    up_bits: int
    down_bits: int
    arrival_s: float = 0.0
    exit_code: int | None = None
    completion_s: float | None = None  # dfget's end minus the scenario start
    digest_ok: bool = False
    uploaded_bytes: int = 0
    downloaded: dict[str, int] = field(default_factory=dict)  # by traffic type
    wire: str = DAMSELFLY  # what its daemon spoke: "damselfly" (extensions on) or "dragonfly" (off)

    @property
    def since_arrival_s(self) -> float | None:
        return None if self.completion_s is None else round(self.completion_s - self.arrival_s, 4)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["completion_since_arrival_s"] = self.since_arrival_s
        return out


def _ratio(value: float | None, bound: float) -> float | None:
    return None if value is None or bound <= 0 else round(value / bound, 4)


def percentile_summary(times: Sequence[float | None]) -> dict[str, float | None]:
    """p50 and max of the finished times; None when no peer finished. A peer that never finished
    makes ``max`` None too: a run that lost a peer has no maximum worth comparing."""
    done = [t for t in times if t is not None]
    if not done:
        return {"p50_s": None, "max_s": None}
    return {
        "p50_s": round(statistics.median(done), 4),
        "max_s": round(max(done), 4) if len(done) == len(times) else None,
    }


@dataclass
class SwarmResult:
    """Everything a run reports; :meth:`to_json` is the ``--json`` output."""

    scenario: Scenario
    prefix: str
    workdir: str
    hosts: list[HostResult] = field(default_factory=list)
    origin_bytes: int = 0
    # What the origin handed to its sockets (a transfer cut off counts what went, not what was
    # asked): the cost of a fetcher killed mid-way (testbed/origin.py, ``bytes_sent``).
    origin_bytes_sent: int | None = None
    origin_requests: int = 0
    # GETs for the first byte only, the size probe a daemon on Dragonfly's wire sends before it registers.
    origin_size_probes: int = 0
    cpu_busy_fraction: float | None = None
    # CPU seconds the testbed used during the transfer (origin, scheduler, daemons, dfgets, supervisor),
    # apart from whatever else the machine was running.
    testbed_cpu_s: dict[str, float] = field(default_factory=dict)
    cpu_count: int = field(default_factory=lambda: os.cpu_count() or 1)
    wall_s: float = 0.0
    error: str = ""
    progress: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    cpu_samples: list[tuple[float, float]] = field(default_factory=list)
    plot: str = ""
    link_queue: str = ""  # shaping.QUEUES: how the links were queued
    piece_length: int | None = None  # the dfgets' --piece-length (None: the task's default)
    fault: dict[str, Any] = field(default_factory=dict)  # what a fault scenario did (testbed/faults.py)
    tls: bool = False  # mTLS on every link

    @property
    def peers(self) -> list[HostResult]:
        return [h for h in self.hosts if h.role == "peer"]

    @property
    def ok(self) -> bool:
        peers = self.peers
        return not self.error and bool(peers) and all(p.exit_code == 0 and p.digest_ok for p in peers)

    @property
    def back_to_source_count(self) -> int:
        """Seeds and peers that fetched any bytes from the origin themselves."""
        return sum(1 for h in self.hosts if h.downloaded.get("back_to_source", 0) > 0)

    @property
    def testbed_cpu_fraction(self) -> float | None:
        """Share of all cores the testbed's own servers used; next to the machine's busy fraction
        it tells a CPU-bound run from a machine that was busy with something else."""
        if self.wall_s <= 0 or not self.testbed_cpu_s:
            return None
        return round(sum(self.testbed_cpu_s.values()) / (self.wall_s * self.cpu_count), 4)

    def completion_by_wire(self, t_min: float) -> dict[str, dict[str, Any]]:
        """The peers' completion per wire, against the whole swarm's ``t_min`` (a group has no bound
        of its own: its hosts share links with the other group's)."""
        out: dict[str, dict[str, Any]] = {}
        for wire in WIRES:
            group = [p for p in self.peers if p.wire == wire]
            since_start = percentile_summary([p.completion_s for p in group])
            out[wire] = {
                "peers": [p.name for p in group],
                **since_start,
                "p50_over_t_min": _ratio(since_start["p50_s"], t_min),
                "max_over_t_min": _ratio(since_start["max_s"], t_min),
                "since_arrival": percentile_summary([p.since_arrival_s for p in group]),
            }
        return out

    def to_json(self) -> dict[str, Any]:
        bound = self.scenario.bound()
        f = self.scenario.file_size
        since_start = percentile_summary([p.completion_s for p in self.peers])
        since_arrival = percentile_summary([p.since_arrival_s for p in self.peers])
        return {
            "ok": self.ok,
            "error": self.error,
            "scenario": self.scenario.to_json(),
            "prefix": self.prefix,
            "link_queue": self.link_queue,
            "piece_length": self.piece_length,
            "tls": self.tls,
            "file_size": f,
            "t_min_s": round(bound.t_min, 4),
            "bound": {
                "server_s": round(bound.server_term, 4),
                "download_s": round(bound.download_term, 4),
                "aggregate_s": round(bound.aggregate_term, 4),
                "binding": bound.binding,
            },
            "completion": {
                **since_start,
                "p50_over_t_min": _ratio(since_start["p50_s"], bound.t_min),
                "max_over_t_min": _ratio(since_start["max_s"], bound.t_min),
                "since_arrival": since_arrival,
                "by_wire": self.completion_by_wire(bound.t_min),
            },
            "origin": {
                "bytes": self.origin_bytes,
                "requests": self.origin_requests,
                "bytes_over_f": round(self.origin_bytes / f, 4) if f else None,
                "bytes_sent": self.origin_bytes_sent,
                "sent_over_f": (
                    round(self.origin_bytes_sent / f, 4) if f and self.origin_bytes_sent is not None else None
                ),
                "size_probes": self.origin_size_probes,
            },
            "back_to_source_count": self.back_to_source_count,
            "fault": dict(self.fault),
            "failed_downloads": sum(1 for p in self.peers if p.exit_code != 0 or not p.digest_ok),
            "uploaded_bytes": {h.name: h.uploaded_bytes for h in self.hosts},
            "cpu_busy_fraction": None if self.cpu_busy_fraction is None else round(self.cpu_busy_fraction, 4),
            "testbed_cpu_s": {k: round(v, 2) for k, v in self.testbed_cpu_s.items()},
            "testbed_cpu_fraction": self.testbed_cpu_fraction,
            "cpu": cpu_breakdown(self.hosts, self.testbed_cpu_s),
            "cpu_count": self.cpu_count,
            "wall_s": round(self.wall_s, 3),
            "hosts": [h.to_json() for h in self.hosts],
            "progress": {k: [[round(t, 3), b] for t, b in v] for k, v in self.progress.items()},
            "cpu_samples": [[round(t, 3), round(c, 4)] for t, c in self.cpu_samples],
            "plot": self.plot,
            "workdir": self.workdir,
        }


def per_gib(cpu_s: float, nbytes: int) -> float | None:
    """CPU seconds per GiB of ``nbytes`` (None when nothing moved)."""
    return round(cpu_s / (nbytes / GiB), 4) if nbytes > 0 else None


def cpu_breakdown(hosts: Sequence[HostResult], cpu_s: dict[str, float]) -> dict[str, Any]:
    """The testbed's CPU seconds by role (origin, scheduler, seeds, peers, dfgets, the rest; the total
    leaves out the benchmark's own supervisor, which no baseline has) and
    each daemon's CPU seconds per GiB it received and per GiB it sent (one CPU figure over each
    byte count: a daemon's receiving and sending share its threads and cannot be told apart)."""
    roles = {h.name: h.role for h in hosts}
    by_role: dict[str, float] = {}
    for name, seconds in cpu_s.items():
        role = {"seed": "seeds", "peer": "peers"}.get(roles.get(name, ""), name)
        by_role[role] = by_role.get(role, 0.0) + seconds
    daemons: dict[str, dict[str, Any]] = {}
    for h in hosts:
        if h.name not in cpu_s:
            continue
        got = sum(h.downloaded.values())
        daemons[h.name] = {
            "cpu_s": round(cpu_s[h.name], 3),
            "received_bytes": got,
            "sent_bytes": h.uploaded_bytes,
            "cpu_s_per_gib_received": per_gib(cpu_s[h.name], got),
            "cpu_s_per_gib_sent": per_gib(cpu_s[h.name], h.uploaded_bytes),
            "cpu_s_per_gib_moved": per_gib(cpu_s[h.name], got + h.uploaded_bytes),
        }
    moved = [d["cpu_s_per_gib_moved"] for d in daemons.values() if d["cpu_s_per_gib_moved"] is not None]
    return {
        "total_s": round(sum(v for k, v in cpu_s.items() if k != "supervisor"), 3),
        "by_role": {k: round(v, 3) for k, v in sorted(by_role.items())},
        "daemons": daemons,
        "median_cpu_s_per_gib_moved": round(statistics.median(moved), 4) if moved else None,
    }


def human_summary(data: dict[str, Any]) -> str:
    """A few lines for the terminal from :meth:`SwarmResult.to_json`'s output."""
    c = data["completion"]
    sc = data["scenario"]

    def num(v: float | None, fmt: str = "{:.2f}") -> str:
        return "-" if v is None else fmt.format(v)

    lines = [
        f"{sc['name']}: {len(sc['peers'])} peers + {len(sc['seeds'])} seed(s), "
        f"{human_size(data['file_size'])}; T_min {data['t_min_s']:.2f} s ({data['bound']['binding']} bound); "
        f"link queue {data.get('link_queue') or '-'}" + ("; mTLS" if data.get("tls") else ""),
    ]
    if data["error"]:
        lines.append(f"  error: {data['error']}")
    wires = {h.get("wire", DAMSELFLY) for h in data["hosts"]}
    mixed = len(wires) > 1  # say each host's wire only when they differ
    for h in data["hosts"]:
        if h["role"] != "peer":
            continue
        status = "ok" if h["exit_code"] == 0 and h["digest_ok"] else f"FAILED (exit {h['exit_code']})"
        lines.append(
            f"  {h['name']:>8} {h['up_bits'] / 1e6:g}/{h['down_bits'] / 1e6:g} mbit  "
            + (f"{h.get('wire', DAMSELFLY):<9}  " if mixed else "")
            + f"done {num(h['completion_s'])} s (since arrival {num(h['completion_since_arrival_s'])} s)  "
            f"up {human_size(h['uploaded_bytes'])}  {status}"
        )
    lines.append(
        f"  p50 {num(c['p50_s'])} s = {num(c['p50_over_t_min'])} T_min;  "
        f"max {num(c['max_s'])} s = {num(c['max_over_t_min'])} T_min"
    )
    if mixed:
        plain_seeds = [h["name"] for h in data["hosts"] if h["role"] == "seed" and h.get("wire") != DAMSELFLY]
        for wire, g in c.get("by_wire", {}).items():
            if g["peers"]:
                lines.append(
                    f"    {wire} wire ({len(g['peers'])} peers): p50 {num(g['p50_over_t_min'])} T_min, "
                    f"max {num(g['max_over_t_min'])} T_min"
                )
        lines.append(f"    seeds on Dragonfly's wire: {' '.join(plain_seeds) or 'none'}")
    o = data["origin"]
    probes = o.get("size_probes", 0)
    lines.append(
        f"  origin sent {human_size(o['bytes'])} = {num(o['bytes_over_f'], '{:.3f}')} F in {o['requests']} "
        f"request(s)"
        + (f" ({probes} one-byte size probes)" if probes else "")
        + f"; back-to-source hosts: {data['back_to_source_count']}"
    )
    if o.get("bytes_sent") is not None and o["bytes_sent"] != o["bytes"]:
        lines.append(
            f"    of which handed to the network {human_size(o['bytes_sent'])} = "
            f"{num(o['sent_over_f'], '{:.3f}')} F (the rest was asked for by a fetcher that died)"
        )
    fault = data.get("fault") or {}
    if fault:
        lines.append(
            f"  fault: {fault['kind']} at {fault['at_s']:.1f} s ({fault['progress']:.0%}): "
            f"{fault.get('role', 'scheduler')} {fault['killed']} killed"
            + (", restarted" if fault["restarted"] else " for good")
            + f"; failed downloads: {data.get('failed_downloads', 0)}"
        )  # fmt: skip
    elif data["scenario"].get("fault"):
        lines.append(f"  fault: {data['scenario']['fault']} never injected (the peers finished first?)")
    lines.append(
        f"  CPU busy {num(data['cpu_busy_fraction'], '{:.0%}')} of all {data['cpu_count']} cores during the "
        f"transfer, of which the testbed's own processes {num(data['testbed_cpu_fraction'], '{:.0%}')}"
    )
    cpu = data.get("cpu")
    if cpu:
        roles = ", ".join(f"{k} {v:.1f}" for k, v in cpu["by_role"].items())
        lines.append(
            f"  testbed CPU {cpu['total_s']:.1f} s ({roles}); a daemon's median "
            f"{num(cpu['median_cpu_s_per_gib_moved'])} CPU-s per GiB received + sent"
        )
    lines.append("  all digests ok" if data["ok"] else "  RUN FAILED")
    return "\n".join(lines)
