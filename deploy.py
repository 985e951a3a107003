"""Provision a fal.ai webhook host for the Aisha Bot: `pyinfra inventory.py deploy.py`.

Order matters: the app runs before nginx proxies to it, a certificate exists
before nginx references it, the firewall opens SSH before it closes anything,
and Let's Encrypt's HTTP-01 challenge needs nginx and port 80 up first.
"""

from pyinfra import host

from aisha_infra.deploy.config import check_supported_systems, validate_inventory
from aisha_infra.tasks.app import deploy_app
from aisha_infra.tasks.backup import remove_backups, restore_events, schedule_backups
from aisha_infra.tasks.connection import send_without_delay
from aisha_infra.tasks.firewall import configure_firewall
from aisha_infra.tasks.letsencrypt import insist_on_letsencrypt, obtain_certificate
from aisha_infra.tasks.nginx import configure_site
from aisha_infra.tasks.packages import install_packages
from aisha_infra.tasks.service_user import create_service_user
from aisha_infra.tasks.tls import ensure_certificates
from aisha_infra.tasks.verify import announce_summary, verify_endpoint
from aisha_infra.tasks.watch import deploy_watch, stop_watch

# Every host's settings and system are checked before the first operation anywhere.
settings = validate_inventory(host.state)[host.name]
check_supported_systems(host.state)

send_without_delay()
announce_summary(settings)

install_packages(settings)
create_service_user(settings)
if settings.events_restore_archive:
    restore_events(settings)
deploy_app(settings)
if settings.backups_on:
    schedule_backups(settings)
else:
    remove_backups(settings)
certificate_changes = ensure_certificates(settings)
configure_site(settings, certificate_changes)
if settings.firewall_enabled:
    configure_firewall(settings)
if settings.tls_mode == "letsencrypt":
    obtain_certificate(settings)
if settings.verify_enabled:
    verify_endpoint(settings)
if settings.watch_enabled:
    deploy_watch(settings)
else:
    stop_watch(settings)
if settings.tls_mode == "letsencrypt":
    insist_on_letsencrypt(settings)
