"""`aisha-infra` command line: one sub-command per module (lab, diagnose, rollout, ...)."""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command -> module providing register(subparsers) and run(args) -> int
COMMANDS = {
    "lab": "aisha_infra.lab.hosts",
    "diagnose": "aisha_infra.tools.diagnose.command",
    "rollout": "aisha_infra.tools.rollout",
    "certs": "aisha_infra.tools.certs",
    "events": "aisha_infra.tools.events",
    "webhook": "aisha_infra.tools.webhook",
    "status": "aisha_infra.tools.status",
    "rollback": "aisha_infra.tools.rollback",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aisha-infra", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # not built yet
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
