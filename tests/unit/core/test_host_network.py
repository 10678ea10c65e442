"""SyncHost's figures (daemon/host_network.py): Dragonfly's arithmetic, with no real clock or sleep.

dragonfly-client-util/src/sysinfo/network.rs (client commit ff17c0b7): bit/s over one second of the
interface carrying the host's IP; the maximum is the link speed (Mbit/s) capped by the upload limit.
"""

from __future__ import annotations

from pathlib import Path

from damselfly.daemon import host_network as hn

PROC_NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop
    lo: 1000 10    0    0    0     0          0         0 2000 20    0    0    0     0       0          0
  eth0: 5 1 0 0 0 0 0 0 7 1 0 0 0 0 0 0
"""
IF_INET6 = """\
fd000000000000000000000000000002 04 40 00 82     eth0
00000000000000000000000000000001 01 80 10 80       lo
"""


def test_parsing_proc() -> None:
    assert hn.parse_proc_net_dev(PROC_NET_DEV) == {"lo": (1000, 2000), "eth0": (5, 7)}
    assert hn.parse_if_inet6(IF_INET6, "fd00::2") == "eth0"
    assert hn.parse_if_inet6(IF_INET6, "::1") == "lo"
    assert hn.parse_if_inet6(IF_INET6, "fd00::3") is None
    assert hn.parse_if_inet6(IF_INET6, "not an address") is None


def test_max_bandwidth_is_the_link_capped_by_the_upload_limit() -> None:
    assert hn.max_bandwidth(10_000, 0) == 10_000_000_000  # 10 Gbit/s, no limit
    assert hn.max_bandwidth(10_000, 100 * 1024 * 1024) == 100 * 1024 * 1024 * 8
    assert hn.max_bandwidth(None, 1000) == 8000  # speed unknown: the limit
    assert hn.max_bandwidth(-1, 0) == 0  # nothing known


def test_sample_stats_rates_in_bits_per_second() -> None:
    assert hn.sample_stats((1000, 2000), (1500, 4000), 2.0, 80) == hn.NetworkStats(80, 80, 2000, 8000)
    assert hn.sample_stats(None, (1, 1), 1.0, 80) == hn.NetworkStats(80, 80)
    assert hn.sample_stats((10, 10), (5, 5), 1.0, 0) == hn.NetworkStats(0, 0, 0, 0)  # counters reset


class FakeNet(hn.ProcNet):
    def __init__(self) -> None:
        super().__init__(Path("/nonexistent"), Path("/nonexistent"))
        self.readings = [(0, 0), (1000, 125), (1000, 250)]

    def interface_of(self, ip: str) -> str | None:
        return "eth9" if ip == "10.0.0.9" else None

    def speed_mbit(self, interface: str) -> int | None:
        return 1000

    def counters(self, interface: str) -> hn.Counters | None:
        return self.readings.pop(0)


async def test_monitor_samples_once_per_interval() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    monitor = hn.NetworkMonitor("10.0.0.9", 0, net=FakeNet(), clock=lambda: now[0], sleep=sleep)
    samples = []
    async for stats in monitor.samples():
        samples.append(stats)
        if len(samples) == 2:
            break
    assert slept == [1.0, 1.0]
    assert samples == [
        hn.NetworkStats(1_000_000_000, 1_000_000_000, 8000, 1000),
        hn.NetworkStats(1_000_000_000, 1_000_000_000, 0, 1000),
    ]


async def test_monitor_of_an_unknown_interface_reports_only_the_limit() -> None:
    async def sleep(seconds: float) -> None:
        return None

    monitor = hn.NetworkMonitor("192.0.2.1", 1000, net=FakeNet(), sleep=sleep)
    async for stats in monitor.samples():
        assert stats == hn.NetworkStats(8000, 8000)
        break


def test_the_real_loopback_is_found() -> None:
    net = hn.ProcNet()
    assert net.interface_of("127.0.0.1") == "lo"
    counters = net.counters("lo")
    assert counters is not None and counters[0] >= 0
