"""`aisha-infra rollback`: every host (or --limit GROUP/HOST) back to its previous app
release in one step, through pyinfra (`pyinfra -y INVENTORY rollback.py --limit ...`).

A second rollback goes forward again (current and previous swap). Connections made during
the switch wait in the app's socket (socket activation) instead of being refused.
Exit status: 0 every host switched, 1 a host did not (it keeps serving what it served),
2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from aisha_infra.deploy.inventory import InventoryError
from aisha_infra.tools import inventory as tools_inventory
from aisha_infra.tools.pyinfra_report import CONFIG_FILE
from aisha_infra.tools.rollout import PYINFRA, deploy_outcomes, run_pyinfra, why_stopped

ROLLBACK_FILE = "rollback.py"


def rollback_command(inventory: str, limits: list[str], data: Sequence[str] = ()) -> list[str]:
    command = [PYINFRA, "-y", inventory, ROLLBACK_FILE, *tools_inventory.pyinfra_data_arguments(data)]
    for limit in limits:
        command += ["--limit", limit]
    return [*command, "--config", str(CONFIG_FILE)]  # per-host results (pyinfra_report)


def roll_back(inventory: str, limits: list[str], echo, data: Sequence[str] = ()) -> bool:
    """Run the rollback; True when every host switched."""
    run = run_pyinfra(rollback_command(inventory, limits, data), echo)
    if run.returncode != 0:
        reported = list((run.report or {}).get("hosts") or {})
        for name, outcome in deploy_outcomes(run, reported).items():
            if outcome.failure:
                echo(f"  {name}: rollback FAILED: {outcome.failure[1]}")
        if not reported:
            echo(f"  rollback FAILED: {why_stopped(run)}")
    return run.returncode == 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "rollback", help="switch hosts back to their previous app release",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--inventory", default="inventory.py", help="pyinfra inventory file (default: inventory.py)")
    parser.add_argument("--limit", action="append", default=[], metavar="GROUP|HOST",
                        help="only these hosts or inventory groups (repeatable; default: every host)")
    tools_inventory.add_arguments(parser, limit=False)  # --data, handed on to pyinfra
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    for path, what in ((args.inventory, "the inventory"), (ROLLBACK_FILE, "rollback.py (run from the project directory)")):
        if not Path(path).is_file():
            print(f"aisha-infra rollback: {what} {path} does not exist in {Path.cwd()}", file=sys.stderr)
            return 2
    try:
        tools_inventory.check_data_arguments(args.data)
    except InventoryError as exc:
        print(f"aisha-infra rollback: {exc}", file=sys.stderr)
        return 2
    ok = roll_back(args.inventory, args.limit, lambda line: print(line, flush=True), args.data)
    print("Rollback complete." if ok else "Rollback FAILED for some host (see above); it serves what it served before.")
    return 0 if ok else 1
