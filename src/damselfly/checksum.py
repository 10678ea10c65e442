"""The crc32 (IEEE) that every piece digest uses, as fast as this machine allows.

Every byte of a download is checksummed once per hop, so this is on the hot
path twice per peer (receive and, for a seed, the origin fetch). zlib-ng's
SIMD crc32 ran at ~14.6 GB/s here against 1.9 GB/s for the standard library's
zlib (64 MiB buffers; see BENCHMARKS.md); both compute the same value, so the
standard one stays as the fallback where the wheel is missing.
"""

from __future__ import annotations

from collections.abc import Callable

try:
    from zlib_ng.zlib_ng import crc32 as _crc32
except ImportError:  # pragma: no cover - the fallback computes the same value
    from zlib import crc32 as _crc32

crc32: Callable[[bytes | bytearray | memoryview, int], int] = _crc32  # type: ignore[assignment,unused-ignore]
