"""The benchmarks' memory preparation: reporting held off and put back, the cache dropped, pages warmed."""

from __future__ import annotations

import errno
import os
import resource
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from damselfly.runtime.supervisor import Interrupted
from damselfly.testbed import machine as memory
from damselfly.units import GiB, MiB


def _reporting_dir(tmp_path: Path, value: str = "0") -> Path:
    params = tmp_path / "parameters"
    params.mkdir()
    (params / "min_free_ms").write_text(f"{value}\n")
    return params


def test_reporting_is_held_off_for_the_block_and_put_back(tmp_path: Path) -> None:
    params = _reporting_dir(tmp_path, "250")
    drop = tmp_path / "drop_caches"
    drop.write_text("")
    with memory.resident_memory(MiB, reporting=params, drop_control=drop) as prep:
        assert (params / "min_free_ms").read_text().strip() == str(memory.HOLD_MS)
        assert drop.read_text() == "1\n"
    assert (params / "min_free_ms").read_text().strip() == "250"
    data = prep.to_json()
    assert data["mode"] == "resident"
    assert data["page_reporting"] == "held off" and data["reporting_hold_ms"] == memory.HOLD_MS
    assert data["page_cache_dropped"] is True
    assert data["warmed_bytes"] == MiB
    assert "held off" in memory.describe(data) and "dropped" in memory.describe(data)


def test_the_cap_on_waiting_pages_is_lifted_and_put_back(tmp_path: Path) -> None:
    params = _reporting_dir(tmp_path, "0")
    (params / "max_waiting_mib").write_text("1024\n")
    with memory.resident_memory(0, reporting=params, drop_control=tmp_path / "drop") as prep:
        assert (params / "max_waiting_mib").read_text().strip() == str(memory.WAITING_MIB)
    assert (params / "max_waiting_mib").read_text().strip() == "1024"
    assert prep.to_json()["reporting_max_waiting_mib"] == memory.WAITING_MIB


def test_put_back_even_when_the_run_fails(tmp_path: Path) -> None:
    params = _reporting_dir(tmp_path, "7")
    drop = tmp_path / "drop_caches"
    with pytest.raises(RuntimeError), memory.resident_memory(0, reporting=params, drop_control=drop):
        raise RuntimeError("the benchmark broke")
    assert (params / "min_free_ms").read_text().strip() == "7"


def test_a_hold_over_the_kernels_cap_is_halved_until_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = _reporting_dir(tmp_path, "0")
    real = memory.write_param

    def capped(param: Path, value: int | str) -> None:  # as the kernel answers a value over its cap
        if int(value) > 100_000:
            raise OSError(errno.EINVAL, "Invalid argument")
        real(param, value)

    monkeypatch.setattr(memory, "write_param", capped)
    with memory.resident_memory(0, reporting=params, drop_control=tmp_path / "drop") as prep:
        assert (params / "min_free_ms").read_text().strip() == str(memory.HOLD_MS // 4)
    assert prep.hold_ms == memory.HOLD_MS // 4
    assert (params / "min_free_ms").read_text().strip() == "0"


def test_a_kernel_that_refuses_every_value_is_reported_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = _reporting_dir(tmp_path, "0")

    def refuse(param: Path, value: int | str) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(memory, "write_param", refuse)
    with memory.resident_memory(0, reporting=params, drop_control=tmp_path / "drop") as prep:
        pass
    assert prep.reporting == "not held off: the kernel refused every value"
    assert prep.hold_ms == 0


def test_no_page_reporting_no_change(tmp_path: Path) -> None:
    drop = tmp_path / "drop_caches"
    with memory.resident_memory(0, reporting=tmp_path / "absent", drop_control=drop) as prep:
        pass
    assert prep.reporting == "absent"
    assert prep.cache_dropped  # the cache is dropped all the same


def test_no_root_no_drop(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "drop_caches"  # a write fails as /proc/sys/vm/drop_caches does for a user
    with memory.resident_memory(0, reporting=tmp_path / "absent", drop_control=missing) as prep:
        pass
    assert prep.cache_dropped is False
    assert "not dropped" in memory.describe(prep.to_json())


class _Unhandled(Exception):
    """Raised by the test's own SIGTERM handler: the code under test did not take the signal."""


@pytest.fixture
def sigterm_guard() -> Iterator[None]:
    """A SIGTERM reaching the test's own handler fails the test instead of killing pytest."""

    def unhandled(signum: int, frame: FrameType | None) -> None:
        raise _Unhandled(signum)

    old = signal.signal(signal.SIGTERM, unhandled)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _sigterm_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(1)  # the handler runs before this returns; if it raised nothing, the test fails below


@pytest.mark.usefixtures("sigterm_guard")
def test_a_sigterm_while_warming_up_puts_the_machine_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``timeout`` or a cancelled job stopping a benchmark during its warm-up: the parameters go back."""
    params = _reporting_dir(tmp_path, "0")
    (params / "max_waiting_mib").write_text("1024\n")
    guard = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(memory, "touch", lambda nbytes: _sigterm_self())
    with (
        pytest.raises(Interrupted),
        memory.resident_memory(MiB, reporting=params, drop_control=tmp_path / "d"),
    ):
        raise AssertionError("the block ran although the warm-up was stopped")
    assert (params / "min_free_ms").read_text().strip() == "0"
    assert (params / "max_waiting_mib").read_text().strip() == "1024"
    assert signal.getsignal(signal.SIGTERM) is guard  # the handler that was there before is back


@pytest.mark.usefixtures("sigterm_guard")
def test_a_sigterm_during_the_run_puts_the_machine_back(tmp_path: Path) -> None:
    params = _reporting_dir(tmp_path, "250")
    with pytest.raises(Interrupted), memory.resident_memory(0, reporting=params, drop_control=tmp_path / "d"):
        assert (params / "min_free_ms").read_text().strip() == str(memory.HOLD_MS)
        _sigterm_self()
    assert (params / "min_free_ms").read_text().strip() == "250"


def test_outside_the_main_thread_no_signal_is_taken(tmp_path: Path) -> None:
    params = _reporting_dir(tmp_path, "5")
    before = signal.getsignal(signal.SIGTERM)
    seen: list[object] = []

    def run() -> None:
        with memory.resident_memory(0, reporting=params, drop_control=tmp_path / "d") as prep:
            seen.append(prep.reporting)
            seen.append(signal.getsignal(signal.SIGTERM))

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=30)
    assert seen == ["held off", before]
    assert (params / "min_free_ms").read_text().strip() == "5"


def test_as_is_touches_nothing(tmp_path: Path) -> None:
    params = _reporting_dir(tmp_path, "0")
    drop = tmp_path / "drop_caches"
    with memory.resident_memory(GiB, as_is=True, reporting=params, drop_control=drop) as prep:
        assert (params / "min_free_ms").read_text().strip() == "0"
    assert not drop.exists()
    assert prep.to_json()["mode"] == "as-is" and prep.warmed_bytes == 0
    assert memory.describe(prep.to_json()) == "memory: as the machine gave it"


def test_warming_takes_at_most_half_of_what_is_available(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:    2097152 kB\n")
    assert memory.warm_bytes(4 * GiB, meminfo) == GiB
    assert memory.warm_bytes(MiB, meminfo) == MiB
    assert memory.warm_bytes(GiB, tmp_path / "missing") == 0


def test_touch_faults_pages_in_and_gives_them_back() -> None:
    def rss() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    before = rss()
    memory.touch(96 * MiB + 4096)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt > faults
    assert rss() < before + 32 * MiB  # unmapped again: the pages went back to the free lists


@pytest.mark.parametrize(("value", "as_is"), [("resident", False), ("as-is", True)])
def test_memory_modes(value: str, as_is: bool) -> None:
    assert memory.memory_mode(value) is as_is


def test_a_bad_memory_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="resident or as-is"):
        memory.memory_mode("warm")


@pytest.mark.skipif(
    not (memory.REPORTING / "min_free_ms").exists() or os.geteuid() != 0,
    reason="this kernel has no page_reporting.min_free_ms, or we are not root",
)
def test_this_machines_reporting_is_held_and_restored() -> None:
    param = memory.REPORTING / "min_free_ms"
    old = param.read_text().strip()
    with memory.resident_memory(16 * MiB) as prep:
        assert prep.reporting == "held off"
        assert param.read_text().strip() == str(prep.hold_ms)
    assert param.read_text().strip() == old
