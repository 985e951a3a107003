"""`aisha-infra diagnose`: say exactly why HTTPS to a host fails, and how to fix it.

For one URL or every host of an inventory it checks, in the order a request from
fal travels: DNS, TCP ports, the TLS chain as sent (order, completeness, trust,
name, validity, key), `GET /health` and a test webhook POST, then over SSH (when
given a key) the host side: ufw, `nginx -t`, the certificate files nginx uses,
the services and their recent errors. Each finding has a severity (ok/warn/error)
and, for problems, the fix. It changes nothing: the test webhook is a probe
(header X-Aisha-Probe, request_id "aisha-probe-<uuid>") that the bundled app answers
without storing.
Exit status: 0 when there is no error (warnings allowed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import ipaddress
import json
import os
import posixpath
import re
import runpy
import shlex
import shutil
import socket
import sys
import textwrap
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from aisha_infra.checks import health
from aisha_infra.deploy import paths
from aisha_infra.tools.ssh import SSHError, SSHHost, SSHTimeout, add_ssh_arguments, ssh_flags_given, ssh_overrides
from aisha_infra.checks.tlscheck import (
    Finding,
    analyze_cert_file,
    analyze_chain,
    chain_trusted,
    connection_finding,
    describe,
    fetch_served_chain,
    is_ip,
    key_match_finding,
    load_public_key,
    load_trust_store,
    parse_pem_certs,
    pick_leaf,
    protocol_finding,
)

DEFAULT_PORT = 8443
TCP_TIMEOUT = 3
TCP_TIMED_OUT = "timed out"  # in a port finding's message: a firewall drops the port
TLS_TIMEOUT = 10
HTTP_TIMEOUT = 10
SSH_TIMEOUT = 20
# RFC 6761/2606 names that never exist in public DNS: fine in a lab, impossible for fal.
RESERVED_SUFFIXES = (".test", ".example", ".invalid", ".localhost")
SERVICES = ("nginx", "aisha-api")

# run(command) -> (exit status, stdout, stderr), on the host being diagnosed.
Runner = Callable[[str], tuple[int, str, str]]
Resolver = Callable[[str], list[str]]


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
    target: Target
    address: str | None = None
    protocol: str | None = None
    chain: list[dict] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(f.severity == "error" for f in self.findings)

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


# --- the diagnosis of one target --------------------------------------------------------


def resolve_addresses(domain: str) -> list[str]:
    """Addresses the system resolver (/etc/hosts, then DNS) gives for `domain`."""
    infos = socket.getaddrinfo(domain, None, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


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

    dns_findings, addresses = check_dns(target.domain, target.address, resolve or resolve_addresses)
    report.findings += dns_findings
    report.address = target.address or _preferred(addresses)
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

    served = fetch_served_chain(address, target.port, target.domain, TLS_TIMEOUT)
    report.protocol = served.protocol
    report.chain = [describe(cert) for cert in served.certs]
    if served.error:
        report.findings.append(connection_finding(served, address, target.port, target.domain))
    else:
        roots = load_trust_store(ca_bundle)
        tls_findings = analyze_chain(served.certs, roots, target.domain, now, tls_mode=target.tls_mode)
        tls_findings.append(protocol_finding(served.protocol))
        if key_file:
            tls_findings.append(_served_key_finding(served.certs, key_file, target.domain))
        report.findings += tls_findings
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


def check_dns(domain: str, address: str | None, resolve: Resolver = resolve_addresses) -> tuple[list[Finding], list[str]]:
    """Does `domain` resolve, and to `address`? fal finds the server through public DNS."""
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
        try:
            addresses = resolve(domain)
        except OSError:
            addresses = []
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
        answers = list(pool.map(lambda a: _tcp_answers(a, port, timeout), ipv6))
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


def _tcp_answers(address: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_port(address: str, port: int, role: str, timeout: float = TCP_TIMEOUT) -> Finding:
    """Can a TCP connection to address:port be opened? `role`: ssh, http or https."""
    check = f"tcp.{port}"
    try:
        with socket.create_connection((address, port), timeout=timeout):
            pass
    except ConnectionRefusedError:
        problem, firewalled = "refused (nothing listens there)", False
    except TimeoutError:
        problem, firewalled = f"{TCP_TIMED_OUT} after {timeout:g} s (a firewall drops it)", True
    except OSError as exc:
        problem, firewalled = str(exc), True
    else:
        return Finding(check, "ok", f"TCP {address}:{port} ({role.upper()}) accepts connections.")
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


def _served_key_finding(certs, key_file: str, domain: str) -> Finding:
    try:
        public_key = load_public_key(Path(key_file).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        return Finding("tls.key_match", "error", f"Cannot read the key {key_file}: {exc}.", "Pass a PEM private or public key.")
    return key_match_finding(pick_leaf(certs, domain), public_key, "served by the host", key_file, domain)


# --- host side, over SSH ------------------------------------------------------------------


def ssh_runner(ssh: SSHHost, timeout: float = SSH_TIMEOUT) -> Runner:
    """A Runner over SSH (see aisha_infra/tools/ssh.py: as pyinfra connects, sudo when the
    connection says so), bounded by `timeout` per command."""

    def run(remote_command: str) -> tuple[int, str, str]:
        try:
            result = ssh.run(remote_command, timeout=timeout)
        except SSHError as exc:
            return (124 if isinstance(exc, SSHTimeout) else 255), "", str(exc)
        err = result.stderr
        if result.returncode != 0 and (explained := ssh.failure(result)) != _last_line(err):
            err = f"{err.rstrip()}\n{explained}"  # the known fix, as the last line
        return result.returncode, result.stdout, err

    return run


def check_host(
    run: Runner,
    domain: str,
    port: int = DEFAULT_PORT,
    *,
    served_leaf: x509.Certificate | None = None,
    nginx_conf: str = paths.NGINX_CONF,
) -> list[Finding]:
    """Host-side findings, with read-only commands only. `served_leaf`: the
    certificate the server sent, to spot a file nginx has not reloaded."""
    rc, _, err = run("true")
    if rc != 0:
        return [
            Finding(
                "ssh",
                "error",
                f"Cannot run commands on the host over SSH: {_last_line(err) or f'exit status {rc}'}.",
                "Check --ssh-key / --ssh-user (ssh_key / ssh_user in the inventory), that the SSH port is open, "
                "that the key is in the user's ~/.ssh/authorized_keys, and that a non-root user has sudo "
                "(--sudo, or _sudo in the inventory, with _sudo_password unless it is password-less).",
            )
        ]
    findings = [ufw_finding(*run("ufw status verbose"), port)]
    rc, _, err = run("nginx -t")
    if rc == 0:
        findings.append(Finding("nginx.config", "ok", "`nginx -t`: the configuration is valid."))
    else:
        findings.append(
            Finding(
                "nginx.config",
                "error",
                f"`nginx -t` fails: {_last_lines(err, 3)}",
                "Fix what it names (see the certificate file findings for key and chain problems), then "
                "`nginx -t && systemctl reload nginx`. Until then nginx keeps the old configuration, or "
                "does not start at all.",
            )
        )
    findings += _certificate_file_findings(run, domain, port, served_leaf, nginx_conf)
    findings += _service_findings(run)
    findings.append(_journal_finding(run))
    return findings


def ufw_finding(rc: int, out: str, err: str, https_port: int = DEFAULT_PORT) -> Finding:
    """Is the firewall on, and does it let fal (and SSH, HTTP) in?"""
    if rc != 0:
        if rc == 127 or "not found" in err:
            return Finding(
                "ufw",
                "warn",
                "ufw is not installed: the host has no firewall of ours.",
                "Re-run the deploy (firewall_enabled = True installs and enables it).",
            )
        return Finding("ufw", "warn", f"`ufw status verbose` failed: {_last_line(err)}.", "Run it on the host to see why.")
    if not re.search(r"^Status:\s*active", out, re.MULTILINE):
        return Finding(
            "ufw",
            "warn",
            "ufw is inactive: every listening port is open to the world.",
            "Re-run the deploy (firewall_enabled = True), or `ufw allow 22/tcp && ufw allow 80/tcp && "
            f"ufw allow {https_port}/tcp && ufw --force enable`.",
        )
    decisions = ufw_port_decisions(out)
    allowed = ufw_allowed_ports(out)
    action, rule = decisions.get(https_port, (None, None))
    if action in ("DENY", "REJECT"):
        return Finding(
            "ufw",
            "error",
            f"ufw is active and its first rule for {https_port}/tcp is `{rule}`: ufw applies the first "
            "matching rule, so fal's requests are dropped even if an allow follows.",
            f"`ufw delete {_ufw_rule_command(rule)}` (or find its number with `ufw status numbered` and "
            f"`ufw delete NUMBER`), then check with `ufw status verbose`.",
        )
    if https_port not in allowed:
        return Finding(
            "ufw",
            "error",
            f"ufw is active but does not allow {https_port}/tcp from anywhere: fal's requests are dropped.",
            f"`ufw allow {https_port}/tcp` (fal's source addresses are not fixed, so allow all).",
        )
    missing = [str(p) for p in (22, 80) if p not in allowed]
    if missing:
        return Finding(
            "ufw",
            "warn",
            f"ufw allows {https_port}/tcp but not {', '.join(missing)}/tcp (SSH for deploys, 80 for "
            "Let's Encrypt).",
            " && ".join(f"ufw allow {p}/tcp" for p in missing),
        )
    return Finding("ufw", "ok", f"ufw is active and allows 22, 80 and {https_port}/tcp.")


_UFW_APPS = {"openssh": {22}, "nginx http": {80}, "nginx https": {443}, "nginx full": {80, 443}}
_UFW_RULE = re.compile(r"^(?P<to>.+?)\s{2,}(?P<action>ALLOW|LIMIT|DENY|REJECT)(?: IN)?\s{2,}(?P<from>.+?)\s*$")


def ufw_port_decisions(status: str) -> dict[int, tuple[str, str]]:
    """{TCP port: (action, rule line)} of the first rule from anywhere that matches
    each port in `ufw status verbose`: ufw applies the first match, in order."""
    decisions: dict[int, tuple[str, str]] = {}
    for line in status.splitlines():
        match = _UFW_RULE.match(line.strip())
        if not match or not match.group("from").startswith("Anywhere"):
            continue
        for port in _ufw_rule_ports(match.group("to")):
            decisions.setdefault(port, (match.group("action"), line.strip()))
    return decisions


def ufw_allowed_ports(status: str) -> set[int]:
    """TCP ports `ufw status verbose` lets in from anywhere."""
    return {port for port, (action, _) in ufw_port_decisions(status).items() if action in ("ALLOW", "LIMIT")}


def _ufw_rule_ports(to: str) -> set[int]:
    to = to.replace("(v6)", "").split(" on ")[0].strip()
    if to.lower() in _UFW_APPS:
        return set(_UFW_APPS[to.lower()])
    spec, _, proto = to.partition("/")
    if proto not in ("", "tcp"):
        return set()
    ports: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition(":")
        if low.isdigit() and (not high or high.isdigit()):
            ports.update(range(int(low), int(high or low) + 1))
    return ports


def _ufw_rule_command(rule: str) -> str:
    """`8443/tcp  DENY IN  Anywhere` -> `deny 8443/tcp`, as `ufw delete` takes it."""
    match = _UFW_RULE.match(rule)
    to = match.group("to").replace("(v6)", "").strip()
    return f"{match.group('action').lower()} {to if to.lower() not in _UFW_APPS else shlex.quote(to)}"


def _certificate_file_findings(run: Runner, domain: str, port: int, served_leaf, nginx_conf: str) -> list[Finding]:
    files = read_nginx_config(run, nginx_conf)
    if not files:
        return [
            Finding(
                "nginx.certificate",
                "warn",
                f"Cannot read nginx's configuration ({nginx_conf}), so its certificate files are unknown.",
                "Check that nginx is installed and its configuration is where Debian puts it.",
            )
        ]
    tls_files = nginx_tls_files(files, port, domain)
    if tls_files is None:
        return [
            Finding(
                "nginx.certificate",
                "error",
                f"nginx has no server block for {domain} on port {port} with ssl_certificate and "
                "ssl_certificate_key: connections for that name are rejected or get another site.",
                f"Check the site's `server_name {domain};` and `listen {port} ssl;` and re-deploy.",
            )
        ]
    cert_path, key_path = tls_files
    findings = [Finding("nginx.certificate", "ok", f"nginx serves {domain} with {cert_path} and {key_path}.")]
    rc, pem, err = run(f"cat -- {shlex.quote(cert_path)}")
    if rc != 0:
        return findings + [
            Finding("tls.cert_file", "error", f"Cannot read {cert_path}: {_last_line(err)}.", "Check the path nginx uses.")
        ]
    # Only the public half of the private key leaves the host.
    rc, public_pem, err = run(f"openssl pkey -pubout -in {shlex.quote(key_path)}")
    if rc != 0:
        return findings + [
            Finding(
                "tls.key_file",
                "error",
                f"Cannot read the private key {key_path}: {_last_line(err)}.",
                "Check the path in ssl_certificate_key and that the file is a PEM key.",
            )
        ]
    try:
        certs = parse_pem_certs(pem.encode())
        public_key = serialization.load_pem_public_key(public_pem.encode())
    except ValueError as exc:
        return findings + [Finding("tls.cert_file", "error", f"Cannot parse {cert_path} or its key: {exc}.", "")]
    findings += analyze_cert_file(certs, public_key, cert_path, key_path, domain)
    if served_leaf is not None and certs and served_leaf not in certs:
        findings.append(
            Finding(
                "tls.stale",
                "warn",
                f"nginx serves a certificate that is not in {cert_path} (served: valid until "
                f"{served_leaf.not_valid_after_utc:%Y-%m-%d}; file: until {certs[0].not_valid_after_utc:%Y-%m-%d}): "
                "nginx was not reloaded after the file changed, or another server answers.",
                "`nginx -t && systemctl reload nginx`.",
            )
        )
    return findings


def _service_findings(run: Runner) -> list[Finding]:
    _, out, _ = run("systemctl is-active " + " ".join(SERVICES))
    states = out.split() + ["unknown"] * len(SERVICES)
    findings = []
    for service, state in zip(SERVICES, states):
        if state == "active":
            findings.append(Finding(f"service.{service}", "ok", f"{service} is active."))
        else:
            findings.append(
                Finding(
                    f"service.{service}",
                    "error",
                    f"{service} is {state}.",
                    f"`systemctl status {service}` and `journalctl -u {service} -n 50` say why; "
                    f"`systemctl restart {service}` once fixed.",
                )
            )
    return findings


def _journal_finding(run: Runner) -> Finding:
    units = " ".join(f"-u {s}" for s in SERVICES)
    rc, out, err = run(f"journalctl {units} -p err -n 20 --no-pager")
    if rc != 0:
        return Finding("journal", "warn", f"Cannot read the journal: {_last_line(err)}.", "")
    lines = [line for line in out.splitlines() if line.strip() and not line.startswith("-- ")]
    if not lines:
        return Finding("journal", "ok", "No recent errors from nginx or aisha-api in the journal.")
    recent = "\n".join(lines[-5:])
    return Finding(
        "journal",
        "warn",
        f"{len(lines)} recent error line(s) from nginx / aisha-api; the last:\n{recent}",
        f"Read them all: `journalctl {units} -p err -n 50 --no-pager`.",
    )


# --- nginx configuration -----------------------------------------------------------------------

_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|#[^\n]*|[{};]|[^\s{};"\'#]+')
MAX_INCLUDE_DEPTH = 10
MAX_CONFIG_FILES = 200
_SAFE_GLOB = re.compile(r"^[A-Za-z0-9_./*?@+=:,\[\]-]+$")


def read_nginx_config(run: Runner, nginx_conf: str = paths.NGINX_CONF) -> dict[str, str]:
    """nginx's configuration files {path: text}, as `nginx -T` dumps them. When the
    configuration is broken (e.g. a key that does not match its certificate), `nginx
    -T` prints nothing, so follow the includes with `cat` the way nginx would."""
    rc, dump, _ = run("nginx -T")
    if rc == 0:
        return split_nginx_dump(dump)
    conf_dir = posixpath.dirname(nginx_conf)
    files: dict[str, str] = {}
    pending = [nginx_conf]
    while pending and len(files) < MAX_CONFIG_FILES:
        pattern = posixpath.join(conf_dir, pending.pop(0))
        if not _SAFE_GLOB.match(pattern):
            continue  # never hand odd characters from a config file to a shell
        script = f'for f in {pattern}; do [ -f "$f" ] && printf "# configuration file %s:\\n" "$f" && cat -- "$f" && echo; done'
        rc, dump, _ = run(script)
        for path, text in split_nginx_dump(dump).items():
            if path not in files:
                files[path] = text
                pending += [args[0] for name, args, _ in _walk(_parse(text)) if name == "include" and args]
    return files


def _walk(directives: list):
    for directive in directives:
        yield directive
        if directive[2] is not None:
            yield from _walk(directive[2])


def nginx_tls_files(files: dict[str, str], port: int, domain: str) -> tuple[str, str] | None:
    """(ssl_certificate, ssl_certificate_key) of the server block nginx uses for
    `domain` on `port`; None when there is none. `files`: {path: text}, the main
    configuration file first."""
    main_path = next(iter(files))
    directives = _expand(_parse(files[main_path]), files, posixpath.dirname(main_path), 0)
    for server in _servers(directives, {}):
        names = server["server_name"]
        if port in server["ports"] and (domain in names or _wildcard_match(domain, names)):
            if server.get("ssl_certificate") and server.get("ssl_certificate_key"):
                return server["ssl_certificate"], server["ssl_certificate_key"]
    return None


def split_nginx_dump(dump: str) -> dict[str, str]:
    files: dict[str, str] = {}
    current = None
    for line in dump.splitlines(keepends=True):
        match = re.match(r"^# configuration file (.+):\s*$", line)
        if match:
            current = match.group(1)
            files[current] = ""
        elif current is not None:
            files[current] += line
    return files


def _parse(text: str) -> list:
    """nginx syntax to [(name, args, children or None)]."""
    tokens = [t for t in _TOKEN.findall(text) if not t.startswith("#")]
    position = 0

    def block() -> list:
        nonlocal position
        directives, words = [], []
        while position < len(tokens):
            token = tokens[position]
            position += 1
            if token == ";":
                if words:
                    directives.append((words[0], words[1:], None))
                words = []
            elif token == "{":
                children = block()
                directives.append((words[0] if words else "", words[1:], children))
                words = []
            elif token == "}":
                return directives
            else:
                words.append(token.strip("\"'"))
        return directives

    return block()


def _expand(directives: list, files: dict[str, str], conf_dir: str, depth: int) -> list:
    """Replace `include` by the directives of the files it names (as dumped)."""
    expanded = []
    for name, args, children in directives:
        if name == "include" and args and depth < MAX_INCLUDE_DEPTH:
            pattern = posixpath.join(conf_dir, args[0])
            for path in sorted(p for p in files if fnmatch.fnmatchcase(p, pattern)):
                expanded += _expand(_parse(files[path]), files, conf_dir, depth + 1)
        elif children is not None:
            expanded.append((name, args, _expand(children, files, conf_dir, depth)))
        else:
            expanded.append((name, args, None))
    return expanded


def _servers(directives: list, inherited: dict) -> list[dict]:
    """Server blocks with their ports, names and certificate files (inherited from
    the http level when not set in the server)."""
    own = _certificate_settings(directives, inherited)
    servers = []
    for name, args, children in directives:
        if children is None:
            continue
        if name != "server":
            servers += _servers(children, own)
            continue
        server = {"ports": set(), "server_name": [], **_certificate_settings(children, own)}
        for child, child_args, _ in children:
            if child == "listen" and child_args:
                listen_port = child_args[0].rsplit(":", 1)[-1]
                server["ports"].add(int(listen_port) if listen_port.isdigit() else 80)
            elif child == "server_name":
                server["server_name"] += child_args
        servers.append(server)
    return servers


def _certificate_settings(directives: list, inherited: dict) -> dict:
    """ssl_certificate(_key) set at this level, else inherited; the first of each,
    as a server may list an RSA and an ECDSA pair."""
    found = dict(inherited)
    for name in ("ssl_certificate", "ssl_certificate_key"):
        values = [args[0] for directive, args, children in directives if directive == name and args and children is None]
        if values:
            found[name] = values[0]
    return found


def _wildcard_match(domain: str, names: list[str]) -> bool:
    return any(n.startswith("*.") and domain.split(".", 1)[-1] == n[2:] for n in names)


# --- targets --------------------------------------------------------------------------------


def targets_from_args(args: argparse.Namespace) -> list[Target]:
    if args.inventory:
        return targets_from_inventory(args.inventory, args)
    url = urlsplit(args.url if "://" in (args.url or "") else f"https://{args.url or ''}")
    domain = args.domain or url.hostname
    if not domain:
        raise SystemExit("aisha-infra diagnose: give a URL (https://DOMAIN:8443), --domain or --inventory")
    target = Target(domain=domain, address=args.address, port=args.port or url.port or DEFAULT_PORT,
                    ssh_port=args.ssh_port or 22)
    if ssh_flags_given(args):  # host-side checks only when asked for
        ssh_address = args.address or _preferred(_safe_resolve(domain))
        if ssh_address:
            target.ssh = ssh_runner(SSHHost.from_data(ssh_address, {}, **ssh_overrides(args)))
    return [target]


def targets_from_inventory(path: str, args: argparse.Namespace) -> list[Target]:
    """One target per host of a pyinfra inventory file, with its group data."""
    return [target_for_host(name, data, args) for name, data in load_inventory(path)]


def target_for_host(name: str, data: dict, args: argparse.Namespace) -> Target:
    """The target of one inventory host (`data`: its merged data); `args` overrides."""
    from aisha_infra.deploy.settings import Settings

    address = args.address or data.get("verify_address") or data.get("ssh_hostname") or name
    ssh_port = args.ssh_port or int(data.get("ssh_port") or 22)
    return Target(
        domain=args.domain or data.get("aisha_domain") or name,
        address=address,
        port=args.port or int(data.get("nginx_https_port") or Settings.nginx_https_port),
        name=name,
        tls_mode=data.get("tls_mode") or Settings.tls_mode,
        ssh=ssh_runner(SSHHost.from_data(name, data, **ssh_overrides(args))),
        ssh_port=ssh_port,
        http_port=int(data.get("nginx_http_port") or Settings.nginx_http_port),
        ca_bundle=data.get("verify_ca_bundle"),
    )


def load_inventory(path: str) -> list[tuple[str, dict]]:
    """(host name, data) for each host of a pyinfra inventory file, data merged the
    way pyinfra merges it: group_data/all.py, then group_data/<group>.py and the
    group's own data, then the host's. (pyinfra_cli's loader is not used: importing
    pyinfra_cli monkey-patches the whole process with gevent.)"""
    inventory = Path(path).resolve()
    groups = {
        name: value if isinstance(value, tuple) else (value, {})
        for name, value in runpy.run_path(str(inventory)).items()
        if not name.startswith("_") and _is_host_group(value)
    }
    group_data: dict[str, dict] = {}
    for folder in dict.fromkeys([Path.cwd() / "group_data", inventory.parent / "group_data"]):
        for file in sorted(folder.glob("*.py")):
            values = runpy.run_path(str(file))
            group_data.setdefault(file.stem, {}).update(
                {k: v for k, v in values.items() if not k.startswith("_") and not callable(v) and not isinstance(v, types.ModuleType)}
            )
    hosts: dict[str, dict] = {}
    for group, (members, data_of_group) in groups.items():
        for member in members:
            name, own = member if isinstance(member, tuple) else (member, {})
            data = hosts.setdefault(name, dict(group_data.get("all", {})))
            data.update(group_data.get(group, {}), **data_of_group)
            data.update(own)
    return list(hosts.items())


def _is_host_group(value) -> bool:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
        value = value[0]
    return isinstance(value, list) and all(
        isinstance(h, str) or (isinstance(h, tuple) and len(h) == 2 and isinstance(h[0], str)) for h in value
    )


def _safe_resolve(domain: str) -> list[str]:
    try:
        return resolve_addresses(domain)
    except OSError:
        return []


def _preferred(addresses: list[str]) -> str | None:
    """IPv4 first: it is what an A record gives fal."""
    return next((a for a in addresses if ":" not in a), addresses[0] if addresses else None)


# --- output ------------------------------------------------------------------------------------

_COLOURS = {"ok": "\033[32m", "warn": "\033[33m", "error": "\033[31m"}
_RESET = "\033[0m"


def render_text(reports: list[Report], colour: bool = False, width: int = 100) -> str:
    lines = []
    for report in reports:
        target = report.target
        heading = f"https://{target.domain}:{target.port}"
        if target.name and target.name != target.domain:
            heading = f"{target.name}: {heading}"
        lines.append(f"{heading} via {report.address or '?'}")
        if report.chain:
            lines.append(f"  certificates sent ({report.protocol or 'protocol unknown'}), in order:")
            for index, cert in enumerate(report.chain):
                lines.append(f"    {index}. subject {cert['subject']}")
                lines.append(f"       issuer  {cert['issuer']}")
                lines.append(f"       valid   {cert['not_before'][:10]} .. {cert['not_after'][:10]}")
        check_width = max((len(f.check) for f in report.findings), default=5)
        indent = " " * (2 + 5 + 2 + check_width + 2)
        for finding in report.findings:
            label = f"{finding.severity:<5}"
            if colour:
                label = f"{_COLOURS[finding.severity]}{label}{_RESET}"
            lead = f"  {label}  {finding.check:<{check_width}}  "
            lines += _wrap(finding.message, lead, indent, width)
            if finding.fix:
                lines += _wrap(finding.fix, indent + "fix: ", indent + "     ", width)
        errors = sum(f.severity == "error" for f in report.findings)
        warnings = sum(f.severity == "warn" for f in report.findings)
        lines.append(f"  => {errors} error(s), {warnings} warning(s)")
        lines.append("")
    return "\n".join(lines)


def _wrap(text: str, first: str, rest: str, width: int) -> list[str]:
    """`text` wrapped to `width`; `first` leads the first line, `rest` the others
    (same visible length: `first` may hold colour codes)."""
    lines = []
    for paragraph in text.splitlines() or [""]:
        # Commands and paths stay whole, even when longer than the line.
        lines += textwrap.wrap(
            paragraph, max(width - len(rest), 40), break_long_words=False, break_on_hyphens=False
        ) or [""]
    return [(first if i == 0 else rest) + line for i, line in enumerate(lines)]


def render_json(reports: list[Report]) -> str:
    return json.dumps(
        {"ok": not any(r.failed for r in reports), "targets": [r.as_dict() for r in reports]}, indent=2
    )


# --- CLI ------------------------------------------------------------------------------------------


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "diagnose",
        help="say why HTTPS to a host fails and how to fix it (read-only)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", nargs="?", metavar="URL", help="e.g. https://aibots.example:8443")
    parser.add_argument("--inventory", metavar="FILE", help="diagnose every host of this pyinfra inventory")
    parser.add_argument("--address", help="connect to this address instead of resolving the domain")
    parser.add_argument("--domain", help="the name for SNI, Host and the certificate (default: from URL)")
    parser.add_argument("--port", type=int, help=f"HTTPS port (default: from URL, else {DEFAULT_PORT})")
    parser.add_argument("--ca-bundle", metavar="PEM", help="extra trusted roots, e.g. a test CA")
    parser.add_argument("--key", metavar="PEM", help="private (or public) key the served certificate must match")
    add_ssh_arguments(parser)  # with a URL: any of them turns the host-side checks (over SSH) on
    parser.add_argument("--json", action="store_true", help="machine-readable findings")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.url and not args.inventory and not args.domain:
        print("aisha-infra diagnose: give a URL, --domain or --inventory", file=sys.stderr)
        return 2
    try:
        targets = targets_from_args(args)
    except SSHError as exc:  # connection data that cannot work, e.g. an unknown host key policy
        print(f"aisha-infra diagnose: {exc}", file=sys.stderr)
        return 2
    reports = [diagnose(t, ca_bundle=args.ca_bundle, key_file=args.key) for t in targets]
    if args.json:
        print(render_json(reports))
    else:
        colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        print(render_text(reports, colour=colour, width=shutil.get_terminal_size().columns))
    return 1 if any(r.failed for r in reports) else 0


# --- small helpers ---------------------------------------------------------------------------------


def _last_line(text: str) -> str:
    return _last_lines(text, 1)


def _last_lines(text: str, count: int) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-count:])
