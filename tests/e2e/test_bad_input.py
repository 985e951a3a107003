"""The bad-input table through the real `pyinfra inventory.py deploy.py` against a lab
host: every case fails with its own words before pyinfra connects, and the host's sshd
saw no login during all of them."""

from __future__ import annotations

import json

import pytest

from tests.e2e.deploylib import run_deploy, write_hosts_file
from tests.e2e.nocontact import assert_refused_before_connecting, ssh_logins
from tests.unit.bad_input_table import CASES, make_files

pytestmark = pytest.mark.e2e


class Target:
    def __init__(self, host, work):
        self.host, self.work = host, work
        self.files = make_files(work / "files")
        self.entries = json.loads(write_hosts_file(work / "base.json", [host]).read_text())
        self.logins_before = ssh_logins(host)


@pytest.fixture(scope="module")
def target(lab, tmp_path_factory):
    host = lab.add_hosts(count=1)[0]
    try:
        yield Target(host, tmp_path_factory.mktemp("bad-input"))
    finally:
        lab.destroy_host(host.name)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_refused_before_connecting(target, case):
    hosts_file = target.work / f"{case.id}.json"
    text = case.hosts_text(target.entries, target.files)
    if text is not None:
        hosts_file.write_text(text)
    run = run_deploy(hosts_file, timeout=120)
    assert_refused_before_connecting(run, case.expected)


def test_no_case_reached_the_host(target):
    assert target.logins_before >= 1  # the journal does record logins (the first query's own)
    # runs after the table: the only new login is this query's own
    assert ssh_logins(target.host) == target.logins_before + 1
