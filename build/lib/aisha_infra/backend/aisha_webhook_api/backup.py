"""Snapshots of the event store, their retention, and retention of the live store.

A snapshot is a self-contained SQLite file (rollback journal, no -wal beside it) made
with SQLite's online backup API in one step: it copies the database as of one read
transaction, so it is consistent while the server keeps committing (WAL readers never
block the writer). aisha-backup.service takes it as the app user (who owns the live
database and its -wal/-shm files), then root keeps it where the app user cannot reach
(`keep_snapshot`), copying bytes only: root never opens a file the app user wrote as
a database.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

from aisha_webhook_api.store import COLUMNS_BY_VERSION, SCHEMA_VERSION

SQLITE_MAGIC = b"SQLite format 3\x00"
# events-20261129T035012Z.sqlite3: names sort by time
SNAPSHOT_NAME = re.compile(r"^events-\d{8}T\d{6}Z\.sqlite3$")


class SnapshotError(RuntimeError):
    """A snapshot could not be made, kept or trusted; the message says why."""


def snapshot(database: Path, output: Path) -> int:
    """Copy `database` into the new file `output` (mode 0600, must not exist), check the
    copy, and return how many events it holds."""
    if not database.is_file():
        raise SnapshotError(f"no event database at {database}")
    # Created empty here, so the copy is private from its first byte.
    os.close(os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    try:
        source = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30.0)
        copy = sqlite3.connect(output)
        try:
            source.backup(copy)  # pages=-1: the whole database under one read transaction
            copy.execute("PRAGMA journal_mode=DELETE")  # one file, no -wal/-shm to carry
            copy.commit()
        finally:
            copy.close()
            source.close()
        problem = snapshot_problem(output)
        if problem:
            raise SnapshotError(f"the snapshot of {database} failed its check: {problem}")
        _fsync(output)
        return count_events(output)
    except BaseException:
        output.unlink(missing_ok=True)
        raise


def snapshot_problem(path: Path) -> str | None:
    """Why `path` is not a snapshot of this event store (None: it is one). Opened
    immutable and read-only, so checking never writes anything beside it."""
    try:
        with open(path, "rb") as file:
            header = file.read(len(SQLITE_MAGIC))
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    if header != SQLITE_MAGIC:
        return "it is not an SQLite database (wrong file header)"
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
        try:
            # a row can hold several lines: one line per fault, for logs and messages
            integrity = [" ".join(row[0].split()) for row in connection.execute("PRAGMA integrity_check")]
            if integrity != ["ok"]:
                return f"PRAGMA integrity_check failed: {'; '.join(integrity[:3])}"
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            expected = COLUMNS_BY_VERSION.get(version)  # an older version is migrated when opened
            if expected is None:
                return f"schema version {version}, this backend stores version {SCHEMA_VERSION}"
            columns = tuple(row[1] for row in connection.execute("PRAGMA table_info(events)"))
            if columns != expected:
                return f"its events table has columns {columns or 'none'}, expected {expected}"
        finally:
            connection.close()
    except sqlite3.Error as exc:
        return f"SQLite cannot read it: {exc}"
    return None


def count_events(path: Path) -> int:
    connection = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        return connection.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        connection.close()


def keep_snapshot(staged: Path, directory: Path, keep: int, now: datetime | None = None) -> Path:
    """Copy the staged snapshot into `directory` (made 0700 if missing) as a new 0600
    events-<UTC time>.sqlite3, then delete all but the newest `keep` snapshots there.

    Runs as root on a file the app user wrote: it must be a regular file (no symlink)
    that starts like an SQLite database; only its bytes are copied."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    moment = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    target = directory / f"events-{moment}.sqlite3"
    partial = directory / f".{target.name}.partial"
    try:
        source_fd = os.open(staged, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise SnapshotError(f"cannot open the staged snapshot {staged}: {exc.strerror}") from exc
    with os.fdopen(source_fd, "rb") as source:
        if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
            raise SnapshotError(f"{staged} is not a regular file")
        if source.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
            raise SnapshotError(f"{staged} is not an SQLite database")
        source.seek(0)
        partial.unlink(missing_ok=True)
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as sink:
            while chunk := source.read(1 << 20):
                sink.write(chunk)
            sink.flush()
            os.fsync(sink.fileno())
    if target.exists():
        partial.unlink()
        raise SnapshotError(f"{target} exists already: one snapshot per second at most")
    os.rename(partial, target)
    _fsync(directory)
    for old in list_snapshots(directory)[:-keep]:
        old.unlink()
    return target


def list_snapshots(directory: Path) -> list[Path]:
    """Snapshots in `directory`, oldest first."""
    return sorted(p for p in directory.iterdir() if SNAPSHOT_NAME.match(p.name) and p.is_file())


def prune(database: Path, older_than_days: int, now: datetime | None = None) -> int:
    """Delete events received more than `older_than_days` ago; return how many."""
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=older_than_days)
    connection = sqlite3.connect(f"file:{database}?mode=rw", uri=True, isolation_level=None, timeout=30.0)
    try:
        connection.execute("PRAGMA synchronous=FULL")
        # received_at is ISO 8601 UTC with the same format everywhere: text order is time order
        cursor = connection.execute(
            "DELETE FROM events WHERE received_at < ?", (cutoff.isoformat(timespec="milliseconds"),)
        )
        return cursor.rowcount
    finally:
        connection.close()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
