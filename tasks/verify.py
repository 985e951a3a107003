from pyinfra import host
from pyinfra.api import deploy

from aisha_infra.operations.verify import https_endpoint
from aisha_infra.settings import Settings


@deploy("Verify")
def verify_endpoint(settings: Settings):
    address = settings.verify_address or host.data.get("ssh_hostname") or host.name
    pinned = None
    if settings.verify_ca_bundle is None and settings.tls_mode == "self-signed":
        pinned = settings.selfsigned_cert_path  # trust exactly the certificate we deployed
    https_endpoint(
        name=f"HTTPS health and webhook from the control machine (via {address})",
        address=address,
        domain=settings.aisha_domain,
        port=settings.nginx_https_port,
        webhook_url=settings.webhook_url,
        ca_bundle=settings.verify_ca_bundle,
        pinned_cert=pinned,
        fallback_cert=settings.selfsigned_cert_path if settings.tls_mode == "letsencrypt" else None,
    )
