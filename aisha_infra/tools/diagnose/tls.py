"""The TLS chain the host serves, checked from this machine: read exactly as sent
(aisha_infra/checks/tlscheck.py), then its order, completeness, trust, name,
validity and protocol, and the key it must match when one is given."""

from __future__ import annotations

import datetime
from pathlib import Path

from aisha_infra.checks.tlscheck import (
    Finding,
    ServedChain,
    analyze_chain,
    connection_finding,
    fetch_served_chain,
    key_match_finding,
    load_public_key,
    load_trust_store,
    pick_leaf,
    protocol_finding,
)

TLS_TIMEOUT = 10


def check_served_tls(
    address: str,
    port: int,
    domain: str,
    *,
    now: datetime.datetime,
    ca_bundle: str | None = None,
    tls_mode: str | None = None,
    key_file: str | None = None,
) -> tuple[ServedChain, list[Finding]]:
    """The chain address:port serves for `domain` and the findings about it (why
    none came back, when none did). `ca_bundle` adds trusted roots to the system
    store; `tls_mode` is the host's setting when known."""
    served = fetch_served_chain(address, port, domain, TLS_TIMEOUT)
    if served.error:
        return served, [connection_finding(served, address, port, domain)]
    findings = analyze_chain(served.certs, load_trust_store(ca_bundle), domain, now, tls_mode=tls_mode)
    findings.append(protocol_finding(served.protocol))
    if key_file:
        findings.append(_served_key_finding(served.certs, key_file, domain))
    return served, findings


def _served_key_finding(certs, key_file: str, domain: str) -> Finding:
    try:
        public_key = load_public_key(Path(key_file).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        return Finding("tls.key_match", "error", f"Cannot read the key {key_file}: {exc}.", "Pass a PEM private or public key.")
    return key_match_finding(pick_leaf(certs, domain), public_key, "served by the host", key_file, domain)
