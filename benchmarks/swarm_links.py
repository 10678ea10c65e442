"""Check the testbed's links: TCP throughput between two shaped namespaces, one way and both ways.

    sudo .venv/bin/python benchmarks/swarm_links.py [RATE] [SECONDS]     # default 100mbit 8

Why: before blaming the swarm for a slow run, know what the shaped links give a
plain TCP stream (payload only: headers and tbf's accounting take a few percent).
"""

from __future__ import annotations

import socket
import sys
import threading
import time

from damselfly.testbed import netns
from damselfly.testbed.netns import HostNet, Network, enter_netns
from damselfly.testbed.shaping import parse_rate


def main() -> None:
    rate = parse_rate(sys.argv[1] if len(sys.argv) > 1 else "100mbit")
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 8.0
    prefix = netns.new_prefix()
    a, b = (HostNet(n, netns.netns_name(prefix, n), netns.host_ip(i), rate, rate) for i, n in enumerate("ab"))
    net = Network(prefix, [a, b])
    net.create()
    results: dict[str, float] = {}

    def receive(host: HostNet, port: int, ready: threading.Event) -> None:
        enter_netns(host.netns)
        with socket.create_server((host.ip, port)) as server:
            ready.set()
            conn, _ = server.accept()
            buf, n, t0 = bytearray(1 << 20), 0, time.monotonic()
            with conn:
                while k := conn.recv_into(buf):
                    n += k
            results[f"to {host.name}"] = n / (time.monotonic() - t0)

    def send(host: HostNet, to: HostNet, port: int) -> None:
        enter_netns(host.netns)
        with socket.create_connection((to.ip, port)) as conn:
            data, end = b"x" * (1 << 20), time.monotonic() + seconds
            while time.monotonic() < end:
                conn.sendall(data)

    try:
        for label, pairs in (("one way", [(a, b, 9001)]), ("both ways", [(a, b, 9001), (b, a, 9002)])):
            threads = []
            for src, dst, port in pairs:
                ready = threading.Event()
                threads.append(threading.Thread(target=receive, args=(dst, port, ready)))
                threads[-1].start()
                ready.wait(10)
                threads.append(threading.Thread(target=send, args=(src, dst, port)))
                threads[-1].start()
            for t in threads:
                t.join()
            shown = ", ".join(
                f"{k}: {v / 1e6:.2f} MB/s = {8 * v / rate:.1%} of the rate" for k, v in results.items()
            )
            print(f"{label}: {shown}")
            results.clear()
    finally:
        net.destroy()


if __name__ == "__main__":
    main()
