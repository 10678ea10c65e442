"""The CA that signs per-host leaf certificates for TLS interception of CONNECT.

Either the configured ``proxy.hijackHTTPS.cert``/``key`` or one generated on
first start and kept under the daemon's data dir (``proxy-ca/ca.crt`` and
``ca.key``, the key readable by its owner only), so users trust it once
(``damselfly ca`` prints it). Leaf certificates are made on demand per host,
kept in memory, valid for a short time, and never written to disk.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ...errors import ConfigError

CA_DIR = "proxy-ca"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
_CA_DAYS = 3650
_LEAF_DAYS = 30


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def generate_ca(common_name: str = "Damselfly proxy CA") -> tuple[bytes, bytes]:
    """A new self-signed CA: (certificate PEM, private key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
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


def ensure_ca(data_dir: Path, cert: str = "", key: str = "") -> tuple[Path, Path]:
    """Paths of the CA to use: the configured pair, or the data dir's (generated if missing)."""
    if cert or key:
        if not (cert and key):
            raise ConfigError("proxy.hijackHTTPS needs both cert and key (or neither, to generate a CA)")
        return Path(cert), Path(key)
    cert_path, key_path = ca_paths(data_dir)
    if not (cert_path.exists() and key_path.exists()):
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        cert_pem, key_pem = generate_ca()
        _write_private(key_path, key_pem)
        cert_path.write_bytes(cert_pem)
    return cert_path, key_path


class CertificateAuthority:
    """Signs leaf certificates for intercepted hosts; caches one server SSLContext per host.

    Thread-safe (contexts may be built off the event loop).
    """

    def __init__(self, cert_path: Path, key_path: Path) -> None:
        try:
            self.cert_pem = Path(cert_path).read_bytes()
            self.cert = x509.load_pem_x509_certificate(self.cert_pem)
            key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load the proxy CA ({cert_path}, {key_path}): {e}") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey | _rsa_type()):
            raise ConfigError("the proxy CA key must be an EC or RSA key")
        self._key = key
        self._lock = threading.Lock()
        self._contexts: dict[str, ssl.SSLContext] = {}

    def leaf(self, host: str) -> tuple[bytes, bytes]:
        """A certificate for ``host`` (DNS name or IP) signed by this CA: (chain PEM, key PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=_LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())  # type: ignore[arg-type]
        )
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return chain, key_pem

    def server_context(self, host: str) -> ssl.SSLContext:
        """A server-side SSLContext presenting a leaf certificate for ``host``."""
        with self._lock:
            ctx = self._contexts.get(host)
            if ctx is not None:
                return ctx
        chain, key_pem = self.leaf(host)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        # load_cert_chain wants files: write them to a private temp dir, then remove them.
        with tempfile.TemporaryDirectory(prefix="dfly-leaf-") as tmp:
            cert_file, key_file = Path(tmp) / "leaf.crt", Path(tmp) / "leaf.key"
            cert_file.write_bytes(chain)
            _write_private(key_file, key_pem)
            ctx.load_cert_chain(cert_file, key_file)
        ctx.set_alpn_protocols(["http/1.1"])
        with self._lock:
            self._contexts.setdefault(host, ctx)
            return self._contexts[host]


def _rsa_type() -> type:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.RSAPrivateKey
