"""Durable, deduplicated event store: one SQLite database in WAL mode, synchronous=FULL.

`EventStore.add` returns only after the row is committed and the WAL fsync'd, so the
server can acknowledge an event the moment `add` returns. A delivery whose request_id
is already stored is reported as a duplicate and not written again (fal retries a
webhook up to 10 times over 2 hours).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id                 INTEGER PRIMARY KEY,
    request_id         TEXT    NOT NULL UNIQUE,
    gateway_request_id TEXT,
    status             TEXT    NOT NULL CHECK (status IN ('OK', 'ERROR')),
    payload            TEXT,             -- JSON text of the "payload" field, NULL if null/absent
    error              TEXT,
    payload_error      TEXT,
    fal_user_id        TEXT,             -- from a verified signature, else NULL
    received_at        TEXT    NOT NULL, -- ISO 8601, UTC
    raw_body           BLOB    NOT NULL  -- the delivery exactly as received
);
CREATE INDEX IF NOT EXISTS events_status ON events (status, id);
-- one row, rewritten by every health check to prove a commit still reaches the disk
CREATE TABLE IF NOT EXISTS health_probe (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at TEXT NOT NULL
);
"""

COLUMNS = (
    "id", "request_id", "gateway_request_id", "status", "payload", "error",
    "payload_error", "fal_user_id", "received_at", "raw_body",
)


class StoreUnavailable(RuntimeError):
    """The database cannot take a write right now; nothing was committed."""


@dataclass(frozen=True)
class Event:
    request_id: str
    gateway_request_id: str | None
    status: str
    payload: str | None
    error: str | None
    payload_error: str | None
    fal_user_id: str | None
    raw_body: bytes
    received_at: str


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

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"{self.path}: schema version {version} is newer than this code ({SCHEMA_VERSION})"
            )
        if version < SCHEMA_VERSION:
            self._conn.executescript(
                f"BEGIN; {SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
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
                    " payload_error, fal_user_id, received_at, raw_body)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (request_id) DO NOTHING",
                    (
                        event.request_id, event.gateway_request_id, event.status, event.payload,
                        event.error, event.payload_error, event.fal_user_id, event.received_at,
                        sqlite3.Binary(event.raw_body),
                    ),
                )
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot store event: {exc}") from exc
            return cursor.rowcount == 1

    def check_writable(self) -> None:
        """Raise StoreUnavailable unless a commit reaches the database file right now."""
        with self._lock:
            self._check_file()
            try:
                self._conn.execute(
                    "INSERT INTO health_probe (id, checked_at) VALUES (1, ?)"
                    " ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                    (utc_now(),),
                )
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"database not writable: {exc}") from exc

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
