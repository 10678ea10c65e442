"""``bench relay`` end to end on tiny sizes: every field reported, every byte relayed (no timing)."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from damselfly.testbed import kernel_relay
from damselfly.testbed.relay import RelayBench, find_task_ids, human_summary, run_relay
from damselfly.units import MiB


@pytest.mark.timeout(300)
def test_relay_smoke() -> None:
    size = 6 * MiB + 12345  # pieces of the task's length and a short last one
    result = run_relay(size, children=[1, 2], runs=1, say=lambda _msg: None)
    assert result.ok, result.error
    data = result.to_json()
    kinds = sorted((r["kind"], r["children"]) for r in data["rounds"])
    assert kinds == [
        ("damselfly", 1), ("damselfly", 2), ("kernel", 1), ("kernel", 2),
        ("kernel-cut-through", 1), ("kernel-cut-through", 2),
    ]  # fmt: skip
    for r in data["rounds"]:
        assert r["bytes_in"] == size
        assert r["bytes_out"] == r["children"] * size  # every child got every byte (checked by sha256)
        assert r["cpu_s"] > 0
        assert r["user_s"] >= 0 and r["sys_s"] >= 0  # each taken as an after-minus-before
        assert r["gb_per_cpu_s"] == pytest.approx(r["bytes_out"] / 1e9 / r["cpu_s"], rel=1e-2)
        assert r["cpu_s_per_gib"] is not None
    for k in ("1", "2"):
        row = data["summary"][k]
        assert row["damselfly"]["runs"] == row["kernel"]["runs"] == row["kernel-cut-through"]["runs"] == 1
        for ratio in ("damselfly_over_kernel", "damselfly_over_kernel_cut_through"):
            assert row[ratio] is not None and row[ratio] > 0
    assert "k=2:" in human_summary(data) and "cut-through" in human_summary(data)
    assert "user + system" in human_summary(data)
    for k in ("1", "2"):
        for kind in ("damselfly", "kernel", "kernel-cut-through"):
            part = data["summary"][k][kind]
            assert part["user_s"] is not None and part["sys_s"] is not None


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


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cut_through", [False, True])
def test_kernel_relay_sends_every_byte_to_every_child(tmp_path: Path, cut_through: bool) -> None:
    """Both kernel relays, in this process: each child gets the parent's bytes in order."""
    size, k = 3 * MiB + 777, 3
    data = os.urandom(size)
    got: list[bytearray] = [bytearray() for _ in range(k)]
    with socket.create_server(("127.0.0.1", 0)) as parent, socket.create_server(("127.0.0.1", 0)) as listener:

        def child(i: int) -> None:
            with socket.create_connection(listener.getsockname()) as s:
                while chunk := s.recv(1 << 16):
                    got[i] += chunk

        def feed() -> None:
            conn, _ = parent.accept()
            with conn:
                for at in range(0, size, 100_000):  # in steps, as a parent's sends arrive
                    conn.sendall(data[at : at + 100_000])

        threads = [threading.Thread(target=child, args=(i,)) for i in range(k)] + [
            threading.Thread(target=feed)
        ]
        for t in threads:
            t.start()
        result = kernel_relay.relay(
            parent.getsockname(), size, k, tmp_path / "out.bin", listener, cut_through=cut_through
        )
        for t in threads:
            t.join(30)
    assert result["bytes_in"] == size and result["bytes_out"] == k * size
    assert result["user_s"] >= 0 and result["sys_s"] >= 0
    assert all(bytes(g) == data for g in got)
    assert (tmp_path / "out.bin").read_bytes() == data


@pytest.mark.timeout(60)
def test_a_short_parent_ends_the_cut_through_senders(tmp_path: Path) -> None:
    """The parent closes early: the relay sends on what landed and raises (it joins its
    sending threads first, so one left waiting would hang it past the timeout)."""
    with socket.create_server(("127.0.0.1", 0)) as parent, socket.create_server(("127.0.0.1", 0)) as listener:
        kid = socket.create_connection(listener.getsockname())

        def feed() -> None:
            conn, _ = parent.accept()
            with conn:
                conn.sendall(b"x" * 1000)

        feeder = threading.Thread(target=feed)
        feeder.start()
        with pytest.raises(ConnectionError, match="parent closed after 1000"):
            kernel_relay.relay(
                parent.getsockname(), 5000, 1, tmp_path / "out.bin", listener, cut_through=True
            )
        feeder.join(10)
        assert kid.recv(5000) == b"x" * 1000  # what had landed went on
        kid.close()
