"""End-of-run proof, from the control machine: HTTPS health and the webhook path.

The check runs while the deploy executes (after every change before it) and yields
no command, so a converged host still reports zero changes. A failed check fails
the host with a message that says what failed and how to fix it.
"""

from __future__ import annotations

import tempfile

from pyinfra import host, logger
from pyinfra.api import operation
from pyinfra.api.exceptions import OperationError
from pyinfra.facts.files import FileContents

from aisha_infra import health


@operation(is_idempotent=True)
def https_endpoint(
    address: str,
    domain: str,
    port: int,
    webhook_url: str,
    ca_bundle: str | None = None,
    pinned_cert: str | None = None,
    check_webhook: bool = True,
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
    + check_webhook: also POST a test event to the webhook path
    """
    if not host.state.is_executing:
        return  # change detection: nothing is deployed yet, so nothing to prove

    trust = ca_bundle
    if pinned_cert:
        lines = host.get_fact(FileContents, path=pinned_cert)
        if not lines:
            raise OperationError(f"cannot verify TLS: {pinned_cert} is missing on the host")
        with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False, prefix="aisha-cert-") as pem:
            pem.write("\n".join(lines) + "\n")
        trust = pem.name

    ok, detail = health.check_https_health(address, domain, port=port, ca_bundle=trust)
    if not ok:
        raise OperationError(f"HTTPS health check failed for https://{domain}:{port}/health via {address}: {detail}")
    logger.info(f"{host.print_prefix}HTTPS health OK: {detail}")

    if check_webhook:
        ok, detail = health.check_webhook_post(address, domain, port=port, ca_bundle=trust)
        if not ok:
            raise OperationError(f"webhook POST check failed via {address}: {detail}")
        logger.info(f"{host.print_prefix}Webhook POST OK: {detail}")

    logger.info(f"{host.print_prefix}FAL_WEBHOOK_URL={webhook_url}")
    host.noop(f"verified https://{domain}:{port}/health and the webhook path")
    yield from ()  # an operation is a generator, even one that never changes anything
