"""The namespace testbed for real: a small swarm across shaped hosts, cleanup on Ctrl-C, the stale sweep.

Needs root and ``ip netns``; skipped otherwise. Timing ratios are reported by
``damselfly bench swarm``, never asserted here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers.wait import wait_until

from damselfly.runtime.children import pid_alive
from damselfly.testbed import netns
from damselfly.testbed.netns import HostNet, Network, Runner, call_in_netns
from damselfly.testbed.scenarios import Knobs, build_scenario, with_plain_wire
from damselfly.testbed.swarm import SwarmOptions, run_swarm
from damselfly.units import MiB


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "the namespace testbed needs root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    probe = f"{netns.new_prefix()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"ip netns is unavailable here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


_REASON = _why_not()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


def _namespaces_with(prefix: str) -> list[str]:
    return [ns for ns in netns.list_namespaces(Runner()) if ns.startswith(f"{prefix}-")]


def test_small_flash_crowd_across_namespaces() -> None:
    """The CI scenario: 3 peers, 32 MiB, 200 mbit. Every digest right, the origin sends F once."""
    sc = build_scenario("flash-crowd", Knobs(peers=3, size=32 * MiB, rate_bits=200_000_000))
    lines: list[str] = []
    result = run_swarm(sc, SwarmOptions(timeout_s=90, log_level="INFO"), say=lines.append)
    data = result.to_json()
    assert result.error == "", "\n".join(lines)
    assert all(h.exit_code == 0 and h.digest_ok for h in result.peers), "\n".join(lines)
    assert data["ok"] is True
    assert data["piece_length"] is None and data["link_queue"] == "ack-first"  # the defaults, recorded
    assert 0 < data["origin"]["bytes"] <= 1.01 * sc.file_size
    assert data["back_to_source_count"] >= 1
    # Every byte a peer holds came from somewhere: peers and seed uploaded what the peers downloaded
    # apart from what they fetched from the origin themselves.
    from_peers = sum(h.downloaded.get("remote_peer", 0) for h in result.hosts)
    assert sum(h.uploaded_bytes for h in result.hosts) >= from_peers > 0
    assert data["t_min_s"] > 0 and data["completion"]["max_over_t_min"] is not None
    assert 0.0 <= data["cpu_busy_fraction"] <= 1.0
    assert all(data["progress"][p.name] for p in result.peers)
    json.dumps(data)  # the report is JSON
    assert _namespaces_with(result.prefix) == []
    assert not os.path.exists(result.workdir)


@pytest.mark.parametrize("scenario", ["scheduler-restart", "scheduler-failover"])
def test_a_scheduler_killed_at_30_percent_loses_no_download(scenario: str) -> None:
    """The fault scenarios, small: the task's scheduler SIGKILLed at ~30 %, restarted or gone for good.
    Every download succeeds and the origin sends the file once, plus at most a piece in flight."""
    sc = build_scenario(scenario, Knobs(peers=3, size=64 * MiB, rate_bits=200_000_000))
    lines: list[str] = []
    result = run_swarm(sc, SwarmOptions(timeout_s=90, log_level="INFO"), say=lines.append)
    data = result.to_json()
    assert result.error == "", "\n".join(lines)
    assert data["fault"]["kind"] == scenario and data["fault"]["progress"] >= 0.3, "\n".join(lines)
    assert data["fault"]["restarted"] is (scenario == "scheduler-restart")
    assert data["failed_downloads"] == 0 and data["ok"] is True, "\n".join(lines)
    assert data["origin"]["bytes"] <= sc.file_size + 4 * MiB  # 64 MiB: 4 MiB pieces
    assert _namespaces_with(result.prefix) == []


def test_a_seed_killed_at_30_percent_costs_the_origin_only_what_was_in_flight() -> None:
    """``seed-loss``, small: two seeds, the one serving the task SIGKILLed at ~30 %. Every download
    succeeds, the other seed fetches nothing, and the origin hands the network the file once plus
    what was in flight (a piece of the seed's, one of the peer sent to the origin in its place)."""
    sc = build_scenario("seed-loss", Knobs(peers=3, seeds=2, size=64 * MiB, rate_bits=200_000_000))
    lines: list[str] = []
    result = run_swarm(sc, SwarmOptions(timeout_s=120, log_level="INFO"), say=lines.append)
    data = result.to_json()
    assert result.error == "", "\n".join(lines)
    fault = data["fault"]
    assert fault["kind"] == "seed-loss" and fault["role"] == "seed", "\n".join(lines)
    assert fault["progress"] >= 0.3 and fault["seed_bytes"] > 0
    assert data["failed_downloads"] == 0 and data["ok"] is True, "\n".join(lines)
    assert sc.file_size <= data["origin"]["bytes_sent"] <= sc.file_size + 2 * 4 * MiB + 1 * MiB
    spare = next(h for h in result.hosts if h.role == "seed" and h.name != fault["killed"])
    assert spare.downloaded.get("back_to_source", 0) == 0, spare.downloaded
    assert sum(1 for h in result.peers if h.downloaded.get("back_to_source", 0) > 0) == 1
    assert _namespaces_with(result.prefix) == []


def test_mixed_wire_swarm_with_plain_peers_and_seed(tmp_path: Path) -> None:
    """Half the peers and the seed on Dragonfly's wire only (``--plain-peers 2 --plain-seed``), the
    key merged into a user's daemon config: every digest right, and the origin sends F once plus
    one 1-byte size probe per plain daemon that downloaded (Dragonfly's client sizes a task so
    before it registers); extension daemons, which take the size from Damselfly's scheduler, send none."""
    user = tmp_path / "daemon.yaml"
    user.write_text("seedPeer:\n  superSeed: true\nwire:\n  extensions: true\n")
    sc = with_plain_wire(
        build_scenario("flash-crowd", Knobs(peers=4, size=16 * MiB, rate_bits=200_000_000)),
        plain_peers=2,
        plain_seed=True,
    )
    lines: list[str] = []
    result = run_swarm(sc, SwarmOptions(timeout_s=90, daemon_config=user), say=lines.append)
    data = result.to_json()
    assert result.error == "", "\n".join(lines)
    assert all(h.exit_code == 0 and h.digest_ok for h in result.peers), "\n".join(lines)
    assert data["ok"] is True
    wires = {h["name"]: h["wire"] for h in data["hosts"]}
    assert wires == {"seed": "dragonfly", "peer0": "damselfly", "peer1": "dragonfly",
                     "peer2": "damselfly", "peer3": "dragonfly"}  # fmt: skip
    plain_downloaders = [h for h in result.hosts if h.wire == "dragonfly" and sum(h.downloaded.values()) > 0]
    assert len(plain_downloaders) >= 2  # the plain peers at least; the seed if it was asked to fetch
    assert data["origin"]["size_probes"] == len(plain_downloaders), "\n".join(lines)
    assert data["origin"]["bytes"] == sc.file_size + data["origin"]["size_probes"]
    by_wire = data["completion"]["by_wire"]
    assert by_wire["damselfly"]["peers"] == ["peer0", "peer2"]
    assert by_wire["dragonfly"]["peers"] == ["peer1", "peer3"]
    for group in by_wire.values():
        assert group["max_s"] is not None and group["max_over_t_min"] is not None
        assert group["p50_s"] is not None and group["p50_s"] <= group["max_s"] <= data["completion"]["max_s"]
    assert user.read_text() == "seedPeer:\n  superSeed: true\nwire:\n  extensions: true\n"
    assert _namespaces_with(result.prefix) == []


@pytest.fixture
def network() -> Iterator[Network]:
    prefix = netns.new_prefix()
    hosts = [
        HostNet(
            "a", netns.netns_name(prefix, "a"), netns.host_ip(0), up_bits=50_000_000, down_bits=80_000_000
        ),
        HostNet("b", netns.netns_name(prefix, "b"), netns.host_ip(1)),
    ]
    net = Network(prefix, hosts)
    net.create()
    try:
        yield net
    finally:
        net.destroy()
        assert _namespaces_with(prefix) == []


def test_hosts_reach_each_other_and_the_root_namespace_stays_out(network: Network) -> None:
    a, b = network.hosts
    server = call_in_netns(b.netns, lambda: socket.create_server((b.ip, 0)))
    port = server.getsockname()[1]
    accepted: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            accepted.append(conn.recv(16))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:

        def send() -> None:
            with socket.create_connection((b.ip, port), timeout=5) as s:
                s.sendall(b"hello")

        call_in_netns(a.netns, send)
        t.join(5)
    finally:
        server.close()
    assert accepted == [b"hello"]
    # The test subnet exists only inside the namespaces.
    root_addrs = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    assert "10.213." not in root_addrs
    routes = subprocess.run(["ip", "-n", a.netns, "route"], capture_output=True, text=True, check=True).stdout
    assert "default" not in routes
    qdiscs = subprocess.run(["tc", "-n", a.netns, "qdisc"], capture_output=True, text=True, check=True).stdout
    assert re.search(r"tbf .* dev eth0 root .*rate 50Mbit", qdiscs), qdiscs
    assert re.search(r"tbf .* dev ifb0 root .*rate 80Mbit", qdiscs), qdiscs
    assert "ingress ffff: dev eth0" in qdiscs


def test_stale_sweep_kills_leftovers_and_removes_their_namespaces() -> None:
    """A run that died without cleaning up: no run record, a process still inside its namespace."""
    prefix = netns.new_prefix()
    ns = netns.netns_name(prefix, "peer0")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "60"])
    try:
        wait_until(lambda: sleeper.pid in netns.namespace_pids(Runner(), ns), f"the sleeper runs in {ns}")
        removed = netns.sweep_stale()
        assert ns in removed
        assert sleeper.wait(timeout=10) != 0
        assert _namespaces_with(prefix) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            sleeper.kill()
        sleeper.wait(timeout=5)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def test_ctrl_c_removes_everything() -> None:
    """SIGINT mid-transfer: every process inside the run's namespaces ends, the namespaces go."""
    argv = [
        sys.executable, "-m", "damselfly", "bench", "swarm", "--peers", "1", "--size", "64MiB",
        "--rate", "10mbit", "--no-plot", "--timeout", "60s", "--memory", "as-is",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    prefix, pids, seen = "", [], []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if m := re.search(r"namespaces (dfsw[0-9a-f]{6})-\*", line):
                prefix = m.group(1)
            if line.startswith("[") and "done" in line:  # the transfer is under way
                break
        assert prefix, "".join(seen)
        for ns in _namespaces_with(prefix):
            pids += netns.namespace_pids(Runner(), ns)
        assert pids, "no processes inside the run's namespaces"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        seen.append(rest)
        assert proc.returncode == 1, "".join(seen)
        assert "interrupted" in rest
        assert _namespaces_with(prefix) == []
        assert not any(pid_alive(p) for p in pids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if prefix:
            netns.cleanup_prefix(prefix)
