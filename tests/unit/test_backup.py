"""Event store backups (backend/aisha_webhook_api/backup.py and its `events` commands)
on real SQLite files: snapshots under concurrent writes, checks, retention, pruning."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from aisha_infra.deploy.settings import BUNDLED_BACKEND, SettingsError, build_settings

sys.path.insert(0, str(BUNDLED_BACKEND))

from aisha_webhook_api import backup  # noqa: E402
from aisha_webhook_api.store import Event, EventStore  # noqa: E402


def event(request_id: str, received_at: str | None = None) -> Event:
    return Event(request_id, None, "OK", '{"n": 1}', None, None, None, b'{"request_id": "x"}',
                 received_at or datetime.now(timezone.utc).isoformat(timespec="milliseconds"))


def request_ids(path: Path) -> set[str]:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {row[0] for row in connection.execute("SELECT request_id FROM events")}
    finally:
        connection.close()


def events_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aisha_webhook_api", "events", *args], cwd=BUNDLED_BACKEND,
                          env=env, capture_output=True, text=True, timeout=60)


def corrupted(snapshot: Path) -> bytes:
    data = bytearray(snapshot.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    data[page_size + 8: 2 * page_size] = b"\xff" * (page_size - 8)  # page 2: the events table's root
    return bytes(data)


@pytest.fixture
def store(tmp_path):
    live = EventStore(tmp_path / "data" / "events.sqlite3")
    yield live
    live.close()


def test_snapshot_under_writes_holds_every_event_committed_before_it(store, tmp_path):
    for n in range(200):
        store.add(event(f"before-{n}"))
    stop = threading.Event()
    written: list[str] = []

    def write():  # a writer committing all through the snapshot
        n = 0
        while not stop.is_set() and n < 20000:
            store.add(event(f"during-{n}"))
            written.append(f"during-{n}")
            n += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        while len(written) < 50:
            threading.Event().wait(0.01)
        committed_before = set(written)
        count = backup.snapshot(store.path, tmp_path / "snap.sqlite3")
    finally:
        stop.set()
        writer.join(30)

    snap = tmp_path / "snap.sqlite3"
    ids = request_ids(snap)
    assert {f"before-{n}" for n in range(200)} | committed_before <= ids
    assert ids <= {f"before-{n}" for n in range(200)} | set(written)
    assert count == len(ids)
    assert backup.snapshot_problem(snap) is None
    assert stat.S_IMODE(snap.stat().st_mode) == 0o600
    assert not Path(f"{snap}-wal").exists() and snap.read_bytes()[18:20] == b"\x01\x01"  # rollback journal


def test_snapshot_never_overwrites(store, tmp_path):
    (tmp_path / "snap.sqlite3").write_text("keep me")
    with pytest.raises(FileExistsError):
        backup.snapshot(store.path, tmp_path / "snap.sqlite3")
    assert (tmp_path / "snap.sqlite3").read_text() == "keep me"


@pytest.mark.parametrize("make, fault", [
    (lambda p: p.write_text("id,request_id\n1,a\n"), "not an SQLite database"),
    (lambda p: sqlite3.connect(p).executescript("CREATE TABLE events (id INTEGER); PRAGMA user_version=1;"),
     "its events table has columns"),
    (lambda p: sqlite3.connect(p).executescript("CREATE TABLE other (id INTEGER);"), "schema version 0"),
])
def test_snapshot_problem_names_the_fault(tmp_path, make, fault):
    path = tmp_path / "bad.sqlite3"
    make(path)
    assert fault in backup.snapshot_problem(path)


def test_snapshot_problem_catches_a_corrupted_page(store, tmp_path):
    for n in range(300):
        store.add(event(f"e-{n}"))
    snap = tmp_path / "snap.sqlite3"
    backup.snapshot(store.path, snap)
    snap.write_bytes(corrupted(snap))
    problem = backup.snapshot_problem(snap)
    assert problem and ("integrity_check" in problem or "SQLite cannot read it" in problem)


def test_keep_snapshot_copies_privately_and_keeps_the_newest(store, tmp_path):
    staged = tmp_path / "staged.sqlite3"
    backup.snapshot(store.path, staged)
    kept_dir = tmp_path / "backups"
    start = datetime(2026, 11, 29, 3, 0, tzinfo=timezone.utc)
    kept = [backup.keep_snapshot(staged, kept_dir, keep=3, now=start + timedelta(minutes=n)) for n in range(5)]
    assert backup.list_snapshots(kept_dir) == kept[2:]
    assert stat.S_IMODE(kept_dir.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in kept[2:])
    assert kept[-1].read_bytes() == staged.read_bytes()


def test_keep_snapshot_refuses_a_symlink_or_a_non_database(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("root only")
    link = tmp_path / "staged.sqlite3"
    link.symlink_to(secret)
    with pytest.raises(backup.SnapshotError, match="cannot open"):
        backup.keep_snapshot(link, tmp_path / "backups", keep=2)
    with pytest.raises(backup.SnapshotError, match="not an SQLite database"):
        backup.keep_snapshot(secret, tmp_path / "backups", keep=2)
    assert backup.list_snapshots(tmp_path / "backups") == []


def test_prune_deletes_only_older_events(store):
    now = datetime(2026, 11, 29, tzinfo=timezone.utc)
    for days in (40, 31, 29, 1):
        store.add(event(f"age-{days}", (now - timedelta(days=days)).isoformat(timespec="milliseconds")))
    assert backup.prune(store.path, 30, now=now) == 2
    assert request_ids(store.path) == {"age-29", "age-1"}


def test_events_commands_snapshot_verify_keep_prune(store, tmp_path):
    store.add(event("one"))
    env = {"AISHA_DATA_DIR": str(store.path.parent), "PATH": "/usr/bin:/bin"}
    snap = tmp_path / "snap.sqlite3"
    result = events_cli("snapshot", "--output", str(snap), env=env)
    assert result.returncode == 0, result.stderr
    assert "1 events" in result.stderr
    verified = events_cli("verify", str(snap), env=env)
    assert (verified.returncode, verified.stdout.strip()) == (0, f"{snap}: ok, 1 events")
    kept = events_cli("keep", str(snap), "--into", str(tmp_path / "kept"), "--keep", "2", env=env)
    assert kept.returncode == 0, kept.stderr
    assert len(backup.list_snapshots(tmp_path / "kept")) == 1
    pruned = events_cli("prune", "--older-than-days", "1", env=env)
    assert pruned.returncode == 0 and "pruned 0 events" in pruned.stderr

    (tmp_path / "junk").write_text("not a database")
    refused = events_cli("verify", str(tmp_path / "junk"), env=env)
    assert refused.returncode == 1 and "not an SQLite database" in refused.stderr


# --- settings: bad backup input is refused before any host is touched ------------------

def settings_error(**data) -> str:
    with pytest.raises(SettingsError) as error:
        build_settings({"aisha_domain": "aibots.test", **data})
    return str(error.value)


def test_backups_are_on_for_the_bundled_app_only(tmp_path):
    assert build_settings({"aisha_domain": "aibots.test"}).backups_on
    own = build_settings({"aisha_domain": "aibots.test", "app_source": str(tmp_path), "app_start_command": "/bin/true"})
    assert not own.backups_on
    assert "backup_enabled: backs up the bundled app's event store" in settings_error(
        app_source=str(tmp_path), app_start_command="/bin/true", backup_enabled=True)


@pytest.mark.parametrize("data, words", [
    ({"backup_keep": 0}, "backup_keep: 0 is not a positive integer"),
    ({"backup_interval_minutes": "60"}, "backup_interval_minutes: '60' is not a positive integer"),
    ({"backup_enabled": "yes"}, "backup_enabled: 'yes' is not True, False or None"),
    ({"backup_dir": "/var/lib/aisha/backups"}, "backup_dir: '/var/lib/aisha/backups' overlaps aisha_data_dir"),
    ({"backup_dir": "backups"}, "backup_dir: 'backups' is not an absolute path"),
    ({"events_keep_days": 0}, "events_keep_days: 0 is not a positive integer (days)"),
    ({"events_keep_days": 30, "backup_enabled": False}, "events_keep_days: pruning runs with the backups"),
    ({"backup_intervall_minutes": 5}, "did you mean 'backup_interval_minutes'"),
    ({"events_restore_archive": "/nonexistent.sqlite3"}, "is not a file on the control machine"),
])
def test_bad_backup_settings_are_named(data, words):
    assert words in settings_error(**data)


def test_restore_archive_is_checked_on_the_control_machine(store, tmp_path):
    store.add(event("carried"))
    good = tmp_path / "good.sqlite3"
    backup.snapshot(store.path, good)
    assert build_settings({"aisha_domain": "aibots.test", "events_restore_archive": str(good)}).events_restore_archive

    not_sqlite = tmp_path / "events.jsonl"
    not_sqlite.write_text('{"request_id": "x"}\n')
    assert "events_restore_archive: " in settings_error(events_restore_archive=str(not_sqlite))
    assert "not an SQLite database (wrong file header)" in settings_error(events_restore_archive=str(not_sqlite))

    other_schema = tmp_path / "other.sqlite3"
    sqlite3.connect(other_schema).executescript("CREATE TABLE events (id INTEGER); PRAGMA user_version=1;")
    assert "its events table has columns ('id',)" in settings_error(events_restore_archive=str(other_schema))

    corrupt = tmp_path / "corrupt.sqlite3"
    corrupt.write_bytes(corrupted(good))
    message = settings_error(events_restore_archive=str(corrupt))
    assert "events_restore_archive" in message and ("integrity_check" in message or "SQLite cannot read it" in message)


def test_events_pull_wants_an_inventory_or_an_address(tmp_path, capsys):
    from aisha_infra.cli import main

    hosts = tmp_path / "hosts.json"
    hosts.write_text("[]")
    assert main(["events", "pull", str(hosts), "--out", str(tmp_path / "out")]) == 2
    assert f"AISHA_HOSTS={hosts} aisha-infra events pull inventory.py" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()



def test_restore_never_replaces_an_existing_store(tmp_path):
    """(The upload to a host without a store: tests/e2e/test_backup.py.)"""
    from pyinfra.facts.files import File

    from aisha_infra.deploy.operations.events import restore_snapshot
    from tests.unit.fakehost import run_operation

    snapshot = tmp_path / "old-host-events.sqlite3"
    snapshot.write_bytes(b"SQLite format 3\x00")
    database = "/var/lib/aisha/events.sqlite3"
    existing = {(File, frozenset({"path": database}.items())): {"mode": 640}}
    commands, noops = run_operation(restore_snapshot, existing, str(snapshot), database, "aisha")
    assert commands == [] and noops == [f"{database} exists: nothing to restore"]
