"""The machine under a benchmark: what ``/proc`` says about a process, and memory made resident.

Why a module: the benchmarks report what the scheduler and daemons cost
(``bench scheduler``'s RSS and CPU, ``benchmarks/cold_dfget.py``'s peak RSS), and
they need the machine's memory in a known state before they measure. Starting and
stopping those processes is the product's own (:mod:`damselfly.runtime`); measuring
them is the testbed's.

**Resident memory** (:func:`resident_memory`). Why: on a virtual machine whose balloon
device reports free pages to the hypervisor (Linux *free page reporting*,
``virtio_balloon``), a page that stayed free for a few seconds is handed back, and the next
write into it faults it in again from the host. Measured on the project machine (256 MiB
written with ``pwrite`` into a new file, CPU seconds of the writer): **0.04** when the pages
had been freed a moment before, **0.62-0.67** once they had been free for 10 s or more (the
kernel's ``page_reporting`` counters went up by gigabytes a minute). Which process pays that
~2.5 CPU-s per GiB depends on when the pages it gets were freed, not on its own work: the
same relay round cost a daemon 0.53-0.96 CPU-s, and a kernel relay that truncates and
rewrites one file reused warm pages while the daemon's new task files drew cold ones. A
server, or a VM without reporting, never pays it.

So a benchmark, for its run (:func:`resident_memory`):

* holds reporting off where the kernel lets it (``page_reporting.min_free_ms``: a
  page is reported only after it has been free that long; and ``max_waiting_mib``,
  past which free pages are reported however recent: 1024 here, so of 4 GiB faulted
  in only the first ~1.2 GiB stayed resident; both restored afterwards);
* drops the page cache (after ``sync``), so the run starts from the same state each time;
* faults in ``warm`` bytes of anonymous memory and frees them, so what the run writes
  lands in pages that are already resident (the allocator hands out unreported pages
  before reported ones).

``MemoryPrep.to_json`` says what was done, so a figure always names its memory.
Without root or without the parameter the run goes on as the machine gives it, and the
JSON says that too.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..units import GiB, MiB

CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_split(pid: int) -> tuple[float, float] | None:
    """User and system CPU seconds of a live process (its threads included); None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process (its threads included); None if it is gone."""
    split = process_cpu_split(pid)
    return None if split is None else split[0] + split[1]


def _status_kib(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_bytes(pid: int) -> int | None:
    """Resident set size (VmRSS) of a live process; None if unknown."""
    return _status_kib(pid, "VmRSS:")


def peak_rss_bytes(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of a live process; None if unknown."""
    return _status_kib(pid, "VmHWM:")


REPORTING = Path("/sys/module/page_reporting/parameters")
HOLD_MS = 300_000  # the largest min_free_ms the project machine's kernel takes (5 minutes)
WAITING_MIB = 1 << 20  # max_waiting_mib while held: no cap (the machine's default, 1024, reports the rest)
DEFAULT_WARM = 6 * GiB
_TOUCH_STEP = 64 * MiB
_PAGE = mmap.PAGESIZE


@dataclass
class MemoryPrep:
    """What :func:`resident_memory` did before the run."""

    mode: str  # "resident" or "as-is"
    reporting: str = "absent"  # "absent", "held off", or why it could not be
    hold_ms: int = 0
    waiting_mib: int = 0  # max_waiting_mib while held (0: left as it was)
    cache_dropped: bool = False
    warmed_bytes: int = 0
    warm_cpu_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "page_reporting": self.reporting,
            "reporting_hold_ms": self.hold_ms,
            "reporting_max_waiting_mib": self.waiting_mib,
            "page_cache_dropped": self.cache_dropped,
            "warmed_bytes": self.warmed_bytes,
            "warm_cpu_s": round(self.warm_cpu_s, 2),
        }


MODES = ("resident", "as-is")
MEMORY_HELP = (
    "resident: free page reporting held off, the page cache dropped, memory faulted in first "
    "(testbed/machine.py); as-is: the machine's memory as it is"
)


def memory_mode(value: str) -> bool:
    """A ``--memory`` value: whether it asks for the memory as-is. Raises ValueError otherwise."""
    if value not in MODES:
        raise ValueError(f"--memory {value!r}: choose resident or as-is")
    return value == "as-is"


def describe(data: dict[str, Any]) -> str:
    """One line for a human summary: the memory a run had."""
    if data["mode"] == "as-is":
        return "memory: as the machine gave it"
    return (
        f"memory: resident (page reporting {data['page_reporting']}, page cache "
        f"{'dropped' if data['page_cache_dropped'] else 'not dropped'}, "
        f"{data['warmed_bytes'] / GiB:.1f} GiB faulted in first)"
    )


def warm_bytes(wanted: int, meminfo: Path = Path("/proc/meminfo")) -> int:
    """``wanted``, but at most half of what the machine has available."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return max(0, min(wanted, int(line.split()[1]) * 1024 // 2))
    except (OSError, ValueError, IndexError):
        pass
    return 0


def touch(nbytes: int) -> None:
    """Fault in ``nbytes`` of anonymous memory, a write per page, then give it back."""
    zeros = bytes(_TOUCH_STEP)
    with mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) as area:
        for off in range(0, nbytes, _TOUCH_STEP):
            n = min(_TOUCH_STEP, nbytes - off)
            area[off : off + n] = zeros[:n]


def drop_page_cache(control: Path = Path("/proc/sys/vm/drop_caches")) -> bool:
    """``sync``, then drop the clean page cache; whether it could (root only)."""
    os.sync()
    try:
        control.write_text("1\n")
    except OSError:
        return False
    return True


def write_param(param: Path, value: int | str) -> None:
    """Write a kernel parameter (a value over its cap: OSError EINVAL)."""
    param.write_text(f"{value}\n")


def _hold_reporting(param: Path, prep: MemoryPrep, restore: dict[Path, str]) -> bool:
    """Set ``min_free_ms`` to :data:`HOLD_MS` (or the largest value under it the kernel takes);
    whether it could. The value to put back is in ``restore`` before anything is written."""
    try:
        restore[param] = param.read_text().strip()
    except OSError:
        prep.reporting = "absent"
        return False
    hold = HOLD_MS
    while hold >= 1000:
        try:
            write_param(param, hold)
        except PermissionError:
            prep.reporting = "not held off: no permission"
            return False
        except OSError:  # EINVAL: over the kernel's cap
            hold //= 2
            continue
        prep.reporting, prep.hold_ms = "held off", hold
        return True
    prep.reporting = "not held off: the kernel refused every value"
    return False


@contextlib.contextmanager
def resident_memory(
    warm: int = DEFAULT_WARM,
    *,
    as_is: bool = False,
    reporting: Path = REPORTING,
    drop_control: Path = Path("/proc/sys/vm/drop_caches"),
) -> Iterator[MemoryPrep]:
    """For the ``with`` block: free page reporting held off, the page cache dropped and ``warm``
    bytes (at most half of what is available) faulted in and freed; everything put back after.
    ``as_is``: nothing done, the block runs on the memory as the machine gives it."""
    prep = MemoryPrep(mode="as-is" if as_is else "resident")
    if as_is:
        prep.reporting = "untouched"
        yield prep
        return
    # What was changed goes back whatever ends the run: a failure, Ctrl-C, or a SIGTERM
    # (`timeout`, a cancelled job), which would otherwise end the process with the machine
    # left as the run set it. A second signal while it goes back is ignored.
    from ..runtime.supervisor import ignore_signals, interrupt_on_signals

    main = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    restore: dict[Path, str] = {}
    with interrupt_on_signals() if main else contextlib.nullcontext():
        try:
            param = reporting / "min_free_ms"
            waiting = reporting / "max_waiting_mib"
            if param.exists() and _hold_reporting(param, prep, restore) and waiting.exists():
                # Past this many MiB of free pages waiting, the kernel reports them however recent.
                with contextlib.suppress(OSError):
                    restore[waiting] = waiting.read_text().strip()
                    write_param(waiting, WAITING_MIB)
                    prep.waiting_mib = WAITING_MIB
            prep.cache_dropped = drop_page_cache(drop_control)
            prep.warmed_bytes = warm_bytes(warm) // _PAGE * _PAGE
            began = time.process_time()
            if prep.warmed_bytes:
                touch(prep.warmed_bytes)
            prep.warm_cpu_s = time.process_time() - began
            yield prep
        finally:
            if main:
                ignore_signals()
            for path, value in restore.items():
                with contextlib.suppress(OSError):
                    write_param(path, value)
