"""Why a TLS certificate chain fails, in words an operator can act on.

`curl: (60) SSL certificate problem: unable to get local issuer certificate` has
several causes that need different fixes. `analyze_chain` tells them apart from
data only (the certificates a server sent, the trusted roots, the domain and the
time), so each cause has a unit test; `fetch_served_chain` is the one network part:
it asks `openssl s_client` for the certificates exactly as sent, because Python's
ssl module exposes the unverified chain only from 3.13 on.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import re
import ssl
import subprocess
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID
from cryptography.hazmat.primitives import serialization

from aisha_infra.deploy import paths

EXPIRY_WARN_DAYS = 21
MAX_CHAIN_LENGTH = 8
# Names that give away a test CA (Let's Encrypt staging, old and new; Pebble).
TEST_CA_MARKERS = ("(STAGING)", "Fake LE", "Pebble")
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


@dataclass(frozen=True)
class Finding:
    """One result: `check` is a stable id (e.g. "tls.incomplete_chain"), `severity`
    one of ok/warn/error, `fix` what to do (empty when nothing is wrong)."""

    check: str
    severity: str
    message: str
    fix: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    def explain(self) -> str:
        return f"{self.message} Fix: {self.fix}" if self.fix else self.message


@dataclass(frozen=True)
class ServedChain:
    """What a TLS server sent: its certificates in order, the protocol negotiated,
    or why none could be read."""

    certs: list[x509.Certificate] = field(default_factory=list)
    protocol: str | None = None
    error: str | None = None


# --- reading certificates ----------------------------------------------------------


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
    dns_names, ips = _alt_names(cert)
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "names": dns_names + [str(ip) for ip in ips],
        "ca": _is_ca(cert),
    }


def public_key_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(pem: bytes):
    """The public key of a PEM private key (unencrypted) or public key."""
    try:
        return serialization.load_pem_private_key(pem, password=None).public_key()
    except (ValueError, TypeError):
        return serialization.load_pem_public_key(pem)


# --- the analysis ------------------------------------------------------------------------


def analyze_chain(
    sent: list[x509.Certificate],
    roots: list[x509.Certificate],
    domain: str,
    now: datetime.datetime,
    *,
    tls_mode: str | None = None,
) -> list[Finding]:
    """Findings about a chain as sent by a server (leaf first, ideally): order,
    completeness, trust, name, validity. `tls_mode` is the host's setting when
    known ("self-signed" makes a self-signed certificate expected, not an error)."""
    if not sent:
        return [Finding("tls.chain", "error", "The server sent no certificate.", _HANDSHAKE_FIX)]
    leaf = pick_leaf(sent, domain)
    pool = [c for c in sent if c != leaf]
    path, outcome = _build_path(leaf, pool, roots)

    findings = _order_findings(sent, leaf, path, outcome, domain)
    findings += _trust_findings(leaf, path, outcome, pool, domain, tls_mode)
    findings.append(name_finding(leaf, domain))
    findings += _validity_findings(path, now, domain)
    if outcome == "trusted" and len(path) > 1 and not _errors(findings):
        findings += _strict_profile_findings(leaf, path, roots, domain, now)
    return findings


def key_match_finding(cert: x509.Certificate, public_key, cert_label: str, key_label: str, domain: str) -> Finding:
    """Does the private key (given by its public half) belong to the certificate?"""
    if public_key_der(cert.public_key()) == public_key_der(public_key):
        return Finding("tls.key_match", "ok", f"The key {key_label} belongs to the certificate {cert_label}.")
    return Finding(
        "tls.key_mismatch",
        "error",
        f"The private key {key_label} does not belong to the certificate {cert_label} (their public keys "
        "differ). nginx refuses such a pair ('key values mismatch'), so it keeps an old configuration or "
        "does not start, and clients see a handshake failure or an old certificate.",
        f"Point ssl_certificate_key at the key issued with this certificate "
        f"(Let's Encrypt: {paths.LETSENCRYPT_LIVE_DIR}/{domain}/privkey.pem next to fullchain.pem), "
        "then `nginx -t && systemctl reload nginx`.",
    )


def analyze_cert_file(
    certs: list[x509.Certificate], public_key, cert_path: str, key_path: str, domain: str
) -> list[Finding]:
    """Findings about the certificate file nginx loads and its key: nginx serves the
    file as is and pairs the key with the FIRST certificate in it."""
    if not certs:
        return [
            Finding(
                "tls.cert_file",
                "error",
                f"{cert_path} holds no PEM certificate.",
                f"Point ssl_certificate at the certificate chain (Let's Encrypt: "
                f"{paths.LETSENCRYPT_LIVE_DIR}/{domain}/fullchain.pem).",
            )
        ]
    key_der = public_key_der(public_key)
    matching = [i for i, cert in enumerate(certs) if public_key_der(cert.public_key()) == key_der]
    if matching and matching[0] > 0:
        return [
            Finding(
                "tls.chain_order",
                "error",
                f"{cert_path} is in the wrong order: the certificate that belongs to {key_path} is number "
                f"{matching[0] + 1}, but nginx pairs the key with the first one "
                f"('{_cn(certs[0])}'), so `nginx -t` reports 'key values mismatch'.",
                f"Put the server certificate first, then its intermediates: use "
                f"{paths.LETSENCRYPT_LIVE_DIR}/{domain}/fullchain.pem as is, or rebuild with "
                "`cat cert.pem chain.pem > fullchain.pem`.",
            )
        ]
    findings = [key_match_finding(certs[0], public_key, cert_path, key_path, domain)]
    if len(certs) == 1 and not _self_issued(certs[0]):
        findings.append(
            Finding(
                "tls.incomplete_chain",
                "error",
                f"{cert_path} holds only the server certificate, not the intermediate "
                f"'{_name_cn(certs[0].issuer)}' that signed it.",
                _fullchain_fix(domain),
            )
        )
    return findings


def name_finding(leaf: x509.Certificate, domain: str) -> Finding:
    dns_names, ips = _alt_names(leaf)
    names = dns_names + [str(ip) for ip in ips]
    if _matches(domain, dns_names, ips):
        return Finding("tls.name", "ok", f"The certificate covers {domain} (names: {', '.join(names)}).")
    if not names:
        message = (
            f"The certificate has no subjectAltName (only CN={_cn(leaf)}); clients ignore the CN, "
            f"so it matches no name, {domain} included."
        )
    else:
        message = f"The certificate is for {', '.join(names)}, not for {domain}."
    return Finding(
        "tls.name_mismatch",
        "error",
        message,
        f"Serve a certificate whose subjectAltName includes {domain} (certbot: `-d {domain}`), and "
        f"check that the nginx server block for {domain} points ssl_certificate at it: another "
        "site's certificate may be served.",
    )


def protocol_finding(protocol: str | None) -> Finding:
    if protocol in ("TLSv1.2", "TLSv1.3"):
        return Finding("tls.protocol", "ok", f"Negotiated {protocol}.")
    return Finding(
        "tls.protocol",
        "warn",
        f"Negotiated {protocol or 'an unknown protocol'}; only TLSv1.2 and TLSv1.3 are safe.",
        "Set `ssl_protocols TLSv1.2 TLSv1.3;` in the nginx site and reload nginx.",
    )


def chain_trusted(findings: list[Finding]) -> bool:
    """Will a verifying client accept the chain these findings describe?"""
    return not _errors(findings) and any(f.check == "tls.trust" and f.severity == "ok" for f in findings)


def first_error(findings: list[Finding]) -> Finding | None:
    return next(iter(_errors(findings)), None)


def _errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


# --- path building -----------------------------------------------------------------------


def pick_leaf(sent: list[x509.Certificate], domain: str) -> x509.Certificate:
    """The server certificate: the one that is not a CA (the first one for the domain
    if several); the first sent when all claim to be CAs (openssl req -x509 makes a
    self-signed CA certificate)."""
    candidates = [c for c in sent if not _is_ca(c)]
    for cert in candidates:
        if _matches(domain, *_alt_names(cert)):
            return cert
    return candidates[0] if candidates else sent[0]


def _build_path(leaf, pool, roots) -> tuple[list[x509.Certificate], str]:
    """Follow issuers from the leaf: through the trusted roots first, then the sent
    certificates. Outcome: "trusted", "untrusted_root" (ends at a self-signed
    certificate not in the store), "missing_issuer" or "too_long"."""
    path = [leaf]
    current = leaf
    for _ in range(MAX_CHAIN_LENGTH):
        if current in roots:
            return path, "trusted"
        root = next((r for r in roots if _issued_by(current, r)), None)
        if root is not None:
            path.append(root)
            return path, "trusted"
        if _self_issued(current):
            return path, "untrusted_root"
        issuer = next((c for c in pool if c not in path and _issued_by(current, c)), None)
        if issuer is None:
            return path, "missing_issuer"
        path.append(issuer)
        current = issuer
    return path, "too_long"


def _issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    if child.issuer != issuer.subject:
        return False
    try:
        child.verify_directly_issued_by(issuer)
    except Exception:  # InvalidSignature, ValueError, TypeError: not its issuer
        return False
    return True


def _self_issued(cert: x509.Certificate) -> bool:
    return _issued_by(cert, cert)


# --- the findings --------------------------------------------------------------------------


def _order_findings(sent, leaf, path, outcome, domain) -> list[Finding]:
    findings = []
    if sent[0] != leaf:
        findings.append(
            Finding(
                "tls.chain_order",
                "error",
                f"The chain is in the wrong order: the first certificate sent is '{_cn(sent[0])}' "
                f"(a CA), not the server certificate '{_cn(leaf)}'.",
                _order_fix(domain),
            )
        )
    else:
        sent_order = [c for c in sent if c in path]
        path_order = [c for c in path if c in sent]
        if sent_order != path_order:
            findings.append(
                Finding(
                    "tls.chain_order",
                    "warn",
                    "The intermediates are sent in the wrong order (sent: "
                    f"{' -> '.join(_cn(c) for c in sent_order)}; each certificate must be followed by "
                    f"its issuer: {' -> '.join(_cn(c) for c in path_order)}). OpenSSL-based clients "
                    "such as curl re-order them; strict TLS 1.2 clients reject the chain.",
                    _order_fix(domain),
                )
            )
    extras = [c for c in sent if c not in path]
    # A lone leaf with unrelated extras is explained as an incomplete chain instead.
    if extras and not (outcome == "missing_issuer" and len(path) == 1):
        findings.append(
            Finding(
                "tls.extra_certs",
                "warn",
                "The server also sends certificates that are not part of its chain: "
                f"{', '.join(repr(_cn(c)) for c in extras)}.",
                "Serve only the server certificate and its own intermediates "
                f"({paths.LETSENCRYPT_LIVE_DIR}/{domain}/fullchain.pem).",
            )
        )
    return findings


def _trust_findings(leaf, path, outcome, pool, domain, tls_mode) -> list[Finding]:
    chain_text = " -> ".join(repr(_cn(c)) for c in path)
    if outcome == "trusted":
        if len(path) == 1 and _self_issued(leaf):
            return [
                Finding("tls.trust", "ok", f"The self-signed certificate '{_cn(leaf)}' is in the given CA bundle."),
                Finding(
                    "tls.self_signed",
                    "warn",
                    f"The server sends a self-signed certificate ('{_cn(leaf)}'); it verifies here only "
                    "because it is in the given CA bundle. fal.ai will not trust it.",
                    _self_signed_fix(domain),
                ),
            ]
        return [Finding("tls.trust", "ok", f"The chain verifies: {chain_text} (trusted root).")]

    if outcome == "too_long":
        return [
            Finding(
                "tls.chain",
                "error",
                f"The chain is longer than {MAX_CHAIN_LENGTH} certificates or loops: {chain_text}.",
                _fullchain_fix(domain),
            )
        ]

    if outcome == "untrusted_root" and len(path) == 1:
        expected = tls_mode == "self-signed"
        return [
            Finding(
                "tls.self_signed",
                "warn" if expected else "error",
                f"The server sends a self-signed certificate ('{_cn(leaf)}', its own issuer), which no "
                "client trusts unless told to. "
                + (
                    "That is expected: this host runs tls_mode=self-signed. fal.ai will not deliver to it."
                    if expected
                    else "This is what tls_mode=self-signed produces; fal.ai will not deliver to it."
                ),
                _self_signed_fix(domain),
            )
        ]

    # The path stops at a CA the trust store does not know: the last certificate's
    # issuer (missing_issuer) or the sent self-signed root itself (untrusted_root).
    last = path[-1]
    top_name = last.subject if outcome == "untrusted_root" else last.issuer
    names = [c.subject for c in path] + [last.issuer]
    test_ca = next((m for m in TEST_CA_MARKERS for n in names if m.lower() in n.rfc4514_string().lower()), None)
    if test_ca:
        return [_test_ca_finding(test_ca, top_name, chain_text, leaf_only=len(path) == 1, domain=domain)]

    if outcome == "missing_issuer" and len(path) == 1 and not _ca_issuers_urls(leaf):
        # Public CAs name the intermediate to fetch (AIA caIssuers, CA/B Baseline
        # Requirements); a private CA's leaf usually does not: its issuer is the private root.
        return [
            Finding(
                "tls.private_ca",
                "error",
                f"The certificate is signed by '{_name_cn(leaf.issuer)}', a CA that is not in the trust store "
                "and that the certificate does not point to (no Authority Information Access, which public CAs "
                "always include): a private or internal CA. Clients, fal.ai included, reject it (curl: (60) "
                "unable to get local issuer certificate).",
                "Serve a certificate from a public CA (tls_mode=letsencrypt) and re-deploy. To trust this "
                "private CA on purpose, pass its root certificate with --ca-bundle ROOT.pem (curl: --cacert "
                "ROOT.pem; the deploy: verify_ca_bundle).",
            )
        ]

    if outcome == "missing_issuer" and len(path) == 1:
        unrelated = ""
        if pool:
            unrelated = (
                f" The server does send {', '.join(repr(_cn(c)) for c in pool)}, but that did not sign it "
                "(an intermediate from another certificate, e.g. an old chain.pem)."
            )
        return [
            Finding(
                "tls.incomplete_chain",
                "error",
                f"The server sends its certificate without the intermediate '{_name_cn(leaf.issuer)}' that "
                "signed it, so clients cannot reach a trusted root (curl: (60) unable to get local issuer "
                "certificate). Browsers often hide this by fetching or caching intermediates; curl, "
                f"Python and fal do not.{unrelated} (If '{_name_cn(leaf.issuer)}' is a private root CA "
                "rather than an intermediate, trust it with --ca-bundle instead.)",
                _fullchain_fix(domain),
            )
        ]

    return [
        Finding(
            "tls.untrusted_ca",
            "error",
            f"The chain is complete ({chain_text}) but ends at '{_name_cn(top_name)}', which is not in the "
            "trust store: the certificate comes from a private or unknown CA, so clients (fal.ai "
            "included) reject it.",
            "Serve a certificate from a public CA (tls_mode=letsencrypt with the production ACME "
            "server) and re-deploy. To trust this CA on purpose, pass its root certificate with "
            "--ca-bundle ROOT.pem (curl: --cacert ROOT.pem).",
        )
    ]


def _test_ca_finding(marker, top_name, chain_text, *, leaf_only, domain) -> Finding:
    missing = " The intermediate is not sent either." if leaf_only else ""
    if marker == "Pebble":
        what = "Pebble, the local ACME test server"
        fix = (
            "Expected in a lab: trust Pebble's root (its management API, /roots/0) with --ca-bundle. "
            "For fal, issue from the production Let's Encrypt server (letsencrypt_server = "
            "'production') and re-deploy."
        )
    else:
        what = "the Let's Encrypt staging CA (test certificates nobody trusts)"
        fix = (
            "Issue a production certificate: set letsencrypt_server = 'production' and re-deploy, or "
            f"run `certbot certonly --force-renewal -d {domain}` without --staging/--test-cert."
        )
    return Finding(
        "tls.staging_ca",
        "error",
        f"The certificate was issued by {what}: {chain_text}, ending at '{_name_cn(top_name)}', which is "
        f"not in the trust store.{missing}",
        fix,
    )


def _validity_findings(path, now, domain) -> list[Finding]:
    findings = []
    leaf = path[0]
    for cert in path:
        role = "server certificate" if cert is leaf else "CA certificate"
        if now > cert.not_valid_after_utc:
            days = (now - cert.not_valid_after_utc).days
            findings.append(
                Finding(
                    "tls.expired",
                    "error",
                    f"The {role} '{_cn(cert)}' expired on {_date(cert.not_valid_after_utc)} ({days} days ago).",
                    _renew_fix(domain) if cert is leaf else _fullchain_fix(domain),
                )
            )
        elif now < cert.not_valid_before_utc:
            findings.append(
                Finding(
                    "tls.not_yet_valid",
                    "error",
                    f"The {role} '{_cn(cert)}' is valid only from {_date(cert.not_valid_before_utc)}: the "
                    "clock of the server that made it, or of this machine, is wrong.",
                    "Check both clocks with `timedatectl` (turn on NTP: `timedatectl set-ntp true`); "
                    "if the start date really is in the future, issue the certificate again.",
                )
            )
    if not any(f.check in ("tls.expired", "tls.not_yet_valid") for f in findings):
        days = (leaf.not_valid_after_utc - now).days
        when = f"in {days} days ({_date(leaf.not_valid_after_utc)})"
        if days < EXPIRY_WARN_DAYS:
            findings.append(
                Finding(
                    "tls.expiry",
                    "warn",
                    f"The certificate expires {when}; renewal should have happened by now "
                    "(certbot renews 30 days before expiry).",
                    _renew_fix(domain),
                )
            )
        else:
            findings.append(Finding("tls.expiry", "ok", f"The certificate expires {when}."))
    return findings


def _strict_profile_findings(leaf, path, roots, domain, now) -> list[Finding]:
    """The chain OpenSSL accepts, checked again against the stricter Web PKI profile
    (RFC 5280 / CA/Browser Forum) that Go, rustls and `cryptography` enforce."""
    try:
        from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store, VerificationError
    except ImportError:  # cryptography < 42
        return []
    try:
        subject = IPAddress(ipaddress.ip_address(domain))
    except ValueError:
        subject = DNSName(domain)
    verifier = PolicyBuilder().store(Store(list(roots))).time(now).build_server_verifier(subject)
    try:
        verifier.verify(leaf, path[1:])
    except VerificationError as exc:
        return [
            Finding(
                "tls.strict_profile",
                "warn",
                f"OpenSSL accepts this chain, but strict clients (Go, rustls) may not: {exc}.",
                "Use a certificate from a public CA issued by certbot; hand-made certificates often miss "
                "required extensions.",
            )
        ]
    return []


# --- fixes -----------------------------------------------------------------------------------

_HANDSHAKE_FIX = (
    "Run `nginx -t` on the host and check the ssl_certificate / ssl_certificate_key pair "
    "(or run this tool with --ssh-key for host-side checks)."
)


def _fullchain_fix(domain: str) -> str:
    return (
        f"Serve the full chain: in the nginx site set `ssl_certificate "
        f"{paths.LETSENCRYPT_LIVE_DIR}/{domain}/fullchain.pem;` (not cert.pem), then "
        "`nginx -t && systemctl reload nginx`."
    )


def _order_fix(domain: str) -> str:
    return (
        "Put the server certificate first, then each intermediate followed by its issuer: use "
        f"{paths.LETSENCRYPT_LIVE_DIR}/{domain}/fullchain.pem as is, or rebuild the file with "
        "`cat cert.pem chain.pem > fullchain.pem`; then `nginx -t && systemctl reload nginx`."
    )


def _self_signed_fix(domain: str) -> str:
    return (
        "For fal, switch the host to tls_mode = 'letsencrypt' (needs a public DNS A record for "
        f"{domain} and port 80 open) and re-deploy. To trust this certificate for tests only: "
        "curl --cacert CERT.pem, or --ca-bundle CERT.pem here."
    )


def _renew_fix(domain: str) -> str:
    return (
        f"Renew: `certbot renew --cert-name {domain}` (see why it failed with `certbot renew --dry-run` "
        "and `systemctl list-timers certbot.timer`; HTTP-01 needs port 80 open), then "
        "`systemctl reload nginx`. Self-signed mode: re-run the deploy, it renews the certificate."
    )


# --- small helpers -----------------------------------------------------------------------------


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _ca_issuers_urls(cert: x509.Certificate) -> list[str]:
    try:
        access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    return [d.access_location.value for d in access if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS]


def _alt_names(cert: x509.Certificate) -> tuple[list[str], list]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return san.get_values_for_type(x509.DNSName), san.get_values_for_type(x509.IPAddress)


def _matches(domain: str, dns_names: list[str], ips: list) -> bool:
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


def _name_cn(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(values[0].value) if values else name.rfc4514_string()


def _cn(cert: x509.Certificate) -> str:
    return _name_cn(cert.subject)


def _date(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


# --- the network part -----------------------------------------------------------------------


def fetch_served_chain(address: str, port: int, domain: str, timeout: float = 10) -> ServedChain:
    """The certificates `address:port` sends for SNI `domain`, in the order sent,
    via `openssl s_client -showcerts` (bounded by `timeout`)."""
    host = f"[{address}]" if ":" in address else address
    command = ["openssl", "s_client", "-connect", f"{host}:{port}", "-showcerts"]
    if not is_ip(domain):
        command += ["-servername", domain]
    try:
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        return ServedChain(error="the openssl command is missing (apt-get install openssl)")
    except subprocess.TimeoutExpired:
        return ServedChain(error=f"no TLS answer within {timeout:g} s")
    try:
        certs = parse_pem_certs(result.stdout)
    except ValueError as exc:
        return ServedChain(error=f"the server sent a certificate that cannot be parsed: {exc}")
    protocol = _protocol(result.stdout.decode("utf-8", "replace"))
    if not certs:
        return ServedChain(protocol=protocol, error=_s_client_error(result.stderr.decode("utf-8", "replace")))
    return ServedChain(certs=certs, protocol=protocol)


def connection_finding(served: ServedChain, address: str, port: int, domain: str) -> Finding:
    """Explain why no certificate came back."""
    error = served.error or "no certificate"
    lowered = error.lower()
    if "refused" in lowered:
        fix = (
            f"Nothing listens on {address}:{port}: check `systemctl status nginx` and "
            f"`ss -ltnp | grep {port}` on the host (the site needs `listen {port} ssl;`)."
        )
    elif "timed out" in lowered or "no tls answer" in lowered or "no route" in lowered:
        fix = (
            f"A firewall drops port {port}: `ufw allow {port}/tcp` on the host, and open it in any "
            "cloud firewall / security group."
        )
    elif "wrong version number" in lowered or "packet length too long" in lowered:
        fix = f"Port {port} answers plain HTTP, not TLS: use `listen {port} ssl;` in the nginx site."
    elif "unrecognized name" in lowered:
        fix = (
            f"nginx has no server block for the name {domain} on this port and its default server "
            f"rejects unknown names (ssl_reject_handshake): check the domain (aisha_domain / --domain) "
            "and the site's server_name."
        )
    elif "missing" in lowered:
        fix = "Install openssl."
    else:
        fix = (
            "The TLS handshake failed: nginx may be unable to use its certificate (for instance a "
            "private key that does not match it). " + _HANDSHAKE_FIX
        )
    return Finding(
        "tls.handshake", "error", f"No certificate from {address}:{port} (SNI {domain}): {error}.", fix
    )


def _protocol(output: str) -> str | None:
    match = re.search(r"^\s*Protocol\s*:\s*(\S+)", output, re.MULTILINE) or re.search(
        r"New, (TLSv[\d.]+|SSLv\d)", output
    )
    return match.group(1) if match else None


def _s_client_error(stderr: str) -> str:
    for pattern, meaning in (
        (r"errno=111|Connection refused", "connection refused"),
        (r"errno=110|timed out", "connection timed out"),
        (r"errno=113|No route to host", "no route to host"),
        (r"unrecognized name", "handshake rejected: unrecognized name (alert 112)"),
        (r"wrong version number", "not TLS (wrong version number)"),
        (r"handshake failure", "handshake failure"),
    ):
        if re.search(pattern, stderr, re.IGNORECASE):
            return meaning
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else "no certificate received"


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
