"""Who is calling, and may they: identity and authorization on the scheduler and the daemon.

Every decision starts from a :class:`Caller`, read from the gRPC call itself
(:func:`caller_of`): the connection's own source address (``context.peer()``,
an IPv4-mapped IPv6 address compared as the IPv4 one) and, under mTLS, the
verified client certificate (:func:`damselfly.security.tls.grpc_peer_identity`). Never a
field of the request: an announced IP, a ``remote_ip`` or a host ID are claims,
checked against the caller.

- :class:`HostAuthority` (the scheduler's): binds each host ID to the first
  caller that announced it (its certificate's names, or with TLS off its source
  address), checks an announce (the announced IP is one of the certificate's IP
  SANs; with TLS off, or from a certificate shared by the fleet's daemons
  (``tls.peerName``), the source address, unless the source is in a declared
  NAT'd network), narrows who may announce a seed, and says whether a caller may
  act for a host (the host itself or an admin).
- :class:`SchedulerGate` (the daemon's): whether a call comes from one of this
  daemon's configured schedulers; only those may make it act.

The rules and settings are in docs/SECURITY.md. Owner of the bindings: the
scheduler's servicer (one :class:`HostAuthority`, on the event loop).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import socket
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..config import SecurityConfig
from ..errors import ConfigError, PermissionDenied
from .tls import PeerIdentity, TLSFiles, grpc_peer_identity, identity_from_der

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_BINDINGS = 65536  # host IDs remembered; past it the oldest of hosts no longer known are dropped
RESOLVE_TIMEOUT = 5.0  # seconds to resolve a scheduler's name


def normalize_ip(text: str) -> str | None:
    """``text`` as one canonical IP string (IPv4-mapped IPv6 as IPv4; brackets, zone dropped)."""
    try:
        addr = ipaddress.ip_address(text.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


def peer_ip(peer: str) -> str | None:
    """The IP of a grpc ``context.peer()`` string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``); None for others."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return normalize_ip(rest.rpartition(":")[0])
    if kind == "ipv6":
        host = rest.rpartition(":")[0] if rest.startswith("[") else rest
        return normalize_ip(host)
    return None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a call: the connection's source IP (None: a unix socket) and, under mTLS, its certificate."""

    ip: str | None
    identity: PeerIdentity | None

    def describe(self) -> str:
        if self.identity is not None:
            return f"certificate {self.identity.common_name or '(no CN)'} from {self.ip}"
        return f"{self.ip or 'a local socket'}"


def caller_of(context: Any) -> Caller:
    """The :class:`Caller` of a servicer's ``context``."""
    peer = context.peer()
    return Caller(peer_ip(peer if isinstance(peer, str) else ""), grpc_peer_identity(context))


def parse_networks(key: str, entries: Iterable[str]) -> list[IPNetwork]:
    """``entries`` (IPs or CIDRs) as networks; a bad one is a :class:`ConfigError` naming ``key``."""
    out: list[IPNetwork] = []
    for entry in entries:
        text = entry.strip()
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ConfigError(f"{key}: {entry!r} is neither an IP address nor a CIDR network") from None
        out.append(net)
    return out


def in_networks(ip: str | None, networks: Sequence[IPNetwork]) -> bool:
    if ip is None:
        return False
    addr = ipaddress.ip_address(ip)
    return any(addr.version == net.version and addr in net for net in networks)


class Names:
    """A list of certificate names (CN or DNS SAN), IPs and CIDRs, matched against a caller."""

    def __init__(self, key: str, entries: Iterable[str]) -> None:
        self.names: set[str] = set()
        self.networks: list[IPNetwork] = []
        for entry in entries:
            text = entry.strip()
            if not text:
                raise ConfigError(f"{key}: an entry is empty")
            try:
                self.networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                self.names.add(text.lower().rstrip("."))

    def __bool__(self) -> bool:
        return bool(self.names or self.networks)

    def match(self, caller: Caller) -> bool:
        """Under mTLS the certificate (CN, DNS SANs, IP SANs); without, the source address."""
        ident = caller.identity
        if ident is None:
            return in_networks(caller.ip, self.networks)
        if ident.common_name.lower() in self.names or ident.dns_names & self.names:
            return True
        return any(in_networks(ip, self.networks) for ip in ident.ips)


_LOOPBACKS = frozenset({"127.0.0.1", "::1"})


def _same_address(announced: str, source: str | None) -> bool:
    """``announced`` is the caller's address (``localhost`` may be dialed over either loopback)."""
    return announced == source or (announced in _LOOPBACKS and source in _LOOPBACKS)


def identity_key(caller: Caller, shared_name: str = "") -> str:
    """What a host ID is bound to: the certificate's subject and SANs (a renewed certificate with
    the same names keeps its hosts), or with TLS off the source address. A certificate that
    carries ``shared_name`` (``tls.peerName``: every daemon holds one like it) is bound together
    with the source address, so one daemon cannot act for another's host."""
    ident = caller.identity
    if ident is None:
        return f"addr:{caller.ip}"
    h = hashlib.sha256()
    where = [f"from {caller.ip}"] if shared_name and ident.has_dns_name(shared_name) else []
    for part in (ident.common_name, *sorted(ident.ips), *sorted(ident.dns_names), *where):
        h.update(part.encode())
        h.update(b"\0")
    return f"cert:{h.hexdigest()}"


def check_security(config: SecurityConfig) -> None:
    """Raise :class:`ConfigError` (one line naming the key) for an entry ``security.*`` cannot use."""
    Names("security.seedPeers", config.seed_peers)
    Names("security.admins", config.admins)
    parse_networks("security.adminAddresses", config.admin_addresses)
    parse_networks("security.trustedNetworks", config.trusted_networks)


class HostAuthority:
    """The scheduler's rules on who announces, deletes and administers (docs/SECURITY.md).

    ``live``: whether a host ID is known to the scheduler now (bindings of hosts
    gone are dropped first when there are too many). ``tls``: the scheduler's own
    mTLS files; its own certificate is always an admin.
    """

    def __init__(self, config: SecurityConfig, tls: TLSFiles | None, live: Callable[[str], bool]) -> None:
        self.tls = tls is not None
        # tls.peerName: the name on the certificate the fleet's daemons share (it names no IP).
        self.peer_name = tls.peer_name if tls is not None else ""
        self.seed_peers = Names("security.seedPeers", config.seed_peers)
        self.admins = Names("security.admins", config.admins)
        self.admin_addresses = parse_networks("security.adminAddresses", config.admin_addresses)
        self.trusted_networks = parse_networks("security.trustedNetworks", config.trusted_networks)
        self.own_fingerprint = ""
        if tls is not None:
            cert = x509.load_pem_x509_certificates(tls.cert_pem)[0]
            der = cert.public_bytes(serialization.Encoding.DER)
            self.own_fingerprint = identity_from_der(der).fingerprint
        self.live = live
        self._bindings: OrderedDict[str, str] = OrderedDict()  # host ID -> identity_key

    # -- announce ---------------------------------------------------------------------

    def admit_host(self, caller: Caller, host_id: str, ip: str, *, seed: bool) -> None:
        """Check an AnnounceHost of ``host_id`` at ``ip``; bind the ID to the caller on its first.

        Raises :class:`PermissionDenied` with the reason."""
        announced = normalize_ip(ip)
        if announced is None:
            raise PermissionDenied(f"host {host_id}: announced IP {ip!r} is not an IP address")
        if caller.identity is not None:
            if self._shared(caller) and announced not in caller.identity.ips:
                self._check_source(host_id, announced, caller)  # the fleet's certificate names no host
            elif announced not in caller.identity.ips:
                raise PermissionDenied(
                    f"host {host_id}: announced IP {announced} is not among the IP SANs of the "
                    f"caller's certificate ({', '.join(sorted(caller.identity.ips)) or 'none'})"
                    + (f" nor does it carry tls.peerName {self.peer_name}" if self.peer_name else "")
                )
        elif self.tls:
            raise PermissionDenied(f"host {host_id}: no client certificate")
        else:
            self._check_source(host_id, announced, caller)
        if seed and self.seed_peers and not self.seed_peers.match(caller):
            raise PermissionDenied(
                f"host {host_id}: {caller.describe()} may not announce a seed peer (security.seedPeers)"
            )
        key = identity_key(caller, self.peer_name)
        bound = self._bindings.get(host_id)
        if bound is not None and bound != key:
            raise PermissionDenied(f"host {host_id} belongs to another caller")
        self._bind(host_id, key)

    def _shared(self, caller: Caller) -> bool:
        """Whether the caller's certificate is the fleet's shared one (carries ``tls.peerName``)."""
        ident = caller.identity
        return bool(self.peer_name) and ident is not None and ident.has_dns_name(self.peer_name)

    def _check_source(self, host_id: str, announced: str, caller: Caller) -> None:
        if not _same_address(announced, caller.ip) and not in_networks(caller.ip, self.trusted_networks):
            raise PermissionDenied(
                f"host {host_id}: announced IP {announced} is not the address it calls from "
                f"({caller.ip}); a NAT'd network goes in security.trustedNetworks"
            )

    def _bind(self, host_id: str, key: str) -> None:
        self._bindings[host_id] = key
        self._bindings.move_to_end(host_id)
        if len(self._bindings) > MAX_BINDINGS:
            for hid in [h for h in self._bindings if not self.live(h)][: len(self._bindings) - MAX_BINDINGS]:
                del self._bindings[hid]

    def release(self, host_id: str) -> None:
        """Forget ``host_id``'s binding (an admin deleted the host: anyone may announce it again)."""
        self._bindings.pop(host_id, None)

    # -- acting -------------------------------------------------------------------------

    def is_admin(self, caller: Caller) -> bool:
        ident = caller.identity
        if ident is not None:
            return ident.fingerprint == self.own_fingerprint or self.admins.match(caller)
        return not self.tls and in_networks(caller.ip, self.admin_addresses)

    def owns(self, caller: Caller, host_id: str) -> bool:
        """Whether ``host_id`` was announced by this caller (its certificate, or its address)."""
        bound = self._bindings.get(host_id)
        return bound is not None and bound == identity_key(caller, self.peer_name)

    def check_host(self, caller: Caller, host_id: str, what: str) -> None:
        """The host itself or an admin may ``what`` for ``host_id``; a host ID never announced is
        left to the RPC (it answers as for an unknown host)."""
        if host_id not in self._bindings and not self.live(host_id):
            return
        if self.owns(caller, host_id) or self.is_admin(caller):
            return
        raise PermissionDenied(f"{caller.describe()} may not {what} of host {host_id}")

    def check_admin(self, caller: Caller, what: str) -> None:
        if not self.is_admin(caller):
            raise PermissionDenied(
                f"{caller.describe()} may not {what}: only an admin may "
                + ("(security.admins)" if self.tls else "(security.adminAddresses)")
            )

    def vetted(self, host_id: str) -> bool:
        """Whether ``host_id`` passed the announce checks (a preheat's credentials go only to such)."""
        return host_id in self._bindings


# -- the daemon: only its scheduler commands it --------------------------------------------


def split_host(addr: str) -> str:
    """The host part of ``HOST:PORT`` / ``[V6]:PORT`` (a bare host as is)."""
    addr = addr.strip()
    for prefix in ("dns:///", "ipv4:", "ipv6:"):
        if addr.startswith(prefix):
            addr = addr[len(prefix) :]
    if addr.startswith("["):
        return addr[1:].split("]", 1)[0]
    if addr.count(":") == 1:
        return addr.rsplit(":", 1)[0]
    return addr


class SchedulerGate:
    """Whether a call to a daemon's upload service comes from one of its schedulers.

    ``addrs`` (a function: the daemon's ``scheduler.addrs`` as configured now).
    Under mTLS the caller's certificate must name ``certificate_name`` (CN or DNS
    SAN) when set, else the host of one of ``addrs`` (an IP SAN for an IP, a DNS
    SAN for a name). With TLS off the call's source address must be one of
    ``addrs``' IPs, names resolved again on each check.
    """

    def __init__(self, addrs: Callable[[], Sequence[str]], *, certificate_name: str = "") -> None:
        self.addrs = addrs
        self.certificate_name = certificate_name.lower().rstrip(".")

    async def allows(self, caller: Caller) -> bool:
        hosts = [split_host(a) for a in self.addrs()]
        ident = caller.identity
        if ident is not None:
            if self.certificate_name:
                return self.certificate_name in ident.dns_names or (
                    ident.common_name.lower() == self.certificate_name
                )
            return any(
                ident.has_ip(h) if normalize_ip(h) is not None else ident.has_dns_name(h) for h in hosts
            )
        if caller.ip is None:
            return False
        for h in hosts:
            if caller.ip in await _resolve(h):
                return True
        return False


async def _resolve(host: str) -> set[str]:
    literal = normalize_ip(host)
    if literal is not None:
        return {literal}
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError):
        return set()
    return {ip for info in infos if (ip := normalize_ip(str(info[4][0]))) is not None}


async def require_scheduler(gate: SchedulerGate | None, context: Any) -> None:
    """End the call with PERMISSION_DENIED unless it comes from one of the daemon's schedulers.

    Called first in every upload RPC that makes the daemon act (download, delete, update), so a
    stranger learns nothing of the request's subject (no NOT_FOUND for an unknown task)."""
    if gate is None:
        return
    caller = caller_of(context)
    if not await gate.allows(caller):
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"only this daemon's scheduler may ask it to do this, not {caller.describe()}",
        )
