from pyinfra.api import deploy
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from aisha_infra.deploy import paths, rendering
from aisha_infra.deploy.config import host_settings
from aisha_infra.deploy.operations.events import restore_snapshot
from aisha_infra.deploy.settings import DEFAULTS


@deploy("Event store", data_defaults=DEFAULTS)
def restore_events():
    """Before the app first starts, which would create an empty store."""
    settings = host_settings()
    restore_snapshot(
        name="Restore the event store carried over from the previous host",
        snapshot=settings.events_restore_archive,
        database=settings.events_database_path,
        user=settings.aisha_user,
    )


@deploy("Backups", data_defaults=DEFAULTS)
def schedule_backups():
    settings = host_settings()
    files.directory(
        name=f"Private snapshot directory {settings.backup_dir}",
        path=settings.backup_dir,
        user="root",
        group="root",
        mode="0700",
    )
    service_unit = files.template(
        name="Render aisha-backup.service",
        **rendering.template_source("systemd/aisha-backup.service.j2"),
        dest=paths.BACKUP_SERVICE_PATH,
        **rendering.backup_service_context(settings),
    )
    timer_unit = files.template(
        name="Render aisha-backup.timer",
        **rendering.template_source("systemd/aisha-backup.timer.j2"),
        dest=paths.BACKUP_TIMER_PATH,
        **rendering.backup_timer_context(settings),
    )
    systemd.daemon_reload(name="Reload systemd units", _if=any_changed(service_unit, timer_unit))
    systemd.service(
        name="Restart aisha-backup.timer for its new schedule",
        service="aisha-backup.timer",
        restarted=True,
        _if=timer_unit.did_change,
    )
    systemd.service(
        name=f"Snapshot every {settings.backup_interval_minutes} min (aisha-backup.timer)",
        service="aisha-backup.timer",
        running=True,
        enabled=True,
    )


@deploy("Backups", data_defaults=DEFAULTS)
def remove_backups():
    """Backups turned off: no timer left; snapshots already taken are kept."""
    systemd.service(name="Stop aisha-backup.timer", service="aisha-backup.timer", running=False, enabled=False)
    removed = [
        files.file(name=f"Remove {path}", path=path, present=False)
        for path in (paths.BACKUP_TIMER_PATH, paths.BACKUP_SERVICE_PATH)
    ]
    systemd.daemon_reload(name="Reload systemd units", _if=any_changed(*removed))
