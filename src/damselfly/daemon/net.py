"""Opening a TCP connection as a bare non-blocking socket, for the daemon's own byte paths.

The piece client (:mod:`.transfer.piece_client`) and the raw HTTP origin path
(:mod:`.origin.rawhttp`) both receive with ``sock_recv_into`` into one reused
buffer, so both want a ``socket.socket``, not asyncio streams. Opening one is
the same in both: look the name up, then try each address in turn until one
accepts. It lives here, beside both folders, because neither owns the other.

Errors stay ``OSError`` (``TimeoutError`` included, ``socket.gaierror`` for a
name that does not resolve): each caller words them for its user.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Any

Address = tuple[int, int, int, str, Any]  # one getaddrinfo result: family, type, proto, name, sockaddr


async def resolve(host: str, port: int, *, timeout: float) -> Sequence[Address]:
    """The addresses of ``host:port`` for a stream socket, looked up within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        return await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)


async def connect_first(addresses: Sequence[Address], *, timeout: float) -> socket.socket:
    """A non-blocking socket connected to the first of ``addresses`` that accepts.

    Each address gets ``timeout`` seconds of its own, so one that hangs (an
    unrouted IPv6 address, say) does not keep the next from being tried.
    Raises the last address's error when none accepts.
    """
    loop = asyncio.get_running_loop()
    last: OSError = OSError("no address to connect to")
    for family, type_, proto, _, addr in addresses:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, addr)
        except OSError as e:  # TimeoutError is one
            sock.close()
            last = e
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise last
