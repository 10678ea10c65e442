"""A CA for a fleet's mTLS and the host certificates it issues (``damselfly certs``).

``damselfly certs ca --out DIR`` makes ``DIR/ca.crt`` and ``DIR/ca.key`` (ECDSA
P-256, the key readable by its owner only); ``damselfly certs issue --ca DIR
--name HOST --ip 10.0.0.5 --dns node1 --out HOSTDIR`` makes ``HOST.crt`` and
``HOST.key`` for one host, its IPs and names as SANs (daemons and the
scheduler dial daemons by IP, so a daemon's certificate carries its IPs), both
server and client use, and copies ``ca.crt`` beside them: the three files
``tls.caCert``, ``tls.cert`` and ``tls.key`` name (docs/TLS.md). The CA is
made with the proxy CA's builder (:func:`..daemon.proxy.ca.generate_ca`).
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..daemon.proxy.ca import _write_private, generate_ca
from ..errors import ConfigError

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
HOST_DAYS = 825
_DNS_NAME = re.compile(r"^(?=.{1,253}$)(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")


@dataclass(frozen=True, slots=True)
class Issued:
    """The files one ``issue`` wrote."""

    cert: Path
    key: Path
    ca_cert: Path


def make_ca(out: Path, *, name: str = "Damselfly fleet CA", force: bool = False) -> tuple[Path, Path]:
    """A new CA in ``out`` (``ca.crt``, ``ca.key``); refuses to replace one unless ``force``."""
    out = Path(out)
    cert_path, key_path = out / CA_CERT, out / CA_KEY
    if not force and (cert_path.exists() or key_path.exists()):
        raise ConfigError(f"{out} already holds a CA ({CA_CERT}/{CA_KEY}); --force replaces it")
    out.mkdir(parents=True, exist_ok=True)
    cert_pem, key_pem = generate_ca(name)
    _write_private(key_path, key_pem)
    cert_path.write_bytes(cert_pem)
    return cert_path, key_path


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return None


def _sans(name: str, ips: Sequence[str], dns: Sequence[str]) -> list[x509.GeneralName]:
    """The SANs: each ``ips`` (must be IPs), each ``dns`` (must be DNS names), and ``name`` as either."""
    found_ips = []
    for value in ips:
        ip = _ip(value)
        if ip is None:
            raise ConfigError(f"--ip {value!r} is not an IP address")
        found_ips.append(ip)
    names = []
    for value in dns:
        if _ip(value) is not None or not _DNS_NAME.match(value):
            raise ConfigError(f"--dns {value!r} is not a DNS name")
        names.append(value.lower().rstrip("."))
    if (ip := _ip(name)) is not None:
        found_ips.insert(0, ip)
    elif _DNS_NAME.match(name):
        names.insert(0, name.lower().rstrip("."))
    out: list[x509.GeneralName] = [x509.IPAddress(ip) for ip in dict.fromkeys(found_ips)]
    return out + [x509.DNSName(n) for n in dict.fromkeys(names)]


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    cert_path, key_path = Path(ca_dir) / CA_CERT, Path(ca_dir) / CA_KEY
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as e:
        raise ConfigError(f"cannot read the CA in {ca_dir}: {e.filename}: {e.strerror}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"the CA in {ca_dir} cannot be loaded: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path} is not an EC key (make the CA with `damselfly certs ca`)")
    return cert, key, cert_path


def issue(
    ca_dir: Path,
    name: str,
    *,
    ips: Sequence[str] = (),
    dns: Sequence[str] = (),
    out: Path,
    days: int = HOST_DAYS,
) -> Issued:
    """A host certificate and key for ``name`` signed by the CA in ``ca_dir``, written to ``out``.

    SANs: every ``ips`` entry as an IP SAN, every ``dns`` entry (and ``name``
    when it is a DNS name or an IP) as such. Good for both ends of a link
    (serverAuth and clientAuth). Files: ``out/NAME.crt``, ``out/NAME.key``
    (owner-only) and a copy of ``ca.crt``.
    """
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"--name {name!r} cannot name a file")
    if days < 1:
        raise ConfigError(f"--days must be 1 or more, not {days}")
    ca_cert, ca_key, ca_path = _load_ca(ca_dir)
    sans = _sans(name, ips, dns)
    if not sans:
        raise ConfigError(f"no SAN for {name!r}: give --ip (daemons are dialed by IP) and/or --dns")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cert_out, key_out, ca_out = out / f"{name}.crt", out / f"{name}.key", out / CA_CERT
    _write_private(
        key_out,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    cert_out.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if ca_out.resolve() != ca_path.resolve():
        ca_out.write_bytes(ca_path.read_bytes())
    return Issued(cert_out, key_out, ca_out)
