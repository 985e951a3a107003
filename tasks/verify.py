from pyinfra import host
from pyinfra.api import deploy

from aisha_infra.deploy import paths
from aisha_infra.deploy.config import host_settings
from aisha_infra.deploy.operations.verify import expect_summary, https_endpoint, serves_configured_certificate
from aisha_infra.deploy.settings import DEFAULTS


def announce_summary():
    """Every host gets a summary line at the end of the run, verified or not."""
    settings = host_settings()
    expect_summary(host.state, settings.webhook_url)


@deploy("Verify", data_defaults=DEFAULTS)
def verify_endpoint():
    settings = host_settings()
    serves_configured_certificate(
        name="nginx serves the certificate its configuration names (else nginx -t, reload)",
        port=settings.nginx_https_port,
        domain=settings.aisha_domain,
        config=paths.NGINX_CERT_SNIPPET_PATH,
    )
    address = settings.endpoint_address(host.name, host.data)
    https_endpoint(
        name=f"HTTPS health and webhook from the control machine (via {address})",
        address=address,
        domain=settings.aisha_domain,
        port=settings.nginx_https_port,
        webhook_url=settings.webhook_url,
        ca_bundle=settings.verify_ca_bundle,
        pinned_cert=settings.pinned_certificate,  # trust exactly the certificate we deployed
        fallback_cert=settings.selfsigned_cert_path if settings.tls_mode == "letsencrypt" else None,
        timeout=settings.verify_timeout,
    )
