"""``bench relay`` end to end on tiny sizes: every field reported, every byte relayed (no timing)."""

from __future__ import annotations

import pytest

from damselfly.testbed.relay import RelayBench, find_task_ids, human_summary, run_relay
from damselfly.units import MiB


@pytest.mark.timeout(300)
def test_relay_smoke() -> None:
    size = 6 * MiB + 12345  # pieces of the task's length and a short last one
    result = run_relay(size, children=[1, 2], runs=1, say=lambda _msg: None)
    assert result.ok, result.error
    data = result.to_json()
    kinds = sorted((r["kind"], r["children"]) for r in data["rounds"])
    assert kinds == [("damselfly", 1), ("damselfly", 2), ("kernel", 1), ("kernel", 2)]
    for r in data["rounds"]:
        assert r["bytes_in"] == size
        assert r["bytes_out"] == r["children"] * size  # every child got every byte (checked by sha256)
        assert r["cpu_s"] > 0
        assert r["gb_per_cpu_s"] == pytest.approx(r["bytes_out"] / 1e9 / r["cpu_s"], rel=1e-2)
        assert r["cpu_s_per_gib"] is not None
    for k in ("1", "2"):
        row = data["summary"][k]
        assert row["damselfly"]["runs"] == row["kernel"]["runs"] == 1
        assert row["damselfly_over_kernel"] is not None and row["damselfly_over_kernel"] > 0
    assert "k=2:" in human_summary(data)


@pytest.mark.timeout(300)
def test_a_round_leaves_no_task_behind() -> None:
    """As the kernel's round unlinks its file, each Damselfly round drops its task on the parent
    and the relay, so the next round writes into pages this one freed."""
    bench = RelayBench(2 * MiB, lambda _msg: None)
    try:
        bench.start()
        for k in (1, 2):
            assert bench.damselfly_round(k).ok
            assert find_task_ids(bench.root / "seed") == set()
            assert (bench.root / "relay" / "tasks").is_dir()  # the relay's store is where we look
            assert find_task_ids(bench.root / "relay") == set()
    finally:
        bench.close()
