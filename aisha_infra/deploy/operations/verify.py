"""End-of-run proof: nginx serves the certificate its configuration names, and, from
the control machine, HTTPS health and the webhook path.

The checks run while the deploy executes (after every change before them) and yield
no command when all is well, so a converged host still reports zero changes. A failed
check fails the host with a message that says what failed and how to fix it. The last
lines of the run are one summary per host: what fal will see.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from pyinfra import host, logger
from pyinfra.api import FunctionCommand, StringCommand, operation
from pyinfra.facts.files import FileContents

from aisha_infra.checks import health, served_chain
from aisha_infra.deploy.facts.tls import ServedCertificate
from aisha_infra.deploy.operations.letsencrypt import ISSUANCE_FAILURES, fail_host

EXPIRY_WARNING_DAYS = 21
# `systemctl reload nginx` returns before old workers hand over: allow them this long.
SETTLE_SECONDS, SETTLE_INTERVAL = 10.0, 0.5
REQUEST_SECONDS = 10.0  # one request's limit, within what is left of the step's


def _request_timeout(deadline: float) -> float:
    """Each request gets what is left of the step's time (verify_timeout), at most REQUEST_SECONDS."""
    return max(0.1, min(REQUEST_SECONDS, deadline - time.monotonic()))


def _settled_health(endpoint: health.Endpoint, deadline: float) -> tuple[bool, str]:
    settled = min(time.monotonic() + SETTLE_SECONDS, deadline)
    while True:
        ok, detail = health.outcome(endpoint.health(timeout=_request_timeout(deadline)))
        if ok or time.monotonic() >= settled:
            return ok, detail
        time.sleep(SETTLE_INTERVAL)


# Certificates fetched back from hosts, one file per host and path; removed at exit.
_FETCHED = tempfile.TemporaryDirectory(prefix="aisha-verify-")


def _fetch_certificate(path: str) -> str | None:
    """Copy a certificate from the host to a file here, to trust exactly it."""
    lines = host.get_fact(FileContents, path=path)
    if not lines:
        return None
    pem = Path(_FETCHED.name) / f"{host.name}-{Path(path).name}"
    pem.write_text("\n".join(lines) + "\n")
    return str(pem)


@dataclass
class HostSummary:
    """What the end of the run says about one host."""

    webhook_url: str
    tls: str = "NOT VERIFIED"
    issuer: str = "-"
    days_left: int | None = None
    health: str = "not checked"

    def line(self, name: str, failed: bool) -> str:
        health = self.health
        if health == "not checked":
            health += " (the run failed on this host before the check)" if failed else " (verify_enabled=False)"
        days = "-" if self.days_left is None else str(self.days_left)
        return (f"[{name}] TLS {self.tls} | issuer {self.issuer} | {days} days left | health {health} | "
                f"give fal: {self.webhook_url}")


# Host name -> its summary; filled by https_endpoint, printed when the run ends.
SUMMARIES: dict[str, HostSummary] = {}


def print_summaries(state) -> None:
    """One line per host, as the very last lines of the run: after pyinfra's results table
    and after its own closing error (a run whose every host failed stops with "No hosts
    remaining!" and prints no table), so a CI log or cron mail showing the tail sees them."""
    if not state.is_executing:
        return  # --dry, or stopped before anything ran: nothing to report
    failed = {failed_host.name for failed_host in state.failed_hosts}
    for name, summary in SUMMARIES.items():
        log = logger.error if name in failed else logger.warning if summary.tls != "OK" else logger.info
        log(f"aisha-infra summary {summary.line(name, name in failed)}")


def expect_summary(state, webhook_url: str) -> None:
    """Announce this host's summary line; the first host arranges the printing."""
    if not SUMMARIES:
        atexit.register(print_summaries, state)  # runs before logging's own shutdown (LIFO)
    SUMMARIES[host.name] = HostSummary(webhook_url)


def _report_certificate(endpoint: health.Endpoint, deadline: float, summary: HostSummary) -> None:
    """The certificate line and the summary's issuer and days, from what the server sent on
    the connection that passed the checks; a handshake of its own only where Python cannot
    tell (health.sent_chain)."""
    certs = [x509.load_der_x509_certificate(der) for der in endpoint.served_certs]
    if not certs:
        certs = served_chain.fetch_served_chain(endpoint.address, endpoint.port, endpoint.domain,
                                                timeout=_request_timeout(deadline)).certs
    if not certs:
        return
    leaf = certs[0]
    days = (leaf.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)).days
    summary.issuer, summary.days_left = leaf.issuer.rfc4514_string(), days
    line = (f"{host.print_prefix}Certificate: issuer {summary.issuer}, "
            f"{len(certs)} certificate(s) sent, expires in {days} days")
    (logger.warning if days < EXPIRY_WARNING_DAYS else logger.info)(line)


@operation(is_idempotent=True)
def https_endpoint(
    address: str,
    domain: str,
    port: int,
    webhook_url: str,
    ca_bundle: str | None = None,
    pinned_cert: str | None = None,
    fallback_cert: str | None = None,
    check_webhook: bool = True,
    timeout: float = 120,
):
    """
    Verify `GET https://domain:port/health` (and a webhook POST) by connecting to
    `address` with SNI and Host = domain, with certificate verification on.

    + address: where to connect (no DNS needed)
    + domain: SNI, Host header and the name the certificate must carry
    + port: HTTPS port
    + webhook_url: printed for the operator to configure at fal
    + ca_bundle: PEM file on the control machine to trust (None: system trust store)
    + pinned_cert: certificate path on the host to fetch and trust (self-signed mode)
    + fallback_cert: self-signed certificate on the host that may be served instead
      when Let's Encrypt issuance failed this run (the degraded state)
    + check_webhook: also POST a test event to the webhook path
    + timeout: seconds the whole check may take (verify_timeout); every request is bounded by it
    """
    if not host.state.is_executing:
        return  # change detection: nothing is deployed yet, so nothing to prove
    deadline = time.monotonic() + timeout
    over_time = f" (the verify step's limit, verify_timeout = {timeout:g} s, is used up)"
    summary = SUMMARIES.setdefault(host.name, HostSummary(webhook_url))

    trust = _fetch_certificate(pinned_cert) if pinned_cert else ca_bundle
    if pinned_cert and trust is None:
        yield FunctionCommand(fail_host, (f"cannot verify TLS: {pinned_cert} is missing on the host",), {})
        return
    # One keep-alive connection for health and the test webhook (another if the trust changes).
    with contextlib.ExitStack() as connections:
        endpoint = connections.enter_context(health.Endpoint(address, domain, port, ca_bundle=trust))
        ok, detail = _settled_health(endpoint, deadline)

        degraded = None
        if not ok and fallback_cert and host.name in ISSUANCE_FAILURES:
            fallback = _fetch_certificate(fallback_cert)
            if fallback:
                fallback_endpoint = connections.enter_context(health.Endpoint(address, domain, port, ca_bundle=fallback))
                fallback_ok, fallback_detail = health.outcome(fallback_endpoint.health(timeout=_request_timeout(deadline)))
                if fallback_ok:
                    degraded, endpoint, ok, detail = ISSUANCE_FAILURES[host.name], fallback_endpoint, True, fallback_detail

        if not ok:
            detail += over_time if time.monotonic() >= deadline else ""
            summary.health = "FAILED (/health)"
            yield FunctionCommand(fail_host, (f"HTTPS health check failed for https://{domain}:{port}/health via {address}: {detail}",), {})
            return
        logger.info(f"{host.print_prefix}HTTPS health OK: {detail}")

        if check_webhook:
            ok, detail = health.outcome(endpoint.webhook(timeout=_request_timeout(deadline)))
            if not ok:
                detail += over_time if time.monotonic() >= deadline else ""
                summary.health = "FAILED (webhook POST)"
                yield FunctionCommand(fail_host, (f"webhook POST check failed via {address}: {detail}",), {})
                return
            logger.info(f"{host.print_prefix}Webhook POST OK: {detail}")
    summary.health = "OK"

    _report_certificate(endpoint, deadline, summary)
    if degraded:
        summary.tls = "DEGRADED (self-signed: Let's Encrypt issuance failed)"
        logger.warning(
            f"{host.print_prefix}TLS state: DEGRADED - serving the self-signed certificate, "
            f"which fal will not trust, because Let's Encrypt issuance failed: {degraded}"
        )
    else:
        summary.tls = "OK"
        logger.info(f"{host.print_prefix}TLS state: OK")
    logger.info(f"{host.print_prefix}FAL_WEBHOOK_URL={webhook_url}")
    host.noop(f"verified https://{domain}:{port}/health and the webhook path")
    yield from ()  # an operation is a generator, even one that never changes anything


@operation()
def serves_configured_certificate(port: int, domain: str, config: str):
    """
    nginx serves the certificate its configuration names. It loads certificates only when
    it (re)loads, so a renewal whose reload was refused (a broken include at the time) keeps
    the old one in memory until it expires; a mismatch is repaired by a tested reload.

    + port: HTTPS port, asked on 127.0.0.1 on the host
    + domain: SNI
    + config: the snippet naming ssl_certificate
    """
    state = host.get_fact(ServedCertificate, port=port, domain=domain, config=config)
    if state is None or state["served"] == state["configured"]:
        host.noop("nginx serves the configured certificate" if state else "nothing served yet to compare")
        return
    logger.info(f"{host.print_prefix}nginx serves certificate {state['served'][:16]}..., its configuration names "
                f"{state['configured'][:16]}... ({state['path']}): reloading")
    yield StringCommand("nginx -t -q && systemctl reload nginx.service")
