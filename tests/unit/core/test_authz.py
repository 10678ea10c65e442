"""The rules of :mod:`damselfly.security.authz` over plain callers
(real calls: tests/integration/test_authz*.py)."""

from __future__ import annotations

import pytest

from damselfly.config import SecurityConfig
from damselfly.errors import ConfigError, PermissionDenied
from damselfly.security.authz import Caller, HostAuthority, SchedulerGate, peer_ip, split_host
from damselfly.security.tls import PeerIdentity


def cert(cn: str, *ips: str, dns: tuple[str, ...] = (), fp: str = "") -> PeerIdentity:
    return PeerIdentity(cn, frozenset(ips), frozenset(dns), fp or f"fp-{cn}")


def plain(ip: str) -> Caller:
    return Caller(ip, None)


def mtls(identity: PeerIdentity, ip: str = "127.0.0.1") -> Caller:
    return Caller(ip, identity)


def authority(**security: object) -> HostAuthority:
    hosts: set[str] = set()
    return HostAuthority(SecurityConfig(**security), None, hosts.__contains__)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("peer", "ip"),
    [
        ("ipv4:10.1.2.3:4000", "10.1.2.3"),
        ("ipv6:[::ffff:1.2.3.4]:5000", "1.2.3.4"),
        ("ipv6:[::ffff:7f00:1]:5000", "127.0.0.1"),
        ("ipv6:[fe80::1%eth0]:5000", "fe80::1"),
        ("ipv6:[::1]:1", "::1"),
        ("unix:/run/x.sock", None),
        ("", None),
    ],
)
def test_the_callers_address_comes_from_the_connection_v4_mapped_as_v4(peer: str, ip: str | None) -> None:
    assert peer_ip(peer) == ip


def test_plaintext_announce_must_come_from_the_announced_ip_unless_from_a_trusted_network() -> None:
    a = authority()
    a.admit_host(plain("10.0.0.5"), "h1", "10.0.0.5", seed=False)
    a.admit_host(plain("1.2.3.4"), "h2", "::ffff:1.2.3.4", seed=True)  # same address, v4-mapped
    with pytest.raises(PermissionDenied, match="not the address it calls from"):
        a.admit_host(plain("10.0.0.6"), "h3", "10.0.0.5", seed=False)
    a.admit_host(plain("::1"), "h4", "127.0.0.1", seed=False)  # "localhost" over either loopback
    with pytest.raises(PermissionDenied):
        a.admit_host(plain("127.0.0.1"), "h5", "127.0.0.2", seed=False)
    nat = authority(trusted_networks=["192.168.0.0/16"])
    nat.admit_host(plain("192.168.7.1"), "h3", "10.0.0.5", seed=False)


def test_a_host_id_belongs_to_its_first_announcer() -> None:
    a = authority(trusted_networks=["10.0.0.0/8"])
    a.admit_host(plain("10.0.0.1"), "h", "10.0.0.9", seed=False)
    a.admit_host(plain("10.0.0.1"), "h", "10.0.0.9", seed=False)  # again: fine
    with pytest.raises(PermissionDenied, match="belongs to another caller"):
        a.admit_host(plain("10.0.0.2"), "h", "10.0.0.9", seed=False)
    m = authority()
    m.tls = True
    m.admit_host(mtls(cert("a", "10.0.0.9")), "x", "10.0.0.9", seed=False)
    # A renewed certificate with the same names keeps the ID; another certificate does not.
    m.admit_host(mtls(cert("a", "10.0.0.9", fp="renewed")), "x", "10.0.0.9", seed=False)
    with pytest.raises(PermissionDenied, match="belongs to another caller"):
        m.admit_host(mtls(cert("b", "10.0.0.9")), "x", "10.0.0.9", seed=False)


def test_under_mtls_the_announced_ip_is_one_of_the_certificates_ip_sans() -> None:
    m = authority()
    m.tls = True
    m.admit_host(mtls(cert("a", "10.0.0.9", "::1"), ip="172.16.0.1"), "h", "10.0.0.9", seed=False)
    with pytest.raises(PermissionDenied, match="not among the IP SANs"):
        m.admit_host(mtls(cert("far", "10.9.9.9")), "g", "127.0.0.1", seed=False)
    with pytest.raises(PermissionDenied, match="no client certificate"):
        m.admit_host(plain("127.0.0.1"), "g", "127.0.0.1", seed=False)


def test_the_seed_allow_list_names_certificates_or_addresses() -> None:
    m = authority(seed_peers=["seed.example", "10.1.0.0/16"])
    m.tls = True
    m.admit_host(mtls(cert("x", "10.0.0.1", dns=("seed.example",))), "s1", "10.0.0.1", seed=True)
    m.admit_host(mtls(cert("y", "10.1.2.3")), "s2", "10.1.2.3", seed=True)
    m.admit_host(mtls(cert("z", "10.0.0.3")), "n", "10.0.0.3", seed=False)  # not a seed: any
    with pytest.raises(PermissionDenied, match=r"may not announce a seed peer \(security.seedPeers\)"):
        m.admit_host(mtls(cert("z", "10.0.0.3")), "s3", "10.0.0.3", seed=True)
    p = authority(seed_peers=["127.0.0.1"])
    p.admit_host(plain("127.0.0.1"), "s", "127.0.0.1", seed=True)
    with pytest.raises(PermissionDenied):
        p.admit_host(plain("127.0.0.2"), "s2", "127.0.0.2", seed=True)


def test_acting_for_a_host_is_for_the_host_itself_or_an_admin() -> None:
    a = authority(admin_addresses=["10.9.0.0/16"])
    a.admit_host(plain("10.0.0.1"), "h", "10.0.0.1", seed=False)
    a.check_host(plain("10.0.0.1"), "h", "delete")
    a.check_host(plain("10.9.1.1"), "h", "delete")  # admin
    with pytest.raises(PermissionDenied, match="may not delete of host h"):
        a.check_host(plain("10.0.0.2"), "h", "delete")
    a.check_host(plain("10.0.0.2"), "never-announced", "delete")  # left to the RPC: NOT_FOUND
    a.check_admin(plain("10.9.1.1"), "preheat")
    with pytest.raises(PermissionDenied, match="only an admin"):
        a.check_admin(plain("10.0.0.1"), "preheat")
    # By default the scheduler's own machine administers a plaintext scheduler.
    assert authority().is_admin(plain("127.0.0.1")) and authority().is_admin(plain("::1"))
    assert not authority().is_admin(plain("10.0.0.1"))


def test_under_mtls_admins_are_named_certificates_never_addresses() -> None:
    m = authority(admins=["ops"])
    m.tls = True
    assert m.is_admin(mtls(cert("ops")))
    assert not m.is_admin(mtls(cert("a", "127.0.0.1")))
    assert not m.is_admin(plain("127.0.0.1"))


def test_bad_entries_are_one_line_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^security.trustedNetworks: '10.0.0.0/33' is neither"):
        authority(trusted_networks=["10.0.0.0/33"])
    with pytest.raises(ConfigError, match=r"^security.admins: an entry is empty"):
        authority(admins=[""])


@pytest.mark.parametrize(
    ("addr", "host"),
    [("10.0.0.1:8002", "10.0.0.1"), ("[::1]:8002", "::1"), ("sched.example:8002", "sched.example"),
     ("dns:///sched.example:8002", "sched.example"), ("::1", "::1")],
)  # fmt: skip
def test_a_scheduler_address_s_host(addr: str, host: str) -> None:
    assert split_host(addr) == host


async def test_plaintext_a_daemon_obeys_only_its_schedulers_addresses_names_resolved() -> None:
    gate = SchedulerGate(lambda: ["127.0.0.1:8002", "localhost:9000"])
    assert await gate.allows(plain("127.0.0.1"))
    assert not await gate.allows(plain("127.0.0.2"))
    assert not await gate.allows(Caller(None, None))  # a unix socket is not the scheduler
    only_name = SchedulerGate(lambda: ["localhost:8002"])
    assert await only_name.allows(plain("127.0.0.1"))
    assert not await SchedulerGate(lambda: []).allows(plain("127.0.0.1"))


async def test_under_mtls_a_daemon_obeys_the_certificate_its_scheduler_presents() -> None:
    gate = SchedulerGate(lambda: ["10.0.0.1:8002", "sched.example:8002"])
    assert await gate.allows(mtls(cert("s", "10.0.0.1")))
    assert await gate.allows(mtls(cert("s", dns=("sched.example",))))
    assert not await gate.allows(mtls(cert("peer", "10.0.0.2"), ip="10.0.0.1"))  # the address is no proof
    named = SchedulerGate(lambda: ["10.0.0.1:8002"], certificate_name="Scheduler.Example")
    assert await named.allows(mtls(cert("x", dns=("scheduler.example",))))
    assert not await named.allows(mtls(cert("x", "10.0.0.1")))


def test_a_certificate_shared_by_the_fleet_announces_the_address_it_calls_from() -> None:
    # tls.peerName: every daemon holds a certificate for "peer.fleet" and no IP SAN.
    m = authority(trusted_networks=["192.168.0.0/16"])
    m.tls, m.peer_name = True, "peer.fleet"
    shared = cert("peer.fleet", dns=("peer.fleet",))
    m.admit_host(mtls(shared, ip="10.0.0.5"), "h5", "10.0.0.5", seed=False)
    m.admit_host(mtls(shared, ip="192.168.3.3"), "nat", "10.0.0.7", seed=False)  # a declared NAT
    with pytest.raises(PermissionDenied, match="not the address it calls from"):
        m.admit_host(mtls(shared, ip="10.0.0.6"), "h6", "10.0.0.9", seed=False)
    # One daemon cannot take or act for another's host: the ID is bound to the certificate and address.
    with pytest.raises(PermissionDenied, match="belongs to another caller"):
        m.admit_host(mtls(shared, ip="10.0.0.6"), "h5", "10.0.0.6", seed=False)
    m.check_host(mtls(shared, ip="10.0.0.5"), "h5", "delete")
    with pytest.raises(PermissionDenied, match="may not delete of host h5"):
        m.check_host(mtls(shared, ip="10.0.0.6"), "h5", "delete")
    # A certificate without the name still needs the IP SAN, and without peerName so does the shared one.
    with pytest.raises(PermissionDenied, match=r"nor does it carry tls\.peerName peer\.fleet"):
        m.admit_host(mtls(cert("other", dns=("other",)), ip="10.0.0.8"), "h8", "10.0.0.8", seed=False)
    strict = authority()
    strict.tls = True
    with pytest.raises(PermissionDenied, match="not among the IP SANs"):
        strict.admit_host(mtls(shared, ip="10.0.0.5"), "h5", "10.0.0.5", seed=False)
