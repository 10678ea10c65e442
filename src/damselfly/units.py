"""Units, so defaults read as quantities (``4 * MiB``, ``30 * SECONDS``); sizes as people write them."""

from __future__ import annotations

import re

BYTES = 1
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
SECONDS = 1.0
MILLISECONDS = 0.001
MINUTES = 60.0
HOURS = 3600.0

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_FACTORS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": KiB,
    "kib": KiB,
    "m": 1000**2,
    "mb": 1000**2,
    "mi": MiB,
    "mib": MiB,
    "g": 1000**3,
    "gb": 1000**3,
    "gi": GiB,
    "gib": GiB,
    "t": 1000**4,
    "tb": 1000**4,
    "ti": 1024**4,
    "tib": 1024**4,
}


def parse_size(text: str | int) -> int:
    """Parse ``"1GiB"``, ``"256MiB"``, ``"10MB"`` or a plain byte count."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(text)
    if not m or (m.group(2) or "").lower() not in _FACTORS:
        raise ValueError(f"not a size: {text!r} (try 1GiB, 256MiB, 4096)")
    return int(float(m.group(1)) * _FACTORS[(m.group(2) or "").lower()])


def human_size(n: float) -> str:
    """``512 B``, ``16.0 MiB``: a byte count for people (powers of 1024, one decimal above bytes)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover
