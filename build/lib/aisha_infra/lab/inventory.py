"""The lab's hosts as a pyinfra inventory: what inventory.py deploys to without AISHA_HOSTS."""

from __future__ import annotations

import os

from aisha_infra.deploy.inventory import InventoryError, read_hosts_file
from aisha_infra.lab.hosts import DEFAULT_LAB, lab_hosts_file, pyinfra_ssh_data


def lab_groups() -> dict[str, list]:
    """Hosts by group of the lab named by AISHA_LAB (default "demo"), as `lab up` left them."""
    lab = os.environ.get("AISHA_LAB", DEFAULT_LAB)
    path = lab_hosts_file(lab)
    if not path.exists():
        raise InventoryError(
            f"no hosts: the lab {lab!r} is not up ({path} is missing). "
            f"Boot it with `aisha-infra lab up --name {lab}`, or point AISHA_HOSTS at a hosts file "
            "for real servers (see README.md)."
        )
    # connect exactly as the lab says (its key; host keys new at every boot)
    return read_hosts_file(path, lab_connection=lambda entry: pyinfra_ssh_data(entry["ssh_key"]))
