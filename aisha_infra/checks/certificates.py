"""Reading certificates: PEM files, the system trust store, public keys, and the
facts about one certificate (its names, CA or not, where its issuer is published)."""

from __future__ import annotations

import functools
import ipaddress
import re
import ssl
import warnings
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import AuthorityInformationAccessOID

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def parse_pem_certs(data: bytes) -> list[x509.Certificate]:
    """Every PEM certificate in `data`, in order (raises ValueError on a broken one)."""
    return [x509.load_pem_x509_certificate(block) for block in _PEM_CERT.findall(data)]


@functools.lru_cache(maxsize=1)
def system_roots() -> tuple[x509.Certificate, ...]:
    """The system trust store (Debian: ca-certificates), skipping entries
    `cryptography` cannot parse rather than failing on them."""
    path = ssl.get_default_verify_paths().cafile or SYSTEM_BUNDLE
    try:
        data = Path(path).read_bytes()
    except OSError:
        return ()
    roots = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # old roots with negative serials, etc.
        for block in _PEM_CERT.findall(data):
            try:
                roots.append(x509.load_pem_x509_certificate(block))
            except ValueError:
                continue
    return tuple(roots)


def load_trust_store(ca_bundle: str | None = None, *, include_system: bool = True) -> list[x509.Certificate]:
    """Trusted roots: the system store and/or the certificates in `ca_bundle`."""
    roots = list(system_roots()) if include_system else []
    if ca_bundle:
        roots.extend(parse_pem_certs(Path(ca_bundle).read_bytes()))
    return roots


def describe(cert: x509.Certificate) -> dict:
    """Subject, issuer, validity and names of a certificate, for reports."""
    dns_names, ips = alt_names(cert)
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "names": dns_names + [str(ip) for ip in ips],
        "ca": is_ca(cert),
    }


def public_key_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(pem: bytes):
    """The public key of a PEM private key (unencrypted) or public key."""
    try:
        return serialization.load_pem_private_key(pem, password=None).public_key()
    except (ValueError, TypeError):
        return serialization.load_pem_public_key(pem)


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def ca_issuers_urls(cert: x509.Certificate) -> list[str]:
    try:
        access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    return [d.access_location.value for d in access if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS]


def alt_names(cert: x509.Certificate) -> tuple[list[str], list]:
    """The DNS names and IP addresses of the subjectAltName (clients ignore the CN)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return san.get_values_for_type(x509.DNSName), san.get_values_for_type(x509.IPAddress)


def name_matches(domain: str, dns_names: list[str], ips: list) -> bool:
    """Do these subjectAltName entries cover `domain` (a name or an IP address)?"""
    try:
        return ipaddress.ip_address(domain) in ips
    except ValueError:
        pass
    wanted = domain.lower().rstrip(".")
    for name in dns_names:
        name = name.lower().rstrip(".")
        if name == wanted:
            return True
        # A wildcard covers exactly one leftmost label.
        if name.startswith("*.") and "." in wanted and wanted.split(".", 1)[1] == name[2:]:
            return True
    return False


def name_common_name(name: x509.Name) -> str:
    """The CN of a subject or issuer name, else the whole name."""
    values = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(values[0].value) if values else name.rfc4514_string()


def common_name(cert: x509.Certificate) -> str:
    return name_common_name(cert.subject)


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
