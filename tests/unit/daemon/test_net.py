"""The daemon's TCP connect (daemon/net.py), shared by the piece client and the raw HTTP origin path."""

from __future__ import annotations

import asyncio
import socket

import pytest

from damselfly.daemon import net


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_the_next_address_is_tried_when_one_refuses():
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        refused = (socket.AF_INET, socket.SOCK_STREAM, 0, "", ("127.0.0.1", _closed_port()))
        listening = (socket.AF_INET, socket.SOCK_STREAM, 0, "", ("127.0.0.1", port))
        sock = await net.connect_first([refused, listening], timeout=5)
        try:
            assert sock.getpeername() == ("127.0.0.1", port) and not sock.getblocking()
        finally:
            sock.close()


async def test_the_last_error_is_raised_when_none_accepts():
    addresses = await net.resolve("127.0.0.1", _closed_port(), timeout=5)
    with pytest.raises(ConnectionRefusedError):
        await net.connect_first(addresses, timeout=5)
    with pytest.raises(OSError, match="no address"):
        await net.connect_first([], timeout=5)
