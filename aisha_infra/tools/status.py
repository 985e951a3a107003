"""`aisha-infra status`: one table for the whole inventory, every host checked at once.

Per host, from this machine (diagnose's own checks): the TLS chain served (state,
issuer, days left) and GET /health; from the host, in one SSH round trip: the watch's
last result (served == live, certbot, disk), the app's uptime and restarts, the last
delivery and the deliveries of the last 24 h, and free space for the data directory.
Read-only: nothing is stored (no test webhook is sent).
Exit status: 0 when every host is fine, 1 when any has a problem (each one named).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shlex
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import urllib3

from aisha_infra.checks import health
from aisha_infra.deploy import paths
from aisha_infra.deploy.inventory import InventoryError
from aisha_infra.tools import inventory as tools_inventory
from aisha_infra.deploy.settings import Settings, SettingsError, build_settings
from aisha_infra.tools.diagnose.diagnosis import Target
from aisha_infra.tools.diagnose.remote import Runner, last_line
from aisha_infra.tools.diagnose.targets import target_for_host
from aisha_infra.tools.ssh import SSHError, add_ssh_arguments
from aisha_infra.checks.certificates import system_roots
from aisha_infra.checks.findings import first_error
from aisha_infra.checks.served_chain import check_served_chain
from aisha_infra.checks.tlscheck import chain_trusted, pick_leaf

TLS_TIMEOUT = 5
HTTP_TIMEOUT = 5
# A watch result older than this many intervals means its timer no longer runs.
STALE_INTERVALS = 3

# Runs on the host with python3 (the deploy's own dependency) and prints one JSON object.
HOST_FACTS_SCRIPT = r"""
import datetime, json, os, sqlite3, subprocess, time
last_path, data_dir = json.loads(ARGS)
facts = {"now": time.time()}
try:
    with open(last_path) as f:
        facts["watch"] = json.load(f)
except (OSError, ValueError) as exc:
    facts["watch"] = None
show = subprocess.run(["systemctl", "show", "aisha-api.service", "--timestamp=unix",
                       "--property=ActiveState", "--property=NRestarts", "--property=ActiveEnterTimestamp"],
                      capture_output=True, text=True).stdout
facts["app"] = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
try:
    stats = os.statvfs(data_dir)
    facts["disk_free_percent"] = round(100.0 * stats.f_bavail / stats.f_blocks, 1)
except OSError:
    facts["disk_free_percent"] = None
db = os.path.join(data_dir, "events.sqlite3")
facts["deliveries"] = None
if os.path.exists(db):
    since = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)).isoformat(timespec="milliseconds")
    try:
        # read-only: never creates or changes a file of the app's
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        last, recent = conn.execute(
            "SELECT max(received_at), count(*) FILTER (WHERE received_at >= ?) FROM events "
            "WHERE request_id NOT LIKE 'diagnose-%'", (since,)).fetchone()
        conn.close()
        facts["deliveries"] = {"last": last, "last_24h": recent}
    except sqlite3.Error as exc:
        facts["deliveries"] = {"error": str(exc)}
print(json.dumps(facts))
"""


@dataclass
class HostStatus:
    name: str
    domain: str
    health: str = "?"
    tls_state: str = "?"
    issuer: str | None = None
    days_left: float | None = None
    served_is_live: bool | None = None
    app_uptime_seconds: float | None = None
    app_restarts: int | None = None
    last_delivery: str | None = None
    deliveries_24h: int | None = None
    disk_free_percent: float | None = None
    watch: str = "?"
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {**self.__dict__, "ok": self.ok}


def host_facts(run: Runner, settings: Settings) -> dict:
    """Everything read on the host, in one SSH round trip (one command)."""
    arguments = json.dumps([paths.WATCH_LAST_RESULT_PATH, settings.aisha_data_dir])
    script = HOST_FACTS_SCRIPT.replace("ARGS", repr(arguments), 1)
    rc, out, err = run(f"python3 -c {shlex.quote(script)}")
    if rc != 0:
        raise RuntimeError(last_line(err) or f"exit status {rc}")
    return json.loads(out)


def check_host(target: Target, settings: Settings, now: datetime.datetime) -> HostStatus:
    status = HostStatus(target.name, target.domain)
    with ThreadPoolExecutor(max_workers=1) as pool:  # the SSH round trip runs beside the TLS checks
        facts_future = pool.submit(host_facts, target.ssh, settings) if target.ssh else None
        _check_from_outside(status, target, settings, now)
        try:
            facts = facts_future.result() if facts_future else None
        except (RuntimeError, ValueError) as exc:
            status.problems.append(f"ssh: cannot read the host's state: {exc}")
            facts = None
    if facts is not None:
        _read_host_facts(status, facts, settings)
    return status


def _check_from_outside(status: HostStatus, target: Target, settings: Settings, now: datetime.datetime) -> None:
    served, findings = check_served_chain(
        target.address, target.port, target.domain,
        now=now, timeout=TLS_TIMEOUT, ca_bundle=target.ca_bundle, tls_mode=target.tls_mode,
    )
    if served.error:
        [finding] = findings
        status.tls_state = "no TLS"
        status.health = "unreachable"
        status.problems.append(f"{finding.check}: {finding.message}")
        return
    leaf = pick_leaf(served.certs, target.domain)
    status.issuer = leaf.issuer.rfc4514_string()
    status.days_left = round((leaf.not_valid_after_utc - now).total_seconds() / 86400, 1)
    error = first_error(findings)
    status.tls_state = "OK" if error is None else f"ERROR {error.check}"
    if error is not None:
        status.problems.append(f"{error.check}: {error.message}")
    elif status.days_left < settings.watch_certificate_min_days:
        status.problems.append(f"certificate: expires in {status.days_left:.0f} days")
    finding = health.health_finding(
        target.address, target.domain, target.port, target.ca_bundle, HTTP_TIMEOUT,
        verify=chain_trusted(findings), trust_system=True,
    )
    status.health = "OK" if finding.severity == "ok" else "FAIL"
    if finding.severity != "ok":
        status.problems.append(f"{finding.check}: {finding.message}")


def _read_host_facts(status: HostStatus, facts: dict, settings: Settings) -> None:
    app = facts.get("app") or {}
    if app.get("NRestarts", "").isdigit():
        status.app_restarts = int(app["NRestarts"])
    since = app.get("ActiveEnterTimestamp", "")
    if app.get("ActiveState") == "active" and since.startswith("@") and since[1:].isdigit():
        status.app_uptime_seconds = round(facts["now"] - int(since[1:]))
    elif app.get("ActiveState") != "active":
        status.problems.append(f"app: aisha-api is {app.get('ActiveState', 'unknown')}")
    deliveries = facts.get("deliveries") or {}
    status.last_delivery, status.deliveries_24h = deliveries.get("last"), deliveries.get("last_24h")
    status.disk_free_percent = facts.get("disk_free_percent")
    if status.disk_free_percent is not None and status.disk_free_percent < settings.watch_disk_min_free_percent:
        status.problems.append(f"disk: {status.disk_free_percent} % free for {settings.aisha_data_dir}")

    watch = facts.get("watch")
    if not settings.watch_enabled:
        status.watch = "off"
        return
    if watch is None:
        status.watch = "none"
        status.problems.append("watch: no result yet (is aisha-watch.timer running? re-run the deploy)")
        return
    age = facts["now"] - watch["time"]
    served = watch["checks"].get("served_matches", {})
    status.served_is_live = served.get("ok")
    status.watch = "OK" if watch["ok"] else "ALERT " + ",".join(watch["problems"])
    status.watch += f" ({_duration(age)} ago)"
    for name in watch["problems"]:
        if name == "disk" and any(p.startswith("disk:") for p in status.problems):
            continue
        status.problems.append(f"watch.{name}: {watch['checks'][name]['message']}")
    if age > STALE_INTERVALS * settings.watch_interval_seconds + 60:
        status.problems.append(f"watch: the last result is {_duration(age)} old: `systemctl status aisha-watch.timer`")


def _common_name(name: str | None) -> str:
    """`CN=R10,O=Let's Encrypt,C=US` -> `R10`: the table shows the issuing CA's name."""
    match = re.search(r"(?:^|,)CN=((?:\\,|[^,])+)", name or "")
    return match.group(1) if match else (name or "-")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def collect(inventory: str, args: argparse.Namespace) -> list[HostStatus]:
    """Every host of the inventory (under --limit, every selected host), checked in parallel."""
    hosts = tools_inventory.load(inventory, args.data, args.limit).selected_hosts()
    now = datetime.datetime.now(datetime.timezone.utc)
    work = []
    for name, data in hosts:
        settings = build_settings(data, where=name)
        work.append((target_for_host(name, data, args), settings))
    if not work:
        return []
    system_roots()  # parsed once here, not by every thread at once
    # health.py silences this warning with catch_warnings, which threads undo for each other;
    # an unverified check only happens after the chain was already reported untrusted.
    warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    with ThreadPoolExecutor(max_workers=min(len(work), 32)) as pool:
        return list(pool.map(lambda item: check_host(item[0], item[1], now), work))


COLUMNS = (
    ("host", lambda s: s.name),
    ("health", lambda s: s.health),
    ("TLS", lambda s: s.tls_state),
    ("issuer", lambda s: _common_name(s.issuer)),
    ("days", lambda s: "-" if s.days_left is None else f"{s.days_left:.0f}"),
    ("served=live", lambda s: {True: "yes", False: "NO", None: "?"}[s.served_is_live]),
    ("app up", lambda s: "-" if s.app_uptime_seconds is None else _duration(s.app_uptime_seconds)),
    ("restarts", lambda s: "?" if s.app_restarts is None else str(s.app_restarts)),
    ("last delivery", lambda s: (s.last_delivery or "-")[:19].replace("T", " ")),
    ("24h", lambda s: "?" if s.deliveries_24h is None else str(s.deliveries_24h)),
    ("disk free", lambda s: "?" if s.disk_free_percent is None else f"{s.disk_free_percent:.0f}%"),
    ("watch", lambda s: s.watch),
)


def render_table(statuses: list[HostStatus]) -> str:
    rows = [[title for title, _ in COLUMNS]] + [[cell(s) for _, cell in COLUMNS] for s in statuses]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip() for row in rows]
    problems = [f"{s.name}: {problem}" for s in statuses for problem in s.problems]
    if problems:
        lines += ["", f"{len({p.split(':')[0] for p in problems})} host(s) with problems:"] + [f"  {p}" for p in problems]
    else:
        lines += ["", f"all {len(statuses)} host(s) OK"]
    return "\n".join(lines)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "status",
        help="one table for the whole inventory: health, TLS, deliveries, the watch (read-only)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--inventory", metavar="FILE", default="inventory.py",
                        help="pyinfra inventory (default inventory.py: AISHA_HOSTS or the local lab)")
    tools_inventory.add_arguments(parser)
    add_ssh_arguments(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(run=run, address=None, domain=None, port=None)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        statuses = collect(args.inventory, args)
    except (SettingsError, SSHError, InventoryError) as exc:
        print(f"aisha-infra status: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"ok": all(s.ok for s in statuses), "hosts": [s.as_dict() for s in statuses],
                          "seconds": round(time.monotonic() - started, 2)}, indent=2))
    else:
        print(render_table(statuses))
    if not statuses:
        print("aisha-infra status: the inventory has no hosts", file=sys.stderr)
        return 1
    return 0 if all(s.ok for s in statuses) else 1
