"""Command line: `serve` (the default) and `events list|export` over the same database.

    python -m aisha_webhook_api [serve]
    python -m aisha_webhook_api events list [--limit N] [--status STATUS]
    python -m aisha_webhook_api events export [--format jsonl] [--output FILE]
    python -m aisha_webhook_api events snapshot|verify|keep|prune ...  (backups: see backup.py)

Every command reads its settings from the environment (see config.SETTINGS).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
from pathlib import Path
from typing import TextIO

from aisha_webhook_api import __version__, backup
from aisha_webhook_api.config import SETTINGS, ConfigError, Settings
from aisha_webhook_api.store import EventStore, StoreUnavailable

log = logging.getLogger("aisha_webhook_api")

# logging level -> syslog priority, understood by journald as a "<N>" line prefix
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                    logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


def configure_logging() -> None:
    """One line per record on stderr; journald (JOURNAL_STREAM set) also gets the priority."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aisha_webhook_api",
        description="Aisha Bot fal webhook receiver.",
        epilog="environment:\n" + "\n".join(
            f"  {key:<30} {doc} (default: {default or 'unset'})"
            for key, (default, doc) in SETTINGS.items()
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the HTTP server (the default)")

    events = commands.add_parser("events", help="read stored webhook events")
    events_commands = events.add_subparsers(dest="events_command", required=True)
    listing = events_commands.add_parser("list", help="newest events first, one per line")
    listing.add_argument("--limit", type=_positive_int, default=20, help="at most N events (20)")
    listing.add_argument("--status", help="only events with this status (fal sends OK or ERROR)")
    export = events_commands.add_parser("export", help="every event, oldest first, as JSON lines")
    export.add_argument("--format", choices=("jsonl",), default="jsonl")
    export.add_argument("--output", help="file to write instead of stdout")
    add_backup_commands(events_commands)
    return parser


def add_backup_commands(events_commands) -> None:
    snapshot = events_commands.add_parser(
        "snapshot", help="consistent copy of the database (SQLite online backup), safe while serving")
    snapshot.add_argument("--output", required=True, help="new file to write (mode 0600)")
    verify = events_commands.add_parser(
        "verify", help="check a snapshot: SQLite, integrity_check ok, this backend's schema")
    verify.add_argument("snapshot")
    keep = events_commands.add_parser(
        "keep", help="copy a snapshot into a private directory and keep only the newest N")
    keep.add_argument("snapshot")
    keep.add_argument("--into", required=True, help="directory of kept snapshots (made 0700)")
    keep.add_argument("--keep", type=_positive_int, required=True, help="snapshots to keep")
    prune = events_commands.add_parser("prune", help="delete events older than N days")
    prune.add_argument("--older-than-days", type=_positive_int, required=True)


def run_backup_file_command(args: argparse.Namespace) -> int:
    """`verify` and `keep`: commands on snapshot files, not on the live database."""
    path = Path(args.snapshot)
    if args.events_command == "verify":
        problem = backup.snapshot_problem(path)
        if problem:
            log.error("%s is not a usable event snapshot: %s", path, problem)
            return 1
        print(f"{path}: ok, {backup.count_events(path)} events")
        return 0
    kept = backup.keep_snapshot(path, Path(args.into), args.keep)
    log.info("kept snapshot %s (newest %d kept in %s)", kept, args.keep, args.into)
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        settings = Settings.from_env()
        if args.command in (None, "serve"):
            from aisha_webhook_api.server import serve

            return serve(settings)
        if args.events_command in ("verify", "keep"):
            return run_backup_file_command(args)
        return run_events(args, settings)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    except (OSError, sqlite3.Error, StoreUnavailable, backup.SnapshotError) as exc:
        log.error("failed: %s", exc)
        return 1


def run_events(args: argparse.Namespace, settings: Settings) -> int:
    path = settings.database_path
    if not path.exists():
        log.error("no event database at %s (AISHA_DATA_DIR=%s)", path, settings.data_dir)
        return 1
    # opened before dropping root, so root can still export into its own directories
    exporting_to_file = args.events_command == "export" and args.output
    output = open(args.output, "w", encoding="utf-8") if exporting_to_file else None
    _become_owner_of(path)
    if args.events_command == "snapshot":
        events = backup.snapshot(path, Path(args.output))
        log.info("snapshot of %s written to %s: %d events", path, args.output, events)
        return 0
    if args.events_command == "prune":
        removed = backup.prune(path, args.older_than_days)
        log.info("pruned %d events older than %d days from %s", removed, args.older_than_days, path)
        return 0
    store = EventStore(path, create=False)
    try:
        if args.events_command == "list":
            print_list(store.recent(args.limit, args.status), sys.stdout)
        else:
            write_jsonl(store, output or sys.stdout)
    finally:
        store.close()
        if output:
            output.close()
    return 0


def _become_owner_of(path) -> None:
    """Run as the database's owner when started as root.

    Opening a WAL database can create its -wal/-shm files; created by root, the service
    user could no longer open the database.
    """
    owner = os.stat(path)
    if os.geteuid() != 0 or owner.st_uid == 0:
        return
    os.setgroups([])
    os.setgid(owner.st_gid)
    os.setuid(owner.st_uid)


def print_list(events: list[dict], out: TextIO) -> None:
    out.write("ID\tRECEIVED_AT\tSTATUS\tREQUEST_ID\tGATEWAY_REQUEST_ID\tFLAGS\tERROR\n")
    for event in events:
        cells = [str(event["id"]), event["received_at"], event["status"], event["request_id"],
                 event["gateway_request_id"], event["flags"], (event["error"] or "")[:120]]
        out.write("\t".join(_cell(cell) for cell in cells) + "\n")


def _cell(value: str | None) -> str:
    """One TSV cell: a sender's tabs or newlines cannot shift columns or lines."""
    return " ".join((value or "").split()) or "-"


def write_jsonl(store: EventStore, out: TextIO) -> None:
    for event in store.all():
        event["payload"] = None if event["payload"] is None else json.loads(event["payload"])
        event["raw_body"] = bytes(event["raw_body"]).decode("utf-8", errors="replace")
        event["flags"] = event["flags"].split(",") if event["flags"] else []
        out.write(json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n")
