"""One swarm run on the namespace testbed: build the hosts, distribute, measure, tear down.

Why: ``damselfly bench swarm`` and the e2e test need the same sequence, and
the cleanup (processes by PID, then namespaces) must hold on every path, Ctrl-C
included. Layout of a run (``<prefix>`` from :func:`~damselfly.testbed.netns.new_prefix`)::

    namespace <prefix>-br          the bridge br0
    namespace <prefix>-origin      the origin (python -m damselfly.testbed.origin), shaped at the origin rate
    namespace <prefix>-scheduler   the scheduler, unshaped (control plane); <prefix>-scheduler1... more
    namespace <prefix>-seed...     seed daemons
    namespace <prefix>-peer<i>     peer daemons; dfget runs here at the peer's arrival time

    ROOT/origin/blob.bin  ROOT/<host>/ (storage, socket)  ROOT/logs/  ROOT/run/  ROOT/out/
    ROOT/run/daemon-dragonfly.yaml   the config of daemons on Dragonfly's wire (mixed-wire runs)

Each host's daemon listens on its own address with the default ports (every
namespace has its own port space). A thread per host inside its namespace
polls the daemon's ``/metrics`` (bytes downloaded, for progress and the plot);
the origin's ``/_stats`` gives origin bytes. Completion of a peer is its dfget's
exit time minus the scenario start; the CPU busy fraction is read from
/proc/stat over the same interval.

Long because: one run's whole life (hosts, shaping, processes, faults, measuring, the
cleanup on every path) is one sequence, and splitting it would hide the cleanup's order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..runtime.children import ChildFailed, ChildProcess, log_tail, python_module_command, spawn, stop_all
from ..runtime.supervisor import Interrupted, ignore_signals, interrupt_on_signals
from ..units import MiB
from .faults import fault_for
from .netns import (
    HostNet,
    Network,
    TestbedError,
    call_in_netns,
    check_can_build,
    enter_netns,
    host_ip,
    netns_exec,
    netns_name,
    new_prefix,
    sweep_stale,
)
from .report import (
    DOWNLOAD_METRIC,
    UPLOAD_METRIC,
    HostResult,
    SwarmResult,
    busy_fraction,
    metric_values,
    process_cpu_seconds,
    read_cpu_times,
)
from .scenarios import HostSpec, Scenario
from .shaping import ACK_FIRST
from .wire import DRAGONFLY, config_wire, write_plain_config, write_tls_configs

ORIGIN_PORT = 8080
SCHEDULER_PORT = 8002
SCHEDULER_METRICS_PORT = 8000
UPLOAD_PORT = 4000
PIECE_PORT = 4005
METRICS_PORT = 4002
READY_TIMEOUT = 60.0
FILE_NAME = "blob.bin"


@dataclass(frozen=True, slots=True)
class SwarmOptions:
    timeout_s: float = 600.0  # per dfget
    poll_interval_s: float = 1.0
    log_level: str = "INFO"
    keep: bool = False  # keep ROOT (logs, data)
    prefix: str | None = None  # None: a fresh one
    sweep: bool = True  # remove stale runs' namespaces first
    report_every_s: float = 2.0
    daemon_config: Path | None = None  # YAML for every daemon (seeds and peers)
    scheduler_config: Path | None = None
    link_queue: str = ACK_FIRST  # shaping.QUEUES
    piece_length: int | None = None  # dfget --piece-length; None: the task's default
    tls: bool = False  # mTLS on every link, with certificates made for the run (wire.py)


Say = Callable[[str], None]


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return str(r.read().decode())


def write_random_file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left > 0:
            chunk = os.urandom(min(4 * MiB, left))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def _reaped_children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class MetricsPoller(threading.Thread):
    """Polls one host's daemon ``/metrics`` from inside its namespace; keeps ``(t, downloaded)`` samples.

    Owned by :class:`SwarmRun`, which sets ``stop`` and joins it.
    """

    def __init__(self, netns: str, url: str, t0: float, interval: float, stop: threading.Event) -> None:
        super().__init__(name=f"poll-{netns}", daemon=True)
        self.netns, self.url, self.t0, self.interval, self.stop_event = netns, url, t0, interval, stop
        self.samples: list[tuple[float, int]] = []
        self.latest = 0

    def run(self) -> None:
        try:
            enter_netns(self.netns)
        except TestbedError:
            return
        while True:
            with contextlib.suppress(OSError, ValueError):
                text = http_get(self.url, timeout=max(1.0, self.interval))
                self.latest = int(sum(metric_values(text, DOWNLOAD_METRIC).values()))
                self.samples.append((time.monotonic() - self.t0, self.latest))
            if self.stop_event.wait(self.interval):
                return


class SwarmRun:
    """One run of ``scenario``. Owns its children and its network; :meth:`run` always cleans both up."""

    def __init__(self, scenario: Scenario, options: SwarmOptions, say: Say) -> None:
        # The wire a host without a wire of its own speaks: the user's config may turn extensions off.
        self.default_wire = config_wire(options.daemon_config)
        self.scenario = scenario
        self.options = options
        self.say = say
        self.prefix = options.prefix or new_prefix()
        self.root = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-", dir="/tmp"))
        self.result = SwarmResult(
            scenario=scenario,
            prefix=self.prefix,
            workdir=str(self.root),
            link_queue=options.link_queue,
            tls=options.tls,
            piece_length=options.piece_length,
        )
        self.children: list[ChildProcess] = []  # servers: origin, scheduler, daemons
        self.dfgets: list[ChildProcess] = []
        self._pollers: dict[str, MetricsPoller] = {}  # the distribution's, per downloading host
        downloaders = [*(("seed", h) for h in scenario.seeds), *(("peer", h) for h in scenario.peers)]
        self.host_nets: dict[str, HostNet] = {}
        self.scheduler_names = ["scheduler", *(f"scheduler{i}" for i in range(1, scenario.schedulers))]
        names = ["origin", *self.scheduler_names, *(h.name for _, h in downloaders)]
        rates: dict[str, tuple[int | None, int | None]] = {
            "origin": (scenario.origin_bits, scenario.origin_bits),
            **{name: (None, None) for name in self.scheduler_names},
            **{h.name: (h.up_bits, h.down_bits) for _, h in downloaders},
        }
        for index, name in enumerate(names):
            up, down = rates[name]
            self.host_nets[name] = HostNet(
                name, netns_name(self.prefix, name), host_ip(index), up, down, options.link_queue
            )
        self.downloaders = downloaders
        self.network = Network(self.prefix, list(self.host_nets.values()))

    # -- processes -------------------------------------------------------------

    def _spawn(self, host: str, name: str, argv: list[str], *, ready: bool = True) -> ChildProcess:
        ns = self.host_nets[host].netns
        ready_file = self.root / "run" / f"{name}.ready.json" if ready else None
        child = spawn(
            name, netns_exec(ns, argv), log_path=self.root / "logs" / f"{name}.log", ready_file=ready_file
        )
        return child

    def _start_origin(self) -> None:
        argv = python_module_command(
            "damselfly.testbed.origin", "--dir", str(self.root / "origin"), "--host", "0.0.0.0",
            "--port", str(ORIGIN_PORT), "--ready-file", str(self.root / "run" / "origin.ready.json"),
        )  # fmt: skip
        child = self._spawn("origin", "origin", argv)
        self.children.append(child)
        child.wait_ready(READY_TIMEOUT)

    def downloaded_by(self, name: str) -> int:
        """The bytes host ``name``'s daemon has downloaded so far (its metrics poller's last sample)."""
        poller = self._pollers.get(name)
        return poller.latest if poller is not None else 0

    def scheduler_addr(self, name: str) -> str:
        return f"{self.host_nets[name].ip}:{SCHEDULER_PORT}"

    def spawn_scheduler(self, name: str) -> ChildProcess:
        """Start scheduler ``name`` in its namespace (not waiting for it to be ready)."""
        ip = self.host_nets[name].ip
        argv = python_module_command(
            "damselfly", "scheduler", "--ip", ip, "--port", str(SCHEDULER_PORT),
            "--metrics-port", str(SCHEDULER_METRICS_PORT), "--data-dir", str(self.root / name),
            "--ready-file", str(self.root / "run" / f"{name}.ready.json"),
            "--log-file", str(self.root / "logs" / f"{name}.log"), "--log-level", self.options.log_level,
            *(["--config", str(self.options.scheduler_config)] if self.options.scheduler_config else []),
        )  # fmt: skip
        return self._spawn(name, name, argv)

    def _start_schedulers(self) -> None:
        started = [self.spawn_scheduler(name) for name in self.scheduler_names]
        self.children.extend(started)
        for child in started:
            child.wait_ready(READY_TIMEOUT)

    def _daemon_argv(self, spec: HostSpec, *, seed: bool) -> list[str]:
        net = self.host_nets[spec.name]
        schedulers = [a for name in self.scheduler_names for a in ("--scheduler", self.scheduler_addr(name))]
        argv = [
            "daemon", "--data-dir", str(self.root / spec.name), *schedulers,
            "--hostname", f"{self.prefix}-{spec.name}", "--ip", net.ip, "--listen-ip", net.ip,
            "--upload-port", str(UPLOAD_PORT), "--piece-port", str(PIECE_PORT),
            "--metrics-port", str(METRICS_PORT), "--socket", str(self.socket_of(spec.name)),
            "--ready-file", str(self.root / "run" / f"{spec.name}.ready.json"),
            "--log-file", str(self.root / "logs" / f"{spec.name}.log"), "--log-level", self.options.log_level,
        ]  # fmt: skip
        if seed:
            argv.append("--seed")
        config = self.plain_config if spec.wire == DRAGONFLY else self.options.daemon_config
        if config is not None:
            argv += ["--config", str(config)]
        return python_module_command("damselfly", *argv)

    @property
    def plain_config(self) -> Path:
        """The user's daemon config with ``wire.extensions: false`` (written in :meth:`run`)."""
        return self.root / "run" / "daemon-dragonfly.yaml"

    def wire_of(self, spec: HostSpec) -> str:
        return DRAGONFLY if spec.wire == DRAGONFLY else self.default_wire

    def socket_of(self, host: str) -> Path:
        return self.root / host / "dfdaemon.sock"

    def _start_daemons(self) -> None:
        # Seeds first: a peer that registers before any seed host is known goes to the origin.
        for role in ("seed", "peer"):
            started = []
            for r, spec in self.downloaders:
                if r == role:
                    child = self._spawn(spec.name, spec.name, self._daemon_argv(spec, seed=role == "seed"))
                    self.children.append(child)
                    started.append(child)
            for child in started:
                child.wait_ready(READY_TIMEOUT)

    def _start_dfget(self, spec: HostSpec, url: str) -> ChildProcess:
        argv = python_module_command(
            "damselfly", "get", url, "-O", str(self.root / "out" / f"{spec.name}.bin"),
            "-e", str(self.socket_of(spec.name)), "--no-progress",
            "--timeout", f"{int(self.options.timeout_s)}s",
        )  # fmt: skip
        if self.options.piece_length is not None:
            argv += ["--piece-length", str(self.options.piece_length)]
        child = self._spawn(spec.name, f"dfget-{spec.name}", argv, ready=False)
        self.dfgets.append(child)
        return child

    # -- the run ---------------------------------------------------------------

    def _progress(self, pollers: dict[str, MetricsPoller]) -> float:
        """The peers' mean progress, 0..1 (a finished peer counts whole)."""
        f, done = self.scenario.file_size or 1, {h.name for h in self.result.peers if h.exit_code == 0}
        shares = [
            1.0 if p.name in done else min(1.0, pollers[p.name].latest / f) for p in self.scenario.peers
        ]
        return sum(shares) / max(1, len(shares))

    def _distribute(self, url: str) -> None:
        """Start each peer's dfget at its arrival time; wait for all; record times and progress."""
        sc, opts = self.scenario, self.options
        peers = sorted(sc.peers, key=lambda p: p.arrival_s)
        hosts = {h.name: h for h in self.result.hosts}
        stop = threading.Event()
        t0 = time.monotonic()
        pollers = {
            spec.name: MetricsPoller(
                self.host_nets[spec.name].netns,
                f"http://127.0.0.1:{METRICS_PORT}/metrics",
                t0,
                opts.poll_interval_s,
                stop,
            )
            for _, spec in self.downloaders
        }
        self._pollers = pollers
        for p in pollers.values():
            p.start()
        cpu0 = read_cpu_times()
        proc0 = {c.name: process_cpu_seconds(c.pid) for c in self.children}
        me0 = process_cpu_seconds(os.getpid())
        reaped0 = _reaped_children_cpu_s()
        last_cpu, last_cpu_t = cpu0, 0.0
        started: dict[str, ChildProcess] = {}
        deadline = t0 + (peers[-1].arrival_s if peers else 0) + opts.timeout_s + 30
        next_report = t0
        fault = fault_for(self.scenario, url, self.options.piece_length)
        try:
            while True:
                now = time.monotonic()
                for spec in peers:
                    if spec.name not in started and now - t0 >= spec.arrival_s:
                        started[spec.name] = self._start_dfget(spec, url)
                for name, child in started.items():
                    code = child.popen.poll()
                    if code is not None and hosts[name].exit_code is None:
                        hosts[name].exit_code = code
                        hosts[name].completion_s = round(now - t0, 4)
                        if code != 0:
                            self.say(f"swarm: dfget on {name} exited {code}:\n{log_tail(child.log_path, 5)}")
                finished = sum(1 for h in self.result.peers if h.exit_code is not None)
                if now >= next_report or finished == len(peers):
                    cpu = read_cpu_times()
                    self.result.cpu_samples.append((now - t0, busy_fraction(last_cpu, cpu)))
                    last_cpu, last_cpu_t = cpu, now - t0
                    self._report(now - t0, pollers, finished, last_cpu_t)
                    next_report = now + opts.report_every_s
                if finished == len(peers):
                    break
                if fault is not None and not fault.done:
                    fault.poll(self, now - t0, self._progress(pollers))
                    self.result.fault = fault.record
                if now > deadline:
                    raise TestbedError(f"peers still downloading {opts.timeout_s:.0f} s after their start")
                dead = next((c for c in self.children if not c.alive()), None)
                if dead is not None:
                    raise ChildFailed(dead, f"{dead.name} exited during the run:\n{dead.log_tail(8)}")
                time.sleep(0.02)
        finally:
            self.result.cpu_busy_fraction = busy_fraction(cpu0, read_cpu_times())
            self.result.testbed_cpu_s = {
                c.name: process_cpu_seconds(c.pid) - proc0[c.name] for c in self.children if c.alive()
            }
            # This process: the metrics pollers and dfget bookkeeping.
            self.result.testbed_cpu_s["supervisor"] = process_cpu_seconds(os.getpid()) - me0
            # The dfgets, reaped as they finished (servers are reaped only at cleanup, after this).
            self.result.testbed_cpu_s["dfget"] = _reaped_children_cpu_s() - reaped0
            self.result.wall_s = time.monotonic() - t0
            stop.set()
            for p in pollers.values():
                p.join(timeout=5)
            self.result.progress = {name: p.samples for name, p in pollers.items()}

    def _report(self, t: float, pollers: dict[str, MetricsPoller], finished: int, _cpu_t: float) -> None:
        f = self.scenario.file_size
        parts = []
        for spec in self.scenario.peers:
            host = next(h for h in self.result.peers if h.name == spec.name)
            pct = (
                100 if host.exit_code == 0 else min(99, int(100 * pollers[spec.name].latest / f)) if f else 0
            )
            parts.append(f"{spec.name.removeprefix('peer')}:{pct}%")
        cpu = self.result.cpu_samples[-1][1] if self.result.cpu_samples else 0.0
        self.say(
            f"[{t:6.1f}s] {finished}/{len(self.scenario.peers)} done  cpu {cpu:4.0%}  " + " ".join(parts)
        )

    def _collect(self, expected: str) -> None:
        for h in self.result.hosts:
            ns = self.host_nets[h.name].netns
            try:
                text = call_in_netns(ns, lambda: http_get(f"http://127.0.0.1:{METRICS_PORT}/metrics"))
            except (OSError, TestbedError) as e:
                self.say(f"swarm: no metrics from {h.name}: {e}")
                continue
            h.uploaded_bytes = int(sum(metric_values(text, UPLOAD_METRIC).values()))
            h.downloaded = {k: int(v) for k, v in metric_values(text, DOWNLOAD_METRIC).items()}
        stats = json.loads(
            call_in_netns(
                self.host_nets["origin"].netns, lambda: http_get(f"http://127.0.0.1:{ORIGIN_PORT}/_stats")
            )
        )
        self.result.origin_bytes = int(stats["bytes"])
        self.result.origin_bytes_sent = int(stats["bytes_sent"]) if "bytes_sent" in stats else None
        self.result.origin_requests = int(stats["requests"])
        self.result.origin_size_probes = int(stats.get("size_probes", 0))
        for h in self.result.peers:
            out = self.root / "out" / f"{h.name}.bin"
            h.digest_ok = out.is_file() and sha256_file(out) == expected

    def run(self) -> SwarmResult:
        sc = self.scenario
        with interrupt_on_signals():
            try:
                for d in ("origin", "out", "logs", "run"):
                    (self.root / d).mkdir(parents=True, exist_ok=True)
                if self.options.sweep:
                    removed = sweep_stale()
                    if removed:
                        self.say(
                            f"swarm: removed {len(removed)} namespaces of crashed runs: {' '.join(removed)}"
                        )
                self.say(
                    f"swarm: {sc.name}, writing a {sc.file_size / MiB:.0f} MiB random file in {self.root}"
                )
                expected = write_random_file(self.root / "origin" / FILE_NAME, sc.file_size)
                if self.options.tls:
                    ips = [net.ip for net in self.host_nets.values()]
                    daemon, scheduler = write_tls_configs(
                        self.root, ips, self.options.daemon_config, self.options.scheduler_config
                    )
                    self.options = replace(self.options, daemon_config=daemon, scheduler_config=scheduler)
                    self.say("swarm: mTLS on every link (certificates in tls/)")
                plain = [spec.name for _, spec in self.downloaders if self.wire_of(spec) == DRAGONFLY]
                if any(spec.wire == DRAGONFLY for _, spec in self.downloaders):
                    write_plain_config(self.options.daemon_config, self.plain_config)
                if plain:
                    self.say(f"swarm: on Dragonfly's wire (no Damselfly extensions): {' '.join(plain)}")
                self.say(f"swarm: building {len(self.host_nets)} hosts in namespaces {self.prefix}-*")
                self.network.create()
                self.result.hosts = [
                    HostResult(
                        spec.name,
                        role,
                        self.host_nets[spec.name].ip,
                        spec.up_bits,
                        spec.down_bits,
                        spec.arrival_s,
                        wire=self.wire_of(spec),
                    )
                    for role, spec in self.downloaders
                ]
                self.say("swarm: starting the origin, the scheduler and the daemons")
                self._start_origin()
                self._start_schedulers()
                self._start_daemons()
                url = f"http://{self.host_nets['origin'].ip}:{ORIGIN_PORT}/{FILE_NAME}"
                bound = sc.bound()
                self.say(f"swarm: distributing to {len(sc.peers)} peers; T_min = {bound.t_min:.2f} s")
                self._distribute(url)
                self._collect(expected)
            except ChildFailed as e:
                self.result.error = str(e).splitlines()[0]
                self.say(f"swarm: {e}")
            except TestbedError as e:
                self.result.error = str(e)
                self.say(f"swarm: {e}")
            except Interrupted:
                self.result.error = "interrupted"
                self.say("swarm: interrupted; cleaning up")
            finally:
                ignore_signals()
                self.cleanup()
        return self.result

    def cleanup(self) -> None:
        """dfgets, then daemons, then scheduler and origin, by PID; then the namespaces; then ROOT."""
        stop_all(self.dfgets, grace=5)
        servers = list(reversed(self.children))  # daemons say goodbye before the scheduler stops
        stop_all(servers, grace=10)
        removed = self.network.destroy()
        self.say(f"swarm: removed {len(removed)} namespaces")
        if self.options.keep:
            self.say(f"swarm: kept {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def run_swarm(
    scenario: Scenario, options: SwarmOptions = SwarmOptions(), say: Say | None = None
) -> SwarmResult:
    """Check we can build namespaces (raises :class:`TestbedError` if not), then run ``scenario``."""
    check_can_build()
    printer = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    return SwarmRun(scenario, options, printer).run()


def dump_result(result: SwarmResult, path: Path, **extra: Any) -> dict[str, Any]:
    data = result.to_json()
    data.update(extra)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data
