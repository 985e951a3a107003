"""The inventory as the pyinfra CLI loads it, for the operator tools.

pyinfra's own loader (pyinfra_cli.inventory.make_inventory) reads the inventory file,
the group_data folders and the `--data KEY=VALUE` overrides, and `--limit` selects
hosts as the CLI does (a group name, else a glob of host names), so every tool sees
exactly the hosts and data `pyinfra INVENTORY deploy.py` would. The loading runs in a
child process: importing pyinfra_cli monkey-patches the whole process with gevent,
which the tools' threads and TLS checks must not inherit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aisha_infra.deploy.inventory import InventoryError

LOAD_TIMEOUT = 120  # an inventory file that takes longer is stuck


@dataclass(frozen=True)
class Inventory:
    hosts: dict[str, dict]  # every host's data as pyinfra merges it, in inventory order
    groups: dict[str, list[str]]  # host names by group, as pyinfra groups them (an empty group too)
    selected: list[str]  # the hosts --limit selects (all without --limit), in inventory order

    def selected_hosts(self) -> list[tuple[str, dict]]:
        return [(name, self.hosts[name]) for name in self.selected]


def add_arguments(parser: argparse.ArgumentParser, limit: bool = True) -> None:
    """pyinfra's --data (and --limit): the same meaning as on `pyinfra INVENTORY deploy.py`."""
    parser.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                        help="override a host data key for every host, as pyinfra's --data (repeatable)")
    if limit:
        parser.add_argument("--limit", action="append", default=[], metavar="GROUP|HOST",
                            help="only these hosts: a group, a host name or a glob, as pyinfra's --limit (repeatable)")


def check_data_arguments(data: Sequence[str]) -> None:
    for item in data:
        if "=" not in item or not item.split("=", 1)[0]:
            raise InventoryError(f"--data {item!r} is not KEY=VALUE (e.g. --data tls_mode=letsencrypt)")


def pyinfra_data_arguments(data: Sequence[str]) -> list[str]:
    """The --data options to hand on to a pyinfra run, so it deploys what the tool checked."""
    return [argument for item in data for argument in ("--data", item)]


def load(path: str, data: Sequence[str] = (), limit: Sequence[str] = ()) -> Inventory:
    """The inventory file `path` as `pyinfra path ... --data D --limit L` loads it;
    InventoryError (one line, what to do) when pyinfra cannot load it or a --limit
    pattern matches no host."""
    check_data_arguments(data)
    if not Path(path).is_file():  # pyinfra would take the name for a host to connect to
        raise InventoryError(f"the inventory file {path} does not exist in {Path.cwd()}: run from the project "
                             "directory, or name it with --inventory")
    command = [sys.executable, "-m", __name__, path, json.dumps({"data": list(data), "limit": list(limit)})]
    try:
        child = subprocess.run(command, capture_output=True, text=True, timeout=LOAD_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise InventoryError(f"loading {path} took more than {LOAD_TIMEOUT} s; run `pyinfra {path} debug-inventory`") from None
    try:
        answer = json.loads(child.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        detail = child.stderr.strip().splitlines()[-1:] or [f"exit status {child.returncode}"]
        raise InventoryError(f"pyinfra could not load {path}: {detail[0]}") from None
    if "error" in answer:
        raise InventoryError(answer["error"])
    return Inventory(answer["hosts"], answer["groups"], answer["selected"])


# --- the child process -----------------------------------------------------------------------


def _limit_matches(inventory, patterns: Sequence[str]) -> list:
    """Hosts selected by --limit, as pyinfra_cli.cli._get_inventory_pattern_matches selects
    them (a group's hosts, else host names matching the glob), but a pattern matching
    nothing is an error instead of a warning: a tool must not check fewer hosts than asked."""
    from fnmatch import fnmatch

    from pyinfra.api.exceptions import NoGroupError

    selected = set()
    for pattern in patterns:
        try:
            hosts = inventory.get_group(pattern)
        except NoGroupError:
            hosts = [host for host in inventory if fnmatch(host.name, pattern)]
        if not hosts:
            groups = sorted(name for name in inventory.groups if name != "all")
            raise InventoryError(f"--limit {pattern!r} matches no host or group of the inventory "
                                 f"(groups: {', '.join(groups) or 'none'})")
        selected.update(hosts)
    return selected


def _load_in_child(path: str, data: list[str], limit: list[str]) -> dict:
    import os

    from pyinfra.api.state import State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory  # gevent-patches this process only
    from pyinfra_cli.util import json_encode, parse_cli_arg

    state = State()  # the CLI's state before it loads the inventory (never initialised: no host is contacted)
    state.cwd = os.getcwd()
    ctx_state.set(state)

    override_data = {}
    for item in data:  # as pyinfra_cli.cli._set_override_data
        key, value = item.split("=", 1)
        override_data[key] = parse_cli_arg(value)
    inventory = make_inventory(path, override_data=override_data, cwd=state.cwd)
    hosts = list(inventory)
    selected = _limit_matches(inventory, limit) if limit else set(hosts)
    answer = {
        "hosts": {host.name: host.data.dict() for host in hosts},
        # group_data: every group the inventory defines, an empty one too (a stage without hosts)
        "groups": {name: [host.name for host in inventory.groups.get(name, [])]
                   for name in dict.fromkeys([*inventory.group_data, *inventory.groups])},
        "selected": [host.name for host in hosts if host in selected],
    }
    return json.loads(json.dumps(answer, default=json_encode))


def _child_main(path: str, options: str) -> int:
    """Print one JSON line: the inventory, or {"error": ...}. Whatever the inventory
    file prints goes to stderr, so stdout holds only the answer."""
    stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        answer = _load_in_child(path, **json.loads(options))
    except InventoryError as exc:
        answer = {"error": str(exc)}
    except Exception as exc:  # the inventory file is user code: anything can go wrong in it
        answer = {"error": f"pyinfra could not load {path}: {type(exc).__name__}: {exc}"}
    finally:
        sys.stdout = stdout
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    raise SystemExit(_child_main(*sys.argv[1:]))
