from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from aisha_infra.deploy import paths, rendering
from aisha_infra.deploy.config import host_settings
from aisha_infra.deploy.operations import letsencrypt
from aisha_infra.deploy.settings import DEFAULTS
from aisha_infra.tasks.nginx import point_site_at_certificate



@deploy("Let's Encrypt", data_defaults=DEFAULTS)
def obtain_certificate():
    """Runs after nginx serves the ACME webroot on port 80 (with the self-signed
    certificate on 8443), then switches the site to the issued certificate."""
    settings = host_settings()
    ca_bundle = None
    if settings.letsencrypt_ca_bundle:  # a private ACME server (Pebble, an internal CA)
        ca_bundle = paths.REMOTE_ACME_CA
        files.put(
            name="Trust the private ACME server",
            src=settings.letsencrypt_ca_bundle,
            dest=paths.REMOTE_ACME_CA,
            mode="0644",
        )
        dropin = files.template(
            name="certbot.timer renewals trust it too",
            **rendering.template_source("systemd/certbot.service.d/aisha-acme-ca.conf.j2"),
            dest=paths.CERTBOT_DROPIN_PATH,
            ca_bundle=paths.REMOTE_ACME_CA,
        )
        systemd.daemon_reload(name="Reload systemd units", _if=dropin.did_change)

    if settings.letsencrypt_restore_archive:
        letsencrypt.restore_archive(
            name="Restore /etc/letsencrypt carried over from the previous host",
            archive=settings.letsencrypt_restore_archive,
            live_dir=settings.letsencrypt_live_dir,
        )

    files.template(
        name="Renewal hook: nginx -t, then reload",
        **rendering.template_source("letsencrypt/aisha-reload-nginx.sh.j2"),
        dest=paths.RENEWAL_HOOK_PATH,
        mode="0755",
        **rendering.renewal_hook_context(settings),
    )
    retry_units = [
        files.template(
            name=f"Retry a reload the renewal hook could not do: {Path(dest).name}",
            **rendering.template_source(f"systemd/{Path(dest).name}.j2"),
            dest=dest,
            **rendering.renewal_hook_context(settings),
        )
        for dest in (paths.RELOAD_RETRY_SERVICE_PATH, paths.RELOAD_RETRY_TIMER_PATH)
    ]
    systemd.daemon_reload(name="Load the retry units", _if=any_changed(*retry_units))
    systemd.service(name="Run the retry timer", service="aisha-nginx-reload-retry.timer", running=True, enabled=True)
    letsencrypt.certificate(
        name=f"Certificate for {', '.join(settings.letsencrypt_domains)} (HTTP-01, webroot)",
        names=settings.letsencrypt_domains,
        email=settings.letsencrypt_email,
        server=settings.letsencrypt_directory_url,
        webroot=paths.ACME_WEBROOT,
        ca_bundle_remote=ca_bundle,
        on_failure=settings.letsencrypt_on_failure,
        timeout=settings.letsencrypt_timeout,
        known_addresses=[settings.endpoint_address(host.name, host.data)],
    )
    snippet = point_site_at_certificate(settings, name="Serve the Let's Encrypt certificate once it exists")
    systemd.service(
        name="Reload nginx for the new certificate",
        service="nginx.service",
        reloaded=True,
        _if=snippet.did_change,
    )
    systemd.service(name="Renew automatically (certbot.timer)", service="certbot.timer", running=True, enabled=True)


@deploy("Let's Encrypt", data_defaults=DEFAULTS)
def insist_on_letsencrypt():
    """Last step of the run: the host is set up and verified (serving the self-signed
    certificate when issuance failed) before a degraded run fails it."""
    settings = host_settings()
    letsencrypt.issued_as_asked(
        name="The certificate asked for is the one served",
        names=settings.letsencrypt_domains,
        on_failure=settings.letsencrypt_on_failure,
    )
