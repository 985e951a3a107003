"""`aisha-infra events pull`: copy a host's newest event-store snapshot to this machine.

The snapshot comes from the host's backup directory (aisha-backup.service, see
backend/aisha_webhook_api/backup.py); with --fresh, or when there is none yet, the
host takes one first through that same service. The copy is written with mode 0600,
checked (SQLite, integrity_check, schema) and only then given its final name, so a
file in --out is always one the deploy accepts as `events_restore_archive`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aisha_infra.deploy.inventory import InventoryError
from aisha_infra.deploy.settings import Settings
from aisha_infra.deploy.snapshots import snapshot_problem
from aisha_infra.tools import inventory as tools_inventory
from aisha_infra.tools.ssh import SSHError, SSHHost, add_ssh_arguments, ssh_overrides

SSH_TIMEOUT = 600  # a large store takes a while to copy


class PullError(RuntimeError):
    pass


@dataclass(frozen=True)
class Source:
    name: str  # the inventory name, or the address
    ssh: SSHHost  # reached as pyinfra reaches it (aisha_infra/tools/ssh.py)
    backup_dir: str


def run_on_host(source: Source, command: str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    """The one way this module reaches a host (sudo as the connection data says)."""
    return source.ssh.run(command, timeout=SSH_TIMEOUT, text=False, stdout=stdout)


def _failed(source: Source, what: str, result: subprocess.CompletedProcess) -> PullError:
    return PullError(f"{source.name}: {what} (exit {result.returncode}): {source.ssh.failure(result)}")


def newest_snapshot(source: Source, fresh: bool) -> str:
    """The newest snapshot's file name, taking one first if asked or if there is none."""
    listing = f"ls -1 {shlex.quote(source.backup_dir)} 2>/dev/null | grep -E '^events-[0-9]{{8}}T[0-9]{{6}}Z\\.sqlite3$' | tail -n 1"
    take = "systemctl start aisha-backup.service"
    command = f"{take} && {listing}" if fresh else f"name=$({listing}); if [ -z \"$name\" ]; then {take} && {listing}; else echo \"$name\"; fi"
    result = run_on_host(source, command)
    if result.returncode != 0:
        raise _failed(source, "could not take or list snapshots (is the deploy with backups on applied?)", result)
    name = result.stdout.decode().strip()  # only names the backup service writes (events-<time>.sqlite3)
    if not name:
        raise PullError(f"{source.name}: no snapshot in {source.backup_dir} (the host has no event store yet?)")
    return name


def pull(source: Source, out_dir: Path, fresh: bool = False) -> Path:
    name = newest_snapshot(source, fresh)
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = out_dir / f"{source.name}-{name}"
    partial = out_dir / f".{target.name}.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as sink:
            result = run_on_host(source, f"cat {shlex.quote(source.backup_dir + '/' + name)}", stdout=sink)
        if result.returncode != 0:
            raise _failed(source, f"could not read {name}", result)
        problem = snapshot_problem(partial)
        if problem:
            raise PullError(f"{source.name}: the copy of {name} is not a usable snapshot: {problem}")
        partial.rename(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def sources(target: str, overrides: dict, data: Sequence[str] = (), limit: Sequence[str] = ()) -> list[Source]:
    """An inventory file's hosts (with their ssh data and backup_dir), or one address.
    `overrides`: SSH flags that win over the inventory's data (ssh.ssh_overrides);
    `data`, `limit`: pyinfra's --data and --limit for an inventory."""
    if not Path(target).is_file():
        return [Source(target, SSHHost.from_data(target, {}, **overrides), Settings.backup_dir)]
    if Path(target).suffix != ".py":
        raise PullError(f"{target} is not a pyinfra inventory (.py); for a hosts file run "
                        f"`AISHA_HOSTS={target} aisha-infra events pull inventory.py ...`")
    return [
        Source(name, SSHHost.from_data(name, host_data, **overrides), host_data.get("backup_dir") or Settings.backup_dir)
        for name, host_data in tools_inventory.load(target, data, limit).selected_hosts()
    ]


def register(subparsers) -> None:
    parser = subparsers.add_parser("events", help="event store snapshots")
    actions = parser.add_subparsers(dest="action", required=True)
    pull_parser = actions.add_parser(
        "pull", help="copy each host's newest event-store snapshot here (mode 0600, checked)")
    pull_parser.add_argument("target", metavar="HOST_OR_INVENTORY",
                             help="an address (SSH), or a pyinfra inventory file for all its hosts")
    pull_parser.add_argument("--out", type=Path, required=True, help="directory to write the snapshots to")
    pull_parser.add_argument("--fresh", action="store_true", help="take a new snapshot on the host first")
    tools_inventory.add_arguments(pull_parser)  # --data, --limit: for an inventory, as pyinfra's
    add_ssh_arguments(pull_parser)
    pull_parser.set_defaults(run=_run_pull)


def _run_pull(args) -> int:
    try:
        hosts = sources(args.target, ssh_overrides(args), args.data, args.limit)
    except (PullError, SSHError, InventoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for source in hosts:
        try:
            path = pull(source, args.out, args.fresh)
        except (PullError, OSError) as exc:  # SSHError is an OSError
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{source.name}: wrote {path} (mode 0600). Restore it on a new host with, in its host data:\n"
              f"  events_restore_archive = {str(path)!r}")
    return 1 if failed else 0
