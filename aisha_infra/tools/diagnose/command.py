"""`aisha-infra diagnose`: say exactly why HTTPS to a host fails, and how to fix it.

For one URL or every host of an inventory it checks, in the order a request from
fal travels: DNS, TCP ports, the TLS chain as sent (order, completeness, trust,
name, validity, key), `GET /health` and a test webhook POST, then over SSH (when
given a key) the host side: ufw, `nginx -t`, the certificate files nginx uses,
the services and their recent errors. Each finding has a severity (ok/warn/error)
and, for problems, the fix. It changes nothing: the test webhook is a probe
(header X-Aisha-Probe, request_id "aisha-probe-<uuid>") that the bundled app answers
without storing.
Exit status: 0 when there is no error (warnings allowed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from aisha_infra.deploy.inventory import InventoryError
from aisha_infra.tools import inventory as tools_inventory
from aisha_infra.tools.diagnose.diagnosis import DEFAULT_PORT, diagnose
from aisha_infra.tools.diagnose.output import render_json, render_text
from aisha_infra.tools.diagnose.targets import targets_from_args
from aisha_infra.tools.ssh import SSHError, add_ssh_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "diagnose",
        help="say why HTTPS to a host fails and how to fix it (read-only)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", nargs="?", metavar="URL", help="e.g. https://aibots.example:8443")
    parser.add_argument("--inventory", metavar="FILE", help="diagnose every host of this pyinfra inventory")
    tools_inventory.add_arguments(parser)  # --data, --limit: with --inventory, as pyinfra's
    parser.add_argument("--address", help="connect to this address instead of resolving the domain")
    parser.add_argument("--domain", help="the name for SNI, Host and the certificate (default: from URL)")
    parser.add_argument("--port", type=int, help=f"HTTPS port (default: from URL, else {DEFAULT_PORT})")
    parser.add_argument("--ca-bundle", metavar="PEM", help="extra trusted roots, e.g. a test CA")
    parser.add_argument("--key", metavar="PEM", help="private (or public) key the served certificate must match")
    add_ssh_arguments(parser)  # with a URL: any of them turns the host-side checks (over SSH) on
    parser.add_argument("--json", action="store_true", help="machine-readable findings")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.url and not args.inventory and not args.domain:
        print("aisha-infra diagnose: give a URL, --domain or --inventory", file=sys.stderr)
        return 2
    try:
        targets = targets_from_args(args)
    except (SSHError, InventoryError) as exc:  # e.g. an unknown host key policy, an inventory pyinfra cannot load
        print(f"aisha-infra diagnose: {exc}", file=sys.stderr)
        return 2
    reports = [diagnose(t, ca_bundle=args.ca_bundle, key_file=args.key) for t in targets]
    if args.json:
        print(render_json(reports))
    else:
        colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        print(render_text(reports, colour=colour, width=shutil.get_terminal_size().columns))
    return 1 if any(r.failed for r in reports) else 0
