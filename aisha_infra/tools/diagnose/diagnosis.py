"""The diagnosis of one target: every check, in the order a request from fal
travels (DNS, TCP ports, the TLS chain as sent, `GET /health` and a test webhook),
then the host side over SSH when the target has a way in."""

from __future__ import annotations

import datetime
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aisha_infra.checks import health
from aisha_infra.checks.certificates import describe
from aisha_infra.checks.findings import Finding, errors
from aisha_infra.checks.tlscheck import chain_trusted, pick_leaf
from aisha_infra.tools.diagnose.dns_and_ports import (
    TCP_TIMED_OUT,
    Resolver,
    check_dns,
    check_ipv6,
    check_port,
    preferred_address,
)
from aisha_infra.tools.diagnose.host import check_host
from aisha_infra.tools.diagnose.remote import Runner
from aisha_infra.tools.diagnose.tls import check_served_tls

DEFAULT_PORT = 8443
HTTP_TIMEOUT = 10


@dataclass
class Target:
    """One endpoint to diagnose: https://<domain>:<port>, reached at <address>."""

    domain: str
    address: str | None = None
    port: int = DEFAULT_PORT
    name: str = ""  # the inventory host name, when from an inventory
    tls_mode: str | None = None
    ssh: Runner | None = None
    ssh_port: int = 22
    http_port: int = 80
    ca_bundle: str | None = None


@dataclass
class Report:
    """What the diagnosis of `target` found: the address used, the chain as sent, the findings."""

    target: Target
    address: str | None = None
    protocol: str | None = None
    chain: list[dict] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(errors(self.findings))

    def as_dict(self) -> dict:
        return {
            "name": self.target.name or self.target.domain,
            "domain": self.target.domain,
            "address": self.address,
            "port": self.target.port,
            "protocol": self.protocol,
            "chain": self.chain,
            "findings": [f.as_dict() for f in self.findings],
            "ok": not self.failed,
        }


def diagnose(
    target: Target,
    *,
    ca_bundle: str | None = None,
    key_file: str | None = None,
    now: datetime.datetime | None = None,
    resolve: Resolver | None = None,
) -> Report:
    """Every check for one target. `ca_bundle` adds trusted roots to the system
    store; `key_file` is a private or public key the served certificate must match."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    ca_bundle = ca_bundle or target.ca_bundle
    report = Report(target)

    dns_findings, addresses = check_dns(target.domain, target.address, resolve)
    report.findings += dns_findings
    report.address = target.address or preferred_address(addresses)
    if report.address is None:
        report.findings.append(
            Finding(
                "connect",
                "error",
                f"No address to connect to: {target.domain} does not resolve and no address was given.",
                "Pass the server's address with --address (or ssh_hostname in the inventory).",
            )
        )
        return report
    address = report.address

    report.findings += check_ipv6(addresses, target.port)
    ports = {target.ssh_port: "ssh", target.http_port: "http", target.port: "https"}
    with ThreadPoolExecutor(max_workers=len(ports)) as pool:  # three timeouts cost one
        port_findings = list(pool.map(lambda item: check_port(address, *item), ports.items()))
    report.findings += port_findings
    if TCP_TIMED_OUT in port_findings[list(ports).index(target.port)].message:
        # Dropped by a firewall: a TLS handshake would only wait for its own timeout.
        if target.ssh is not None:
            report.findings += check_host(target.ssh, target.domain, target.port)
        return report

    served, tls_findings = check_served_tls(
        address, target.port, target.domain, now=now, ca_bundle=ca_bundle, tls_mode=target.tls_mode, key_file=key_file
    )
    report.protocol = served.protocol
    report.chain = [describe(cert) for cert in served.certs]
    report.findings += tls_findings
    if not served.error:
        # With TLS already explained, still show whether the app behind it works.
        verify = chain_trusted(tls_findings)
        for check in (health.health_finding, health.webhook_finding):
            report.findings.append(
                check(address, target.domain, target.port, ca_bundle, HTTP_TIMEOUT, verify=verify, trust_system=True)
            )

    if target.ssh is not None:
        served_leaf = pick_leaf(served.certs, target.domain) if served.certs else None
        report.findings += check_host(target.ssh, target.domain, target.port, served_leaf=served_leaf)
    return report
