"""The proxy closes a connection whose request head does not arrive in time (proxy.server.headTimeout).

Real loopback sockets: a plain request head, a CONNECT head and the first head inside an
intercepted tunnel, each sent half and then nothing; the proxy closes the connection. A
client that sends its whole head is answered as before.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from damselfly.config import ProxyConfig, SourceConfig
from damselfly.daemon.download.conductor import ConductorDeps
from damselfly.daemon.download.tasks import TaskManager
from damselfly.daemon.origin.source import HTTPSource
from damselfly.daemon.proxy import ProxyServer
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.daemon.transfer.peer_rpc import PeerRPC

HEAD_TIMEOUT = 0.3  # seconds: scaled down for the test


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[ProxyServer]:
    store = PieceStore(tmp_path / "data")
    source = HTTPSource(SourceConfig())
    peer_rpc = PeerRPC()
    deps = ConductorDeps(
        store=store, pool=None, source=source, peer_rpc=peer_rpc, scheduler=None,
        host_id="127.0.0.1-t", host_ip="127.0.0.1", hostname="t", is_seed=False,
    )  # fmt: skip
    manager = TaskManager(deps)
    cfg = ProxyConfig.model_validate(
        {
            "server": {"ip": "127.0.0.1", "port": 0, "headTimeout": HEAD_TIMEOUT},
            "registryMirror": {"url": "http://127.0.0.1:9"},
            "hijackHTTPS": {"hosts": [{"regx": "localhost"}]},
        }
    )
    server = ProxyServer(cfg, manager=manager, store=store, data_dir=tmp_path / "data")
    await server.start()
    try:
        yield server
    finally:
        await server.close()
        await manager.close()
        await source.close()
        await peer_rpc.close()
        store.close()


async def closed(reader: asyncio.StreamReader) -> bytes:
    """What the proxy sent before it closed the connection (fails the test if it never does)."""
    got = b""
    try:
        async with asyncio.timeout(30):
            while data := await reader.read(65536):
                got += data
    except ConnectionResetError:
        pass
    return got


def timeouts(proxy: ProxyServer) -> float:
    return proxy.metrics.request_total.labels("head-timeout", "408")._value.get()


@pytest.mark.parametrize(
    "half",
    [b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"CONNECT localhost:443 HTTP/1.1\r\n", b"G"],
    ids=["plain", "connect", "one-byte"],
)
async def test_half_a_head_is_closed(proxy: ProxyServer, half: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(half)
        assert await closed(reader) == b""  # closed without an answer
        assert timeouts(proxy) == 1
    finally:
        writer.close()


async def test_half_a_head_inside_an_intercepted_tunnel_is_closed(proxy: ProxyServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        ctx = ssl.create_default_context(cafile=str(proxy.ca_cert_path))
        await writer.start_tls(ctx, server_hostname="localhost")
        writer.write(b"GET /v2/ HTTP/1.1\r\nHost: local")
        assert await closed(reader) == b""
        assert timeouts(proxy) == 1
    finally:
        writer.close()


async def test_a_whole_head_is_answered(proxy: ProxyServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(b"GET http://elsewhere.example/ HTTP/1.1\r\nHost: elsewhere.example\r\n")
        await asyncio.sleep(HEAD_TIMEOUT / 10)
        writer.write(b"Connection: close\r\n\r\n")
        answer = await closed(reader)
        assert answer.startswith(b"HTTP/1.1 403"), answer[:100]  # not an open proxy, and answered
        assert timeouts(proxy) == 0
    finally:
        writer.close()


@pytest.mark.parametrize("authority", [b"127.0.0.1:abc", b"[", b"host:99999"])
async def test_a_connect_to_a_bad_authority_is_refused(proxy: ProxyServer, authority: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(b"CONNECT " + authority + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await closed(reader)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
        assert timeouts(proxy) == 0  # answered, not left to time out
    finally:
        writer.close()
