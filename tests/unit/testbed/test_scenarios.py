"""Scenario presets and rates files: the hosts, their rates and arrivals, and the bound they imply."""

from __future__ import annotations

from pathlib import Path

import pytest

from damselfly.errors import InvalidArgument
from damselfly.testbed.scenarios import Knobs, build_scenario, load_rates_file, scenario_from_rates
from damselfly.units import GiB, MiB


def test_flash_crowd_defaults() -> None:
    s = build_scenario("flash-crowd", Knobs())
    assert len(s.peers) == 8 and len(s.seeds) == 1 and s.file_size == 256 * MiB
    assert all(p.arrival_s == 0 and p.up_bits == p.down_bits == 100_000_000 for p in s.peers)
    assert s.origin_bits == 100_000_000
    assert s.bound().t_min == pytest.approx(256 * MiB * 8 / 1e8)


def test_knobs_override_and_origin_rate_defaults_to_rate() -> None:
    s = build_scenario("flash-crowd", Knobs(peers=16, size=32 * MiB, rate_bits=25_000_000, seeds=2))
    assert len(s.peers) == 16 and [h.name for h in s.seeds] == ["seed0", "seed1"]
    assert s.origin_bits == 25_000_000 and s.file_size == 32 * MiB


def test_staggered_arrivals() -> None:
    s = build_scenario("staggered", Knobs(peers=4, stagger_s=1.5))
    assert [p.arrival_s for p in s.peers] == [0.0, 1.5, 3.0, 4.5]


def test_mixed_rates_slows_a_quarter() -> None:
    s = build_scenario("mixed-rates", Knobs(peers=8, rate_bits=100_000_000))
    slow = [p for p in s.peers if p.down_bits == 25_000_000]
    assert len(slow) == 2 and all(p.up_bits == 25_000_000 for p in slow)
    assert s.bound().binding == "download"


def test_size_presets() -> None:
    assert build_scenario("large-file-few-peers", Knobs()).file_size == 1 * GiB
    many = build_scenario("small-file-many-peers", Knobs())
    assert len(many.peers) == 16 and many.file_size == 16 * MiB


def test_unknown_scenario() -> None:
    with pytest.raises(InvalidArgument, match="flash-crowd"):
        build_scenario("stampede", Knobs())


def test_rates_file(tmp_path: Path) -> None:
    path = tmp_path / "rates.yaml"
    path.write_text(
        "origin: 50mbit\nseeds: [{rate: 200mbit}]\n"
        "peers:\n  - {up: 10mbit, down: 100mbit}\n  - {rate: 25mbit, arrival: 3}\n"
    )
    s = load_rates_file(path, size=64 * MiB)
    assert s.origin_bits == 50_000_000 and s.seeds[0].up_bits == 200_000_000
    assert (s.peers[0].up_bits, s.peers[0].down_bits) == (10_000_000, 100_000_000)
    assert (s.peers[1].down_bits, s.peers[1].arrival_s) == (25_000_000, 3.0)
    assert s.to_json()["peers"][1]["name"] == "peer1"


@pytest.mark.parametrize(
    "data",
    [{}, {"peers": []}, {"peers": [{"speed": "1mbit"}]}, {"peers": ["x"]},
     {"peers": [{"name": "a"}, {"name": "a"}]}, {"peers": [{"arrival": -1}]}],
)  # fmt: skip
def test_bad_rates_files(data: object) -> None:
    with pytest.raises(InvalidArgument):
        scenario_from_rates(data, name="x", size=1)
