"""The host side, over SSH (`diagnose --ssh-key`, or an inventory): the firewall,
`nginx -t`, the certificate files nginx serves, the services and their recent
errors. Read-only commands only."""

from __future__ import annotations

import shlex

from cryptography import x509

from aisha_infra.checks.certificates import load_public_key, parse_pem_certs
from aisha_infra.checks.findings import Finding
from aisha_infra.checks.tlscheck import analyze_cert_file
from aisha_infra.deploy import paths
from aisha_infra.tools.diagnose.nginx_config import nginx_tls_files, read_nginx_config
from aisha_infra.tools.diagnose.remote import Runner, last_line, last_lines
from aisha_infra.tools.diagnose.ufw import ufw_finding

SERVICES = ("nginx", "aisha-api")


def check_host(
    run: Runner,
    domain: str,
    port: int,
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
                f"Cannot run commands on the host over SSH: {last_line(err) or f'exit status {rc}'}.",
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
                f"`nginx -t` fails: {last_lines(err, 3)}",
                "Fix what it names (see the certificate file findings for key and chain problems), then "
                "`nginx -t && systemctl reload nginx`. Until then nginx keeps the old configuration, or "
                "does not start at all.",
            )
        )
    findings += _certificate_file_findings(run, domain, port, served_leaf, nginx_conf)
    findings += _service_findings(run)
    findings.append(_journal_finding(run))
    return findings


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
            Finding("tls.cert_file", "error", f"Cannot read {cert_path}: {last_line(err)}.", "Check the path nginx uses.")
        ]
    # Only the public half of the private key leaves the host.
    rc, public_pem, err = run(f"openssl pkey -pubout -in {shlex.quote(key_path)}")
    if rc != 0:
        return findings + [
            Finding(
                "tls.key_file",
                "error",
                f"Cannot read the private key {key_path}: {last_line(err)}.",
                "Check the path in ssl_certificate_key and that the file is a PEM key.",
            )
        ]
    try:
        certs = parse_pem_certs(pem.encode())
        public_key = load_public_key(public_pem.encode())
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
        return Finding("journal", "warn", f"Cannot read the journal: {last_line(err)}.", "")
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


