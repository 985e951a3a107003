from pyinfra.api import deploy
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from aisha_infra.deploy import paths, rendering
from aisha_infra.deploy.config import host_settings
from aisha_infra.deploy.operations import nginx
from aisha_infra.deploy.settings import DEFAULTS, Settings


def point_site_at_certificate(settings: Settings, name: str):
    """The certificate snippet: Let's Encrypt's files once they exist (letsencrypt mode),
    the self-signed pair until then."""
    return nginx.certificate_snippet(
        name=name,
        dest=paths.NGINX_CERT_SNIPPET_PATH,
        selfsigned_cert=settings.selfsigned_cert_path,
        selfsigned_key=settings.selfsigned_key_path,
        letsencrypt_live_dir=settings.letsencrypt_live_dir if settings.tls_mode == "letsencrypt" else None,
        names=settings.letsencrypt_domains,
    )


@deploy("Nginx", data_defaults=DEFAULTS)
def configure_site(certificate_changes: list | tuple = ()):
    """`certificate_changes`: operations whose change means nginx must reload, e.g. what
    ensure_certificates() returns."""
    settings = host_settings()
    files.directory(
        name=f"ACME challenge webroot {paths.ACME_WEBROOT}",
        path=f"{paths.ACME_WEBROOT}/.well-known/acme-challenge",
        user="root",
        group="root",
        mode="0755",
    )
    # Its default_server on port 80 would clash with ours.
    default_site = files.link(
        name="Remove the distribution's default site",
        path=paths.DEFAULT_SITE_LINK,
        present=False,
    )
    files.template(
        name="Rotate the webhook logs",
        **rendering.template_source("logrotate/aisha.j2"),
        dest=paths.LOGROTATE_PATH,
        **rendering.logrotate_context(settings),
    )
    snippet = point_site_at_certificate(settings, name="Point the site at its certificate")
    # HTTP/2 syntax from nginx's own version, read on the host (site_config)
    site = nginx.site_config(
        name=f"Render the webhook site (TLS on {settings.nginx_https_port}), live only if nginx -t passes",
        template="nginx/aisha-webhook.conf.j2",
        dest=paths.NGINX_SITE_PATH,
        context=rendering.site_context(settings),
        enable_link=paths.NGINX_SITE_LINK,
    )
    # Right after the files it reloads: only a running nginx; the next operation starts a stopped one.
    nginx.reloaded(
        name="Reload nginx for the new configuration or certificate",
        service="nginx.service",
        _if=any_changed(default_site, snippet, site, *certificate_changes),
    )
    systemd.service(name="Run nginx", service="nginx.service", running=True, enabled=True)
