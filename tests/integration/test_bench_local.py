"""``damselfly bench local``: a real swarm; the origin serves the file about once."""

from __future__ import annotations

import json
import subprocess

import pytest

from damselfly.runtime.children import python_module_command
from damselfly.units import MiB

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bench_local_three_peers() -> None:
    r = subprocess.run(
        python_module_command("damselfly", "bench", "local", "--peers", "3", "--size", "16MiB", "--json"),
        capture_output=True,
        text=True,
        timeout=110,
        stdin=subprocess.DEVNULL,
    )
    assert r.stdout.strip(), r.stderr
    result = json.loads(r.stdout)
    assert result["peers"] == 3 and result["size_bytes"] == 16 * MiB
    assert len(result["completion_s"]) == 3 and all(t is not None for t in result["completion_s"])
    assert result["exit_codes"] == [0, 0, 0], r.stderr
    assert result["all_digests_ok"] is True
    assert result["origin_bytes"] <= 1.01 * 16 * MiB, result
    assert result["origin_requests"] >= 1
    assert r.returncode == 0
