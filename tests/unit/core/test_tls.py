"""``damselfly certs`` and the checks of ``tls.*`` (:func:`damselfly.security.tls.load_tls`)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from damselfly.config import TLSConfig
from damselfly.errors import ConfigError
from damselfly.security.certs import issue, make_ca
from damselfly.security.tls import (
    client_ssl_context,
    identity_from_der,
    load_tls,
    server_credentials,
    server_ssl_context,
)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    make_ca(tmp_path / "ca")
    return tmp_path / "ca"


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_issue_puts_the_hosts_ips_and_names_in_the_sans_for_both_ends(ca: Path, tmp_path: Path) -> None:
    out = issue(ca, "node1", ips=["10.0.0.5", "fd00::5"], dns=["Node1.example"], out=tmp_path / "n1")
    cert = _cert(out.cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("fd00::5"),
    ]
    assert sans.get_values_for_type(x509.DNSName) == ["node1", "node1.example"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.issuer == _cert(ca / "ca.crt").subject
    assert out.key.stat().st_mode & 0o077 == 0
    assert (ca / "ca.key").stat().st_mode & 0o077 == 0
    assert out.ca_cert.read_bytes() == (ca / "ca.crt").read_bytes()
    assert cert.public_key().public_numbers().curve.name == "secp256r1"  # type: ignore[union-attr]
    identity = identity_from_der(cert.public_bytes(serialization.Encoding.DER))
    assert identity.common_name == "node1"
    assert identity.has_ip("10.0.0.5") and identity.has_ip("::ffff:10.0.0.5") and identity.has_ip("fd00:0::5")
    assert not identity.has_ip("10.0.0.6") and not identity.has_ip("node1")
    assert identity.has_dns_name("NODE1.example.") and not identity.has_dns_name("node2")


def test_an_ip_given_as_the_name_is_an_ip_san(ca: Path, tmp_path: Path) -> None:
    sans = _cert(issue(ca, "10.1.2.3", out=tmp_path).cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert sans.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    assert sans.value.get_values_for_type(x509.DNSName) == []


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"ips": ["10.0.0.300"]}, "--ip '10.0.0.300' is not an IP address"),
        ({"dns": ["bad name"]}, "--dns 'bad name' is not a DNS name"),
        ({"dns": ["10.0.0.1"]}, "--dns '10.0.0.1' is not a DNS name"),
        ({"days": 0}, "--days must be 1 or more"),
    ],
)
def test_issue_refuses_bad_input(ca: Path, tmp_path: Path, kwargs: dict[str, object], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        issue(ca, "node", out=tmp_path / "out", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "out" / "node.key").exists()


def test_make_ca_does_not_replace_a_ca_unless_forced(ca: Path) -> None:
    before = (ca / "ca.key").read_bytes()
    with pytest.raises(ConfigError, match="already holds a CA"):
        make_ca(ca)
    assert (ca / "ca.key").read_bytes() == before
    make_ca(ca, force=True)
    assert (ca / "ca.key").read_bytes() != before


def test_issue_without_a_ca_says_which_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"cannot read the CA in {tmp_path}: .*ca.crt"):
        issue(tmp_path, "node", ips=["10.0.0.1"], out=tmp_path / "out")


# -- load_tls ----------------------------------------------------------------------------------


def _config(ca: Path, cert: Path, key: Path) -> TLSConfig:
    return TLSConfig(ca_cert=str(ca), cert=str(cert), key=str(key))


def test_no_tls_keys_is_plaintext_and_a_full_set_loads(ca: Path, tmp_path: Path) -> None:
    assert load_tls(TLSConfig()) is None
    host = issue(ca, "node", ips=["127.0.0.1"], out=tmp_path / "node")
    files = load_tls(_config(host.ca_cert, host.cert, host.key))
    assert files is not None
    assert files.cert_pem == host.cert.read_bytes() and files.ca_pem == host.ca_cert.read_bytes()
    # The builders take them as they are.
    server_credentials(files)
    assert files.channel_credentials is files.channel_credentials
    for ctx in (server_ssl_context(files), client_ssl_context(files)):
        assert ctx.verify_mode is ssl.CERT_REQUIRED
        assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    assert client_ssl_context(files).check_hostname


@pytest.mark.parametrize(
    ("given", "error"),
    [
        ({"cert", "key"}, "tls.caCert is not set but tls.cert, tls.key is"),
        ({"ca_cert", "key"}, "tls.cert is not set but tls.caCert, tls.key is"),
        ({"ca_cert"}, "tls.cert is not set but tls.caCert is"),
        ({"key"}, "tls.caCert is not set but tls.key is"),
    ],
)
def test_a_partial_tls_config_is_refused_naming_the_missing_key(
    ca: Path, tmp_path: Path, given: set[str], error: str
) -> None:
    host = issue(ca, "node", ips=["127.0.0.1"], out=tmp_path / "node")
    values = {"ca_cert": str(host.ca_cert), "cert": str(host.cert), "key": str(host.key)}
    with pytest.raises(ConfigError, match=error):
        load_tls(TLSConfig(**{k: v for k, v in values.items() if k in given}))


def test_each_bad_file_is_named_with_its_key(ca: Path, tmp_path: Path) -> None:
    host = issue(ca, "node", ips=["127.0.0.1"], out=tmp_path / "node")
    make_ca(tmp_path / "other")
    stranger = issue(tmp_path / "other", "other", ips=["127.0.0.1"], out=tmp_path / "stranger")
    missing = tmp_path / "missing.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        (_config(missing, host.cert, host.key), f"tls.caCert: cannot read {missing}: No such file"),
        (_config(host.ca_cert, tmp_path, host.key), f"tls.cert: cannot read {tmp_path}: Is a directory"),
        (_config(garbage, host.cert, host.key), f"tls.caCert: {garbage} holds no PEM certificate"),
        (_config(host.ca_cert, garbage, host.key), f"tls.cert: {garbage} holds no PEM certificate"),
        (_config(host.ca_cert, host.cert, garbage), f"tls.key: {garbage} holds no PEM private key"),
        (
            _config(host.ca_cert, host.cert, stranger.key),
            f"tls.key: {stranger.key} is not the key of the certificate in {host.cert}",
        ),
        (
            _config(host.ca_cert, stranger.cert, stranger.key),
            f"tls.cert: {stranger.cert} is not issued by the CA in {host.ca_cert}",
        ),
    ]
    for config, error in cases:
        with pytest.raises(ConfigError) as caught:
            load_tls(config)
        assert str(caught.value).startswith(error)
        assert "\n" not in str(caught.value)


def test_an_expired_certificate_is_refused(ca: Path, tmp_path: Path) -> None:
    host = issue(ca, "node", ips=["127.0.0.1"], out=tmp_path / "node")
    ca_key = serialization.load_pem_private_key((ca / "ca.key").read_bytes(), password=None)
    old = _cert(host.cert)
    now = datetime.datetime.now(datetime.UTC)
    expired = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(old.issuer)
        .public_key(old.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=10))
        .not_valid_after(now - datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    host.cert.write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ConfigError, match=f"tls.cert: {host.cert} expired on "):
        load_tls(_config(host.ca_cert, host.cert, host.key))


def test_a_command_names_its_own_flags(ca: Path, tmp_path: Path) -> None:
    host = issue(ca, "node", ips=["127.0.0.1"], out=tmp_path / "node")
    flags = {"caCert": "--tls-ca-cert", "cert": "--tls-cert", "key": "--tls-key"}
    with pytest.raises(ConfigError, match="--tls-key is not set but --tls-ca-cert, --tls-cert is"):
        load_tls(TLSConfig(ca_cert=str(host.ca_cert), cert=str(host.cert)), flags)


def _files(ca: Path, tmp_path: Path, name: str, **kw: object) -> TLSConfig:
    out = issue(ca, name, out=tmp_path / name, **kw)  # type: ignore[arg-type]
    return TLSConfig(ca_cert=str(out.ca_cert), cert=str(out.cert), key=str(out.key))


def test_peer_name_is_a_dns_name_the_daemons_certificate_carries(ca: Path, tmp_path: Path) -> None:
    shared = _files(ca, tmp_path, "peer.fleet.internal")
    shared.peer_name = "Peer.Fleet.Internal."
    tls = load_tls(shared, presents_peer_name=True)
    assert tls is not None and tls.peer_name == "peer.fleet.internal"
    node = _files(ca, tmp_path, "node", ips=["10.0.0.5"])
    node.peer_name = "peer.fleet.internal"
    assert load_tls(node) is not None  # a scheduler only checks daemons against it
    with pytest.raises(ConfigError, match=r"^tls\.cert: .*node\.crt does not carry tls\.peerName peer"):
        load_tls(node, presents_peer_name=True)
    for bad in ("10.0.0.5", "peer_fleet", "-peer.fleet", "peer..fleet", "pèer.fleet"):
        node.peer_name = bad
        with pytest.raises(ConfigError, match=r"^tls\.peerName: .* is not a DNS name"):
            load_tls(node)
    with pytest.raises(ConfigError, match=r"^tls\.peerName is set but tls\.caCert, tls\.cert and tls\.key"):
        load_tls(TLSConfig(peer_name="peer.fleet.internal"))
