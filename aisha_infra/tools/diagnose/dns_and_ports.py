"""Can fal reach the host? DNS (A/AAAA records, reserved names) and the TCP ports
(SSH, HTTP for Let's Encrypt, HTTPS), checked from this machine."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from aisha_infra.checks.certificates import is_ip
from aisha_infra.checks.findings import Finding

TCP_TIMEOUT = 3
TCP_TIMED_OUT = "timed out"  # in a port finding's message: a firewall drops the port
# RFC 6761/2606 names that never exist in public DNS: fine in a lab, impossible for fal.
RESERVED_SUFFIXES = (".test", ".example", ".invalid", ".localhost")

Resolver = Callable[[str], list[str]]


def resolve_addresses(domain: str) -> list[str]:
    """Addresses the system resolver (/etc/hosts, then DNS) gives for `domain`."""
    infos = socket.getaddrinfo(domain, None, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})

def resolve_or_nothing(domain: str, resolve: Resolver | None = None) -> list[str]:
    """The addresses of `domain`, or none when it does not resolve."""
    try:
        return (resolve or resolve_addresses)(domain)
    except OSError:
        return []


def preferred_address(addresses: list[str]) -> str | None:
    """IPv4 first: it is what an A record gives fal."""
    return next((a for a in addresses if ":" not in a), addresses[0] if addresses else None)


def check_dns(domain: str, address: str | None, resolve: Resolver | None = None) -> tuple[list[Finding], list[str]]:
    """Does `domain` resolve, and to `address`? fal finds the server through public DNS.
    `resolve`: the resolver to ask (default: the system's, resolve_addresses)."""
    resolve = resolve or resolve_addresses
    if is_ip(domain):
        return [
            Finding(
                "dns",
                "warn",
                f"{domain} is an IP address: no public CA issues certificates for it, so fal cannot verify TLS.",
                "Use a DNS name with an A record pointing at the server.",
            )
        ], [domain]
    where = f" pointing at {address}" if address else ""
    reserved = next((s for s in RESERVED_SUFFIXES if domain.lower().rstrip(".").endswith(s)), None)
    if reserved:
        # Never in public DNS, but /etc/hosts (what curl reads too) may name it.
        addresses = resolve_or_nothing(domain, resolve)
        found = f" Here it resolves to {', '.join(addresses)} (/etc/hosts)." if addresses else ""
        return [
            Finding(
                "dns",
                "warn",
                f"{domain} is a reserved '{reserved}' name: it never exists in public DNS, so fal cannot "
                f"reach it (fine for a lab).{found}",
                f"Create an A record for a real name{where} at your DNS provider and set aisha_domain to it.",
            )
        ], addresses
    try:
        addresses = resolve(domain)
    except OSError as exc:
        return [
            Finding(
                "dns",
                "error",
                f"{domain} does not resolve ({getattr(exc, 'strerror', None) or exc}); fal needs a public DNS A record{where}.",
                f"Create an A record {domain} -> {address or 'the server address'} at your DNS provider "
                "(and set aisha_domain to that name).",
            )
        ], []
    if address and address not in addresses:
        return [
            Finding(
                "dns",
                "error",
                f"{domain} resolves to {', '.join(addresses)}, not to this host's address {address}: fal would "
                "call another server.",
                f"Point the A record of {domain} at {address} (or diagnose the address it names).",
            )
        ], addresses
    if not any(ipaddress.ip_address(a.split("%")[0]).is_global for a in addresses):
        return [
            Finding(
                "dns",
                "warn",
                f"{domain} resolves only to non-public addresses ({', '.join(addresses)}): fine for a lab, "
                "unreachable for fal.",
                f"Publish a public A record for {domain}.",
            )
        ], addresses
    return [Finding("dns", "ok", f"{domain} resolves to {', '.join(addresses)}.")], addresses


def check_ipv6(addresses: list[str], port: int, timeout: float = TCP_TIMEOUT) -> list[Finding]:
    """An AAAA record whose address does not answer: clients that prefer IPv6 (Let's
    Encrypt's validation among them) fail or fall back slowly."""
    ipv6 = [a for a in addresses if ":" in a]
    if not ipv6:
        return []
    with ThreadPoolExecutor(max_workers=len(ipv6)) as pool:
        answers = list(pool.map(lambda a: _tcp_connect_error(a, port, timeout) is None, ipv6))
    silent = [a for a, answered in zip(ipv6, answers) if not answered]
    if not silent:
        return [Finding("dns.ipv6", "ok", f"The IPv6 address(es) {', '.join(ipv6)} answer on port {port}.")]
    return [
        Finding(
            "dns.ipv6",
            "error",
            f"The AAAA record points at {', '.join(silent)}, which does not answer on port {port}: Let's Encrypt "
            "validates over IPv6 when a name has one (issuance and renewals fail), and IPv6 clients cannot connect.",
            "Delete the stale AAAA record at your DNS provider, or make the server answer on that address "
            f"(`ip -6 addr`, nginx `listen [::]:{port} ssl;`; `ufw allow {port}/tcp` covers IPv6 too).",
        )
    ]


def _tcp_connect_error(address: str, port: int, timeout: float) -> OSError | None:
    """Why a TCP connection to address:port cannot be opened; None when it can."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc


def check_port(address: str, port: int, role: str, timeout: float = TCP_TIMEOUT) -> Finding:
    """Can a TCP connection to address:port be opened? `role`: ssh, http or https."""
    check = f"tcp.{port}"
    error = _tcp_connect_error(address, port, timeout)
    if error is None:
        return Finding(check, "ok", f"TCP {address}:{port} ({role.upper()}) accepts connections.")
    if isinstance(error, ConnectionRefusedError):
        problem, firewalled = "refused (nothing listens there)", False
    elif isinstance(error, TimeoutError):
        problem, firewalled = f"{TCP_TIMED_OUT} after {timeout:g} s (a firewall drops it)", True
    else:
        problem, firewalled = str(error), True
    open_it = f"`ufw allow {port}/tcp` on the host and in any cloud firewall"
    if role == "https":
        fix = open_it if firewalled else f"Start nginx and check it listens: `systemctl status nginx`, `ss -ltnp | grep {port}`."
        return Finding(check, "error", f"TCP {address}:{port} (HTTPS, the port fal calls) is {problem}.", fix)
    if role == "http":
        fix = open_it if firewalled else f"Check nginx listens on it: `ss -ltnp | grep ':{port} '`."
        return Finding(
            check,
            "warn",
            f"TCP {address}:{port} (HTTP) is {problem}: Let's Encrypt validates and renews over port 80 "
            "(tls_mode=letsencrypt).",
            fix,
        )
    return Finding(
        check,
        "warn",
        f"TCP {address}:{port} (SSH) is {problem}: deploys and host-side checks need it.",
        open_it if firewalled else "Check sshd: `systemctl status ssh`.",
    )
