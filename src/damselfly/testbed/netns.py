"""Hosts as network namespaces on one bridge: build, enter, tear down, sweep.

Why: a swarm benchmark on loopback measures nothing but the CPU; real hosts
need their own addresses and their own shaped links. Each host of a run is a
network namespace named ``<prefix>-<host>`` with a veth ``eth0`` whose other
end sits on a bridge ``br0`` in a namespace of its own (``<prefix>-br``). The
addresses come from a test subnet (:data:`SUBNET`) and exist only inside the
namespaces: no namespace has a default route and the root namespace gets no
address or route there, so no packet leaves the machine. The supervisor talks
to a host by running a thread inside its namespace (:func:`call_in_netns`).

The command builders return plain argv lists (unit-tested); :class:`Runner`
executes them. A run first writes a record ``RUN_DIR/<prefix>.json`` with its
PID; namespaces whose run record is missing or whose PID is dead are stale and
:func:`sweep_stale` removes them (a crashed or killed run), killing the
processes still inside them by PID first.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..errors import DamselflyError
from ..runtime.children import pid_alive
from .shaping import ACK_FIRST, shaping_commands

T = TypeVar("T")

SUBNET = ipaddress.IPv4Network("10.213.0.0/16")
PREFIX_BASE = "dfsw"
_RUN_PREFIX = re.compile(rf"^{PREFIX_BASE}[0-9a-f]{{6}}$")
RUN_DIR = Path("/run/damselfly-swarm")
BRIDGE = "br0"
HOST_DEV = "eth0"
HOST_IFB = "ifb0"
_CLONE_NEWNET = 0x40000000


class TestbedError(DamselflyError):
    """The testbed could not be built or used (not root, ``ip`` missing, a command failed)."""

    __test__ = False  # not a pytest class, despite the name


@dataclass(frozen=True, slots=True)
class HostNet:
    """One host on the test network: its namespace, address and link rates (bits/s; None: unshaped)."""

    name: str
    netns: str
    ip: str
    up_bits: int | None = None
    down_bits: int | None = None
    queue: str = ACK_FIRST  # shaping.QUEUES: what waits in the host's buckets, in which order


def new_prefix() -> str:
    """A fresh per-run prefix, e.g. ``dfsw3fa91c``: two runs never share namespace names."""
    return f"{PREFIX_BASE}{secrets.token_hex(3)}"


def netns_name(prefix: str, host: str) -> str:
    return f"{prefix}-{host}"


def bridge_netns(prefix: str) -> str:
    return netns_name(prefix, "br")


def host_ip(index: int, subnet: ipaddress.IPv4Network = SUBNET) -> str:
    """The address of host ``index`` (0-based): ``.10`` upward, skipping nothing special below."""
    offset = index + 10
    if offset >= subnet.num_addresses - 1:
        raise TestbedError(f"subnet {subnet} has no room for host {index}")
    return str(subnet[offset])


def bridge_commands(prefix: str) -> list[list[str]]:
    br = bridge_netns(prefix)
    return [
        ["ip", "netns", "add", br],
        ["ip", "-n", br, "link", "set", "lo", "up"],
        ["ip", "-n", br, "link", "add", BRIDGE, "type", "bridge"],
        ["ip", "-n", br, "link", "set", BRIDGE, "up"],
    ]


def host_commands(
    prefix: str, host: HostNet, index: int, subnet: ipaddress.IPv4Network = SUBNET
) -> list[list[str]]:
    """Create ``host``'s namespace, wire it to the bridge, give it its address and shape its link."""
    br = bridge_netns(prefix)
    port = f"v{index}"  # the bridge-side end; interface names are at most 15 bytes
    ns = host.netns
    return [
        ["ip", "netns", "add", ns],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
        ["ip", "link", "add", HOST_DEV, "netns", ns, "type", "veth", "peer", "name", port, "netns", br],
        ["ip", "-n", br, "link", "set", port, "master", BRIDGE],
        ["ip", "-n", br, "link", "set", port, "up"],
        ["ip", "-n", ns, "addr", "add", f"{host.ip}/{subnet.prefixlen}", "dev", HOST_DEV],
        ["ip", "-n", ns, "link", "set", HOST_DEV, "up"],
        *shaping_commands(
            ns, HOST_DEV, HOST_IFB, up_bits=host.up_bits, down_bits=host.down_bits, queue=host.queue
        ),
    ]


def delete_commands(namespaces: Iterable[str]) -> list[list[str]]:
    """Deleting a namespace removes its veth end (and so the pair) and its ifb device."""
    return [["ip", "netns", "del", ns] for ns in namespaces]


def netns_exec(netns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``netns``; ``ip netns exec`` execs it, so the PID stays the same."""
    return ["ip", "netns", "exec", netns, *argv]


class Runner:
    """Runs ``ip``/``tc`` command lines; a failure raises :class:`TestbedError` with the command's stderr."""

    def run(self, argv: Sequence[str], *, check: bool = True) -> str:
        try:
            proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
        except FileNotFoundError as e:
            raise TestbedError(f"{argv[0]} is not installed (apt-get install iproute2)") from e
        except subprocess.TimeoutExpired as e:
            raise TestbedError(f"{' '.join(argv)} hung for 30 s") from e
        if check and proc.returncode != 0:
            raise TestbedError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def run_all(self, commands: Iterable[Sequence[str]]) -> None:
        for argv in commands:
            self.run(argv)


def list_namespaces(runner: Runner) -> list[str]:
    out = runner.run(["ip", "-j", "netns", "list"]).strip()
    if not out:
        return []
    return [str(entry["name"]) for entry in json.loads(out)]


def namespace_pids(runner: Runner, netns: str) -> list[int]:
    out = runner.run(["ip", "netns", "pids", netns], check=False)
    return [int(tok) for tok in out.split() if tok.isdigit()]


def kill_pids(pids: Iterable[int], *, grace: float = 5.0) -> None:
    """SIGTERM each PID, wait up to ``grace`` s, SIGKILL the survivors."""
    pids = [p for p in pids if p != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def remove_namespaces(runner: Runner, namespaces: Sequence[str], *, grace: float = 5.0) -> list[str]:
    """Kill what still runs inside ``namespaces`` (by PID), then delete them; returns those deleted."""
    pids: list[int] = []
    for ns in namespaces:
        pids += namespace_pids(runner, ns)
    kill_pids(pids, grace=grace)
    removed = []
    for argv in delete_commands(namespaces):
        with contextlib.suppress(TestbedError):
            runner.run(argv)
            removed.append(argv[-1])
    return removed


def cleanup_prefix(prefix: str, runner: Runner | None = None) -> list[str]:
    """Remove every namespace named ``<prefix>-*`` (and the run record); returns the names removed."""
    runner = runner or Runner()
    mine = [ns for ns in list_namespaces(runner) if ns.startswith(f"{prefix}-")]
    removed = remove_namespaces(runner, mine)
    (RUN_DIR / f"{prefix}.json").unlink(missing_ok=True)
    return removed


def run_prefix_of(netns: str) -> str | None:
    """The run prefix of a namespace this testbed made, or None for anyone else's."""
    head = netns.split("-", 1)[0]
    return head if _RUN_PREFIX.match(head) and "-" in netns else None


def stale_prefixes(namespaces: Iterable[str], live: Callable[[str], bool]) -> list[str]:
    """The run prefixes among ``namespaces`` whose run is not ``live`` (sorted, each once)."""
    prefixes = {p for ns in namespaces if (p := run_prefix_of(ns)) is not None}
    return sorted(p for p in prefixes if not live(p))


def run_is_live(prefix: str) -> bool:
    """Whether the run that owns ``prefix`` still has a living supervisor (per its run record)."""
    try:
        record = json.loads((RUN_DIR / f"{prefix}.json").read_text())
        return pid_alive(int(record["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def sweep_stale(runner: Runner | None = None) -> list[str]:
    """Remove the namespaces of runs that crashed or were killed; returns the names removed."""
    runner = runner or Runner()
    removed: list[str] = []
    for prefix in stale_prefixes(list_namespaces(runner), run_is_live):
        removed += cleanup_prefix(prefix, runner)
    return removed


def write_run_record(prefix: str) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / f"{prefix}.json").write_text(json.dumps({"pid": os.getpid(), "started": time.time()}))


def check_can_build(runner: Runner | None = None) -> None:
    """Raise :class:`TestbedError` saying why namespaces cannot be built here (not root, no ``ip``)."""
    if os.geteuid() != 0:
        raise TestbedError("the swarm testbed needs root (network namespaces, tc); run it with sudo")
    runner = runner or Runner()
    runner.run(["ip", "-j", "netns", "list"])
    runner.run(["tc", "-V"])


class Network:
    """The namespaces of one run: a bridge and ``hosts``. Owns them: :meth:`destroy` removes them all.

    :meth:`create` is all-or-nothing: on a failure half-way it removes what it
    made before raising.
    """

    def __init__(self, prefix: str, hosts: Sequence[HostNet], runner: Runner | None = None) -> None:
        self.prefix = prefix
        self.hosts = list(hosts)
        self.runner = runner or Runner()
        self._created: list[str] = []

    @property
    def namespaces(self) -> list[str]:
        return [bridge_netns(self.prefix), *(h.netns for h in self.hosts)]

    def commands(self) -> list[list[str]]:
        out = bridge_commands(self.prefix)
        for index, host in enumerate(self.hosts):
            out += host_commands(self.prefix, host, index)
        return out

    def create(self) -> None:
        write_run_record(self.prefix)
        try:
            for argv in self.commands():
                if argv[:3] == ["ip", "netns", "add"]:
                    self._created.append(argv[3])
                self.runner.run(argv)
        except BaseException:
            self.destroy()
            raise

    def destroy(self, *, grace: float = 5.0) -> list[str]:
        """Kill leftovers inside the namespaces by PID, delete the namespaces, drop the run record."""
        created, self._created = self._created, []
        # Hosts first, the bridge last: deleting a host namespace removes its veth pair.
        ordered = [ns for ns in created if ns != bridge_netns(self.prefix)] + [
            ns for ns in created if ns == bridge_netns(self.prefix)
        ]
        removed = remove_namespaces(self.runner, ordered, grace=grace)
        (RUN_DIR / f"{self.prefix}.json").unlink(missing_ok=True)
        return removed


def enter_netns(netns: str) -> None:
    """Move the *calling thread* into ``netns`` (network namespaces are per thread in Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise TestbedError(f"setns into {netns} failed: {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in_netns(netns: str, fn: Callable[[], T], *, timeout: float = 30.0) -> T:
    """Run ``fn`` in a fresh thread inside ``netns`` and return its result (or raise its error).

    Why a thread: the supervisor stays in the root namespace (which has no route
    to the test subnet), while sockets opened by that thread belong to ``netns``.
    """
    box: dict[str, object] = {}

    def body() -> None:
        try:
            enter_netns(netns)
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=body, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TestbedError(f"a call inside {netns} did not finish in {timeout:.0f} s")
    if "error" in box:
        error = box["error"]
        assert isinstance(error, BaseException)
        raise error
    return box["value"]  # type: ignore[return-value]
