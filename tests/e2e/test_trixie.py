"""Debian 13 (trixie) as well as Debian 12: a fresh host converges, re-runs with zero
changes, and nginx 1.26 gets its own http2 syntax (no deprecation warning)."""

from __future__ import annotations

import pytest

from tests.e2e.deploylib import run_deploy, write_hosts_file

pytestmark = pytest.mark.e2e


def test_fresh_trixie_host(lab_hosts, tmp_path):
    host = lab_hosts(1, release="trixie")[0]
    hosts_file = write_hosts_file(tmp_path / "hosts.json", [host])
    first = run_deploy(hosts_file).check()
    assert "HTTPS health OK" in first.output and "FAL_WEBHOOK_URL=" in first.output
    assert run_deploy(hosts_file).check().totals["changed"] == 0
    nginx_t = host.run("nginx -t 2>&1").stdout
    assert "test is successful" in nginx_t and "[warn]" not in nginx_t
    assert "VERSION_CODENAME=trixie" in host.run("cat /etc/os-release").stdout
