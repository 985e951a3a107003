"""`aisha-infra certs export`: carry /etc/letsencrypt from a host to its replacement.

The archive is written on the control machine with mode 0600 (it holds the ACME
account key and the certificates' private keys); tar keeps every file's mode, so
the keys stay private when the deploy restores it (setting letsencrypt_restore_archive).
The host is reached as pyinfra reaches it (aisha_infra/tools/ssh.py): from the inventory's data
with --inventory, else from the flags, with ~/.ssh/config and known_hosts honoured.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from aisha_infra.deploy import paths
from aisha_infra.deploy.inventory import InventoryError
from aisha_infra.tools import inventory as tools_inventory
from aisha_infra.tools.ssh import SSHError, SSHHost, add_ssh_arguments, ssh_overrides

EXPORT_TIMEOUT_S = 300
EXPORT_COMMAND = f"test -d {paths.LETSENCRYPT_LIVE_DIR} && tar -C /etc -czpf - letsencrypt"


def export_letsencrypt(ssh: SSHHost, out: Path) -> Path:
    """Stream /etc/letsencrypt of the host into `out` (0600). Raises SSHError."""
    partial = out.with_name(out.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as sink:
            result = ssh.run(EXPORT_COMMAND, timeout=EXPORT_TIMEOUT_S, text=False, stdout=sink)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        reason = ssh.failure(result) if result.stderr else "no certificate there yet?"
        raise SSHError(f"could not export /etc/letsencrypt from {ssh.hostname} "
                       f"(exit {result.returncode}): {reason}")
    partial.rename(out)
    return out


def register(subparsers) -> None:
    parser = subparsers.add_parser("certs", help="carry Let's Encrypt certificates between hosts")
    actions = parser.add_subparsers(dest="action", required=True)
    export = actions.add_parser("export", help="download /etc/letsencrypt of a host into a private tar.gz")
    export.add_argument("host", metavar="HOST",
                        help="host to read from: its name in --inventory, else an address or ~/.ssh/config host")
    export.add_argument("--out", type=Path, required=True, help="archive to write (mode 0600)")
    export.add_argument("--inventory", metavar="FILE",
                        help="pyinfra inventory (e.g. inventory.py with AISHA_HOSTS): connect as it says")
    tools_inventory.add_arguments(export, limit=False)  # --data: with --inventory, as pyinfra's
    add_ssh_arguments(export)
    export.set_defaults(run=_run_export)


def _ssh_host(args) -> SSHHost:
    data: dict = {}
    if args.inventory:
        hosts = tools_inventory.load(args.inventory, args.data).hosts
        if args.host not in hosts:
            raise SSHError(f"{args.host!r} is not in {args.inventory} (hosts: {', '.join(hosts) or 'none'})")
        data = hosts[args.host]
    return SSHHost.from_data(args.host, data, **ssh_overrides(args))


def _run_export(args) -> int:
    try:
        path = export_letsencrypt(_ssh_host(args), args.out)
    except (SSHError, InventoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path} (mode 0600). Restore it on the new host with, in its host data:\n"
          f"  letsencrypt_restore_archive = {str(path)!r}")
    return 0
