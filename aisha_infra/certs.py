"""`aisha-infra certs export`: carry /etc/letsencrypt from a host to its replacement.

The archive is written on the control machine with mode 0600 (it holds the ACME
account key and the certificates' private keys); tar keeps every file's mode, so
the keys stay private when the deploy restores it (setting letsencrypt_restore_archive).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def ssh_command(address: str, user: str, key: str | None) -> list[str]:
    command = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    if key:
        command += ["-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
    return command + [f"{user}@{address}"]


def export_letsencrypt(address: str, out: Path, user: str = "root", key: str | None = None) -> Path:
    """Stream /etc/letsencrypt of `address` into `out` (0600). Raises RuntimeError."""
    remote = "test -d /etc/letsencrypt/live && tar -C /etc -czpf - letsencrypt"
    if user != "root":
        remote = f"sudo sh -c '{remote}'"
    partial = out.with_name(out.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as sink:
        result = subprocess.run(ssh_command(address, user, key) + [remote], stdout=sink, stderr=subprocess.PIPE, timeout=300)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(
            f"could not export /etc/letsencrypt from {address} (exit {result.returncode}): "
            f"{result.stderr.decode(errors='replace').strip() or 'no certificate there yet?'}"
        )
    partial.rename(out)
    return out


def register(subparsers) -> None:
    parser = subparsers.add_parser("certs", help="carry Let's Encrypt certificates between hosts")
    actions = parser.add_subparsers(dest="action", required=True)
    export = actions.add_parser("export", help="download /etc/letsencrypt of a host into a private tar.gz")
    export.add_argument("address", help="host to read from (SSH)")
    export.add_argument("--out", type=Path, required=True, help="archive to write (mode 0600)")
    export.add_argument("--ssh-user", default="root")
    export.add_argument("--ssh-key", default=None)
    export.set_defaults(run=_run_export)


def _run_export(args) -> int:
    try:
        path = export_letsencrypt(args.address, args.out, args.ssh_user, args.ssh_key)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path} (mode 0600). Restore it on the new host with, in its host data:\n"
          f"  letsencrypt_restore_archive = {str(path)!r}")
    return 0
