import json
from io import StringIO
from typing import NamedTuple

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from aisha_infra.deploy import paths, rendering
from aisha_infra.deploy.config import host_settings
from aisha_infra.deploy.onhost import aisha_watch
from aisha_infra.deploy.operations.app import secret_file
from aisha_infra.deploy.settings import DEFAULTS, Settings
from aisha_infra.tasks.service_user import create_system_account


def metrics_firewall_rules(settings: Settings) -> list[str]:
    """ufw rules that let only metrics_allow_from scrape node_exporter."""
    port = rendering.NODE_EXPORTER_PORT
    return [f"allow from {source} to any port {port} proto tcp" for source in settings.metrics_allow_from]


class InstalledWatch(NamedTuple):
    """What install_watch changed, for start_watch's restarts."""
    checker: OperationMeta
    config: OperationMeta
    alert_url: OperationMeta
    service: OperationMeta
    timer: OperationMeta


@deploy("Watch", data_defaults=DEFAULTS)
def install_watch() -> InstalledWatch:
    """The on-host watch: aisha-watch.timer runs the checker as an unprivileged user;
    certbot's failures start it at once. Installed while the packages install (it needs
    none of them); start_watch starts it once nginx, the certificate and ufw are in place."""
    create_system_account(rendering.WATCH_USER, home=paths.WATCH_STATE_DIR)
    settings = host_settings()
    script = files.put(
        name=f"Install the checker {paths.WATCH_SCRIPT_PATH}",
        src=aisha_watch.__file__,
        dest=paths.WATCH_SCRIPT_PATH,
        user="root",
        group="root",
        mode="0755",
    )
    config = files.put(
        name=f"Watch configuration {paths.WATCH_CONFIG_PATH}",
        src=StringIO(json.dumps(rendering.watch_config(settings, host.name), indent=2, sort_keys=True) + "\n"),
        dest=paths.WATCH_CONFIG_PATH,
        user="root",
        group="root",
        mode="0644",
    )
    if settings.alert_webhook_url:
        alert_url = secret_file(
            name="Alert webhook URL (0600 root: it holds a token)",
            dest=paths.WATCH_ALERT_URL_PATH,
            content=settings.alert_webhook_url + "\n",
            environment=False,
        )
    else:
        alert_url = files.file(name="No alert webhook URL", path=paths.WATCH_ALERT_URL_PATH, present=False)
    service = files.template(
        name="Render aisha-watch.service",
        **rendering.template_source("systemd/aisha-watch.service.j2"),
        dest=paths.WATCH_SERVICE_PATH,
        **rendering.watch_service_context(settings),
    )
    timer = files.template(
        name=f"Render aisha-watch.timer (every {settings.watch_interval_seconds} s)",
        **rendering.template_source("systemd/aisha-watch.timer.j2"),
        dest=paths.WATCH_TIMER_PATH,
        **rendering.watch_timer_context(settings),
    )
    certbot_dropin = files.template(
        name="A failed certbot.service starts the watch at once (OnFailure=)",
        **rendering.template_source("systemd/certbot.service.d/aisha-watch.conf.j2"),
        dest=paths.CERTBOT_ONFAILURE_DROPIN_PATH,
    )
    systemd.daemon_reload(name="Reload systemd units", _if=any_changed(service, timer, certbot_dropin))
    # Enabling reloads systemd: done now, while the packages install. Not started: its first
    # check would find no nginx yet (and alert); start_watch starts it.
    systemd.service(name="Enable aisha-watch.timer at boot", service="aisha-watch.timer",
                    running=None, enabled=True)
    return InstalledWatch(script, config, alert_url, service, timer)


@deploy("Watch", data_defaults=DEFAULTS)
def start_watch(installed: InstalledWatch):
    """The timer runs, a new watch checks at once; node_exporter exports its results (opt-in)."""
    settings = host_settings()
    if settings.metrics_enabled:
        apt.packages(
            name="Install prometheus-node-exporter",
            packages=["prometheus-node-exporter"],
            no_recommends=True,
            update=True,
            cache_time=3600,
        )
        defaults = files.template(
            name=f"node_exporter listens on {rendering.node_exporter_context(settings)['listen']}, reads the watch's metrics",
            **rendering.template_source("default/prometheus-node-exporter.j2"),
            dest=paths.NODE_EXPORTER_DEFAULTS_PATH,
            **rendering.node_exporter_context(settings),
        )
        systemd.service(
            name="Restart node_exporter for its new arguments",
            service="prometheus-node-exporter.service",
            restarted=True,
            _if=defaults.did_change,
        )
        systemd.service(
            name="Run node_exporter",
            service="prometheus-node-exporter.service",
            running=True,
            enabled=True,
        )

    # A new checker or configuration reports at once instead of at the next tick; before the
    # timer (re)starts, whose first tick (OnActiveSec) then never runs into this one.
    server.shell(
        name="Check once now with the new watch",
        commands=["systemctl start aisha-watch.service"],
        _if=any_changed(installed.checker, installed.config, installed.alert_url, installed.service),
    )
    # restarted= only acts on a running timer; the next operation starts a stopped one.
    systemd.service(
        name="Restart aisha-watch.timer for its new interval",
        service="aisha-watch.timer",
        restarted=True,
        _if=installed.timer.did_change,
    )
    systemd.service(name="Run aisha-watch.timer", service="aisha-watch.timer", running=True, enabled=True)


@deploy("Watch (off)", data_defaults=DEFAULTS)
def stop_watch():
    """watch_enabled = False: the timer no longer runs (its files stay, inert)."""
    systemd.service(name="Stop aisha-watch.timer", service="aisha-watch.timer", running=False, enabled=False)
