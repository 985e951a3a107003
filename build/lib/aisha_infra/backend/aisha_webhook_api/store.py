"""Durable, deduplicated event store: one SQLite database in WAL mode, synchronous=FULL.

`EventStore.add` returns only after the row is committed and the WAL fsync'd, so the
server can acknowledge an event the moment `add` returns. A delivery whose request_id
is already stored is reported as a duplicate and not written again (fal retries a
webhook up to 10 times over 2 hours).

Nothing a sender can put in a JSON object makes `add` refuse it: what the app could not
take at face value is stored as sent and named in the event's `flags` (see FLAGS).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id                 INTEGER PRIMARY KEY,
    request_id         TEXT    NOT NULL UNIQUE,
    gateway_request_id TEXT,
    status             TEXT,             -- as sent: fal sends "OK" or "ERROR"; NULL if absent
    payload            TEXT,             -- JSON text of the "payload" field, NULL if null/absent
    error              TEXT,
    payload_error      TEXT,
    fal_user_id        TEXT,             -- from a verified signature, else NULL
    flags              TEXT    NOT NULL DEFAULT '', -- comma-separated FLAGS, '' for none
    received_at        TEXT    NOT NULL, -- ISO 8601, UTC
    raw_body           BLOB    NOT NULL  -- the delivery exactly as received
);
CREATE INDEX IF NOT EXISTS events_status ON events (status, id);
"""

# Why an event is not a plain, verified fal delivery. Consumers that want only those
# select `flags = ''`.
FLAGS = {
    "unsigned": "no verified fal signature (signature verification is off)",
    "request_id_generated": "request_id missing or unusable: the stored one was generated",
    "unknown_status": 'status is not "OK" or "ERROR" (stored as sent)',
    "probe": "a synthetic check event stored by an earlier version (before X-Aisha-Probe)",
}

# Version 1 allowed only OK/ERROR, had no flags and kept a health_probe row that every
# health check rewrote. SQLite cannot drop a CHECK constraint: the table is rebuilt.
MIGRATE_FROM_V1 = """
ALTER TABLE events RENAME TO events_v1;
DROP INDEX IF EXISTS events_status;
""" + SCHEMA + """
INSERT INTO events (id, request_id, gateway_request_id, status, payload, error, payload_error,
                    fal_user_id, flags, received_at, raw_body)
SELECT id, request_id, gateway_request_id, status, payload, error, payload_error, fal_user_id,
       CASE WHEN request_id LIKE 'diagnose-%' THEN 'unsigned,probe'
            WHEN fal_user_id IS NULL THEN 'unsigned' ELSE '' END,
       received_at, raw_body
FROM events_v1;
DROP TABLE events_v1;
DROP TABLE IF EXISTS health_probe;
"""

COLUMNS = (
    "id", "request_id", "gateway_request_id", "status", "payload", "error",
    "payload_error", "fal_user_id", "flags", "received_at", "raw_body",
)
# The events table of each schema version this code opens (older ones are migrated).
COLUMNS_BY_VERSION = {1: tuple(c for c in COLUMNS if c != "flags"), SCHEMA_VERSION: COLUMNS}


class StoreUnavailable(RuntimeError):
    """The database cannot take a write right now; nothing was committed."""


@dataclass(frozen=True)
class Event:
    request_id: str
    gateway_request_id: str | None
    status: str | None
    payload: str | None
    error: str | None
    payload_error: str | None
    fal_user_id: str | None
    raw_body: bytes
    received_at: str
    flags: tuple[str, ...] = ()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class EventStore:
    """One connection shared by all request threads; writes are serialised by a lock."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if create:
            self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        elif not self.path.exists():
            raise FileNotFoundError(f"no event database at {self.path}")
        mode = "rwc" if create else "rw"
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            f"file:{self.path}?mode={mode}", uri=True,
            isolation_level=None,  # autocommit: each statement is its own transaction
            check_same_thread=False, timeout=10.0,
        )
        self._conn.row_factory = sqlite3.Row
        journal_mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if journal_mode.lower() != "wal":
            raise StoreUnavailable(f"{self.path}: cannot switch to WAL mode (got {journal_mode})")
        self._conn.execute("PRAGMA synchronous=FULL")
        if create:
            self._migrate()
        # Notice the database being deleted or replaced under us: writes would then
        # go to an unlinked file and be lost at the next restart.
        self._identity = _file_identity(self.path)
        self._last_write_error: str | None = None

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"{self.path}: schema version {version} is newer than this code ({SCHEMA_VERSION})"
            )
        if version < SCHEMA_VERSION:
            script = MIGRATE_FROM_V1 if version == 1 else SCHEMA
            self._conn.executescript(
                f"BEGIN; {script} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
            )

    def _check_file(self) -> None:
        if _file_identity(self.path) != self._identity:
            raise StoreUnavailable(f"{self.path} was removed or replaced while open")

    def add(self, event: Event) -> bool:
        """Commit the event; True if stored, False if its request_id was already stored."""
        with self._lock:
            self._check_file()
            try:
                cursor = self._conn.execute(
                    "INSERT INTO events (request_id, gateway_request_id, status, payload, error,"
                    " payload_error, fal_user_id, flags, received_at, raw_body)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (request_id) DO NOTHING",
                    (
                        event.request_id, event.gateway_request_id, event.status, event.payload,
                        event.error, event.payload_error, event.fal_user_id,
                        ",".join(event.flags), event.received_at, sqlite3.Binary(event.raw_body),
                    ),
                )
            except sqlite3.Error as exc:
                self._last_write_error = f"cannot store event: {exc}"
                raise StoreUnavailable(self._last_write_error) from exc
            self._last_write_error = None
            return cursor.rowcount == 1

    def check_ready(self) -> None:
        """Raise StoreUnavailable unless the next `add` can be expected to commit.

        Writes nothing (a health check polled every few seconds must not cost an fsync'd
        commit): the file is still ours, readable, writable, and the last write worked.
        """
        with self._lock:
            self._check_file()
            if self._last_write_error:
                raise StoreUnavailable(f"the last write failed: {self._last_write_error}")
            for path in (self.path, self.path.parent):
                if not os.access(path, os.W_OK):
                    raise StoreUnavailable(f"{path} is not writable")
            try:
                self._conn.execute("SELECT 1 FROM events LIMIT 1").fetchall()
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"database not readable: {exc}") from exc

    def recent(self, limit: int, status: str | None = None) -> list[dict]:
        """Newest first."""
        where, args = ("WHERE status = ?", [status]) if status else ("", [])
        rows = self._conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM events {where} ORDER BY id DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [dict(row) for row in rows]

    def all(self) -> Iterator[dict]:
        """Oldest first, streamed."""
        for row in self._conn.execute(f"SELECT {', '.join(COLUMNS)} FROM events ORDER BY id"):
            yield dict(row)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino
