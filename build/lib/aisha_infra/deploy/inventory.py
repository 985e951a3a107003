"""Hosts files: the servers inventory.py deploys to.

A hosts file is a JSON list of {"name", "address"?, "groups"?, "data"?} (the lab writes
the same format, plus "ssh_key"). Every host is in exactly one of GROUPS (default
"production"); any other group is an error naming the allowed ones, never a host
silently left out of the run.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyinfra.api.exceptions import InventoryError as PyinfraInventoryError

GROUPS = ("canary", "production")
ENTRY_KEYS = ("name", "address", "groups", "data", "ssh_key", "ssh_user")


class InventoryError(PyinfraInventoryError):
    """A hosts file pyinfra cannot use; pyinfra prints it as one line, no traceback."""


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != "" and value.isprintable() and not any(c.isspace() for c in value)


def _entry_problem(entry: Any, lab: bool) -> str | None:
    if not isinstance(entry, dict):
        return f"is {type(entry).__name__} {entry!r}, not an object like {{\"name\": \"web-1.example.com\", \"groups\": [\"canary\"]}}"
    unknown = [key for key in entry if key not in ENTRY_KEYS]
    if unknown and not lab:  # the lab's own file may carry more
        close = difflib.get_close_matches(unknown[0], ENTRY_KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"has unknown key {unknown[0]!r}{hint}; allowed: {', '.join(ENTRY_KEYS)}"
    if "name" not in entry:
        return "has no \"name\" (the host name pyinfra connects to)"
    for key in ("name", "address", "ssh_key", "ssh_user"):
        if key in entry and not _text(entry[key]):
            return f"{key} {entry[key]!r} is not a non-empty string without spaces"
    if lab and "ssh_key" not in entry:
        return "has no \"ssh_key\" (the lab's file is broken: boot the lab again)"
    if "data" in entry and not isinstance(entry["data"], dict):
        return f"data {entry['data']!r} is not an object of settings"
    groups = entry.get("groups", ["production"])
    if not isinstance(groups, list) or not groups or not all(isinstance(group, str) for group in groups):
        return f"groups {groups!r} is not a list of group names, e.g. [\"canary\"]"
    for group in groups:
        if group not in GROUPS:
            close = difflib.get_close_matches(group.lower(), GROUPS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"group {group!r} is unknown{hint}; every host is in one of: {', '.join(GROUPS)}"
    if len(set(groups)) > 1:
        return f"is in {' and '.join(groups)}: rollout stages follow one another, so a host is in exactly one"
    return None


def read_hosts_file(path: Path, lab_connection: Callable[[dict], dict] | None = None) -> dict[str, list]:
    """Hosts by group from a hosts file; InventoryError (one line) for anything wrong.
    The lab reads its own hosts file with `lab_connection`: the data to log in to an entry."""
    lab = lab_connection is not None
    try:
        entries = json.loads(path.read_text())
    except OSError as exc:
        raise InventoryError(f"cannot read hosts file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise InventoryError(f"hosts file {path} is not valid JSON: {exc}") from None
    if lab and isinstance(entries, dict):  # the lab's file: {"lab": ..., "hosts": [...]}
        entries = entries.get("hosts")
    if not isinstance(entries, list) or not entries:
        fix = "boot hosts with `aisha-infra lab up`" if lab else "see hosts.example.json"
        raise InventoryError(f"hosts file {path} must be a non-empty JSON list of hosts ({fix})")

    groups: dict[str, list] = {group: [] for group in GROUPS}
    seen: set[str] = set()
    for index, entry in enumerate(entries, start=1):
        problem = _entry_problem(entry, lab)
        label = f"host {index}" + (f" ({entry['name']!r})" if isinstance(entry, dict) and _text(entry.get("name")) else "")
        if problem:
            raise InventoryError(f"hosts file {path}: {label} {problem}")
        name = entry["name"]
        if name in seen:
            raise InventoryError(f"hosts file {path}: {label} appears twice; each host once")
        seen.add(name)
        # lab hosts: connect exactly as the lab says (its key; host keys new at every boot)
        data = lab_connection(entry) if lab else {}
        for key in ("ssh_key", "ssh_user"):
            if entry.get(key):
                data[key] = entry[key]
        data.update(entry.get("data", {}))
        if entry.get("address") and entry["address"] != name:
            data.setdefault("ssh_hostname", entry["address"])
        for group in entry.get("groups", ["production"]):
            groups[group].append((name, data))
    return groups
