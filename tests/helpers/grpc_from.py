"""One gRPC call over plaintext from a chosen loopback source address (grpcio cannot bind one).

The scheduler and the daemon judge a plaintext caller by the connection's own source
address; tests play a host elsewhere by binding ``127.0.0.2`` and the like, all on ``lo``.
The call is :mod:`damselfly.cli.h2call`'s HTTP/2 framing over a TCP socket instead of its
unix socket.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from damselfly.cli import h2call


def call_from(
    source_ip: str, port: int, method: str, request: Any, *, timeout: float = 10.0
) -> tuple[str, list[bytes]]:
    """Call ``method`` (``/pkg.Service/Method``) on 127.0.0.1:``port`` from ``source_ip``:
    (status name, response messages)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((source_ip, 0))
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        sock.settimeout(None)
        out: list[bytes] = []
        try:
            for message in h2call._call(
                sock, method, request.SerializeToString(), time.monotonic() + timeout, timeout
            ):
                out.append(message)
        except h2call.RpcError as e:
            return e.code, out
        return "OK", out
    finally:
        sock.close()


async def acall_from(
    source_ip: str, port: int, method: str, request: Any, *, timeout: float = 10.0
) -> tuple[str, list[bytes]]:
    """:func:`call_from` off the event loop (the server may run on this loop)."""
    return await asyncio.to_thread(call_from, source_ip, port, method, request, timeout=timeout)
