"""Mixed-wire swarms: which peers run on Dragonfly's wire, the config they get, and the flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from damselfly.cli.main import app
from damselfly.config import load_daemon_config
from damselfly.errors import InvalidArgument
from damselfly.testbed.scenarios import Knobs, build_scenario, scenario_from_rates, with_plain_wire
from damselfly.testbed.wire import (
    DAMSELFLY,
    DRAGONFLY,
    config_wire,
    interleaved,
    plain_config,
    write_plain_config,
)
from damselfly.units import MiB


@pytest.mark.parametrize(
    ("n", "k", "chosen"),
    [(8, 4, [1, 3, 5, 7]), (4, 2, [1, 3]), (8, 2, [2, 6]), (8, 1, [4]), (8, 3, [1, 4, 6]),
     (8, 8, list(range(8))), (8, 0, []), (1, 1, [0])],
)  # fmt: skip
def test_plain_peers_are_spread_over_the_list(n: int, k: int, chosen: list[int]) -> None:
    assert interleaved(n, k) == chosen


@pytest.mark.parametrize(("n", "k"), [(4, 5), (4, -1)])
def test_more_plain_peers_than_peers_is_refused(n: int, k: int) -> None:
    with pytest.raises(InvalidArgument, match="plain-peers"):
        interleaved(n, k)


def test_with_plain_wire_marks_every_other_peer_and_the_seeds() -> None:
    sc = build_scenario("flash-crowd", Knobs(peers=8, seeds=2))
    mixed = with_plain_wire(sc, plain_peers=4, plain_seed=True)
    assert [p.wire for p in mixed.peers] == [DAMSELFLY, DRAGONFLY] * 4
    assert all(s.wire == DRAGONFLY for s in mixed.seeds)
    assert mixed.params == {"plain_peers": 4, "plain_seed": True}
    assert mixed.to_json()["peers"][1]["wire"] == DRAGONFLY
    # Links, arrivals and so the bound are those of the scenario it came from.
    assert mixed.bound() == sc.bound()
    only_peers = with_plain_wire(sc, plain_peers=2)
    assert [p.name for p in only_peers.peers if p.wire == DRAGONFLY] == ["peer2", "peer6"]
    assert all(s.wire == DAMSELFLY for s in only_peers.seeds)
    assert with_plain_wire(sc) is sc  # nothing asked: the scenario unchanged, no params added


def test_a_rates_file_names_a_hosts_wire() -> None:
    data = {"seeds": [{"wire": "dragonfly"}], "peers": [{}, {"wire": "dragonfly"}]}
    sc = scenario_from_rates(data, name="x", size=MiB)
    assert [h.wire for h in (*sc.seeds, *sc.peers)] == [DRAGONFLY, DAMSELFLY, DRAGONFLY]
    with pytest.raises(InvalidArgument, match="wire"):
        scenario_from_rates({"peers": [{"wire": "grpc"}]}, name="x", size=MiB)


USER_CONFIG = """\
download:
  concurrentPieceCount: 8
upload:
  concurrentPieceCount: 6
wire:
  extensions: true
"""


def test_plain_config_merges_the_key_into_the_users_file(tmp_path: Path) -> None:
    user = tmp_path / "daemon.yaml"
    user.write_text(USER_CONFIG)
    merged = plain_config(user)
    assert merged == {
        "download": {"concurrentPieceCount": 8},
        "upload": {"concurrentPieceCount": 6},
        "wire": {"extensions": False},
    }
    out = write_plain_config(user, tmp_path / "run" / "daemon-dragonfly.yaml")
    assert user.read_text() == USER_CONFIG  # the user's file is not touched
    config = load_daemon_config(out)  # the daemon reads the merged file as the user's, extensions off
    assert config.wire.extensions is False
    assert config.download.concurrent_piece_count == 8 and config.upload.concurrent_piece_count == 6


@pytest.mark.parametrize(("text", "expected"), [("", {}), ("wire: {}\n", {}), ("wire:\n", {})])
def test_plain_config_without_a_wire_section(tmp_path: Path, text: str, expected: dict[str, Any]) -> None:
    user = tmp_path / "daemon.yaml"
    user.write_text(text)
    assert plain_config(user) == {**expected, "wire": {"extensions": False}}
    assert plain_config(None) == {"wire": {"extensions": False}}


@pytest.mark.parametrize("text", ["- a list\n", "wire: off\n", "download: [\n"])
def test_plain_config_refuses_what_it_cannot_merge_into(tmp_path: Path, text: str) -> None:
    user = tmp_path / "daemon.yaml"
    user.write_text(text)
    with pytest.raises(InvalidArgument):
        plain_config(user)


def test_a_users_config_without_extensions_makes_every_daemon_plain(tmp_path: Path) -> None:
    user = tmp_path / "daemon.yaml"
    assert config_wire(None) == DAMSELFLY
    user.write_text("wire:\n  extensions: false\n")
    assert config_wire(user) == DRAGONFLY
    user.write_text(USER_CONFIG)
    assert config_wire(user) == DAMSELFLY
    user.write_text("upload:\n  rateLimit: 1GiB\n")  # a key the daemon would refuse
    with pytest.raises(InvalidArgument, match="rateLimit"):
        config_wire(user)


def test_help_lists_the_plain_flags() -> None:
    result = CliRunner().invoke(app, ["bench", "swarm", "--help"])
    assert result.exit_code == 0
    assert "--plain-peers" in result.output and "--plain-seed" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--peers", "4", "--plain-peers", "5"], "0 to 4"),
        (["--plain-peers", "-1"], "plain-peers"),
        (["--plain-peers", "two"], "plain-peers"),
    ],
)
def test_bad_plain_flags_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["bench", "swarm", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_a_daemon_config_the_daemons_would_refuse_exits_2_before_anything_runs(tmp_path: Path) -> None:
    user = tmp_path / "daemon.yaml"
    user.write_text("wire: off\n")
    result = CliRunner().invoke(app, ["bench", "swarm", "--plain-peers", "1", "--daemon-config", str(user)])
    assert result.exit_code == 2
    assert "invalid configuration" in result.output and "wire" in result.output
    assert yaml.safe_load(user.read_text()) == {"wire": False}  # untouched


async def test_the_origin_counts_one_byte_size_probes(tmp_path: Path) -> None:
    import aiohttp

    from damselfly.testbed.origin import Origin

    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    async with Origin(tmp_path) as origin, aiohttp.ClientSession() as http:
        # As Dragonfly's client asks a size (a GET, so URLs signed for GET work), then a piece, then all.
        for rng in ("bytes=0-0", "bytes=0-99", None):
            headers = {"Range": rng} if rng else {}
            async with http.get(origin.url("a.bin"), headers=headers) as r:
                await r.read()
        async with http.head(origin.url("a.bin"), headers={"Range": "bytes=0-0"}) as r:
            pass
        assert origin.stats.size_probes == 1
        assert origin.stats.bytes == 1 + 100 + 1000
        async with http.get(f"http://127.0.0.1:{origin.port}/_stats") as r:
            assert (await r.json())["size_probes"] == 1
        origin.stats.reset()
        assert origin.stats.size_probes == 0


def _mixed_result() -> Any:
    from damselfly.testbed.report import HostResult, SwarmResult

    sc = with_plain_wire(
        build_scenario("flash-crowd", Knobs(peers=4, size=16 * MiB, rate_bits=200_000_000)), plain_peers=2
    )
    t = sc.bound().t_min
    r = SwarmResult(scenario=sc, prefix="dfswabcdef", workdir="/tmp/x")
    bits = 200_000_000
    r.hosts = [
        HostResult("seed", "seed", "10.213.0.12", bits, bits, downloaded={"back_to_source": 16 * MiB}),
        *(
            HostResult(p.name, "peer", f"10.213.0.{13 + i}", bits, bits, exit_code=0,
                       completion_s=(1.1 + i / 10) * t, digest_ok=True, wire=p.wire)
            for i, p in enumerate(sc.peers)
        ),
    ]  # fmt: skip
    r.origin_bytes, r.origin_requests, r.origin_size_probes = 16 * MiB + 2, 3, 2
    return r


def test_the_report_gives_each_hosts_wire_and_completion_per_wire() -> None:
    from damselfly.testbed.report import human_summary

    data = _mixed_result().to_json()
    assert [h["wire"] for h in data["hosts"]] == [DAMSELFLY, DAMSELFLY, DRAGONFLY, DAMSELFLY, DRAGONFLY]
    by_wire = data["completion"]["by_wire"]
    assert by_wire[DAMSELFLY]["peers"] == ["peer0", "peer2"]
    assert by_wire[DRAGONFLY]["peers"] == ["peer1", "peer3"]
    # Against the whole swarm's T_min: peer0 1.1, peer2 1.3; peer1 1.2, peer3 1.4.
    assert by_wire[DAMSELFLY]["p50_over_t_min"] == pytest.approx(1.2)
    assert by_wire[DAMSELFLY]["max_over_t_min"] == pytest.approx(1.3)
    assert by_wire[DRAGONFLY]["p50_over_t_min"] == pytest.approx(1.3)
    assert by_wire[DRAGONFLY]["max_over_t_min"] == pytest.approx(1.4)
    assert data["completion"]["max_over_t_min"] == pytest.approx(1.4)  # the whole swarm's, as before
    assert data["origin"]["size_probes"] == 2 and data["origin"]["bytes_over_f"] == 1.0
    assert data["scenario"]["params"] == {"plain_peers": 2, "plain_seed": False}
    text = human_summary(data)
    assert "dragonfly wire (2 peers): p50 1.30 T_min, max 1.40 T_min" in text
    assert "(2 one-byte size probes)" in text


def test_a_swarm_without_plain_hosts_reports_an_empty_dragonfly_group() -> None:
    from damselfly.testbed.report import human_summary

    r = _mixed_result()
    for h in r.hosts:
        h.wire = DAMSELFLY
    r.origin_size_probes = 0
    data = r.to_json()
    assert data["completion"]["by_wire"][DRAGONFLY] == {
        "peers": [], "p50_s": None, "max_s": None, "p50_over_t_min": None, "max_over_t_min": None,
        "since_arrival": {"p50_s": None, "max_s": None},
    }  # fmt: skip
    assert data["completion"]["by_wire"][DAMSELFLY]["max_s"] == data["completion"]["max_s"]
    text = human_summary(data)
    assert "wire" not in text and "size probes" not in text  # the summary of an ordinary run is unchanged
