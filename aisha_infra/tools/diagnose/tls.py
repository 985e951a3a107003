"""The TLS chain the host serves, checked from this machine: read exactly as sent and
analysed (aisha_infra/checks/served_chain.py, tlscheck.py), then the protocol, and the
key it must match when one is given."""

from __future__ import annotations

import datetime
from pathlib import Path

from aisha_infra.checks.certificates import load_public_key
from aisha_infra.checks.findings import Finding
from aisha_infra.checks.served_chain import ServedChain, check_served_chain
from aisha_infra.checks.tlscheck import key_match_finding, pick_leaf, protocol_finding

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
    served, findings = check_served_chain(
        address, port, domain, now=now, timeout=TLS_TIMEOUT, ca_bundle=ca_bundle, tls_mode=tls_mode
    )
    if served.error:
        return served, findings
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
