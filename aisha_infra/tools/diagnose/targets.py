"""What to diagnose: one URL from the command line, or every host of a pyinfra
inventory with its data (domain, port, tls_mode, how to reach it over SSH)."""

from __future__ import annotations

import argparse
from urllib.parse import urlsplit

from aisha_infra.tools.diagnose.diagnosis import DEFAULT_PORT, Target
from aisha_infra.tools.diagnose.dns_and_ports import preferred_address, resolve_or_nothing
from aisha_infra.tools.diagnose.remote import ssh_runner
from aisha_infra.tools import inventory as tools_inventory
from aisha_infra.tools.ssh import SSHHost, ssh_flags_given, ssh_overrides


def targets_from_args(args: argparse.Namespace) -> list[Target]:
    if args.inventory:
        return targets_from_inventory(args.inventory, args)
    url = urlsplit(args.url if "://" in (args.url or "") else f"https://{args.url or ''}")
    domain = args.domain or url.hostname
    if not domain:
        raise SystemExit("aisha-infra diagnose: give a URL (https://DOMAIN:8443), --domain or --inventory")
    target = Target(domain=domain, address=args.address, port=args.port or url.port or DEFAULT_PORT,
                    ssh_port=args.ssh_port or 22)
    if ssh_flags_given(args):  # host-side checks only when asked for
        ssh_address = args.address or preferred_address(resolve_or_nothing(domain))
        if ssh_address:
            target.ssh = ssh_runner(SSHHost.from_data(ssh_address, {}, **ssh_overrides(args)))
    return [target]


def targets_from_inventory(path: str, args: argparse.Namespace) -> list[Target]:
    """One target per host of a pyinfra inventory file (under --limit, per selected host),
    with its data as pyinfra merges it (group data, --data)."""
    hosts = tools_inventory.load(path, args.data, args.limit).selected_hosts()
    return [target_for_host(name, data, args) for name, data in hosts]


def target_for_host(name: str, data: dict, args: argparse.Namespace) -> Target:
    """The target of one inventory host (`data`: its merged data); `args` overrides."""
    from aisha_infra.deploy.settings import Settings

    address = args.address or data.get("verify_address") or data.get("ssh_hostname") or name
    ssh_port = args.ssh_port or int(data.get("ssh_port") or 22)
    return Target(
        domain=args.domain or data.get("aisha_domain") or name,
        address=address,
        port=args.port or int(data.get("nginx_https_port") or Settings.nginx_https_port),
        name=name,
        tls_mode=data.get("tls_mode") or Settings.tls_mode,
        ssh=ssh_runner(SSHHost.from_data(name, data, **ssh_overrides(args))),
        ssh_port=ssh_port,
        http_port=int(data.get("nginx_http_port") or Settings.nginx_http_port),
        ca_bundle=data.get("verify_ca_bundle"),
    )
