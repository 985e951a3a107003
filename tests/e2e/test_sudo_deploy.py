"""The deploy and the operator tools as a real server's login user: `admin` with sudo, on
two lab hosts in one inventory: the canary with password-less sudo, the production host
with a sudo that asks a password (`_sudo_password`). Shared by the tests of this file, in
order: deploy and idempotence, rollout, diagnose --inventory, certs export."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from aisha_infra.lab.hosts import SUDO_USER, LabHost
from tests.project import PROJECT_ROOT
from tests.e2e.deploylib import DeployRun, run_deploy, write_hosts_file

pytestmark = pytest.mark.e2e
AISHA_INFRA = str(Path(sys.executable).with_name("aisha-infra"))
GATE = ["--soak", "2", "--checks", "2", "--interval", "1"]  # short: the defaults are for real servers


@dataclass
class SudoFleet:
    canary: LabHost  # login "sudo": password-less
    production: LabHost  # login "sudo-password"
    hosts_file: Path
    work: Path
    first: DeployRun

    @property
    def hosts(self) -> list[LabHost]:
        return [self.canary, self.production]

    def tool(self, *args: str, hosts_file: Path | None = None, timeout: int = 600):
        started = time.monotonic()
        result = subprocess.run(
            [AISHA_INFRA, *args], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "AISHA_HOSTS": str(hosts_file or self.hosts_file)}, text=True,
            timeout=timeout)
        print(f"aisha-infra {' '.join(args)}: exit {result.returncode} in "
              f"{time.monotonic() - started:.1f} s")
        return result


@pytest.fixture(scope="module")
def fleet(lab, tmp_path_factory):
    canary = lab.add_hosts(count=1, login="sudo")[0]
    production = lab.add_hosts(count=1, login="sudo-password")[0]
    try:
        work = tmp_path_factory.mktemp("sudo")
        hosts_file = write_hosts_file(work / "hosts.json", [canary, production])
        yield SudoFleet(canary, production, hosts_file, work, run_deploy(hosts_file))
    finally:
        for host in (canary, production):
            lab.destroy_host(host.name)


def test_deploy_as_sudo_users_then_nothing_changes(fleet):
    first = fleet.first.check()
    for host in fleet.hosts:
        assert any(host.name in line and "TLS state: OK" in line
                   for line in first.output.splitlines()), first.output[-4000:]
    assert fleet.production.sudo_password not in first.output
    for host in fleet.hosts:
        # the deploy logged in as admin and became root through sudo, never as root itself
        logins = host.run("journalctl -q -u ssh --no-pager -o cat").stdout
        assert f"Accepted publickey for {SUDO_USER} " in logins
        sudo_log = host.run("journalctl -q _COMM=sudo --no-pager -o cat").stdout
        assert f"{SUDO_USER} : " in sudo_log and "USER=root" in sudo_log

    second = run_deploy(fleet.hosts_file).check()
    assert second.totals["changed"] == 0, second.changed_operations


def test_rollout_as_sudo_users(fleet):
    # the gates fetch the deployed certificate back over SSH as admin (sudo -S on production)
    run = fleet.tool("rollout", *GATE)
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    summary = run.stdout[run.stdout.index("==> Summary"):]
    for host in fleet.hosts:
        line = next(line for line in summary.splitlines() if line.startswith(f"  {host.name} "))
        assert " unchanged (" in line and "gate passed" in line, line


def test_diagnose_inventory_as_sudo_users(fleet):
    result = fleet.tool("diagnose", "--inventory", "inventory.py", "--json", timeout=300)
    report = json.loads(result.stdout)
    for target in report["targets"]:
        findings = {f["check"]: f for f in target["findings"]}
        errors = {check: f for check, f in findings.items() if f["severity"] == "error"}
        assert not errors, (target["name"], errors)
        # host-side checks that need root ran: `nginx -t` and ufw through sudo
        assert findings["nginx.config"]["severity"] == "ok", findings["nginx.config"]
        assert any(check.startswith("ufw") for check in findings), sorted(findings)
    assert result.returncode == 0


LINEAGE = "aibots.test"


def put_lineage_in_place(host: LabHost) -> str:
    """A certbot-like /etc/letsencrypt (root only, key 0600) made by hand; returns the key."""
    host.run(
        f"set -e; umask 077; mkdir -p /etc/letsencrypt/archive/{LINEAGE} /etc/letsencrypt/live/{LINEAGE}; "
        f"cd /etc/letsencrypt/archive/{LINEAGE}; "
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 "
        f"-subj /CN={LINEAGE} -keyout privkey1.pem -out cert1.pem 2>/dev/null; "
        "cp cert1.pem fullchain1.pem; chmod 0644 cert1.pem fullchain1.pem; chmod 0755 . ..; "
        f"for f in privkey cert fullchain; do ln -sfn ../../archive/{LINEAGE}/${{f}}1.pem "
        f"/etc/letsencrypt/live/{LINEAGE}/$f.pem; done")
    return host.run(f"cat /etc/letsencrypt/archive/{LINEAGE}/privkey1.pem").stdout


def test_certs_export_as_sudo_users(fleet, tmp_path):
    for host in fleet.hosts:
        key = put_lineage_in_place(host)
        # unreadable to the login user itself: the export needs its sudo
        assert host.run(f"su -s /bin/sh {SUDO_USER} -c 'cat /etc/letsencrypt/archive/"
                        f"{LINEAGE}/privkey1.pem'", check=False).returncode != 0
        archive = tmp_path / f"{host.name}.tar.gz"
        result = fleet.tool("certs", "export", host.name, "--inventory", "inventory.py",
                            "--out", str(archive), timeout=120)
        assert result.returncode == 0, result.stderr
        assert stat.S_IMODE(archive.stat().st_mode) == 0o600
        with tarfile.open(archive) as tar:
            member = tar.getmember(f"letsencrypt/archive/{LINEAGE}/privkey1.pem")
            assert stat.S_IMODE(member.mode) == 0o600 and member.uid == 0
            assert tar.extractfile(member).read().decode() == key
            assert tar.getmember(f"letsencrypt/live/{LINEAGE}/privkey.pem").issym()


def test_certs_export_with_a_wrong_sudo_password_says_so(fleet, tmp_path):
    entries = json.loads(fleet.hosts_file.read_text())
    entries[1]["data"]["_sudo_password"] = "not-the-password"
    wrong = tmp_path / "hosts.json"
    wrong.write_text(json.dumps(entries))
    archive = tmp_path / "never.tar.gz"
    result = fleet.tool("certs", "export", fleet.production.name, "--inventory", "inventory.py",
                        "--out", str(archive), hosts_file=wrong, timeout=120)
    assert result.returncode == 1
    assert f"the _sudo_password for {fleet.production.address} is wrong" in result.stderr
    assert not archive.exists() and not archive.with_name("never.tar.gz.partial").exists()
