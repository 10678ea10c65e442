"""The proxy's CA: made only when hosts are intercepted, name-constrained to them when they
are plain names, and its cached leaf certificates renewed before they expire.

TLS handshakes over real loopback sockets check what a client accepts.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509

from damselfly.config import ProxyConfig
from damselfly.daemon.proxy import ProxyServer
from damselfly.daemon.proxy.ca import CertificateAuthority, ca_paths, ensure_ca, literal_hosts


def proxy(tmp_path: Path, hosts: list[str]) -> ProxyServer:
    cfg = ProxyConfig.model_validate(
        {"server": {"ip": "127.0.0.1", "port": 0}, "hijackHTTPS": {"hosts": [{"regx": h} for h in hosts]}}
    )
    # Only the constructor runs here: no downloads, so no manager or store.
    return ProxyServer(cfg, manager=cast(Any, None), store=cast(Any, None), data_dir=tmp_path)


def test_no_intercepted_host_no_ca(tmp_path: Path) -> None:
    proxy(tmp_path, [])
    assert not (tmp_path / "proxy-ca").exists()


def test_intercepted_hosts_make_the_ca_at_start(tmp_path: Path) -> None:
    proxy(tmp_path, ["registry\\.example\\.com"])
    cert, key = ca_paths(tmp_path)
    assert cert.exists() and key.exists()


@pytest.mark.parametrize(
    ("patterns", "hosts"),
    [
        (["registry\\.example\\.com", "localhost"], ["registry.example.com", "localhost"]),
        (["Registry.Example.com"], ["registry.example.com"]),
        ([".*\\.example\\.com"], None),
        (["registry\\.example\\.com:5000"], None),
        (["10\\.0\\.0\\.1"], None),
        (["a|b"], None),
        ([], None),
    ],
)
def test_literal_hosts(patterns: list[str], hosts: list[str] | None) -> None:
    assert literal_hosts(patterns) == hosts


async def handshake(ca: CertificateAuthority, host: str) -> None:
    """A TLS client trusting only ``ca`` connects to a server presenting ``ca``'s leaf for ``host``."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=ca.server_context(host))
    port = server.sockets[0].getsockname()[1]
    try:
        client = ssl.create_default_context(cafile=str(ca.cert_path))
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname=host)
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_the_ca_signs_only_for_the_intercepted_names(tmp_path: Path) -> None:
    p = proxy(tmp_path, ["registry\\.example\\.com"])
    constraints = p.ca.cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert [n.value for n in constraints.value.permitted_subtrees or ()] == ["registry.example.com"]
    await handshake(p.ca, "registry.example.com")
    await handshake(p.ca, "127.0.0.1")  # IP addresses are not DNS names: not constrained
    with pytest.raises(ssl.SSLCertVerificationError, match="subtree"):
        await handshake(p.ca, "bank.example.org")
    assert not p.ca.permits("bank.example.org") and p.ca.permits("registry.example.com")


async def test_a_pattern_rule_leaves_the_ca_unconstrained(tmp_path: Path) -> None:
    p = proxy(tmp_path, [".*\\.example\\.com"])
    with pytest.raises(x509.ExtensionNotFound):
        p.ca.cert.extensions.get_extension_for_class(x509.NameConstraints)
    await handshake(p.ca, "any.example.com")


class Clock:
    def __init__(self) -> None:
        self.now = datetime.datetime.now(datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.now


def test_cached_leaf_is_renewed_before_it_expires(tmp_path: Path) -> None:
    cert, key = ensure_ca(tmp_path)
    clock = Clock()
    ca = CertificateAuthority(cert, key, clock=clock)
    first = ca.server_context("registry.example.com")
    chain, _ = ca.leaf("x.example.com")
    leaf = x509.load_pem_x509_certificate(chain)
    days = (leaf.not_valid_after_utc - clock.now).days
    assert 29 <= days <= 30
    made = ca.leaves_made
    clock.now += datetime.timedelta(days=28)
    assert ca.server_context("registry.example.com") is first  # still well within its validity
    assert ca.leaves_made == made
    clock.now += datetime.timedelta(days=1, hours=12)  # less than a day left
    renewed = ca.server_context("registry.example.com")
    assert renewed is not first and ca.leaves_made == made + 1
    assert ca.server_context("registry.example.com") is renewed
