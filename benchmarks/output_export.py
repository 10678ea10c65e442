"""What each way of putting a finished task at dfget's output costs, for one large file.

The output must not be the store's copy (a user's edit in place would change
what the daemon serves), so the candidates are measured against the hard link
that was used before, in the same run, on the same file system:

* ``link``: ``os.link`` (the old way: the output *is* the store's file);
* ``reflink``: ``ioctl(FICLONE)``, a copy-on-write clone (XFS, btrfs; ``unsupported`` elsewhere);
* ``copy``: ``copy_file_range`` (in-kernel; what the daemon falls back to) then fsync;
* ``check``: keeping the link but reading the content back and checking every
  piece's crc32 on each local hit (what "read-only content plus a check" costs).

The content file is written first and its pages dropped from the cache
(``posix_fadvise(DONTNEED)`` after an fsync), so ``copy`` and ``check`` read
from the disk as a daemon's older task would; ``--warm`` keeps it cached.

Usage: ``python benchmarks/output_export.py --dir /var/lib/damselfly --size 1GiB``
(``--dir`` on the file system to measure; the files are removed after). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from damselfly.daemon.download import output
from damselfly.units import parse_size

PIECE = 16 * 1024 * 1024


def _write(path: Path, size: int) -> None:
    block = os.urandom(PIECE)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())


def _drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _check(path: Path) -> None:
    buf = bytearray(PIECE)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            zlib.crc32(memoryview(buf)[:n])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/var/tmp", help="a folder on the file system to measure")
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--warm", action="store_true", help="keep the content in the page cache")
    args = ap.parse_args()
    root = Path(args.dir) / f".damselfly-export-bench-{os.getpid()}"
    root.mkdir(parents=True)
    size = parse_size(args.size)
    content = root / "content"
    results: dict[str, object] = {"size": size, "dir": str(args.dir), "warm": args.warm}
    try:
        _write(content, size)
        for way in ("link", "reflink", "copy", "check"):
            if not args.warm:
                _drop_cache(content)
            out = root / f"out-{way}"
            began = time.perf_counter()
            if way == "link":
                os.link(content, out)
            elif way == "reflink":
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    if not output.reflink(content, fd):
                        results[way] = "unsupported"
                        continue
                    os.fsync(fd)
                finally:
                    os.close(fd)
            elif way == "copy":
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    output.copy_content(content, fd)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            else:
                _check(content)
            results[way] = round(time.perf_counter() - began, 4)
        link = results["link"]
        for way in ("reflink", "copy", "check"):
            if isinstance(results[way], float) and isinstance(link, float):
                results[f"{way}_minus_link_s"] = round(float(results[way]) - link, 4)  # type: ignore[arg-type]
    finally:
        for p in root.iterdir():
            p.unlink()
        root.rmdir()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
