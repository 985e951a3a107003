"""TLS operations: a self-signed certificate kept valid, and the nginx certificate snippet."""

from __future__ import annotations

import shlex
import time

from pyinfra import host
from pyinfra.api import StringCommand, operation

from aisha_infra.deploy.facts.tls import CertificateState


def self_signed_problem(state: dict | None, domain: str, renew_days: int, now: float) -> str | None:
    """Why the certificate must be (re)generated, or None when it is fine."""
    if state is None:
        return "no certificate yet"
    if domain not in state["names"]:
        return f"certificate names {state['names']} do not include {domain}"
    if state["not_after"] - now < renew_days * 86400:
        return f"certificate expires within {renew_days} days"
    if state["key_matches"] is False:
        return "private key does not match the certificate"
    return None


@operation()
def self_signed_certificate(domain: str, cert: str, key: str, owner: str, days: int = 365, renew_days: int = 30):
    """
    Keep a self-signed certificate for `domain`: generated when missing, for another
    name, expiring within `renew_days`, or not matching its key.

    + domain: CN and subjectAltName
    + cert: certificate path (0644)
    + key: private key path (0600, owner:owner)
    + owner: user and group owning both files
    + days: validity of a new certificate
    + renew_days: regenerate this long before expiry
    """
    state = host.get_fact(CertificateState, cert=cert, key=key)
    problem = self_signed_problem(state, domain, renew_days, time.time())
    if problem is None:
        host.noop(f"self-signed certificate for {domain} is valid")
        return

    c, k, o = shlex.quote(cert), shlex.quote(key), shlex.quote(f"{owner}:{owner}")
    # Generate beside the live files, then rename: nginx never sees half a pair. The
    # directory is root's (tasks/service_user.py), so no one else can plant `<key>.new`;
    # umask 077: the key is never readable by others, not even before its chmod.
    yield StringCommand(
        "umask 077 && "
        f"openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 "
        f"-days {int(days)} -subj {shlex.quote('/CN=' + domain)} "
        f"-addext {shlex.quote('subjectAltName=DNS:' + domain)} "
        f"-addext extendedKeyUsage=serverAuth "
        f"-keyout {k}.new -out {c}.new 2>&1 && "
        f"chown -h {o} {k}.new {c}.new && chmod 0600 {k}.new && chmod 0644 {c}.new && "
        f"mv -f {k}.new {k} && mv -f {c}.new {c}"
    )
