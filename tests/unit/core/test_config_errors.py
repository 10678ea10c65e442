"""A bad config file is one line: the file, each offending key, what is wrong with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from damselfly.config import load_daemon_config, load_scheduler_config
from damselfly.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "daemon.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("upload:\n  bogusKey: 1\n", ["upload.bogusKey: unknown key"]),
        ("upload:\n  concurentUploadLimit: 3\n", ["did you mean concurrentUploadLimit?"]),
        (
            "proxy:\n  rules:\n    - regx: a\n      diect: true\n",
            ["proxy.rules[0].diect: unknown key", "direct?"],
        ),
        ("upload:\n  concurrentPieceCount: many\n", ["upload.concurrentPieceCount:", "'many'"]),
        (
            "proxy:\n  hijackHTTPS:\n    hosts:\n      - {}\n",
            ["proxy.hijackHTTPS.hosts[0].regx: field required"],
        ),
        ("a: [\n", ["is not valid YAML: line 2"]),
        ("- 1\n", ["must be a mapping at the top level"]),
        ("1: 2\n", ["[1]: keys should be strings"]),
        ("storage:\n  durableDelay: -1\n", ["storage.durableDelay:", "-1"]),
    ],
)
def test_each_config_error_is_one_line_naming_the_key_and_the_file(
    tmp_path: Path, text: str, says: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_daemon_config(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    for part in says:
        assert part in message, message
    assert "pydantic" not in message and "errors.pydantic.dev" not in message


def test_several_errors_share_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "upload:\n  bogusKey: 1\n  concurrentPieceCount: many\n")
    with pytest.raises(ConfigError) as info:
        load_daemon_config(path)
    message = str(info.value)
    assert "\n" not in message and "upload.bogusKey" in message and "upload.concurrentPieceCount" in message


def test_a_bad_override_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^invalid configuration: server\.nope: unknown key$"):
        load_scheduler_config(None, {"server": {"nope": 1}})


def test_the_daemon_command_exits_2_with_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "upload:\n  bogusKey: 1\n")
    res = subprocess.run(
        [sys.executable, "-m", "damselfly", "daemon", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2
    expected = f"damselfly daemon: invalid configuration in {path}: upload.bogusKey: unknown key"
    assert res.stderr.strip().splitlines() == [expected], res.stderr
