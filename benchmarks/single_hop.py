"""One hop on loopback: a child pulls a finished task from one parent, vs curl from nginx.

What is measured, in the same run, median of ``--runs``:

* **damselfly**: a parent process (PieceStore + PieceServer, sendfile) holds a
  finished task; this process pulls every piece with a PieceConnectionPool
  (``--concurrency`` pieces in flight), writes them into a fresh PieceStore on
  the same disk, records each piece, and ``mark_succeeded`` fsyncs the content.
* **nginx**: nginx (sendfile on) serves the very same content file; ``curl``
  writes it to a file in the same directory, which is then fsynced.

Both read the source from the page cache (warmed once before the runs) and
both pay for writing to disk and fsync inside the timed window. The order of
the two alternates between runs, outputs are deleted between runs, and
``sync`` runs (untimed) before each measurement. Page
caches are not dropped (that would need root and would slow the source side
of both equally). Prints JSON: both throughputs, the ratio (target >= 0.8).

With ``--tls`` a third contender runs in the same alternation:

* **damselfly over mTLS**: the same pull from a second parent process whose
  piece server speaks Vortex over TLS (certificates made in the temp dir with
  ``damselfly.security.certs``, both sides verified); reported as ``tls_MBps`` and
  ``tls_ratio`` (over mTLS / plain TCP, target >= 0.6).

Usage: ``python benchmarks/single_hop.py --size 1GiB [--tls]`` (needs ``nginx``
and ``curl``: ``apt-get install -y nginx-light curl``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from damselfly.config import TLSConfig
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.daemon.transfer.piece_client import PieceConnectionPool
from damselfly.daemon.transfer.piece_server import PieceServer
from damselfly.domain import PieceInfo
from damselfly.ids import task_id
from damselfly.pieces import piece_count, piece_length_for, piece_span
from damselfly.security.certs import issue, make_ca
from damselfly.security.tls import TLSFiles, client_ssl_context, load_tls, server_ssl_context
from damselfly.units import MiB, parse_size

TID = task_id("http://bench/single_hop")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_parent(root: Path, size: int, piece_length: int) -> Path:
    """A finished task of ``size`` bytes (incompressible) in a PieceStore at ``root``."""
    store = PieceStore(root)
    store.create_task(TID, url="http://bench/single_hop")
    store.set_content_length(TID, size, piece_length)
    block = os.urandom(16 * MiB)
    fd = store.open_write_fd(TID)
    try:
        for offset in range(0, size, len(block)):
            os.pwrite(fd, block[: min(len(block), size - offset)], offset)
        buf = bytearray(piece_length)
        for n in range(piece_count(size, piece_length)):
            span = piece_span(n, size, piece_length)
            view = memoryview(buf)[: span.length]
            os.preadv(fd, [view], span.offset)
            store.finish_piece(TID, PieceInfo(n, span.offset, span.length, f"crc32:{zlib.crc32(view)}"))
    finally:
        os.close(fd)
    store.mark_succeeded(TID)
    store.close()
    return store.content_path(TID)


def warm(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(8 * MiB):
            pass


# ------------------------------------------------------------------ parent process


def make_tls(tmp: Path) -> TLSFiles:
    """A CA and a certificate for 127.0.0.1 in ``tmp/tls``, loaded (the parent and the child share it)."""
    make_ca(tmp / "tls" / "ca")
    host = issue(tmp / "tls" / "ca", "loopback", ips=["127.0.0.1"], out=tmp / "tls" / "host")
    files = load_tls(TLSConfig(ca_cert=str(host.ca_cert), cert=str(host.cert), key=str(host.key)))
    assert files is not None
    return files


async def serve(root: Path, port: int, ready: Path, tls_dir: str) -> None:
    store = PieceStore(root)
    server = PieceServer(store)
    context = None
    if tls_dir:
        d = Path(tls_dir)
        files = load_tls(
            TLSConfig(ca_cert=str(d / "ca.crt"), cert=str(d / "loopback.crt"), key=str(d / "loopback.key"))
        )
        context = server_ssl_context(files) if files else None
    await server.start("127.0.0.1", port, ssl=context)
    fd = os.open(ready, os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.close()


def start_parent(root: Path, tmp: Path, tls: TLSFiles | None = None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    ready = tmp / ("parent-tls.ready" if tls else "parent.ready")
    argv = [sys.executable, __file__, "--serve", str(root), "--port", str(port), "--ready", str(ready)]
    if tls is not None:
        argv += ["--tls-dir", str(tls.cert.parent)]
    proc = subprocess.Popen(argv)
    deadline = time.monotonic() + 20
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the parent piece server did not start")
        time.sleep(0.05)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------ the two contenders


async def pull(
    port: int, root: Path, size: int, piece_length: int, concurrency: int, tls: ssl.SSLContext | None = None
) -> float:
    """Seconds for the child to pull, store, record and fsync the whole task."""
    store = PieceStore(root)
    pool = PieceConnectionPool(max_idle_per_parent=concurrency, tls=tls)
    start = time.perf_counter()
    store.create_task(TID)
    store.set_content_length(TID, size, piece_length)
    fd = store.open_write_fd(TID)
    numbers = iter(range(piece_count(size, piece_length)))

    async def worker() -> None:
        for n in numbers:
            span = piece_span(n, size, piece_length)
            info = await pool.download_piece("127.0.0.1", port, TID, n, fd, span.offset, span.length)
            store.finish_piece(TID, info)

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        os.close(fd)
        await pool.close()
    store.mark_succeeded(TID)
    elapsed = time.perf_counter() - start
    store.delete_task(TID)
    store.close()
    return elapsed


def curl(port: int, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["curl", "-sSf", "-o", str(out), f"http://127.0.0.1:{port}/content"],
        check=True,
    )
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    out.unlink()
    return elapsed


def start_nginx(tmp: Path, content: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    www = tmp / "www"
    www.mkdir()
    os.link(content, www / "content")
    conf = tmp / "nginx.conf"
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = {name: tmp / name for name in ("client", "proxy", "fastcgi", "uwsgi", "scgi")}
    conf.write_text(
        f"""{user}daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {temp["client"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    server {{
        listen 127.0.0.1:{port};
        root {www};
        location / {{ }}
    }}
}}
"""
    )
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "nginx-error.log")])
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"nginx did not start; see {tmp / 'nginx-error.log'}") from None
            time.sleep(0.05)
    return proc, port


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--piece-length", default="")
    parser.add_argument("--dir", default="", help="work directory (default: a temp dir)")
    parser.add_argument("--serve", default="", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--ready", default="", help=argparse.SUPPRESS)
    parser.add_argument("--tls-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--tls", action="store_true", help="also pull over mTLS (Vortex over TLS)")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(Path(args.serve), args.port, Path(args.ready), args.tls_dir))
        return
    for tool in ("nginx", "curl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install -y nginx-light curl")

    size = parse_size(args.size)
    piece_length = parse_size(args.piece_length) if args.piece_length else piece_length_for(size)
    tmp = Path(tempfile.mkdtemp(prefix="single_hop-", dir=args.dir or None))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        content = make_parent(tmp / "parent", size, piece_length)
        warm(content)
        parent, parent_port = start_parent(tmp / "parent", tmp)
        procs.append(parent)
        nginx, nginx_port = start_nginx(tmp, content)
        procs.append(nginx)
        tls_files = make_tls(tmp) if args.tls else None
        tls_port = 0
        if tls_files is not None:
            tls_parent, tls_port = start_parent(tmp / "parent", tmp, tls_files)
            procs.append(tls_parent)
        ours: list[float] = []
        theirs: list[float] = []
        over_tls: list[float] = []
        contenders = ["damselfly", "nginx"] + (["damselfly-tls"] if tls_files else [])
        for run in range(args.runs):
            order = contenders if run % 2 == 0 else contenders[::-1]
            for who in order:
                os.sync()  # the previous contender's writeback is not charged to this one
                if who == "damselfly":
                    ours.append(
                        asyncio.run(pull(parent_port, tmp / "child", size, piece_length, args.concurrency))
                    )
                elif who == "damselfly-tls" and tls_files is not None:
                    context = client_ssl_context(tls_files)
                    over_tls.append(
                        asyncio.run(
                            pull(tls_port, tmp / "child", size, piece_length, args.concurrency, context)
                        )
                    )
                else:
                    theirs.append(curl(nginx_port, tmp / "curl.out"))
        ours_bps = size / statistics.median(ours)
        theirs_bps = size / statistics.median(theirs)
        tls_result = {}
        if over_tls:
            tls_bps = size / statistics.median(over_tls)
            tls_result = {
                "tls_seconds": [round(x, 3) for x in over_tls],
                "tls_MBps": round(tls_bps / 1e6, 1),
                "tls_ratio": round(tls_bps / ours_bps, 3),
                "tls_target_ratio": 0.6,
            }
        print(
            json.dumps(
                {
                    "measured": "one loopback hop; source in page cache; output on the same disk, fsynced",
                    "size_bytes": size,
                    "piece_length": piece_length,
                    "concurrency": args.concurrency,
                    "runs": args.runs,
                    "damselfly_seconds": [round(x, 3) for x in ours],
                    "nginx_curl_seconds": [round(x, 3) for x in theirs],
                    "damselfly_MBps": round(ours_bps / 1e6, 1),
                    "nginx_curl_MBps": round(theirs_bps / 1e6, 1),
                    "ratio": round(ours_bps / theirs_bps, 3),
                    "target_ratio": 0.8,
                    **tls_result,
                },
                indent=2,
            )
        )
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
