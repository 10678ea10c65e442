"""The namespace layout as command lines, the stale-run sweep, and Network's all-or-nothing create."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from damselfly.testbed import netns
from damselfly.testbed.netns import HostNet, Network, Runner, TestbedError


def test_prefixes_are_fresh_and_recognised() -> None:
    a, b = netns.new_prefix(), netns.new_prefix()
    assert a != b
    assert netns.run_prefix_of(netns.netns_name(a, "peer3")) == a
    assert netns.run_prefix_of("dfswzzzzzz-peer") is None  # not hex
    assert netns.run_prefix_of("someone-else") is None
    assert netns.run_prefix_of(a) is None  # no host part


def test_addresses_stay_in_the_test_subnet() -> None:
    ips = {netns.host_ip(i) for i in range(300)}
    assert len(ips) == 300
    assert all(ip.startswith("10.213.") for ip in ips)
    with pytest.raises(TestbedError):
        netns.host_ip(70_000)


def test_host_commands_wire_one_host() -> None:
    host = HostNet("peer0", "dfswabcdef-peer0", "10.213.0.12", up_bits=100_000_000, down_bits=100_000_000)
    cmds = netns.host_commands("dfswabcdef", host, 2)
    flat = [" ".join(c) for c in cmds]
    assert flat[0] == "ip netns add dfswabcdef-peer0"
    assert "ip link add eth0 netns dfswabcdef-peer0 type veth peer name v2 netns dfswabcdef-br" in flat
    assert "ip -n dfswabcdef-br link set v2 master br0" in flat
    assert "ip -n dfswabcdef-peer0 addr add 10.213.0.12/16 dev eth0" in flat
    # No route is ever added: the subnet exists only on the bridge.
    assert not any(" route " in f for f in flat)
    assert any("tbf" in f and "ifb0" in f for f in flat) and any("mirred" in f for f in flat)
    # Every command addresses a namespace: nothing is configured in the root namespace.
    assert all(c[:3] == ["ip", "netns", "add"] or "-n" in c or "netns" in c for c in cmds)


def test_unshaped_host_has_no_tc() -> None:
    cmds = netns.host_commands("p", HostNet("scheduler", "p-scheduler", "10.213.0.11"), 1)
    assert not any(c[0] == "tc" for c in cmds)


def test_stale_prefixes() -> None:
    names = ["dfswaaaaaa-br", "dfswaaaaaa-peer0", "dfswbbbbbb-br", "other-ns", "dfswcccccc-origin"]
    live = {"dfswbbbbbb"}
    assert netns.stale_prefixes(names, lambda p: p in live) == ["dfswaaaaaa", "dfswcccccc"]


def test_netns_exec_keeps_argv() -> None:
    assert netns.netns_exec("ns", ["python", "-m", "x"]) == ["ip", "netns", "exec", "ns", "python", "-m", "x"]


class FailingRunner(Runner):
    """Records commands; fails the ``fail_at``-th one; answers netns list/pids as empty."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at = fail_at
        self.ran: list[list[str]] = []

    def run(self, argv: Sequence[str], *, check: bool = True) -> str:
        argv = list(argv)
        if argv[:3] == ["ip", "netns", "pids"] or argv[:4] == ["ip", "-j", "netns", "list"]:
            return ""
        self.ran.append(argv)
        if len(self.ran) == self.fail_at:
            raise TestbedError("boom")
        return ""


def test_create_removes_what_it_made_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "RUN_DIR", tmp_path)
    hosts = [HostNet(f"h{i}", f"dfswabcdef-h{i}", netns.host_ip(i), 1000, 1000) for i in range(3)]
    runner = FailingRunner(fail_at=len(netns.bridge_commands("dfswabcdef")) + 12)
    net = Network("dfswabcdef", hosts, runner)
    with pytest.raises(TestbedError):
        net.create()
    deleted = [c[3] for c in runner.ran if c[:3] == ["ip", "netns", "del"]]
    made = [c[3] for c in runner.ran if c[:3] == ["ip", "netns", "add"]]
    assert sorted(deleted) == sorted(made) and "dfswabcdef-br" in made
    assert deleted[-1] == "dfswabcdef-br"  # hosts first, the bridge last
    assert not (tmp_path / "dfswabcdef.json").exists()


def test_run_record_marks_a_run_live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "RUN_DIR", tmp_path)
    assert not netns.run_is_live("dfsw123456")
    netns.write_run_record("dfsw123456")
    assert netns.run_is_live("dfsw123456")  # our own PID
    (tmp_path / "dfsw123456.json").write_text('{"pid": 999999999}')
    assert not netns.run_is_live("dfsw123456")
