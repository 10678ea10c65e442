"""``bench relay`` end to end on tiny sizes: every field reported, every byte relayed (no timing)."""

from __future__ import annotations

import pytest

from damselfly.testbed.relay import human_summary, run_relay
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
