"""App releases on one lab host, shared by the tests of this file in order: a host
deployed by the previous layout (<base>/app) moves to releases in one run; a second run
changes nothing; the app's environment is in a 0600 file, not in the unit; the app cannot
read the TLS key; a release that cannot start leaves the old one serving and says why in
the app's own words; `aisha-infra rollback` under a webhook stream refuses nothing."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import urllib3

from aisha_infra.lab.hosts import LabHost
from aisha_infra.deploy.paths import SERVICE_UNIT_PATH
from tests.project import PROJECT_ROOT
from tests.e2e import client
from tests.e2e.conftest import DOMAIN
from tests.e2e.deploylib import copy_project, run_deploy, write_hosts_file

pytestmark = pytest.mark.e2e
AISHA_INFRA = str(Path(sys.executable).with_name("aisha-infra"))
BASE = "/opt/aisha-backend"
SECRET = "tok-" + uuid.uuid4().hex
# A value systemd would mangle if it were not quoted for an EnvironmentFile.
ODD = "it's $HOME `x` \\ \"q\" 100%"
ENVIRONMENT = {"API_TOKEN": SECRET, "AISHA_E2E_ODD": ODD}
STREAM_THREADS = 4
STREAM_MAX_REQUESTS = 3000
STREAM_MAX_SECONDS = 90


@dataclass
class ReleaseHost:
    host: LabHost
    work: Path
    legacy_run_output: str

    def hosts_file(self, name: str, **data) -> Path:
        return write_hosts_file(self.work / f"{name}.json", [self.host], data=data)

    def current(self) -> str:
        return self.host.run(f"readlink {BASE}/current").stdout.strip()

    def healthy(self) -> bool:
        cert = self.work / "cert.pem"
        cert.write_text(self.host.run(f"cat {BASE}/ssl/aibots_test.crt").stdout)
        with client.pool(self.host.address, DOMAIN, 8443, str(cert)) as pool:
            answer = client.request(pool, "GET", "/health", DOMAIN, 8443)
        return answer.status == 200 and json.loads(answer.data)["status"] == "healthy"


@pytest.fixture(scope="module")
def release_host(lab, tmp_path_factory) -> ReleaseHost:
    """A host deployed with the layout before releases (the code just before the commit
    that introduced them, from git), to be migrated by the tests."""
    work = tmp_path_factory.mktemp("releases")
    legacy = work / "legacy"
    legacy.mkdir()
    commit = subprocess.run(["git", "-C", str(PROJECT_ROOT), "log", "--follow", "--diff-filter=A", "--format=%H", "--",
                             "aisha_infra/deploy/facts/releases.py"], capture_output=True, text=True, check=True).stdout.split()[-1]
    archive = subprocess.run(["git", "-C", str(PROJECT_ROOT), "archive", f"{commit}~1"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(legacy)], input=archive.stdout, check=True)
    host = lab.add_hosts(count=1)[0]
    try:
        hosts_file = write_hosts_file(work / "legacy.json", [host])
        legacy_run = run_deploy(hosts_file, cwd=legacy).check()
        assert host.run(f"test -d {BASE}/app && ! test -L {BASE}/app", check=False).returncode == 0
        yield ReleaseHost(host, work, legacy_run.output)
    finally:
        lab.destroy_host(host.name)


def test_old_layout_moves_to_releases_in_one_run_and_the_second_run_changes_nothing(release_host):
    hosts_file = release_host.hosts_file("first", app_environment=ENVIRONMENT)
    run_deploy(hosts_file).check()
    run = release_host.host.run
    current = release_host.current()
    assert current.startswith("releases/") and run(f"test -d {BASE}/{current}/app", check=False).returncode == 0
    assert run(f"readlink {BASE}/app").stdout.strip() == "current/app"
    assert run(f"cat {BASE}/app/aisha_webhook_api/__init__.py", check=False).returncode == 0
    assert release_host.healthy()
    assert run_deploy(hosts_file).check().totals["changed"] == 0


def test_the_app_environment_is_in_a_root_only_file_not_in_the_unit(release_host):
    run = release_host.host.run
    assert SECRET not in run(f"cat {SERVICE_UNIT_PATH}").stdout
    assert SECRET not in run("systemctl show aisha-api.service").stdout
    assert run(f"stat -c '%a %U %G' {BASE}/current/aisha-api.env").stdout.split() == ["600", "root", "root"]
    pid = run("systemctl show -P MainPID aisha-api.service").stdout.strip()
    environ = run(f"cat /proc/{pid}/environ").stdout.split("\0")
    assert f"API_TOKEN={SECRET}" in environ and f"AISHA_E2E_ODD={ODD}" in environ


def test_diff_masks_secret_values(release_host):
    changed = {**ENVIRONMENT, "API_TOKEN": "tok-changed-" + uuid.uuid4().hex}
    run = run_deploy(release_host.hosts_file("diff", app_environment=changed), "--diff").check()
    # against the serving release's environment: only what changes, its value masked
    assert "~ API_TOKEN=********" in run.output, run.output[-6000:]
    assert "AISHA_API_PORT" not in run.output
    assert changed["API_TOKEN"] not in run.output and SECRET not in run.output


def test_the_app_cannot_read_the_tls_key(release_host):
    run = release_host.host.run
    key = f"{BASE}/ssl/{DOMAIN}.key"
    assert run(f"stat -c '%a %U %G' {key}").stdout.split() == ["600", "aisha", "aisha"]
    assert run(f"stat -c '%U' {BASE}/ssl").stdout.strip() == "root"  # nothing the app user can plant there
    pid = run("systemctl show -P MainPID aisha-api.service").stdout.strip()
    as_the_app = (f"nsenter -t {pid} -m -- setpriv --reuid=aisha --regid=aisha --clear-groups "
                  f"cat {shlex.quote(key)}")
    attempt = run(as_the_app, check=False)
    assert attempt.returncode != 0 and "BEGIN" not in attempt.stdout, attempt.stderr
    assert "BEGIN" in run(f"setpriv --reuid=aisha --regid=aisha --clear-groups cat {key}").stdout  # outside: it could


def test_a_release_that_cannot_start_leaves_the_old_one_serving(release_host):
    before = release_host.current()
    broken = copy_project(release_host.work / "broken")
    server = broken / "backend" / "aisha_webhook_api" / "server.py"
    server.write_text(server.read_text() + "\nimport aisha_release_that_cannot_start\n")
    run = run_deploy(release_host.hosts_file("broken", app_environment=ENVIRONMENT), cwd=broken)
    assert run.returncode != 0, run.output[-3000:]
    assert "aisha-api did not start on release" in run.output
    assert "No module named 'aisha_release_that_cannot_start'" in run.output  # the app's own words
    assert f"rolled back: {before} is serving again" in run.output
    assert release_host.current() == before and release_host.healthy()
    assert release_host.host.run("systemctl show -P NRestarts aisha-api.service").stdout.strip() == "0"


@pytest.mark.parametrize("bad, cause", [
    ({"app_environment": {**ENVIRONMENT, "AISHA_REQUEST_TIMEOUT": "0"}}, "AISHA_REQUEST_TIMEOUT"),
    ({"fal_verify_signatures": True, "fal_jwks_file": "EMPTY_JWKS"}, "JWKS"),
])
def test_a_bad_app_value_leaves_the_old_app_serving(release_host, bad, cause):
    """Refused by the app on the host (or, once the settings check knows the app's rules,
    before it): either way the run fails naming the cause, and the old release serves."""
    before = release_host.current()
    if bad.get("fal_jwks_file") == "EMPTY_JWKS":
        jwks = release_host.work / "empty-jwks.json"
        jwks.write_text('{"keys": []}')
        bad = {**bad, "fal_jwks_file": str(jwks)}
    run = run_deploy(release_host.hosts_file("bad-value", **bad))
    assert run.returncode != 0 and cause in run.output, run.output[-3000:]
    assert release_host.current() == before and release_host.healthy()


class PlainStream:
    """Unsigned webhooks from a few kept-alive connections until stopped (bounded)."""

    def __init__(self, release_host: ReleaseHost) -> None:
        self.release_host = release_host
        self.stop = threading.Event()
        self.answers: Counter = Counter()
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._sent = 0

    def _send(self) -> None:
        cert = str(self.release_host.work / "cert.pem")
        deadline = time.monotonic() + STREAM_MAX_SECONDS
        with client.pool(self.release_host.host.address, DOMAIN, 8443, cert, timeout=40) as pool:
            while not self.stop.is_set() and time.monotonic() < deadline:
                with self._lock:
                    if self._sent >= STREAM_MAX_REQUESTS:
                        return
                    self._sent += 1
                request_id = f"rollback-{uuid.uuid4()}"
                body = json.dumps(client.fal_event(request_id)).encode()
                try:
                    answer = client.request(pool, "POST", "/api/v1/avatar/status_update", DOMAIN, 8443, body)
                    with self._lock:
                        self.answers[answer.status] += 1
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    with self._lock:
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.05)  # in all below the rate limit (100/s): no 429

    def __enter__(self):
        self.threads = [threading.Thread(target=self._send) for _ in range(STREAM_THREADS)]
        for thread in self.threads:
            thread.start()
        time.sleep(2)
        return self

    def __exit__(self, *exc):
        time.sleep(2)
        self.stop.set()
        for thread in self.threads:
            thread.join(STREAM_MAX_SECONDS + 30)


def rollback(hosts_file: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([AISHA_INFRA, "rollback", *args], cwd=PROJECT_ROOT,
                          env={**os.environ, "AISHA_HOSTS": str(hosts_file)},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


def test_rollback_under_a_webhook_stream_refuses_nothing(release_host):
    first = release_host.current()
    hosts_file = release_host.hosts_file("second", app_environment={**ENVIRONMENT, "AISHA_E2E_RELEASE": "2"})
    run_deploy(hosts_file).check()
    second = release_host.current()
    assert second != first
    assert release_host.host.run(f"readlink {BASE}/previous").stdout.strip() == first

    assert release_host.healthy()
    with PlainStream(release_host) as stream:
        result = rollback(hosts_file, "--limit", "canary")
    print(f"stream during the rollback: {dict(stream.answers)}, {len(stream.errors)} errors")
    assert result.returncode == 0 and "Rollback complete." in result.stdout, result.stdout[-3000:]
    assert release_host.current() == first
    assert release_host.host.run(f"readlink {BASE}/previous").stdout.strip() == second
    assert not stream.errors, stream.errors[:5]
    assert set(stream.answers) == {200} and sum(stream.answers.values()) > 50, stream.answers
    assert release_host.host.run("journalctl -q -o cat -u aisha-api.service --since '-2min'").stdout.count(
        "received SIGTERM") >= 1


def test_rollback_without_a_previous_release_fails_and_changes_nothing(tmp_path, release_host):
    hosts_file = release_host.hosts_file("rollback")
    current = release_host.current()
    release_host.host.run(f"rm {BASE}/previous")
    result = rollback(hosts_file)
    assert result.returncode == 1 and "nothing to roll back to" in result.stdout, result.stdout[-3000:]
    assert release_host.current() == current and release_host.healthy()
