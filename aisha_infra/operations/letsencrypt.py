"""Let's Encrypt through certbot's webroot plugin, issuing only when needed.

certbot never touches the nginx configuration here (its nginx installer mishandles
the 8443 listener); the site answers HTTP-01 from its own webroot and the
certificate snippet switches to the issued files once they exist.
"""

from __future__ import annotations

import io
import posixpath
import shlex
import time

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, OperationError, operation
from pyinfra.operations import files

from aisha_infra.facts.tls import CertificateState
from aisha_infra.letsencrypt_archive import ArchiveError, checked_archive

# Host name -> why the last issuance failed; the verify step reports it.
ISSUANCE_FAILURES: dict[str, str] = {}

# certbot/ACME error text -> what it means and what to do, in plain words.
FAILURE_EXPLANATIONS = [
    # certbot could not even ask: checked first, its errors also say "Connection refused"
    (("Requesting ", "Failed to establish a new connection", "Max retries exceeded", "Name or service not known",
      "certificate verify failed", "SSLError"),
     "certbot could not talk to the ACME server {server}: check outbound HTTPS from the host (and letsencrypt_ca_bundle for a private ACME server)."),
    (("rateLimited", "too many certificates", "too many failed authorizations"),
     "Let's Encrypt's rate limit was hit (at most 5 identical certificates a week): keep /etc/letsencrypt when rebuilding (see README: carry certificates over), or use letsencrypt_server='staging' while testing."),
    (("NXDOMAIN", "DNS problem", "no valid A records"),
     "DNS for {names} does not point at this server: create an A (and AAAA) record for each name with this host's public address, wait for it to propagate, then re-run."),
    (("Connection refused", "Timeout during connect", "Fetching http", "connection reset"),
     "the ACME server could not reach http://{first}/.well-known/acme-challenge/ on port 80: open port 80 in every firewall in front of the host (cloud security group included) and make sure the name resolves to this host."),
    (("unauthorized", "Invalid response from"),
     "the ACME server reached a different answer for the challenge: another server (or a proxy/CDN) answers for {first}; point DNS straight at this host."),
]


def explain_failure(output: str, names: list[str], server: str) -> str:
    for needles, explanation in FAILURE_EXPLANATIONS:
        if any(needle.lower() in output.lower() for needle in needles):
            return explanation.format(names=", ".join(names), first=names[0], server=server)
    return "certbot failed; its own words are above and in /var/log/letsencrypt/letsencrypt.log on the host."


def certificate_problem(state: dict | None, names: list[str], now: float) -> str | None:
    """Why a certificate must be requested, or None when the existing one serves."""
    if state is None:
        return "no certificate yet"
    if set(state["names"]) != set(names):
        return f"the certificate covers {sorted(state['names'])}, the configuration asks for {sorted(names)}"
    if not state["key_matches"]:
        return "the private key does not match the certificate"
    if state["not_after"] <= now:
        return "the certificate has expired"
    return None


def _issue(state, host, names, email, server, webroot, ca_bundle_remote, on_failure):
    env = f"REQUESTS_CA_BUNDLE={shlex.quote(ca_bundle_remote)} " if ca_bundle_remote else ""
    domains = " ".join(f"-d {shlex.quote(name)}" for name in names)
    command = (
        f"{env}certbot certonly --non-interactive --agree-tos --email {shlex.quote(email)} "
        f"--server {shlex.quote(server)} --webroot --webroot-path {shlex.quote(webroot)} "
        f"--cert-name {shlex.quote(names[0])} {domains} --keep-until-expiring --expand 2>&1"
    )
    ok, output = host.run_shell_command(command, print_output=False, print_input=False)
    text = output.output
    if ok:
        ISSUANCE_FAILURES.pop(host.name, None)
        logger.info(f"{host.print_prefix}Let's Encrypt issued a certificate for {', '.join(names)}")
        return True
    reason = explain_failure(text, names, server)
    ISSUANCE_FAILURES[host.name] = reason
    tail = "\n".join(text.strip().splitlines()[-8:])
    message = f"Let's Encrypt issuance failed for {', '.join(names)}: {reason}\ncertbot said:\n{tail}"
    if on_failure == "fail":
        logger.error(f"{host.print_prefix}{message}")
        return False  # fails this host only
    logger.warning(f"{host.print_prefix}{message}\nTLS is DEGRADED: nginx keeps serving the self-signed certificate.")
    return True


@operation(is_idempotent=False)
def certificate(
    names: list[str],
    email: str,
    server: str,
    webroot: str,
    ca_bundle_remote: str | None = None,
    on_failure: str = "degrade",
):
    """
    Obtain a certificate for `names` by HTTP-01 (webroot), unless a valid one for
    exactly these names exists (Let's Encrypt allows 5 duplicates a week).
    Renewal is certbot.timer's job, not the deploy's.

    + names: DNS names, the first is the lineage name (/etc/letsencrypt/live/<first>)
    + email: ACME account contact
    + server: ACME directory URL
    + webroot: directory nginx serves /.well-known/acme-challenge/ from
    + ca_bundle_remote: PEM on the host certbot trusts for a private ACME server
    + on_failure: "degrade" (keep self-signed, warn) or "fail" (stop the run)
    """
    live = f"/etc/letsencrypt/live/{names[0]}"
    state = host.get_fact(CertificateState, cert=f"{live}/fullchain.pem", key=f"{live}/privkey.pem")
    problem = certificate_problem(state, names, time.time())
    if problem is None:
        ISSUANCE_FAILURES.pop(host.name, None)
        host.noop(f"Let's Encrypt certificate for {', '.join(names)} is valid")
        return
    logger.info(f"{host.print_prefix}requesting a certificate: {problem}")
    yield FunctionCommand(_issue, (names, email, server, webroot, ca_bundle_remote, on_failure), {})


RESTORE_PAYLOAD = "/root/.aisha-letsencrypt-restore.tar.gz"


def restore_command(payload: str) -> str:
    """Unpack the checked archive without trusting it: owned by root whatever the
    archive says, into a fresh directory first, then moved (or merged) into place."""
    return (
        "set -e; "
        "staging=$(mktemp -d /etc/.aisha-letsencrypt-restore.XXXXXX); "
        f"trap 'rm -rf \"$staging\" {payload}' EXIT; "
        f"tar --no-same-owner -xzf {payload} -C \"$staging\"; "
        "if [ -e /etc/letsencrypt ]; then cp -a \"$staging/letsencrypt/.\" /etc/letsencrypt/; "
        "else mv \"$staging/letsencrypt\" /etc/letsencrypt; fi"
    )


@operation()
def restore_archive(archive: str, live_dir: str):
    """
    Unpack a backup of /etc/letsencrypt (made by `aisha-infra certs export`) on a host
    that has no certificate yet, so a rebuilt server serves the old one without asking
    the ACME server again. Never overwrites an existing certificate. Only the re-packed,
    checked archive is uploaded (aisha_infra/letsencrypt_archive.py); settings
    validation has refused a bad one before any host was touched.

    + archive: tar.gz on the control machine
    + live_dir: /etc/letsencrypt/live/<domain>
    """
    if host.get_fact(CertificateState, cert=f"{live_dir}/fullchain.pem") is not None:
        host.noop(f"{live_dir} exists: nothing to restore")
        return
    try:
        checked = checked_archive(archive, posixpath.basename(live_dir))
    except ArchiveError as exc:  # changed since settings validation accepted it
        raise OperationError(f"letsencrypt_restore_archive {archive!r} {exc}") from None
    yield from files.put._inner(src=io.BytesIO(checked), dest=RESTORE_PAYLOAD, mode="0600", user="root", group="root")
    yield restore_command(RESTORE_PAYLOAD)
