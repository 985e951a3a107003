"""The network part of the TLS checks: the certificates a server sends, exactly as
sent, read with `openssl s_client` (Python's ssl module exposes the unverified chain
only from 3.13 on), why none came back when none did, and the analysis of what did."""

from __future__ import annotations

import datetime
import re
import subprocess
from dataclasses import dataclass, field

from cryptography import x509

from aisha_infra.checks.certificates import is_ip, load_trust_store, parse_pem_certs
from aisha_infra.checks.findings import Finding
from aisha_infra.checks.tlscheck import HANDSHAKE_FIX, analyze_chain


@dataclass(frozen=True)
class ServedChain:
    """What a TLS server sent: its certificates in order, the protocol negotiated,
    or why none could be read."""

    certs: list[x509.Certificate] = field(default_factory=list)
    protocol: str | None = None
    error: str | None = None


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


def check_served_chain(
    address: str,
    port: int,
    domain: str,
    *,
    now: datetime.datetime,
    timeout: float,
    ca_bundle: str | None = None,
    trust_system: bool = True,
    tls_mode: str | None = None,
) -> tuple[ServedChain, list[Finding]]:
    """The chain address:port serves for `domain` and the findings about it: why none
    came back, or analyze_chain's against the system store (unless `trust_system` is
    False) and the roots in `ca_bundle`."""
    served = fetch_served_chain(address, port, domain, timeout)
    if served.error:
        return served, [connection_finding(served, address, port, domain)]
    roots = load_trust_store(ca_bundle, include_system=trust_system)
    return served, analyze_chain(served.certs, roots, domain, now, tls_mode=tls_mode)


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
            "private key that does not match it). " + HANDSHAKE_FIX
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

