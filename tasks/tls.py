from pyinfra.api import deploy
from pyinfra.operations import files

from aisha_infra.deploy.config import host_settings
from aisha_infra.deploy.operations.tls import self_signed_certificate
from aisha_infra.deploy.settings import DEFAULTS


@deploy("TLS", data_defaults=DEFAULTS)
def ensure_certificates() -> list:
    """Returns the operations whose change means nginx must reload."""
    settings = host_settings()
    user = settings.aisha_user
    # Always present: the certificate in self-signed mode, and in letsencrypt mode
    # what nginx starts with until (or whenever) Let's Encrypt cannot issue.
    certificate = self_signed_certificate(
        name=f"Self-signed certificate for {settings.aisha_domain}",
        domain=settings.aisha_domain,
        cert=settings.selfsigned_cert_path,
        key=settings.selfsigned_key_path,
        owner=user,
        days=settings.tls_selfsigned_days,
        renew_days=settings.tls_selfsigned_renew_days,
    )
    # Repair drift in modes and owners (a world-readable key is a leak).
    key_mode = files.file(
        name="Private key is 0600 and the service user's",
        path=settings.selfsigned_key_path,
        user=user,
        group=user,
        mode="0600",
        touch=False,
    )
    cert_mode = files.file(
        name="Certificate is 0644",
        path=settings.selfsigned_cert_path,
        user=user,
        group=user,
        mode="0644",
        touch=False,
    )
    return [certificate, key_mode, cert_mode]
