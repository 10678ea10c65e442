"""``damselfly up``: starts the embedded cluster, serves a dfget, stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from damselfly.runtime.children import (
    ChildProcess,
    pid_alive,
    python_module_command,
    read_ready_file,
    spawn,
    stop_all,
)
from helpers.processes import Procs, random_file, run_dfget, sha256_of
from helpers.wait import wait_until

pytestmark = pytest.mark.integration


def _start_up(root: Path) -> tuple[ChildProcess, dict[str, Any]]:
    ready = root / "up.ready.json"
    argv = python_module_command(
        "damselfly", "up", "--data-dir", str(root / "df"),
        "--scheduler-port", "0", "--scheduler-metrics-port", "0",
        "--upload-port", "0", "--piece-port", "0", "--metrics-port", "0",
        "--ready-file", str(ready),
    )  # fmt: skip
    up = spawn("up", argv, log_path=root / "up.log", ready_file=ready)
    return up, up.wait_ready(90)


@pytest.fixture
def up_proc(short_tmp: Path) -> Iterator[tuple[ChildProcess, dict[str, Any]]]:
    up, info = _start_up(short_tmp)
    try:
        yield up, info
    finally:
        stop_all([up], grace=20)
        # Whatever happened, no child of `up` may outlive the test.
        for pid in info["children"].values():
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_up_serves_dfget_and_stops_cleanly_on_sigint(
    up_proc: tuple[ChildProcess, dict[str, Any]], procs: Procs, short_tmp: Path
) -> None:
    up, info = up_proc
    root = short_tmp / "df"
    assert info["socket"] == str(root / "dfdaemon.sock")
    assert set(info["children"]) == {"scheduler", "seed", "peer"}
    assert info["seed"]["host_id"] != info["peer"]["host_id"]
    for name in ("scheduler", "seed", "peer"):
        assert (root / "logs" / f"{name}.log").exists()

    origin_dir = short_tmp / "origin"
    origin_dir.mkdir()
    digest = random_file(origin_dir / "f.bin", 5 * 1024 * 1024)
    origin = procs.origin(origin_dir)
    r = run_dfget(origin.url("f.bin"), short_tmp / "f.bin", root / "dfdaemon.sock")
    assert r.returncode == 0, r.stderr + up.log_tail(40)
    assert sha256_of(short_tmp / "f.bin") == digest

    os.kill(up.pid, signal.SIGINT)
    assert up.popen.wait(timeout=60) == 0, up.log_tail(40)
    for name, pid in info["children"].items():
        assert not pid_alive(pid), f"{name} (pid {pid}) outlived `damselfly up`"
    banner = (short_tmp / "up.log").read_text()
    assert f"dfget -e {root / 'dfdaemon.sock'}" in banner
    assert read_ready_file(short_tmp / "up.ready.json") is None  # removed on exit


def test_up_names_a_dead_child_and_stops_the_rest(up_proc: tuple[ChildProcess, dict[str, Any]]) -> None:
    up, info = up_proc
    os.kill(info["children"]["seed"], signal.SIGKILL)
    code = up.popen.wait(timeout=60)
    assert code != 0
    text = up.log_path.read_text()
    assert "seed exited" in text and "seed.log" in text
    children = info["children"]
    # The children were reaped by `up`; this only waits for /proc to agree.
    wait_until(
        lambda: not any(pid_alive(p) for p in children.values()), f"no child of `up` outlived it: {children}"
    )


def test_up_refuses_a_socket_path_that_is_too_long(short_tmp: Path) -> None:
    long_dir = short_tmp / ("d" * 120)
    r = subprocess.run(
        python_module_command("damselfly", "up", "--data-dir", str(long_dir)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "too long" in r.stderr
