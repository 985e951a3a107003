"""`aisha-infra status` over three real lab hosts, one of them broken: one table,
exit 1, and the broken host named with what is wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.project import PROJECT_ROOT
from tests.e2e.deploylib import run_deploy, write_hosts_file

pytestmark = pytest.mark.e2e
AISHA_INFRA = str(Path(sys.executable).with_name("aisha-infra"))


def status(hosts_file: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [AISHA_INFRA, "status", "--inventory", "inventory.py", *args],
        cwd=PROJECT_ROOT, env={**os.environ, "AISHA_HOSTS": str(hosts_file)},
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def fleet(lab, tmp_path_factory):
    hosts = lab.add_hosts(count=3)
    try:
        hosts_file = write_hosts_file(tmp_path_factory.mktemp("status") / "hosts.json", hosts)
        run_deploy(hosts_file).check()
        yield hosts, hosts_file
    finally:
        for host in hosts:
            lab.destroy_host(host.name)


def test_healthy_fleet_exits_0(fleet):
    hosts, hosts_file = fleet
    result = status(hosts_file, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert [h["name"] for h in report["hosts"]] == [h.name for h in hosts]
    for host in report["hosts"]:
        assert host["ok"] and host["health"] == "OK" and host["tls_state"] == "OK", host
        assert host["served_is_live"] is True and host["watch"].startswith("OK"), host
        assert host["days_left"] > 300 and host["issuer"] == "CN=aibots.test"
        assert host["app_restarts"] == 0 and host["app_uptime_seconds"] >= 0
        assert host["disk_free_percent"] > 0
        # the deploy's own test webhooks (diagnose-*) are not counted as deliveries
        assert host["deliveries_24h"] == 0


def test_one_broken_host_exits_1_and_is_named(fleet):
    hosts, hosts_file = fleet
    broken = hosts[2]
    broken.run("systemctl stop aisha-api.socket aisha-api.service")
    try:
        result = status(hosts_file)
    finally:
        broken.run("systemctl start aisha-api.socket aisha-api.service")
    assert result.returncode == 1, result.stdout + result.stderr
    table, _, problems = result.stdout.partition("host(s) with problems:")
    assert "1 host(s) with problems" in result.stdout, result.stdout
    assert f"{broken.name}: http.health:" in problems and f"{broken.name}: app: aisha-api is inactive" in problems
    assert hosts[0].name not in problems and hosts[1].name not in problems
    rows = {line.split()[0]: line for line in table.splitlines()[1:] if line.strip()}
    assert " FAIL " in rows[broken.name] and " OK " in rows[hosts[0].name]
