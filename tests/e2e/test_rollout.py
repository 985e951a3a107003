"""`aisha-infra rollout` on three fresh lab hosts, one canary and two production,
shared by the tests of this file in order: a dry run changes nothing and shows each
host its own plan; a rollout converges the canary, gates it, then production; a second
rollout changes nothing; `--limit canary` deploys while a production entry is broken; a
canary that breaks (its deploy, or only its gate) stops the rollout and leaves the
production hosts exactly as they were; a tolerated failure is named at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from aisha_infra.checks import health
from aisha_infra.lab.hosts import LabHost
from aisha_infra.deploy.paths import NGINX_SITE_PATH, SERVICE_UNIT_PATH, SOCKET_UNIT_PATH
from tests.project import PROJECT_ROOT
from tests.e2e.conftest import DOMAIN
from tests.e2e.deploylib import PYINFRA, DeployRun, run_deploy, write_hosts_file

pytestmark = pytest.mark.e2e
AISHA_INFRA = str(Path(sys.executable).with_name("aisha-infra"))
# Short gates keep the tests quick; the defaults (60 s soak) are for real servers.
GATE = ["--soak", "2", "--checks", "2", "--interval", "1"]
# The bundled app cannot create its data directory and exits: a failure only the host
# shows (values its config check refuses are stopped on the control machine).
BROKEN_APP = {"app_environment": {"AISHA_DATA_DIR": "/nonexistent/aisha"}}
# Starts and answers /health, but refuses every webhook body (413): only the gate sees it.
REFUSING_APP = {"app_environment": {"AISHA_MAX_BODY_BYTES": "1"}, "verify_enabled": False}
CURRENT_RELEASE = "readlink /opt/aisha-backend/current"
# What a deploy would touch, and whether anything restarted.
SNAPSHOT = (
    f"sha256sum {SERVICE_UNIT_PATH} {SOCKET_UNIT_PATH} {NGINX_SITE_PATH}; "
    "readlink /opt/aisha-backend/current; find /opt/aisha-backend/app/ -type f -print0 | sort -z | xargs -0 sha256sum; "
    "for unit in nginx.service aisha-api.socket aisha-api.service; do "
    "  echo $unit $(systemctl show -p ActiveState,MainPID,ActiveEnterTimestampMonotonic --value $unit); "
    "done"
)


@dataclass
class Fleet:
    canary: LabHost
    production: list[LabHost]
    work: Path

    @property
    def hosts(self) -> list[LabHost]:
        return [self.canary, *self.production]

    def hosts_file(self, canary_data: dict | None = None, each: dict[str, dict] | None = None) -> Path:
        """An AISHA_HOSTS file: first host canary, the others production; `canary_data`
        adds settings to the canary only, `each` to the host it names."""
        path = write_hosts_file(self.work / "hosts.json", self.hosts)
        entries = json.loads(path.read_text())
        entries[0]["data"].update(canary_data or {})
        for entry in entries:
            entry["data"].update((each or {}).get(entry["name"], {}))
        path.write_text(json.dumps(entries, indent=2))
        return path


@dataclass
class RolloutRun:
    returncode: int
    output: str
    seconds: float

    def summary(self) -> str:
        return self.output[self.output.index("==> Summary"):]


def run_rollout(hosts_file: Path, *args: str) -> RolloutRun:
    started = time.monotonic()
    result = subprocess.run(
        [AISHA_INFRA, "rollout", *args],
        cwd=PROJECT_ROOT, env={**os.environ, "AISHA_HOSTS": str(hosts_file)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
    )
    run = RolloutRun(result.returncode, result.stdout, time.monotonic() - started)
    print(f"rollout {' '.join(args)}: exit {run.returncode} in {run.seconds:.1f} s")
    return run


def snapshot(host: LabHost) -> str:
    return host.run(SNAPSHOT).stdout


def serves_health(host: LabHost, work: Path) -> bool:
    """Verified HTTPS health, trusting the certificate deployed on the host."""
    cert = work / f"{host.name}.pem"
    cert.write_text(host.run("cat /opt/aisha-backend/ssl/aibots_test.crt").stdout)
    return health.check_https_health(host.address, DOMAIN, 8443, ca_bundle=str(cert))[0]


@pytest.fixture(scope="module")
def fleet(lab, tmp_path_factory):
    hosts = lab.add_hosts(count=3)
    try:
        yield Fleet(hosts[0], hosts[1:], tmp_path_factory.mktemp("rollout"))
    finally:
        alive = {h.name for h in lab.hosts()}
        for host in hosts:
            if host.name in alive:
                lab.destroy_host(host.name)


def host_block(summary: str, host: LabHost) -> str:
    """The summary's lines about one host: its line and the indented ones under it."""
    lines = summary.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {host.name} "))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("      ")), len(lines))
    return "\n".join(lines[start:end])


def test_dry_run_shows_each_host_its_own_plan_and_changes_nothing(fleet):
    domains = {host.name: f"{host.name}.aibots.test" for host in fleet.hosts}
    hosts_file = fleet.hosts_file(each={name: {"aisha_domain": domain} for name, domain in domains.items()})
    run = run_rollout(hosts_file, "--dry", *GATE, "--data", "tls_selfsigned_days=400")
    assert run.returncode == 0, run.output[-4000:]
    assert f"1. canary: {fleet.canary.name}\n" in run.output
    assert f"2. production: {fleet.production[0].name}, {fleet.production[1].name}\n" in run.output
    assert "plan: pyinfra --dry inventory.py deploy.py --limit canary --data tls_selfsigned_days=400" in run.output
    summary = run.summary()
    for host in fleet.hosts:
        block = host_block(summary, host)
        assert f"{host.name}  would change " in block
        assert "~ Nginx | Render the webhook site" in block
        # pyinfra merges an operation's names over hosts; each host's plan has its own only
        assert f"~ TLS | Self-signed certificate for {domains[host.name]}" in block, block
        assert not [domain for name, domain in domains.items() if name != host.name and domain in block], block
    for host in fleet.hosts:
        assert host.run(f"test -e {NGINX_SITE_PATH} || test -e {SERVICE_UNIT_PATH}", check=False).returncode == 1
        assert host.run("dpkg -s nginx", check=False).returncode != 0


def test_rollout_converges_the_canary_first_then_production(fleet):
    run = run_rollout(fleet.hosts_file(), *GATE)
    assert run.returncode == 0, run.output[-6000:]
    output = run.output
    production_starts = output.index("==> Stage 2/2: production")
    assert output.index(f"[{fleet.canary.name}] Success") < output.index("  health check 3/3") < production_starts
    assert all(output.index(f"[{host.name}] Success") > production_starts for host in fleet.production)
    summary = run.summary()
    assert "canary: passed in " in summary and "production: passed in " in summary
    for host in fleet.hosts:
        line = next(line for line in summary.splitlines() if line.startswith(f"  {host.name} "))
        assert " changed (" in line and "gate passed (3 health checks, webhook POST)" in line, line
        assert serves_health(host, fleet.work)
    assert "Rollout complete" in summary


def test_second_rollout_changes_nothing(fleet):
    run = run_rollout(fleet.hosts_file(), *GATE)
    assert run.returncode == 0, run.output[-6000:]
    summary = run.summary()
    for host in fleet.hosts:
        line = next(line for line in summary.splitlines() if line.startswith(f"  {host.name} "))
        assert " unchanged (" in line and "gate passed" in line, line


def test_an_inventory_split_over_processes_converges_each_slice(fleet):
    """One pyinfra process drives every host on one core (bench/README.md: CPU-bound past a
    few hosts); the documented way to use more cores is a process per slice of the hosts
    file (`--limit`). Two at once over the same file: each checks only its own host, changes
    nothing on a converged one, and reports only its own host."""
    hosts_file = fleet.hosts_file()
    env = {**os.environ, "AISHA_HOSTS": str(hosts_file)}
    processes = {
        host.name: subprocess.Popen([PYINFRA, "-y", "--limit", host.name, "inventory.py", "deploy.py"],
                                    cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True)
        for host in fleet.production
    }
    try:
        runs = {name: DeployRun(0, process.communicate(timeout=300)[0]) for name, process in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    for name, run in runs.items():
        run.returncode = processes[name].returncode
        run.check()
        assert run.totals["changed"] == 0, run.changed_operations
        assert f"aisha-infra summary [{name}] TLS OK" in run.output
        others = [host.name for host in fleet.hosts if host.name != name]
        assert not [other for other in others if f"[{other}]" in run.output], run.output[-3000:]


def test_limit_canary_deploys_while_a_production_entry_is_broken(fleet):
    """Validation covers the hosts being deployed: a production entry with a bad setting
    (at an address nothing uses, never contacted) does not block `--limit canary`."""
    path = write_hosts_file(fleet.work / "broken-production.json", [fleet.canary])
    entries = json.loads(path.read_text())
    entries.append({"name": "broken-production", "address": "198.18.255.254", "groups": ["production"],
                    "data": {"nginx_https_port": "not-a-port"}})
    path.write_text(json.dumps(entries, indent=2))

    limited = run_deploy(path, "--limit", "canary")
    assert limited.returncode == 0, limited.output[-4000:]
    assert limited.totals["changed"] == 0  # converged by the rollouts above
    assert "broken-production" not in limited.output

    everything = run_deploy(path)
    assert everything.returncode != 0
    assert "broken-production" in everything.output and "nginx_https_port" in everything.output
    assert "--> Connecting to hosts" not in everything.output  # stopped before any connection


def test_canary_whose_deploy_fails_stops_before_production(fleet):
    before = [snapshot(host) for host in fleet.production]
    release = fleet.canary.run(CURRENT_RELEASE).stdout
    run = run_rollout(fleet.hosts_file(BROKEN_APP), *GATE)
    assert run.returncode == 1, run.output[-6000:]
    # The new release did not start: the deploy put the old one back and says why.
    last = run.output.rstrip().splitlines()[-1]
    assert last.startswith(f"Rollout STOPPED at stage canary ({fleet.canary.name} failed deploy) after "), last
    assert last.endswith("; untouched: production."), last
    # why, once and brief: the host's own failed operation and what it said
    [why] = [line for line in run.summary().splitlines() if line.strip().startswith("deploy: ")]
    assert "deploy: App | Serve release " in why and "/nonexistent" in why and len(why.strip()) <= 260, why
    assert "aisha-api did not start on release" in run.output  # pyinfra's own output, streamed
    assert "nothing to roll back" in run.output
    assert "==> Stage 2/2" not in run.output
    for host in fleet.production:
        assert f"  {host.name}  not started" in run.summary()
    assert [snapshot(host) for host in fleet.production] == before
    assert fleet.canary.run(CURRENT_RELEASE).stdout == release
    assert all(serves_health(host, fleet.work) for host in fleet.hosts)


def test_canary_that_fails_only_the_gate_is_rolled_back_before_production(fleet):
    before = [snapshot(host) for host in fleet.production]
    release = fleet.canary.run(CURRENT_RELEASE).stdout
    # Without the deploy's own verification, pyinfra succeeds: only the gate can stop it.
    run = run_rollout(fleet.hosts_file(REFUSING_APP), *GATE)
    assert run.returncode == 1, run.output[-6000:]
    last = run.output.rstrip().splitlines()[-1]
    assert last.startswith(f"Rollout STOPPED at stage canary ({fleet.canary.name} failed webhook-post) after "), last
    assert last.endswith(f"; untouched: production; rolled back: {fleet.canary.name}."), last
    [why] = [line for line in run.summary().splitlines() if line.strip().startswith("webhook-post: ")]
    assert "413" in why and "<html" not in why.lower() and "\\r\\n" not in why, why
    line = next(line for line in run.summary().splitlines() if line.startswith(f"  {fleet.canary.name} "))
    assert "gate FAILED: webhook-post" in line and "deploy FAILED" not in line
    assert fleet.canary.run(CURRENT_RELEASE).stdout == release
    assert serves_health(fleet.canary, fleet.work)
    assert [snapshot(host) for host in fleet.production] == before


def test_fail_percent_tolerates_a_broken_production_host(fleet):
    path = fleet.hosts_file()
    entries = json.loads(path.read_text())
    broken, healthy = fleet.production
    entries[1]["data"].update(BROKEN_APP)  # the first production host only
    path.write_text(json.dumps(entries, indent=2))

    run = run_rollout(path, *GATE, "--fail-percent", "50")

    assert run.returncode == 0, run.output[-6000:]
    summary = run.summary()
    # its failed verification failed that host only: the other one deployed and passed
    broken_line = next(line for line in summary.splitlines() if line.startswith(f"  {broken.name} "))
    healthy_line = next(line for line in summary.splitlines() if line.startswith(f"  {healthy.name} "))
    assert "FAILED" in broken_line, broken_line
    assert "gate passed" in healthy_line, healthy_line
    last = run.output.rstrip().splitlines()[-1]
    assert "every stage passed its gate" not in run.output
    assert last.endswith(f"with 1 failed host(s) tolerated by --fail-percent 50: {broken.name} (deploy)."), last
    # and the broken host's new release never replaced its working one
    assert all(serves_health(host, fleet.work) for host in fleet.hosts)
