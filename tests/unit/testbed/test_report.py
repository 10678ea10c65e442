"""The numbers a swarm run reports: metrics parsing, CPU busy fraction, percentiles, ratios to T_min."""

from __future__ import annotations

from pathlib import Path

import pytest

from damselfly.testbed.report import (
    DOWNLOAD_METRIC,
    UPLOAD_METRIC,
    CpuTimes,
    HostResult,
    SwarmResult,
    busy_fraction,
    human_summary,
    metric_values,
    parse_proc_stat,
    percentile_summary,
)
from damselfly.testbed.scenarios import Knobs, build_scenario
from damselfly.units import MiB

METRICS = """\
# HELP dragonfly_client_upload_traffic Counter of the number of the upload traffic.
# TYPE dragonfly_client_upload_traffic untyped
dragonfly_client_upload_traffic 1.6777216e+07
dragonfly_client_upload_traffic_created 1.7e+09
dragonfly_client_download_traffic{type="BACK_TO_SOURCE"} 4194304.0
dragonfly_client_download_traffic{type="REMOTE_PEER"} 8.388608e+06
"""


def test_metric_values() -> None:
    assert metric_values(METRICS, UPLOAD_METRIC) == {"": 16777216.0}
    assert metric_values(METRICS, DOWNLOAD_METRIC) == {"back_to_source": 4194304.0, "remote_peer": 8388608.0}
    assert metric_values(METRICS, "nope") == {}


def test_proc_stat_and_busy_fraction() -> None:
    a = parse_proc_stat("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n")
    assert a == CpuTimes(busy=150, total=1000)
    b = parse_proc_stat("cpu  400 0 150 1000 50 0 0 0 0 0\n")
    assert busy_fraction(a, b) == pytest.approx(400 / 600)
    assert busy_fraction(a, a) == 0.0
    with pytest.raises(ValueError):
        parse_proc_stat("intr 1 2 3\n")


def test_reading_this_machines_proc_stat() -> None:
    times = parse_proc_stat(Path("/proc/stat").read_text())
    assert 0 < times.busy <= times.total


def test_percentiles() -> None:
    assert percentile_summary([3.0, 1.0, 2.0]) == {"p50_s": 2.0, "max_s": 3.0}
    assert percentile_summary([1.0, 2.0, 3.0, 4.0])["p50_s"] == 2.5
    # A lost peer: no max worth comparing, but the median of those that finished.
    assert percentile_summary([1.0, None, 3.0]) == {"p50_s": 2.0, "max_s": None}
    assert percentile_summary([None]) == {"p50_s": None, "max_s": None}


def _result() -> SwarmResult:
    sc = build_scenario("flash-crowd", Knobs(peers=2, size=32 * MiB, rate_bits=200_000_000))
    t_min = sc.bound().t_min
    r = SwarmResult(scenario=sc, prefix="dfswabcdef", workdir="/tmp/x")
    r.hosts = [
        HostResult("seed", "seed", "10.213.0.12", 200_000_000, 200_000_000, uploaded_bytes=32 * MiB,
                   downloaded={"back_to_source": 32 * MiB}),
        HostResult("peer0", "peer", "10.213.0.13", 200_000_000, 200_000_000, exit_code=0,
                   completion_s=1.5 * t_min, digest_ok=True, uploaded_bytes=MiB,
                   downloaded={"remote_peer": 32 * MiB}),
        HostResult("peer1", "peer", "10.213.0.14", 200_000_000, 200_000_000, arrival_s=0.5, exit_code=0,
                   completion_s=2 * t_min, digest_ok=True, downloaded={"remote_peer": 32 * MiB}),
    ]  # fmt: skip
    r.origin_bytes, r.origin_requests, r.cpu_busy_fraction = 32 * MiB, 1, 0.5
    r.progress = {"peer0": [(0.5, 4 * MiB)]}
    return r


def test_result_json() -> None:
    r = _result()
    data = r.to_json()
    assert data["ok"] is True
    assert data["completion"]["max_over_t_min"] == pytest.approx(2.0)
    assert data["completion"]["p50_over_t_min"] == pytest.approx(1.75)
    assert data["origin"]["bytes_over_f"] == 1.0
    assert data["back_to_source_count"] == 1
    assert data["uploaded_bytes"] == {"seed": 32 * MiB, "peer0": MiB, "peer1": 0}
    peer1 = data["hosts"][2]
    assert peer1["completion_since_arrival_s"] == pytest.approx(peer1["completion_s"] - 0.5, abs=1e-3)
    assert data["progress"]["peer0"] == [[0.5, 4 * MiB]]
    assert "all digests ok" in human_summary(data)


def test_a_wrong_digest_fails_the_run() -> None:
    r = _result()
    r.hosts[2].digest_ok = False
    assert not r.ok
    assert "RUN FAILED" in human_summary(r.to_json())


def test_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="plots need the bench extra: pip install 'damselfly[bench]'")
    from damselfly.testbed.plot import plot_progress

    out = plot_progress(_result().to_json(), tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_process_cpu_seconds_and_testbed_share() -> None:
    import os

    from damselfly.testbed.report import process_cpu_seconds

    assert process_cpu_seconds(os.getpid()) > 0
    assert process_cpu_seconds(999_999_999) == 0.0
    r = _result()
    assert r.testbed_cpu_fraction is None  # no transfer measured
    r.wall_s, r.cpu_count, r.testbed_cpu_s = 10.0, 2, {"seed": 3.0, "peer0": 2.0}
    assert r.to_json()["testbed_cpu_fraction"] == pytest.approx(0.25)
