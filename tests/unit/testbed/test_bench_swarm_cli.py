"""``damselfly bench swarm``'s flags: bad values are refused before anything is built."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from damselfly.cli.main import app


def test_help_lists_the_scenarios() -> None:
    result = CliRunner().invoke(app, ["bench", "swarm", "--help"])
    assert result.exit_code == 0
    assert "mixed-rates" in result.output and "--cleanup" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scenario", "stampede"], "unknown scenario"),
        (["--rate", "fast"], "not a rate"),
        (["--size", "huge"], "not a size"),
        (["--piece-length", "big"], "not a size"),
        (["--scenario", "mixed-rates", "--slow-fraction", "2"], "slow-fraction"),
        (["--baseline", "transmission"], "the one baseline is aria2"),
        (["--runs", "0"], "--runs"),
    ],
)
def test_bad_flags_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["bench", "swarm", *args])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize("args", [["--children", "0"], ["--children", "x"], ["--size", "huge"]])
def test_bench_relay_bad_flags_exit_2(args: list[str]) -> None:
    result = CliRunner().invoke(app, ["bench", "relay", *args])
    assert result.exit_code == 2


@pytest.mark.parametrize("command", ["swarm", "relay"])
def test_a_bad_memory_mode_exits_2(command: str) -> None:
    result = CliRunner().invoke(app, ["bench", command, "--memory", "warm"])
    assert result.exit_code == 2
    assert "resident or as-is" in result.output
