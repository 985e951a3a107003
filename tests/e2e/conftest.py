"""A lab host provisioned once by the real deploy, shared by the e2e tests that only
read it (or put back what they change)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from aisha_infra.lab.hosts import LabHost
from tests.e2e.deploylib import DeployRun, run_deploy, write_hosts_file

DOMAIN = "aibots.test"


@dataclass
class DeployedHost:
    host: LabHost
    hosts_file: Path
    first_run: DeployRun
    cert_pem: Path  # the deployed self-signed certificate, fetched back

    @property
    def address(self) -> str:
        return self.host.address


@pytest.fixture(scope="session")
def deployed_host(lab, tmp_path_factory) -> DeployedHost:
    host = lab.add_hosts(count=1)[0]
    work = tmp_path_factory.mktemp("deployed")
    hosts_file = write_hosts_file(work / "hosts.json", [host])
    first = run_deploy(hosts_file).check()
    cert = work / "cert.pem"
    cert.write_text(host.run("cat /opt/aisha-backend/ssl/aibots_test.crt").stdout)
    return DeployedHost(host, hosts_file, first, cert)
