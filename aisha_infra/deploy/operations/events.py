"""The event store carried over from the host this one replaces."""

from __future__ import annotations

import shlex
from pathlib import Path

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.files import File

from aisha_infra.deploy.operations.uploads import show_hidden, upload


@operation()
def restore_snapshot(snapshot: str, database: str, user: str):
    """
    Install an event-store snapshot (`aisha-infra events pull`, checked on the control
    machine by the settings validation) as the app's database on a host that has no
    store yet. Never replaces an existing store, not even an empty one.

    + snapshot: SQLite snapshot on the control machine
    + database: the app's database path (<aisha_data_dir>/events.sqlite3)
    + user: the app user, who owns the store
    """
    if host.get_fact(File, path=database) is not None:
        host.noop(f"{database} exists: nothing to restore")
        return
    data_dir = str(Path(database).parent)
    staged = f"{data_dir}/.events-restore.sqlite3"
    yield f"install -d -o {user} -g {user} -m 0750 {shlex.quote(data_dir)}"
    # the mode the app gives its database (UMask=0027)
    show_hidden(database, f"the event store from {snapshot} (webhook deliveries)")
    yield from upload(str(Path(snapshot).expanduser()), staged, mode="0640", user=user, group=user)
    yield f"test ! -e {shlex.quote(database)} && mv -T {shlex.quote(staged)} {shlex.quote(database)}"
