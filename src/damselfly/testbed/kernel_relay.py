"""The kernel's own relay, as a yardstick for a relaying daemon's CPU per byte.

``python -m damselfly.testbed.kernel_relay --parent HOST:PORT --size N --children K --out FILE``
(``--cut-through`` optional) listens on 127.0.0.1 (its port in the ready file), connects to
the parent and moves the parent's ``N`` bytes socket -> pipe -> file with ``os.splice``
(no byte enters user space) in steps of up to 1 MiB, and sends the file to each of the
``K`` children that connected with ``os.sendfile``, one thread per child: once the whole
file is in (store and forward), or with ``--cut-through`` each step as soon as it is in,
as a relay in a swarm does (a daemon sends a piece on while it lands). It writes JSON to
``--result``: its own CPU seconds over the transfer (``getrusage``: user, system and their
sum), the bytes in and out.

Why both: sending a whole file at once costs the relay less per byte than sending each
step as it lands (here 0.25 against 0.37 CPU-s for 4 x 256 MiB). perf puts the
difference in the loopback delivery run inside the sender's ``sendfile``: on loopback
the sender runs the receiver's side of TCP when it finds the child's socket idle, while
the bytes of a big blocking send queued behind a full window go out from the
acknowledgements, which the children's processes run.

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
from collections.abc import Callable
from pathlib import Path

from ..process import write_ready_file
from ..units import MiB

PIPE_SIZE = 1 * MiB
SPLICE_CHUNK = 1 * MiB


def cpu_self() -> tuple[float, float]:
    """This process's user and system CPU seconds so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def splice_in(sock: socket.socket, fd: int, size: int, landed: Callable[[int], None] | None = None) -> int:
    """``size`` bytes from ``sock`` into ``fd`` from offset 0 through a pipe, in the kernel;
    ``landed`` is told the count each time a step is in the file."""
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
            if landed is not None:
                landed(done)
        return done
    finally:
        os.close(r)
        os.close(w)


class Landed:
    """How many bytes are in the file so far, waited on by the sending threads; ``close``
    wakes them for good (the receive ended, whole or not)."""

    def __init__(self) -> None:
        self.count = 0
        self.closed = False
        self._cond = threading.Condition()

    def set(self, count: int) -> None:
        with self._cond:
            self.count = count
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def past(self, count: int) -> int:
        """The count once it is past ``count`` (or the count at the close)."""
        with self._cond:
            self._cond.wait_for(lambda: self.count > count or self.closed)
            return self.count


def send_as_landed(sock: socket.socket, fd: int, size: int, landed: Landed) -> int:
    """Send ``fd``'s first ``size`` bytes to ``sock`` as they land: each step once it is in."""
    sent = 0
    while sent < size:
        ready = landed.past(sent)
        if ready <= sent:
            break  # closed short
        while sent < ready:
            n = os.sendfile(sock.fileno(), fd, sent, ready - sent)
            if n == 0:
                return sent
            sent += n
    return sent


def relay(
    parent: tuple[str, int],
    size: int,
    children: int,
    out: Path,
    listener: socket.socket,
    *,
    cut_through: bool = False,
) -> dict[str, float]:
    """Receive ``size`` bytes from ``parent`` into ``out`` and send them to each of the
    ``children`` that connect to ``listener``: once all are in (store and forward), or with
    ``cut_through`` each step as soon as it is in the file, as a relay in a swarm must."""
    accepted = [listener.accept()[0] for _ in range(children)]
    user0, sys0 = cpu_self()
    landed = Landed()
    sent = [0] * children
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    def serve(i: int) -> None:
        sent[i] = send_as_landed(accepted[i], fd, size, landed)
        accepted[i].shutdown(socket.SHUT_WR)

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(children)]
    try:
        with socket.create_connection(parent) as up:
            if cut_through:
                for t in threads:
                    t.start()
            try:
                got = splice_in(up, fd, size, landed.set if cut_through else None)
                landed.set(got)
            finally:
                landed.close()  # a short receive: the senders stop at what landed
            if not cut_through:
                for t in threads:
                    t.start()
    finally:
        for t in threads:
            if t.ident is not None:
                t.join()
        os.close(fd)
        for conn in accepted:
            conn.close()
    user, system = cpu_self()
    user, system = user - user0, system - sys0
    return {"cpu_s": user + system, "user_s": user, "sys_s": system, "bytes_in": got, "bytes_out": sum(sent)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parent", required=True, help="HOST:PORT that sends the bytes")
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--children", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ready-file", type=Path, required=True)
    ap.add_argument("--cut-through", action="store_true", help="send each step on as it lands")
    ap.add_argument("--result", type=Path, required=True, help="JSON: CPU seconds (user, sys), bytes")
    args = ap.parse_args(argv)
    host, _, port = args.parent.rpartition(":")
    with socket.create_server(("127.0.0.1", 0), backlog=args.children) as listener:
        write_ready_file(args.ready_file, {"pid": os.getpid(), "port": listener.getsockname()[1]})
        result = relay(
            (host, int(port)), args.size, args.children, args.out, listener, cut_through=args.cut_through
        )
    write_ready_file(args.result, result)
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a module by the relay benchmark
    raise SystemExit(main())
