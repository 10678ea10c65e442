"""What ``/proc`` says about a running process: CPU seconds, resident and peak memory.

Why a module: the benchmarks report what the scheduler and daemons cost
(``bench scheduler``'s RSS and CPU, ``benchmarks/cold_dfget.py``'s peak RSS).
Starting and stopping those processes is the product's own
(:mod:`damselfly.runtime`); measuring them is the testbed's.
"""

from __future__ import annotations

import os
from pathlib import Path

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
