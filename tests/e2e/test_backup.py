"""Issue 15 item 3 on lab hosts: a snapshot taken by aisha-backup.service while 1,000
signed webhooks arrive holds every delivery acknowledged before it started; `aisha-infra
events pull` brings it here (0600, checked), and a new host deployed with
events_restore_archive starts with exactly those events. Snapshots stay out of the app
user's reach, retention keeps the newest N, and second runs change nothing."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import urllib3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aisha_infra.lab.hosts import LabHost
from tests.project import PROJECT_ROOT
from tests.e2e import client
from tests.e2e.conftest import DOMAIN
from tests.e2e.deploylib import run_deploy, write_hosts_file
from tests.e2e.test_durability import delivery, jwk, signed_headers

pytestmark = pytest.mark.e2e

PORT = 8443
WEBHOOK = "/api/v1/avatar/status_update"
AISHA_INFRA = str(Path(sys.executable).with_name("aisha-infra"))
EXPORT = (
    "cd /opt/aisha-backend/app && AISHA_DATA_DIR=/var/lib/aisha "
    "/opt/aisha-backend/venv/bin/python -m aisha_webhook_api events export --format jsonl"
)
KEEP = 3
SETTINGS = {
    "fal_verify_signatures": True,
    "nginx_rate_limit_per_second": 1000,
    "nginx_rate_limit_burst": 2000,
    "backup_keep": KEEP,
    "events_keep_days": 30,  # the prune step runs (and deletes nothing this young)
}
# 1,000 paced deliveries (about 12 s) from several connections; the snapshot is taken
# BACKUP_AFTER seconds in. Bounded in count and time.
STREAM_REQUESTS = 1000
STREAM_RATE = 80
STREAM_THREADS = 8
STREAM_MAX_SECONDS = 90
BACKUP_AFTER = 4.0


@dataclass
class Stream:
    host: LabHost
    cert_pem: Path
    fal_key: Ed25519PrivateKey
    acknowledged: dict[str, float] = field(default_factory=dict)  # request_id -> when its 200 arrived
    sent: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        self.started = time.monotonic()
        threads = [threading.Thread(target=self._send) for _ in range(STREAM_THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(STREAM_MAX_SECONDS + 30)

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= STREAM_REQUESTS:
                return None
            self._next += 1
            return self._next - 1

    def _send(self) -> None:
        with client.pool(self.host.address, DOMAIN, PORT, str(self.cert_pem), timeout=30) as pool:
            while (index := self._take()) is not None:
                due = self.started + index / STREAM_RATE
                if due > self.started + STREAM_MAX_SECONDS:
                    return
                time.sleep(max(0.0, due - time.monotonic()))
                request_id, body = delivery("backup")
                with self._lock:
                    self.sent.add(request_id)
                try:
                    answer = client.request(pool, "POST", WEBHOOK, DOMAIN, PORT, body,
                                            headers=signed_headers(self.fal_key, request_id, body))
                    status = answer.status
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    status = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    if status == 200:
                        self.acknowledged[request_id] = time.monotonic()
                    else:
                        self.failures.append(f"{request_id}: {status}")


def request_ids_in(snapshot: Path) -> set[str]:
    connection = sqlite3.connect(f"file:{snapshot}?mode=ro&immutable=1", uri=True)
    try:
        return {row[0] for row in connection.execute("SELECT request_id FROM events")}
    finally:
        connection.close()


def request_ids_on(host: LabHost) -> set[str]:
    return {json.loads(line)["request_id"] for line in host.run(EXPORT).stdout.splitlines() if line}


def pull(hosts_file: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """`aisha-infra events pull inventory.py`: the hosts and their SSH data from the inventory."""
    return aisha_infra("events", "pull", "inventory.py", "--out", str(out), *extra, hosts_file=hosts_file)


def aisha_infra(*args: str, hosts_file: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"AISHA_HOSTS": str(hosts_file)} if hosts_file else {})}
    return subprocess.run([AISHA_INFRA, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)


@dataclass
class BackedUp:
    source: LabHost
    work: Path
    hosts_file: Path
    stream: Stream
    backup_started: float
    backup_ended: float
    pulled: Path


@pytest.fixture(scope="module")
def backed_up(lab, tmp_path_factory) -> BackedUp:
    """A deployed host, a signed stream with a snapshot taken in its middle, and that
    snapshot pulled to this machine."""
    work = tmp_path_factory.mktemp("backup")
    fal_key = Ed25519PrivateKey.generate()
    (work / "fal-jwks.json").write_text(json.dumps({"keys": [jwk(fal_key)]}))
    source = lab.add_hosts(count=1)[0]
    try:
        hosts_file = write_hosts_file(work / "source.json", [source],
                                      data={**SETTINGS, "fal_jwks_file": str(work / "fal-jwks.json")})
        run_deploy(hosts_file).check()
        again = run_deploy(hosts_file).check()
        assert again.totals["changed"] == 0, again.changed_operations
        cert_pem = work / "cert.pem"
        cert_pem.write_text(source.run("cat /opt/aisha-backend/ssl/aibots_test.crt").stdout)

        stream = Stream(source, cert_pem, fal_key)
        sender = threading.Thread(target=stream.run)
        sender.start()
        try:
            time.sleep(BACKUP_AFTER)
            backup_started = time.monotonic()
            source.run("systemctl start aisha-backup.service", timeout=120)
            backup_ended = time.monotonic()
        finally:
            sender.join(STREAM_MAX_SECONDS + 60)
        assert backup_ended < time.monotonic() and stream.acknowledged, "the stream did not run"
        result = pull(hosts_file, work / "pulled")
        assert result.returncode == 0, result.stderr
        [pulled] = list((work / "pulled").iterdir())
        yield BackedUp(source, work, hosts_file, stream, backup_started, backup_ended, pulled)
    finally:
        lab.destroy_host(source.name)


def test_the_snapshot_taken_under_writes_holds_every_event_acknowledged_before_it(backed_up):
    stream = backed_up.stream
    in_snapshot = request_ids_in(backed_up.pulled)
    before = {rid for rid, at in stream.acknowledged.items() if at < backed_up.backup_started}
    after = {rid for rid, at in stream.acknowledged.items() if at > backed_up.backup_ended}
    print(f"\nstream: {len(stream.acknowledged)} of {STREAM_REQUESTS} acknowledged; snapshot taken in "
          f"{backed_up.backup_ended - backed_up.backup_started:.1f} s with {len(in_snapshot)} events: "
          f"{len(before)} acknowledged before it, {len(after)} after it")
    assert not stream.failures, stream.failures[:10]
    assert len(stream.acknowledged) == STREAM_REQUESTS
    assert before and after, "the snapshot was not taken while the stream ran"
    assert before <= in_snapshot, f"missing: {sorted(before - in_snapshot)[:10]}"
    assert {rid for rid in in_snapshot if rid.startswith("backup-")} <= stream.sent
    assert not after & in_snapshot, "an event acknowledged after the snapshot ended is in it"


def test_the_pulled_copy_is_private_and_named_after_host_and_time(backed_up):
    assert stat.S_IMODE(backed_up.pulled.stat().st_mode) == 0o600
    assert backed_up.pulled.name.startswith(f"{backed_up.source.name}-events-")
    assert backed_up.pulled.name.endswith("Z.sqlite3")


def test_snapshots_are_out_of_the_app_users_reach(backed_up):
    run = backed_up.source.run
    assert run("stat -c '%U:%G %a' /var/backups/aisha").stdout.split() == ["root:root", "700"]
    modes = run("stat -c '%U:%G %a %n' /var/backups/aisha/events-*.sqlite3").stdout.splitlines()
    assert modes and all(line.startswith("root:root 600 ") for line in modes), modes
    refused = run("runuser -u aisha -- ls /var/backups/aisha", check=False)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    # the staging copy is gone with the run (RuntimeDirectory)
    assert run("test -e /run/aisha-backup", check=False).returncode != 0
    assert run("systemctl is-enabled aisha-backup.timer; systemctl is-active aisha-backup.timer").stdout.split() == [
        "enabled", "active"]


def test_backup_service_exposure_is_at_most_2(backed_up):
    report = backed_up.source.run("systemd-analyze security --no-pager aisha-backup.service").stdout
    match = re.search(r"Overall exposure level for aisha-backup\.service: (\d+(?:\.\d+)?)", report)
    assert match, report
    failing = [line for line in report.splitlines() if line.startswith("✗")]
    assert float(match.group(1)) <= 2.0, "\n".join(failing)


def test_pull_fresh_takes_a_new_snapshot_with_everything_and_retention_keeps_the_newest(backed_up):
    out = backed_up.work / "fresh"
    source = backed_up.source
    for number in range(KEEP):  # with the one taken under the stream: one more than KEEP
        time.sleep(1.1)  # snapshot names carry the second
        if number == 0:  # by address, as for a server outside any inventory
            result = aisha_infra("events", "pull", source.address, "--ssh-key", str(source.ssh_key),
                                 "--ssh-user", "root", "--known-hosts-file", str(backed_up.work / "known_hosts"),
                                 "--out", str(out / "by-address"), "--fresh")
        else:
            result = pull(backed_up.hosts_file, out, "--fresh")
        assert result.returncode == 0, result.stderr
    [by_address] = list((out / "by-address").iterdir())
    assert by_address.name.startswith(f"{source.address}-events-")
    (out / "by-address").rename(backed_up.work / "by-address")
    newest = max(out.iterdir())
    assert set(backed_up.stream.acknowledged) <= request_ids_in(newest)
    kept = backed_up.source.run("ls -1 /var/backups/aisha").stdout.split()
    assert len(kept) == KEEP and f"{backed_up.source.name}-{kept[-1]}" == newest.name, kept


def test_pull_refuses_a_snapshot_that_fails_its_check(backed_up):
    junk = "/var/backups/aisha/events-29991231T000000Z.sqlite3"  # sorts newest
    backed_up.source.run(f"echo 'not a database' > {junk} && chmod 600 {junk}")
    try:
        out = backed_up.work / "refused"
        result = pull(backed_up.hosts_file, out)
        assert result.returncode == 1
        assert "is not a usable snapshot: it is not an SQLite database" in result.stderr
        assert list(out.iterdir()) == []  # not even the partial copy
    finally:
        backed_up.source.run(f"rm -f {junk}")


def test_a_new_host_restores_the_snapshot_then_changes_nothing(backed_up, lab):
    new = lab.add_hosts(count=1)[0]
    try:
        hosts_file = write_hosts_file(
            backed_up.work / "new.json", [new],
            data={**SETTINGS, "fal_jwks_file": str(backed_up.work / "fal-jwks.json"),
                  "events_restore_archive": str(backed_up.pulled)})
        first = run_deploy(hosts_file).check()
        assert "Event store | Restore the event store carried over from the previous host" in first.changed_operations
        restored = request_ids_on(new)
        in_snapshot = request_ids_in(backed_up.pulled)
        acknowledged_before = {rid for rid, at in backed_up.stream.acknowledged.items()
                               if at < backed_up.backup_started}
        assert acknowledged_before <= restored
        # the deploy's own test webhook arrived after the restore: nothing else is new
        assert {rid for rid in restored - in_snapshot if rid.startswith("backup-")} == set()
        assert in_snapshot <= restored
        assert new.run("stat -c '%U:%G %a' /var/lib/aisha/events.sqlite3").stdout.split() == ["aisha:aisha", "640"]

        again = run_deploy(hosts_file).check()
        assert again.totals["changed"] == 0, again.changed_operations
        # an existing store is never replaced (the second run's own test webhook is added)
        assert restored <= request_ids_on(new)
    finally:
        lab.destroy_host(new.name)
