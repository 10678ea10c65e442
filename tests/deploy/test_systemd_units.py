"""deploy/systemd: units that ``systemd-analyze verify`` accepts without a word, hardened (its
offline ``security`` score), starting damselfly with flags its CLI knows."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
NAMES = ["damselfly-scheduler.service", "damselfly-daemon.service", "damselfly-seed.service"]
INSTALLED = "/usr/local/bin/damselfly"
# systemd-analyze security's exposure, 0 (locked down) to 10; "OK" is below 3.
MAX_EXPOSURE = 2.0
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "SystemCallArchitectures": "native",
}


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is not installed (.ci/run installs systemd)")
    return path


def directives(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit, each key with all its values in order."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    """The units with ExecStart pointing at an executable that runs this tree's damselfly."""
    wrapper = tmp_path / "bin" / "damselfly"
    wrapper.parent.mkdir()
    wrapper.write_text(
        f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(ROOT / 'src'))} "
        f'exec {shlex.quote(sys.executable)} -m damselfly "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    units = tmp_path / "units"
    units.mkdir()
    for name in NAMES:
        text = (UNITS / name).read_text()
        assert INSTALLED in text, name
        (units / name).write_text(text.replace(INSTALLED, str(wrapper)))
    return units


def test_systemd_analyze_verify_accepts_every_unit_without_a_warning(rendered: Path) -> None:
    units = [str(rendered / n) for n in NAMES]
    out = subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", *units],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    # verify exits 0 on an unknown key, only warning about it: any output is a failure here
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out.stdout + out.stderr


def test_verify_catches_a_misspelt_option_and_a_missing_binary(rendered: Path) -> None:
    """The check above can fail: what a broken unit looks like to it."""
    unit = rendered / "damselfly-scheduler.service"
    text = unit.read_text()
    unit.write_text(text.replace("NoNewPrivileges=", "NoNewPrivilege="))
    out = subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", str(unit)], capture_output=True, text=True, check=False
    )
    assert "NoNewPrivilege" in out.stderr
    unit.write_text(re.sub(r"ExecStart=\S+", "ExecStart=/nonexistent/damselfly", text))
    out = subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", str(unit)], capture_output=True, text=True, check=False
    )
    assert out.returncode != 0 and "/nonexistent/damselfly" in out.stderr


@pytest.mark.parametrize("name", NAMES)
def test_each_unit_is_hardened(rendered: Path, name: str) -> None:
    d = directives((UNITS / name).read_text())
    for key, value in HARDENING.items():
        assert d.get(key) == [value], f"{name}: {key}={d.get(key)}"
    assert "@system-service" in d["SystemCallFilter"]
    out = subprocess.run(
        [_systemd_analyze(), "security", "--offline=yes", f"--threshold={int(MAX_EXPOSURE * 10)}",
         str(rendered / name)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout)
    assert level is not None, out.stdout + out.stderr
    assert out.returncode == 0 and float(level.group(1)) <= MAX_EXPOSURE, out.stdout


@pytest.mark.parametrize("name", NAMES)
def test_execstart_runs_a_command_damselfly_knows_with_config_and_store(rendered: Path, name: str) -> None:
    d = directives((rendered / name).read_text())
    (exec_start,) = d["ExecStart"]
    argv = shlex.split(exec_start)
    role = name.removeprefix("damselfly-").removesuffix(".service")
    assert argv[argv.index("--config") + 1] == f"/etc/damselfly/{role}.yaml"
    assert ("--seed" in argv) == (role == "seed")
    if role != "scheduler":
        store = argv[argv.index("--data-dir") + 1]
        assert d["ReadWritePaths"] == [store] and store == f"/var/lib/{d['StateDirectory'][0]}"
        assert d["User"] == ["damselfly"]
    # click rejects an unknown flag before it looks at --help
    out = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    bad = subprocess.run([*argv, "--no-such-flag", "--help"], capture_output=True, text=True, check=False)
    assert bad.returncode != 0


def test_the_sysusers_file_makes_the_user_the_daemon_runs_as() -> None:
    lines = [
        line.split()
        for line in (UNITS / "damselfly.sysusers.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert [(w[0], w[1]) for w in lines] == [("u", "damselfly")]
    assert os.path.basename(lines[0][-1]) == "damselfly"
