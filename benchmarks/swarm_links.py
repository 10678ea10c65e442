"""Check the testbed's links: TCP throughput between two shaped namespaces, one way and both ways.

    sudo .venv/bin/python benchmarks/swarm_links.py [RATE] [SECONDS] [HOSTS]    # default 100mbit 8 2

With HOSTS > 2 it also runs all-to-all: every host sends to every other at once
(a flash crowd's traffic pattern), and reports what each host receives.

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
    count = max(2, int(sys.argv[3])) if len(sys.argv) > 3 else 2
    prefix = netns.new_prefix()
    hosts = [
        HostNet(f"h{i}", netns.netns_name(prefix, f"h{i}"), netns.host_ip(i), rate, rate)
        for i in range(count)
    ]
    a, b = hosts[0], hosts[1]
    net = Network(prefix, hosts)
    net.create()
    results: dict[str, float] = {}

    def receive(host: HostNet, port: int, ready: threading.Event, key: str = "") -> None:
        enter_netns(host.netns)
        with socket.create_server((host.ip, port)) as server:
            ready.set()
            conn, _ = server.accept()
            buf, n, t0 = bytearray(1 << 20), 0, time.monotonic()
            with conn:
                while k := conn.recv_into(buf):
                    n += k
            results[key or f"to {host.name}"] = n / (time.monotonic() - t0)

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
        if count > 2:
            threads = []
            port = 9100
            for dst in hosts:
                for src in hosts:
                    if src is dst:
                        continue
                    port += 1
                    ready = threading.Event()
                    key = f"{src.name}>{dst.name}"
                    threads.append(threading.Thread(target=receive, args=(dst, port, ready, key)))
                    threads[-1].start()
                    ready.wait(10)
                    threads.append(threading.Thread(target=send, args=(src, dst, port)))
            for t in threads[1::2]:
                t.start()
            for t in threads:
                t.join()
            into = sorted(
                sum(v for k, v in results.items() if k.endswith(f">{h.name}")) * 8 / rate for h in hosts
            )
            print(
                f"all-to-all, {count} hosts: each receives {into[0]:.1%} (min)"
                f" {into[len(into) // 2]:.1%} (median) {into[-1]:.1%} (max) of the rate"
            )
    finally:
        net.destroy()


if __name__ == "__main__":
    main()
