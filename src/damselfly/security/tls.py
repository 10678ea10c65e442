"""Mutual TLS between Damselfly processes: loading ``tls.*``, credentials, peer identity.

One place makes every credential a link needs (docs/TLS.md):

- :func:`load_tls` reads ``tls.caCert``/``cert``/``key`` once and checks them
  (readable, PEM, the key belongs to the certificate, the CA issued it, not
  expired); a problem is a :class:`ConfigError` of one line naming the key
  and the file, so a process refuses to start instead of failing later with
  "Socket closed". All three empty: plaintext (None). Some but not all: refused.
- gRPC: :func:`server_credentials` (a client certificate from the CA is
  required) and :func:`make_channel` (presents ours, verifies the server's
  against the CA and the address dialed: an IP SAN for an IP, a DNS SAN for
  a name; or against ``target_name``, for an IP that came from that name).
- The piece port (Vortex over TLS): :func:`server_ssl_context` and
  :func:`client_ssl_context`, TLS 1.2 or later (1.3 when both sides have it),
  certificates required both ways, the server's checked against the address
  dialed.
- Another daemon (peer gRPC, piece port): :func:`peer_channel` and
  :func:`peer_server_name` check its certificate against its IP, or with
  ``tls.peerName`` set against that one name every daemon's certificate carries.
- Who is calling: :func:`grpc_peer_identity` (a servicer's ``context``) and
  :func:`ssl_peer_identity` (a piece connection's SSL object) give the
  verified certificate's identity: its IP and DNS SANs and subject CN.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ..config import TLSConfig
from ..errors import ConfigError

_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_KEYS = (("caCert", "ca_cert"), ("cert", "cert"), ("key", "key"))


@dataclass(frozen=True)
class TLSFiles:
    """A process's checked mTLS material: the CA bundle, its certificate chain and key (PEM)."""

    ca_cert: Path
    cert: Path
    key: Path
    ca_pem: bytes = field(repr=False)
    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    # ``tls.peerName``: daemons' certificates are checked against this DNS name, not their IP.
    peer_name: str = ""

    @functools.cached_property
    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem, private_key=self.key_pem, certificate_chain=self.cert_pem
        )


def _read(key: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror}") from None


def _certificates(key: str, path: str, pem: bytes) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(f"{key}: {path} holds no PEM certificate")
    return certs


def _public(key: Any) -> bytes:
    return bytes(
        key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _issued_by(chain: list[x509.Certificate], cas: list[x509.Certificate]) -> bool:
    for cert in chain:
        for ca in cas:
            try:
                cert.verify_directly_issued_by(ca)
            except (InvalidSignature, ValueError, TypeError):
                continue
            return True
    return False


def _check_peer_name(name: str) -> str:
    """``tls.peerName`` lower-cased, or a :class:`ConfigError` when it is not a DNS name."""
    text = name.strip().lower().rstrip(".")
    if not all(_DNS_LABEL.fullmatch(label) for label in text.split(".")) or _is_ip(text):
        raise ConfigError(
            f"tls.peerName: {name!r} is not a DNS name (the name every daemon's certificate carries)"
        )
    return text


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def load_tls(
    config: TLSConfig, names: Mapping[str, str] | None = None, *, presents_peer_name: bool = False
) -> TLSFiles | None:
    """The checked mTLS files of ``config`` (None: all three unset, plaintext).

    Raises :class:`ConfigError` naming the key and the file for anything that
    would make the process fail later: a key not set while the others are, a
    file missing or unreadable, no PEM in it, a key that is not the
    certificate's, a certificate the CA did not issue or that has expired;
    ``tls.peerName`` that is not a DNS name, set without the files, or (with
    ``presents_peer_name``: a daemon, whose certificate others check against
    it) not among the certificate's DNS SANs. ``names``: how the user set each
    of ``caCert``, ``cert``, ``key`` (default ``tls.caCert``...; a command's
    flags, say).
    """
    label = {k: (names or {}).get(k, f"tls.{k}") for k, _ in _KEYS}
    values = {name: str(getattr(config, attr)) for name, attr in _KEYS}
    peer_name = _check_peer_name(config.peer_name) if config.peer_name else ""
    if not any(values.values()):
        if peer_name:
            raise ConfigError(
                f"tls.peerName is set but {label['caCert']}, {label['cert']} and {label['key']} are not: "
                "it names the daemons' certificates, so it needs mTLS"
            )
        return None
    missing = [name for name, value in values.items() if not value]
    if missing:
        given = ", ".join(label[n] for n, v in values.items() if v)
        raise ConfigError(
            f"{label[missing[0]]} is not set but {given} is: mTLS needs "
            f"{label['caCert']}, {label['cert']} and {label['key']} together (or none of them)"
        )
    ca_path, cert_path, key_path = values["caCert"], values["cert"], values["key"]
    ca_pem = _read(label["caCert"], ca_path)
    cert_pem = _read(label["cert"], cert_path)
    key_pem = _read(label["key"], key_path)
    cas = _certificates(label["caCert"], ca_path, ca_pem)
    chain = _certificates(label["cert"], cert_path, cert_pem)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        why = (
            "is encrypted (give an unencrypted key)"
            if isinstance(e, TypeError)
            else "holds no PEM private key"
        )
        raise ConfigError(f"{label['key']}: {key_path} {why}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ConfigError(f"{label['key']}: {key_path} is neither an EC nor an RSA key")
    if _public(key.public_key()) != _public(chain[0].public_key()):
        raise ConfigError(f"{label['key']}: {key_path} is not the key of the certificate in {cert_path}")
    if not _issued_by(chain, cas):
        raise ConfigError(f"{label['cert']}: {cert_path} is not issued by the CA in {ca_path}")
    expires = chain[0].not_valid_after_utc
    if expires < datetime.datetime.now(datetime.UTC):
        raise ConfigError(f"{label['cert']}: {cert_path} expired on {expires:%Y-%m-%d %H:%M} UTC")
    if presents_peer_name and peer_name:
        own = identity_from_der(chain[0].public_bytes(serialization.Encoding.DER))
        if not own.has_dns_name(peer_name):
            raise ConfigError(
                f"{label['cert']}: {cert_path} does not carry tls.peerName {peer_name} as a DNS SAN "
                f"(it has {', '.join(sorted(own.dns_names)) or 'none'}): other daemons would refuse it"
            )
    return TLSFiles(
        Path(ca_path), Path(cert_path), Path(key_path), ca_pem, cert_pem, key_pem, peer_name=peer_name
    )


# -- gRPC ------------------------------------------------------------------------------


def server_credentials(tls: TLSFiles) -> grpc.ServerCredentials:
    """A TCP gRPC listener's credentials: our certificate, a client certificate from the CA required."""
    return grpc.ssl_server_credentials(
        [(tls.key_pem, tls.cert_pem)], root_certificates=tls.ca_pem, require_client_auth=True
    )


def make_channel(
    addr: str,
    tls: TLSFiles | None,
    *,
    options: Sequence[tuple[str, Any]] = (),
    target_name: str = "",
) -> grpc.aio.Channel:
    """A gRPC channel to ``addr`` (HOST:PORT): mTLS when ``tls`` is set, plaintext otherwise.

    The server's certificate must come from our CA and name the host part of
    ``addr`` among its SANs (an IP SAN when dialed by IP), or ``target_name``
    when given (a DNS SAN): ``addr`` is still what is dialed, so an IP that a
    name resolved to is checked against the name.
    """
    if tls is None:
        return grpc.aio.insecure_channel(addr, options=list(options))
    opts = list(options)
    if target_name:
        opts.append(("grpc.ssl_target_name_override", target_name))
    return grpc.aio.secure_channel(addr, tls.channel_credentials, options=opts)


def peer_channel(
    addr: str, tls: TLSFiles | None, *, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """A channel to another daemon's upload gRPC at ``addr`` (its IP): its certificate is checked
    against that IP, or against ``tls.peerName`` when set."""
    return make_channel(addr, tls, options=options, target_name=tls.peer_name if tls else "")


def peer_server_name(tls: TLSFiles | None, host: str) -> str:
    """The name a daemon's piece port at ``host`` must present: ``tls.peerName``, else ``host``."""
    return tls.peer_name if tls is not None and tls.peer_name else host


# -- the piece port (Vortex over TLS) -------------------------------------------------


def _context(tls: TLSFiles, purpose: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(tls.cert, tls.key)
    ctx.load_verify_locations(cadata=tls.ca_pem.decode("ascii", "replace"))
    return ctx


def server_ssl_context(tls: TLSFiles) -> ssl.SSLContext:
    """The piece server's context: a client certificate from the CA required."""
    return _context(tls, ssl.PROTOCOL_TLS_SERVER)


def client_ssl_context(tls: TLSFiles) -> ssl.SSLContext:
    """A child's context toward parents' piece ports: ours presented, theirs checked
    against the CA and the address dialed (``server_hostname``, an IP SAN for an IP)."""
    ctx = _context(tls, ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = True
    return ctx


# -- who is calling ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """A verified peer certificate's identity: its IP and DNS SANs, subject CN and fingerprint.

    ``ips`` are normalized (``ipaddress`` form), ``dns_names`` lower-cased;
    ``fingerprint`` is the SHA-256 of the certificate (DER), hex.
    """

    common_name: str
    ips: frozenset[str]
    dns_names: frozenset[str]
    fingerprint: str

    def has_ip(self, ip: str) -> bool:
        """Whether ``ip`` (any textual form, IPv4-mapped IPv6 included) is one of the IP SANs."""
        try:
            addr = ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return str(addr) in self.ips

    def has_dns_name(self, name: str) -> bool:
        return name.lower().rstrip(".") in self.dns_names


@functools.lru_cache(maxsize=1024)
def identity_from_der(der: bytes) -> PeerIdentity:
    """The identity in a certificate (DER)."""
    cert = x509.load_der_x509_certificate(der)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = frozenset(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))
        dns = frozenset(n.lower().rstrip(".") for n in sans.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        ips, dns = frozenset(), frozenset()
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if cns else ""
    return PeerIdentity(
        common_name=cn if isinstance(cn, str) else cn.decode("utf-8", "replace"),
        ips=ips,
        dns_names=dns,
        fingerprint=hashlib.sha256(der).hexdigest(),
    )


def grpc_peer_identity(context: Any) -> PeerIdentity | None:
    """The verified client certificate's identity of a gRPC call (a servicer's ``context``).

    None when the call came over plaintext (or the unix socket). Only a
    certificate from the CA gets this far: the listener requires one.
    """
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert") if auth else None
    if not pems:
        return None
    pem = pems[0]
    return _identity_from_pem(pem if isinstance(pem, bytes) else str(pem).encode())


@functools.lru_cache(maxsize=1024)
def _identity_from_pem(pem: bytes) -> PeerIdentity:
    return identity_from_der(x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER))


def ssl_peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> PeerIdentity | None:
    """The verified peer certificate's identity of a TLS connection (None: no TLS, or no certificate).

    On an asyncio stream: ``ssl_peer_identity(writer.get_extra_info("ssl_object"))``.
    """
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return identity_from_der(der) if der else None
