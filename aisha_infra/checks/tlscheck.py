"""Why a TLS certificate chain fails, in words an operator can act on.

`curl: (60) SSL certificate problem: unable to get local issuer certificate` has
several causes that need different fixes. `analyze_chain` tells them apart from
data only (the certificates a server sent, the trusted roots, the domain and the
time), so each cause has a unit test; served_chain.py is the network part that
reads the certificates exactly as sent.
"""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509

from aisha_infra.checks.certificates import (
    alt_names,
    ca_issuers_urls,
    common_name,
    is_ca,
    name_common_name,
    name_matches,
    public_key_der,
)
from aisha_infra.checks.findings import Finding, errors
from aisha_infra.deploy import paths

EXPIRY_WARN_DAYS = 21
MAX_CHAIN_LENGTH = 8
# Names that give away a test CA (Let's Encrypt staging, old and new; Pebble).
TEST_CA_MARKERS = ("(STAGING)", "Fake LE", "Pebble")


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
        return [Finding("tls.chain", "error", "The server sent no certificate.", HANDSHAKE_FIX)]
    leaf = pick_leaf(sent, domain)
    pool = [c for c in sent if c != leaf]
    path, outcome = _build_path(leaf, pool, roots)

    findings = _order_findings(sent, leaf, path, outcome, domain)
    findings += _trust_findings(leaf, path, outcome, pool, domain, tls_mode)
    findings.append(name_finding(leaf, domain))
    findings += _validity_findings(path, now, domain)
    if outcome == "trusted" and len(path) > 1 and not errors(findings):
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
                f"('{common_name(certs[0])}'), so `nginx -t` reports 'key values mismatch'.",
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
                f"'{name_common_name(certs[0].issuer)}' that signed it.",
                _fullchain_fix(domain),
            )
        )
    return findings


def name_finding(leaf: x509.Certificate, domain: str) -> Finding:
    dns_names, ips = alt_names(leaf)
    names = dns_names + [str(ip) for ip in ips]
    if name_matches(domain, dns_names, ips):
        return Finding("tls.name", "ok", f"The certificate covers {domain} (names: {', '.join(names)}).")
    if not names:
        message = (
            f"The certificate has no subjectAltName (only CN={common_name(leaf)}); clients ignore the CN, "
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
    return not errors(findings) and any(f.check == "tls.trust" and f.severity == "ok" for f in findings)


# --- path building -----------------------------------------------------------------------


def pick_leaf(sent: list[x509.Certificate], domain: str) -> x509.Certificate:
    """The server certificate: the one that is not a CA (the first one for the domain
    if several); the first sent when all claim to be CAs (openssl req -x509 makes a
    self-signed CA certificate)."""
    candidates = [c for c in sent if not is_ca(c)]
    for cert in candidates:
        if name_matches(domain, *alt_names(cert)):
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
                f"The chain is in the wrong order: the first certificate sent is '{common_name(sent[0])}' "
                f"(a CA), not the server certificate '{common_name(leaf)}'.",
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
                    f"{' -> '.join(common_name(c) for c in sent_order)}; each certificate must be followed by "
                    f"its issuer: {' -> '.join(common_name(c) for c in path_order)}). OpenSSL-based clients "
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
                f"{', '.join(repr(common_name(c)) for c in extras)}.",
                "Serve only the server certificate and its own intermediates "
                f"({paths.LETSENCRYPT_LIVE_DIR}/{domain}/fullchain.pem).",
            )
        )
    return findings


def _trust_findings(leaf, path, outcome, pool, domain, tls_mode) -> list[Finding]:
    chain_text = " -> ".join(repr(common_name(c)) for c in path)
    if outcome == "trusted":
        if len(path) == 1 and _self_issued(leaf):
            return [
                Finding("tls.trust", "ok", f"The self-signed certificate '{common_name(leaf)}' is in the given CA bundle."),
                Finding(
                    "tls.self_signed",
                    "warn",
                    f"The server sends a self-signed certificate ('{common_name(leaf)}'); it verifies here only "
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
                f"The server sends a self-signed certificate ('{common_name(leaf)}', its own issuer), which no "
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

    if outcome == "missing_issuer" and len(path) == 1 and not ca_issuers_urls(leaf):
        # Public CAs name the intermediate to fetch (AIA caIssuers, CA/B Baseline
        # Requirements); a private CA's leaf usually does not: its issuer is the private root.
        return [
            Finding(
                "tls.private_ca",
                "error",
                f"The certificate is signed by '{name_common_name(leaf.issuer)}', a CA that is not in the trust store "
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
                f" The server does send {', '.join(repr(common_name(c)) for c in pool)}, but that did not sign it "
                "(an intermediate from another certificate, e.g. an old chain.pem)."
            )
        return [
            Finding(
                "tls.incomplete_chain",
                "error",
                f"The server sends its certificate without the intermediate '{name_common_name(leaf.issuer)}' that "
                "signed it, so clients cannot reach a trusted root (curl: (60) unable to get local issuer "
                "certificate). Browsers often hide this by fetching or caching intermediates; curl, "
                f"Python and fal do not.{unrelated} (If '{name_common_name(leaf.issuer)}' is a private root CA "
                "rather than an intermediate, trust it with --ca-bundle instead.)",
                _fullchain_fix(domain),
            )
        ]

    return [
        Finding(
            "tls.untrusted_ca",
            "error",
            f"The chain is complete ({chain_text}) but ends at '{name_common_name(top_name)}', which is not in the "
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
        f"The certificate was issued by {what}: {chain_text}, ending at '{name_common_name(top_name)}', which is "
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
                    f"The {role} '{common_name(cert)}' expired on {_date(cert.not_valid_after_utc)} ({days} days ago).",
                    _renew_fix(domain) if cert is leaf else _fullchain_fix(domain),
                )
            )
        elif now < cert.not_valid_before_utc:
            findings.append(
                Finding(
                    "tls.not_yet_valid",
                    "error",
                    f"The {role} '{common_name(cert)}' is valid only from {_date(cert.not_valid_before_utc)}: the "
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

HANDSHAKE_FIX = (
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


def _date(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
