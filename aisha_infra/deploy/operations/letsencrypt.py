"""Let's Encrypt through certbot's webroot plugin, issuing only when needed.

certbot never touches the nginx configuration here (its nginx installer mishandles
the 8443 listener); the site answers HTTP-01 from its own webroot and the
certificate snippet switches to the issued files once they exist.
"""

from __future__ import annotations

import io
import posixpath
import re
import shlex
import time
from itertools import chain

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, OperationError, StringCommand, operation
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
from pyinfra.facts.hardware import Ipv4Addrs, Ipv6Addrs

from aisha_infra.deploy import paths
from aisha_infra.deploy.facts.tls import CertificateState
from aisha_infra.deploy.letsencrypt_archive import ArchiveError, checked_archive
from aisha_infra.deploy.operations.uploads import show_hidden, upload

# Host name -> why the last issuance failed; the verify step reports it.
ISSUANCE_FAILURES: dict[str, str] = {}

# certbot's output, as it reads when the ACME server is Let's Encrypt (boulder) or Pebble.
# certbot prints "Requesting a certificate for ..." on every attempt: only "Requesting
# <host>/<path>: <error>" (its ClientError) means the ACME server itself was not reached.
_ACME_UNREACHABLE = re.compile(
    r"Requesting \S+/\S*: |Failed to establish a new connection|Max retries exceeded|"
    r"certificate verify failed|SSLError|Temporary failure in name resolution|Name or service not known", re.I)
_RATE_LIMITED = re.compile(r"rateLimited|too many (certificates|failed authorizations|new orders|registrations)", re.I)
_CAA = re.compile(r"Type:\s+caa\b|acme:error:caa|CAA record for \S+ prevents issuance", re.I)
_NAME_NOT_RESOLVING = re.compile(r"NXDOMAIN|DNS problem|could not resolve URL|no valid (A|IP)", re.I)
_CONNECTION_FAILED = re.compile(r"Type:\s+connection\b|Timeout during connect|Connection refused|i/o timeout|"
                                r"connection reset|No route to host", re.I)
# Where the ACME server connected for HTTP-01: Let's Encrypt "Detail: 203.0.113.9: Fetching http://...",
# Pebble "dial tcp 198.18.3.2:80: ...".
_CHALLENGE_ADDRESS = re.compile(r"Detail: ([0-9A-Fa-f.:]+): Fetching http|dial tcp \[?([0-9A-Fa-f.:]+?)\]?:80\b")
_WRONG_ANSWER = re.compile(r"Type:\s+unauthorized\b|Invalid response from", re.I)


def explain_failure(output: str, names: list[str], server: str, host_addresses: list[str] = ()) -> str:
    """certbot's output -> what went wrong and what to do, in plain words.
    `host_addresses`: this host's own addresses, to tell a name pointing elsewhere
    from a closed port 80 (both are connection failures at some address)."""
    listed, first = ", ".join(names), names[0]
    if _RATE_LIMITED.search(output):
        return ("Let's Encrypt's rate limit was hit (e.g. at most 5 identical certificates a week): wait for the time "
                "it names, keep /etc/letsencrypt when rebuilding (see README: carry certificates over), "
                "and use letsencrypt_server='staging' while testing.")
    if _CAA.search(output):
        return (f"a DNS CAA record for {listed} forbids this certificate authority: add the CAA record "
                f"'0 issue \"letsencrypt.org\"' (or remove the restricting one), then re-run.")
    if _ACME_UNREACHABLE.search(output):
        return (f"certbot could not talk to the ACME server {server}: check outbound HTTPS from the host "
                "(and letsencrypt_ca_bundle for a private ACME server).")
    if _NAME_NOT_RESOLVING.search(output):
        return (f"DNS for {listed} does not resolve (no A/AAAA record): create an A (and AAAA) record for each "
                "name with this host's public address, wait for it to propagate, then re-run.")
    if _CONNECTION_FAILED.search(output):
        match = _CHALLENGE_ADDRESS.search(output)
        address = next(filter(None, match.groups())) if match else None
        if address and host_addresses and address not in host_addresses:
            return (f"DNS for {first} points at {address}, which is not this host ({', '.join(host_addresses)}), "
                    f"and nothing answers there on port 80: point the A/AAAA record of {first} at this host "
                    "(behind NAT with that public address: forward port 80 to it), then re-run.")
        where = f" at {address}" if address else ""
        return (f"the ACME server could not reach http://{first}/.well-known/acme-challenge/ on port 80{where}: "
                "open port 80 in every firewall in front of the host (cloud security group included), "
                "make sure nginx listens on it and that the name resolves to this host.")
    if _WRONG_ANSWER.search(output):
        return (f"the ACME server reached a different answer for the challenge: another server (or a proxy/CDN) "
                f"answers for {first}; point DNS straight at this host.")
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


TIMED_OUT_MARKER = "aisha-infra: certbot timed out"


def certbot_command(names, email, server, webroot, ca_bundle_remote, timeout: int) -> str:
    """certbot's issuance, bounded by `timeout` seconds (coreutils timeout: SIGTERM,
    then SIGKILL 15 s later), output merged so a failure can be explained."""
    env = f"REQUESTS_CA_BUNDLE={shlex.quote(ca_bundle_remote)} " if ca_bundle_remote else ""
    domains = " ".join(f"-d {shlex.quote(name)}" for name in names)
    return (
        f"{env}timeout --kill-after=15 {int(timeout)} "
        f"certbot certonly --non-interactive --agree-tos --email {shlex.quote(email)} "
        f"--server {shlex.quote(server)} --webroot --webroot-path {shlex.quote(webroot)} "
        f"--cert-name {shlex.quote(names[0])} {domains} --keep-until-expiring --expand 2>&1; "
        # coreutils timeout exits 124 after SIGTERM, 137 after SIGKILL; the output carries no exit code
        f"status=$?; case $status in 124|137) echo {shlex.quote(TIMED_OUT_MARKER)};; esac; exit $status"
    )


def _issue(state, host, command: str, names, server, timeout, on_failure, host_addresses, connection: dict):
    """Run certbot through the connector exactly as a yielded command would run
    (`connection`: the operation's connector arguments, so _sudo, _sudo_password,
    _su_user, _timeout, _env apply), and keep its output to explain a failure.
    Never fails the host: the run goes on serving the self-signed certificate and
    the last step of the deploy decides, by letsencrypt_on_failure, how the run ends."""
    ok, output = host.run_shell_command(StringCommand(command), print_output=False, print_input=False, **connection)
    text = output.output
    if ok:
        ISSUANCE_FAILURES.pop(host.name, None)
        logger.info(f"{host.print_prefix}Let's Encrypt issued a certificate for {', '.join(names)}")
        return True
    if TIMED_OUT_MARKER in text:
        reason = (f"certbot (Let's Encrypt issuance) did not finish within {timeout} s (letsencrypt_timeout) and was "
                  "stopped: check that the host reaches the ACME server, or raise letsencrypt_timeout.")
    else:
        reason = explain_failure(text, names, server, host_addresses)
    ISSUANCE_FAILURES[host.name] = reason
    tail = "\n".join(text.strip().splitlines()[-8:])
    consequence = ("the run will end with an error" if on_failure == "fail"
                   else "letsencrypt_on_failure='degrade' accepts this")
    logger.warning(
        f"{host.print_prefix}Let's Encrypt issuance failed for {', '.join(names)}: {reason}\ncertbot said:\n{tail}\n"
        f"TLS is DEGRADED: nginx keeps serving the self-signed certificate ({consequence})."
    )
    return True


def connector_arguments() -> dict:
    """The current operation's connector arguments, as pyinfra hands them to the
    commands an operation yields; a FunctionCommand must pass them on itself."""
    arguments = host.current_op_global_arguments or {}
    return {key: arguments[key] for key in CONNECTOR_ARGUMENT_KEYS if key in arguments}


@operation(is_idempotent=False)
def certificate(
    names: list[str],
    email: str,
    server: str,
    webroot: str,
    ca_bundle_remote: str | None = None,
    on_failure: str = "fail",
    timeout: int = 300,
    known_addresses: list[str] | tuple = (),
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
    + on_failure: "fail" (the run ends with an error) or "degrade" (it does not);
      either way the host keeps serving the self-signed certificate
    + timeout: seconds certbot may take before it is stopped
    + known_addresses: addresses the host is reached at (besides its interfaces' own),
      to tell a name pointing elsewhere from a closed port 80
    """
    live = f"{paths.LETSENCRYPT_LIVE_DIR}/{names[0]}"
    state = host.get_fact(CertificateState, cert=f"{live}/fullchain.pem", key=f"{live}/privkey.pem")
    problem = certificate_problem(state, names, time.time())
    if problem is None:
        ISSUANCE_FAILURES.pop(host.name, None)
        host.noop(f"Let's Encrypt certificate for {', '.join(names)} is valid")
        return
    logger.info(f"{host.print_prefix}requesting a certificate: {problem}")
    # A FunctionCommand, not a yielded command: certbot's output must be read to explain a failure.
    command = certbot_command(names, email, server, webroot, ca_bundle_remote, timeout)
    interfaces = [*(host.get_fact(Ipv4Addrs) or {}).values(), *(host.get_fact(Ipv6Addrs) or {}).values()]
    host_addresses = sorted({*known_addresses, *chain.from_iterable(interfaces)} - {"127.0.0.1", "::1"})
    yield FunctionCommand(_issue, (command, names, server, timeout, on_failure, host_addresses, connector_arguments()), {})


@operation(is_idempotent=True)
def issued_as_asked(names: list[str], on_failure: str = "fail"):
    """
    The last step of a Let's Encrypt run: fails the host when issuance failed this run
    (it serves the self-signed certificate instead), unless on_failure is "degrade".
    Yields nothing when the certificate was issued, so a converged host has no change.

    + names: the names asked for (for the message)
    + on_failure: "fail" or "degrade"
    """
    if not host.state.is_executing:
        return  # issuance has not run yet
    reason = ISSUANCE_FAILURES.get(host.name)
    if reason and on_failure == "fail":
        message = (f"TLS DEGRADED: asked for a Let's Encrypt certificate for {', '.join(names)}, serving the "
                   f"self-signed one because issuance failed: {reason} (letsencrypt_on_failure='degrade' "
                   "lets such a run end with success)")
        yield FunctionCommand(fail_host, (message,), {})
        return
    host.noop("serving the Let's Encrypt certificate" if not reason else "degraded, accepted by letsencrypt_on_failure='degrade'")


# Why a check failed a host, by (host name, operation hash): pyinfra keeps no message of a
# failed FunctionCommand, and the tools read the run's results (aisha_infra.tools.pyinfra_report).
CHECK_FAILURES: dict[tuple[str, str], str] = {}


def fail_host(state, host, message: str) -> bool:
    """Fails this host only (an exception would abort the whole run); pyinfra passes state and host."""
    logger.error(f"{host.print_prefix}{message}")
    CHECK_FAILURES.setdefault((host.name, host.nested_executing_op_hash or host.executing_op_hash), message)
    return False




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
    checked archive is uploaded (aisha_infra/deploy/letsencrypt_archive.py); settings
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
    show_hidden(live_dir, f"restored from {archive} (private keys)")
    yield from upload(io.BytesIO(checked), paths.RESTORE_PAYLOAD, mode="0600")
    yield restore_command(paths.RESTORE_PAYLOAD)
