"""Where inventory.py finds its hosts: a hosts file of yours, or the local lab."""

from __future__ import annotations

import json
import os
from pathlib import Path

from aisha_infra.lab import DEFAULT_LAB, lab_hosts_file, pyinfra_ssh_data

GROUPS = ("canary", "production")


class InventoryError(RuntimeError):
    pass


def read_hosts_file(path: Path, lab: bool) -> dict[str, list]:
    """Read a hosts file: a JSON list of {"name", "address"?, "groups", "data"?}
    (the lab writes the same format, plus "ssh_key")."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InventoryError(f"cannot read hosts file {path}: {exc}") from exc
    if isinstance(entries, dict):  # the lab's file: {"lab": ..., "hosts": [...]}
        entries = entries.get("hosts", [])
    groups: dict[str, list] = {group: [] for group in GROUPS}
    for entry in entries:
        # lab hosts: connect exactly as the lab says (its key; host keys new at every boot)
        data = pyinfra_ssh_data(entry["ssh_key"]) if lab else {}
        for key in ("ssh_key", "ssh_user"):
            if entry.get(key):
                data[key] = entry[key]
        data.update(entry.get("data", {}))
        name = entry["name"]
        if entry.get("address") and entry["address"] != name:
            data.setdefault("ssh_hostname", entry["address"])
        for group in entry.get("groups") or ["production"]:
            groups.setdefault(group, []).append((name, data))
    return groups


def load_groups() -> dict[str, list]:
    """Hosts by group. AISHA_HOSTS=path/to/hosts.json targets real servers;
    otherwise the lab named by AISHA_LAB (default "demo")."""
    if os.environ.get("AISHA_HOSTS"):
        return read_hosts_file(Path(os.environ["AISHA_HOSTS"]), lab=False)
    lab = os.environ.get("AISHA_LAB", DEFAULT_LAB)
    path = lab_hosts_file(lab)
    if not path.exists():
        raise InventoryError(
            f"no hosts: the lab {lab!r} is not up ({path} is missing). "
            f"Boot it with `aisha-infra lab up --name {lab}`, or point AISHA_HOSTS at a hosts file "
            "for real servers (see README.md)."
        )
    return read_hosts_file(path, lab=True)
