"""The whole webhook host in one deploy, for any deploy file:

    from aisha_infra.tasks import deploy_webhook_host
    deploy_webhook_host()

Order matters: the app runs before nginx proxies to it, a certificate exists
before nginx references it, the firewall opens SSH before it closes anything,
and Let's Encrypt's HTTP-01 challenge needs nginx and port 80 up first.

The packages install in the background (a fresh host spends most of its provision in
apt) while the steps that need none of them run: the service user, the app's release
(and serving it, when the host already has what the app needs), backups, the watch's
files. Everything after the wait needs them (nginx, openssl, ufw, certbot).
"""

from pyinfra import host

from aisha_infra.deploy.config import check_supported_systems, host_settings
from aisha_infra.deploy.frozen_imports import freeze_imports
from aisha_infra.deploy.operation_order import order_operations_without_source
from aisha_infra.deploy.prefetch import prefetch_facts
from aisha_infra.tasks.app import can_serve_before_packages, serve_app, stage_app
from aisha_infra.tasks.backup import remove_backups, restore_events, schedule_backups
from aisha_infra.tasks.connection import send_without_delay
from aisha_infra.tasks.firewall import configure_firewall
from aisha_infra.tasks.letsencrypt import insist_on_letsencrypt, obtain_certificate
from aisha_infra.tasks.nginx import configure_site
from aisha_infra.tasks.packages import start_installing_packages, wait_for_packages
from aisha_infra.tasks.service_user import create_service_user
from aisha_infra.tasks.tls import ensure_certificates
from aisha_infra.tasks.verify import announce_summary, verify_endpoint
from aisha_infra.tasks.watch import install_watch, start_watch, stop_watch


def deploy_webhook_host():
    """Provision this host as a fal.ai webhook server, as its host.data says (every
    setting: aisha_infra/deploy/settings.py). Every host's settings and system are
    checked before the first operation anywhere.

    Each concern is a @deploy of its own; this is a plain function, because a @deploy
    around them would prefix every operation's name ("Webhook host | App | ...") and the
    names are read by people, the rollout ("App | Serve release ...") and the tests.
    Connection arguments (_sudo, ...) come from host data, as for any deploy file."""
    settings = host_settings()
    order_operations_without_source()
    freeze_imports()
    # Every host's facts of its last run, one command each; first, Nagle off on each connection.
    prefetch_facts(host.state, connected=send_without_delay)
    check_supported_systems(host.state)

    announce_summary()

    packages = start_installing_packages()
    create_service_user()
    if settings.events_restore_archive:
        restore_events()
    release = stage_app()
    # Decided from the packages the host had before this run (a fact read now).
    serve_during_apt = can_serve_before_packages(settings)
    if serve_during_apt:
        serve_app(release)
    if settings.backups_on:
        schedule_backups()
    else:
        remove_backups()
    if settings.watch_enabled:
        watch = install_watch()
    else:
        stop_watch()
    wait_for_packages(packages)

    if not serve_during_apt:
        serve_app(release)
    certificate_changes = ensure_certificates()
    configure_site(certificate_changes)
    if settings.firewall_enabled:
        configure_firewall()
    if settings.tls_mode == "letsencrypt":
        obtain_certificate()
    if settings.verify_enabled:
        verify_endpoint()
    if settings.watch_enabled:
        start_watch(watch)
    if settings.tls_mode == "letsencrypt":
        insist_on_letsencrypt()
