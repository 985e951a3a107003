"""Test PKI made with `cryptography`: roots, intermediates and leaves shaped like the
real ones (Let's Encrypt style: root -> intermediate -> leaf with a SAN), plus the
broken variants `aisha-infra diagnose` must tell apart.

EC P-256 keys keep generation fast (a few ms per certificate)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


@dataclass
class Issued:
    """A certificate with its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Aisha Test PKI"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(subject, issuer_name, public_key, not_before, not_after):
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def make_root(common_name: str = "Aisha Test Root CA") -> Issued:
    key = new_key()
    name = _name(common_name)
    cert = (
        _builder(name, name, key.public_key(), NOW - 30 * DAY, NOW + 3650 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def make_intermediate(issuer: Issued, common_name: str = "Aisha Test Intermediate") -> Issued:
    key = new_key()
    cert = (
        _builder(
            _name(common_name),
            issuer.cert.subject,
            key.public_key(),
            NOW - 30 * DAY,
            NOW + 1825 * DAY,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(_authority_key_id(issuer.key), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    return Issued(cert, key)


def make_leaf(
    issuer: Issued,
    names: list[str] = ("aibots.test",),
    *,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
    ca_issuers_url: str | None = "http://ca.test/issuer.der",
) -> Issued:
    """A server certificate for `names` (DNS names or IP addresses), valid 90 days by default.
    `ca_issuers_url`: where its issuer can be fetched (AIA), as public CAs say; None, as
    private CAs often make them."""
    key = key or new_key()
    not_before = not_before or NOW - 10 * DAY
    not_after = not_after or not_before + 90 * DAY
    cert = (
        _builder(_name(names[0]), issuer.cert.subject, key.public_key(), not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .add_extension(_authority_key_id(issuer.key), critical=False)
    )
    if ca_issuers_url:
        access = x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(ca_issuers_url))
        cert = cert.add_extension(x509.AuthorityInformationAccess([access]), critical=False)
    return Issued(cert.sign(issuer.key, hashes.SHA256()), key)


def make_self_signed(names: list[str] = ("aibots.test",)) -> Issued:
    """What the project's tls_mode=self-signed makes (`openssl req -x509 -addext
    subjectAltName=...`): one certificate, its own issuer, marked CA by openssl's defaults."""
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        _builder(name, name, key.public_key(), NOW - DAY, NOW + 365 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_authority_key_id(key), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def write_pem(path: Path, *parts: bytes) -> Path:
    path.write_bytes(b"".join(parts))
    return path


def _general_names(names) -> list[x509.GeneralName]:
    general_names: list[x509.GeneralName] = []
    for name in names:
        try:
            general_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general_names.append(x509.DNSName(name))
    return general_names


def _authority_key_id(issuer_key: ec.EllipticCurvePrivateKey) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())


def _key_usage(ca: bool) -> x509.KeyUsage:
    """Let's Encrypt's shape: CAs sign certificates and CRLs, leaves only sign handshakes."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )
