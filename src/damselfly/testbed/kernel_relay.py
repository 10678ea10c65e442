"""The kernel's own relay, as a yardstick for a relaying daemon's CPU per byte.

``python -m damselfly.testbed.kernel_relay --parent HOST:PORT --size N --children K --out FILE``
listens on 127.0.0.1 (its port in the ready file), connects to the parent, and moves
the parent's ``N`` bytes socket -> pipe -> file with ``os.splice`` (no byte enters
user space), then sends the file to each of the ``K`` children that connected with
``os.sendfile``, one thread per child. It writes JSON to ``--result``: its own user +
system CPU seconds over the transfer (``getrusage``), the bytes in and out.

Why a process of its own: its CPU time is then only the relay's, as a daemon's is
(:mod:`damselfly.testbed.relay` runs both on the same bytes). No checksum is taken:
this is the copy alone, the floor a relay that also checks every piece is held to.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import threading
from pathlib import Path

from ..process import write_ready_file
from ..units import MiB

PIPE_SIZE = 1 * MiB
SPLICE_CHUNK = 1 * MiB


def cpu_self_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def splice_in(sock: socket.socket, fd: int, size: int) -> int:
    """``size`` bytes from ``sock`` into ``fd`` from offset 0 through a pipe, in the kernel."""
    r, w = os.pipe()
    try:
        try:
            import fcntl

            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # the default pipe size still works, in more steps
        done = 0
        while done < size:
            n = os.splice(sock.fileno(), w, min(SPLICE_CHUNK, size - done))
            if n == 0:
                raise ConnectionError(f"parent closed after {done} of {size} bytes")
            left = n
            while left:
                m = os.splice(r, fd, left, offset_dst=done + (n - left))
                left -= m
            done += n
        return done
    finally:
        os.close(r)
        os.close(w)


def send_file(sock: socket.socket, fd: int, size: int) -> int:
    sent = 0
    while sent < size:
        n = os.sendfile(sock.fileno(), fd, sent, size - sent)
        if n == 0:
            break
        sent += n
    return sent


def relay(
    parent: tuple[str, int], size: int, children: int, out: Path, listener: socket.socket
) -> dict[str, float]:
    accepted: list[socket.socket] = []
    for _ in range(children):
        conn, _addr = listener.accept()
        accepted.append(conn)
    cpu0 = cpu_self_s()
    with socket.create_connection(parent) as up:
        fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            got = splice_in(up, fd, size)
            sent = [0] * children

            def serve(i: int) -> None:
                sent[i] = send_file(accepted[i], fd, got)
                accepted[i].shutdown(socket.SHUT_WR)

            threads = [threading.Thread(target=serve, args=(i,)) for i in range(children)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            os.close(fd)
    cpu = cpu_self_s() - cpu0
    for conn in accepted:
        conn.close()
    return {"cpu_s": cpu, "bytes_in": got, "bytes_out": sum(sent)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parent", required=True, help="HOST:PORT that sends the bytes")
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--children", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ready-file", type=Path, required=True)
    ap.add_argument("--result", type=Path, required=True, help="JSON: cpu_s, bytes_in, bytes_out")
    args = ap.parse_args(argv)
    host, _, port = args.parent.rpartition(":")
    with socket.create_server(("127.0.0.1", 0), backlog=args.children) as listener:
        write_ready_file(args.ready_file, {"pid": os.getpid(), "port": listener.getsockname()[1]})
        result = relay((host, int(port)), args.size, args.children, args.out, listener)
    write_ready_file(args.result, result)
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a module by the relay benchmark
    raise SystemExit(main())
