"""The CA that signs per-host leaf certificates for TLS interception of CONNECT.

Either the configured ``proxy.hijackHTTPS.cert``/``key`` or one generated on
first start and kept under the daemon's data dir (``proxy-ca/ca.crt`` and
``ca.key``, the key readable by its owner only), so users trust it once
(``damselfly ca`` prints it). Leaf certificates are made on demand per host,
kept in memory until a day before they expire, valid for a short time, and never
written to disk. A CA generated for a known list of host names (every
``hijackHTTPS.hosts`` rule a literal name) carries name constraints permitting
only those names, so even a stolen key signs for nothing else.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
import ssl
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ...errors import ConfigError

log = logging.getLogger(__name__)

CA_DIR = "proxy-ca"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
_CA_DAYS = 3650
_LEAF_DAYS = 30
_RENEW_BEFORE = datetime.timedelta(days=1)  # a cached leaf is replaced this long before it expires


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def literal_hosts(patterns: Sequence[str]) -> list[str] | None:
    """The host names ``patterns`` (hijack regexes) name, when each is one DNS name written
    plainly (dots escaped or not: ``registry\\.example\\.com``); None when any is a real
    pattern, carries a port or is an IPv4 address."""
    hosts = []
    for pattern in patterns:
        name = pattern.replace("\\.", ".")
        if not re.fullmatch(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*", name) or re.fullmatch(r"[0-9.]+", name):
            return None
        hosts.append(name.lower())
    return hosts or None


def generate_ca(
    common_name: str = "Damselfly proxy CA", *, permitted: Sequence[str] = ()
) -> tuple[bytes, bytes]:
    """A new self-signed CA: (certificate PEM, private key PEM). ``permitted``: the only
    DNS names it may sign for (a critical name constraint); empty: any."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    builder = x509.CertificateBuilder()
    if permitted:
        subtrees: list[x509.GeneralName] = [x509.DNSName(h) for h in permitted]
        builder = builder.add_extension(
            x509.NameConstraints(permitted_subtrees=subtrees, excluded_subtrees=None), critical=True
        )
    cert = (
        builder.subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def ca_paths(data_dir: Path) -> tuple[Path, Path]:
    d = Path(data_dir) / CA_DIR
    return d / CA_CERT, d / CA_KEY


def ensure_ca(
    data_dir: Path, cert: str = "", key: str = "", *, permitted: Sequence[str] = ()
) -> tuple[Path, Path]:
    """Paths of the CA to use: the configured pair, or the data dir's (generated if missing,
    constrained to ``permitted`` names when given)."""
    if cert or key:
        if not (cert and key):
            raise ConfigError("proxy.hijackHTTPS needs both cert and key (or neither, to generate a CA)")
        return Path(cert), Path(key)
    cert_path, key_path = ca_paths(data_dir)
    if not (cert_path.exists() and key_path.exists()):
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        cert_pem, key_pem = generate_ca(permitted=permitted)
        _write_private(key_path, key_pem)
        cert_path.write_bytes(cert_pem)
    return cert_path, key_path


def load_ca(data_dir: Path, cert: str, key: str, patterns: Sequence[str]) -> CertificateAuthority:
    """The proxy's CA for hijack rules ``patterns``: the configured pair, else the data dir's,
    made (name-constrained when the rules name plain hosts) if missing. Warns when a CA made
    earlier for other hosts may not sign for these."""
    hosts = literal_hosts(patterns) or ()
    cert_path, key_path = ensure_ca(data_dir, cert, key, permitted=hosts)
    ca = CertificateAuthority(cert_path, key_path)
    for host in hosts:
        if not ca.permits(host):
            log.warning(
                "the proxy CA %s may not sign for %s (its name constraints name other hosts): "
                "clients will refuse the interception; remove %s to have a new CA made",
                cert_path, host, cert_path.parent,
            )  # fmt: skip
    return ca


class LazyCA:
    """The proxy's CA, made or loaded on first use: a proxy with no hijack rules never makes
    one (its owner asks at start when rules exist, so a bad CA file fails the start)."""

    def __init__(self, data_dir: Path, cert: str, key: str, patterns: Sequence[str]) -> None:
        self._args = (data_dir, cert, key, list(patterns))
        self._lock = threading.Lock()
        self._ca: CertificateAuthority | None = None

    def get(self) -> CertificateAuthority:
        with self._lock:
            if self._ca is None:
                self._ca = load_ca(*self._args)
            return self._ca


class CertificateAuthority:
    """Signs leaf certificates for intercepted hosts; caches one server SSLContext per host
    until a day before its certificate expires (``clock``: the time, UTC).

    Thread-safe (contexts may be built off the event loop).
    """

    def __init__(
        self, cert_path: Path, key_path: Path, *, clock: Callable[[], datetime.datetime] = _now
    ) -> None:
        self.cert_path = Path(cert_path)
        try:
            self.cert_pem = Path(cert_path).read_bytes()
            self.cert = x509.load_pem_x509_certificate(self.cert_pem)
            key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load the proxy CA ({cert_path}, {key_path}): {e}") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey | _rsa_type()):
            raise ConfigError("the proxy CA key must be an EC or RSA key")
        self._key = key
        self._clock = clock
        self._lock = threading.Lock()
        self._contexts: dict[str, tuple[ssl.SSLContext, datetime.datetime]] = {}  # host -> (it, renew at)
        self.leaves_made = 0

    def permits(self, host: str) -> bool:
        """Whether this CA's name constraints (if any) let it sign for ``host``."""
        try:
            constraints = self.cert.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            return True
        names = [n.value.lower() for n in constraints.permitted_subtrees or () if isinstance(n, x509.DNSName)]
        host = host.lower()
        return not names or any(host == n or host.endswith("." + n) for n in names)

    def leaf(self, host: str) -> tuple[bytes, bytes]:
        """A certificate for ``host`` (DNS name or IP) signed by this CA: (chain PEM, key PEM)."""
        chain, key_pem, _ = self._leaf(host)
        return chain, key_pem

    def _leaf(self, host: str) -> tuple[bytes, bytes, datetime.datetime]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = self._clock()
        # Never beyond the CA's own end.
        not_after = min(now + datetime.timedelta(days=_LEAF_DAYS), self.cert.not_valid_after_utc)
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
            # Not a name that looks like a host: a name-constrained CA's checks would take it for one.
            common_name = f"IP {host}"
        except ValueError:
            san = x509.DNSName(host)
            common_name = host[:64]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())  # type: ignore[arg-type]
        )
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.leaves_made += 1
        return chain, key_pem, not_after

    def server_context(self, host: str) -> ssl.SSLContext:
        """A server-side SSLContext presenting a leaf certificate for ``host``: the cached one,
        or a new one when none is cached or the cached one's certificate expires within a day."""
        with self._lock:
            cached = self._contexts.get(host)
            if cached is not None and self._clock() < cached[1]:
                return cached[0]
        chain, key_pem, not_after = self._leaf(host)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        # load_cert_chain wants files: write them to a private temp dir, then remove them.
        with tempfile.TemporaryDirectory(prefix="dfly-leaf-") as tmp:
            cert_file, key_file = Path(tmp) / "leaf.crt", Path(tmp) / "leaf.key"
            cert_file.write_bytes(chain)
            _write_private(key_file, key_pem)
            ctx.load_cert_chain(cert_file, key_file)
        ctx.set_alpn_protocols(["http/1.1"])
        renew_at = not_after - min(_RENEW_BEFORE, (not_after - self._clock()) / 2)
        with self._lock:
            cached = self._contexts.get(host)
            if cached is not None and self._clock() < cached[1]:
                return cached[0]  # another thread made one meanwhile
            self._contexts[host] = (ctx, renew_at)
            return ctx


def _rsa_type() -> type:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.RSAPrivateKey
