"""`aisha-infra status`: the one-command read of a host (run here for real against a
real SQLite store and watch result), and how its facts become a row and problems."""

from __future__ import annotations

import datetime
import json
import sqlite3
import subprocess

from aisha_infra.deploy import paths
from aisha_infra.tools import status
from aisha_infra.deploy.settings import Settings

NOW = datetime.datetime.now(datetime.timezone.utc)


def local_runner(commands: list[str]):
    def run(command: str) -> tuple[int, str, str]:
        commands.append(command)
        result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
        return result.returncode, result.stdout, result.stderr

    return run


def iso(moment: datetime.datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def test_host_facts_in_one_command_from_the_store_and_the_watch(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db = sqlite3.connect(data_dir / "events.sqlite3")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, request_id TEXT, received_at TEXT)")
    rows = [
        ("old", iso(NOW - datetime.timedelta(days=3))),
        ("recent-1", iso(NOW - datetime.timedelta(hours=5))),
        ("recent-2", iso(NOW - datetime.timedelta(minutes=2))),
        ("diagnose-abc", iso(NOW - datetime.timedelta(minutes=1))),  # a test webhook: not a delivery
    ]
    db.executemany("INSERT INTO events (request_id, received_at) VALUES (?, ?)", rows)
    db.commit()
    last = tmp_path / "last.json"
    last.write_text(json.dumps({"time": NOW.timestamp(), "ok": True, "problems": [], "checks": {}}))
    monkeypatch.setattr(paths, "WATCH_LAST_RESULT_PATH", str(last))
    commands: list[str] = []

    facts = status.host_facts(local_runner(commands), Settings(aisha_domain="aibots.test", aisha_data_dir=str(data_dir)))

    assert len(commands) == 1  # one SSH round trip
    assert facts["deliveries"] == {"last": rows[2][1], "last_24h": 2}
    assert facts["watch"]["ok"] is True
    assert 0 < facts["disk_free_percent"] <= 100
    db.close()


def test_missing_store_and_watch_are_reported_as_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "WATCH_LAST_RESULT_PATH", str(tmp_path / "none.json"))
    facts = status.host_facts(local_runner([]), Settings(aisha_domain="aibots.test", aisha_data_dir=str(tmp_path)))
    assert facts["deliveries"] is None and facts["watch"] is None


def watch_result(age_seconds: float, problems=(), served_ok=True) -> dict:
    checks = {name: {"ok": name not in problems, "message": f"{name} message"} for name in ("certificate", "health", "certbot", "disk")}
    checks["served_matches"] = {"ok": served_ok, "message": "served message"}
    return {"time": NOW.timestamp() - age_seconds, "ok": not problems, "problems": list(problems), "checks": checks}


def facts(**overrides) -> dict:
    base = {
        "now": NOW.timestamp(),
        "app": {"ActiveState": "active", "NRestarts": "2", "ActiveEnterTimestamp": f"@{int(NOW.timestamp()) - 7200}"},
        "disk_free_percent": 40.0,
        "deliveries": {"last": "2026-11-28T10:00:00.000+00:00", "last_24h": 12},
        "watch": watch_result(60),
    }
    return {**base, **overrides}


def read(host_facts: dict, **settings) -> status.HostStatus:
    result = status.HostStatus("web-1", "aibots.test")
    status._read_host_facts(result, host_facts, Settings(aisha_domain="aibots.test", **settings))
    return result


def test_healthy_facts_fill_the_row_without_problems():
    row = read(facts())
    assert row.ok and row.app_restarts == 2 and 7200 <= row.app_uptime_seconds <= 7201 and row.deliveries_24h == 12
    assert row.served_is_live is True and row.watch == "OK (1m ago)"


def test_each_problem_is_named():
    row = read(facts(app={"ActiveState": "failed"}, disk_free_percent=4.0,
                     watch=watch_result(60, problems=["certbot", "disk"], served_ok=False)))
    assert "app: aisha-api is failed" in row.problems
    assert any(p.startswith("disk: 4.0 % free") for p in row.problems)
    assert "watch.certbot: certbot message" in row.problems
    assert not any(p.startswith("watch.disk") for p in row.problems)  # named once
    assert row.served_is_live is False and row.watch.startswith("ALERT certbot,disk")


def test_a_stale_or_missing_watch_is_a_problem():
    assert any("old" in p for p in read(facts(watch=watch_result(3600))).problems)
    assert read(facts(watch=watch_result(3600)), watch_interval_seconds=3600).ok
    assert any("no result yet" in p for p in read(facts(watch=None)).problems)
    assert read(facts(watch=None), watch_enabled=False).watch == "off"


def test_table_names_the_broken_host():
    good, bad = status.HostStatus("web-1", "d"), status.HostStatus("web-2", "d", problems=["http.health: 502"])
    text = status.render_table([good, bad])
    header = text.splitlines()[0].split()
    assert header[:4] == ["host", "health", "TLS", "issuer"] and "watch" in header
    assert "1 host(s) with problems:\n  web-2: http.health: 502" in text
    assert status.render_table([good]).endswith("all 1 host(s) OK")


def test_issuer_column_shows_the_cas_name():
    assert status._common_name("CN=R10,O=Let's Encrypt,C=US") == "R10"
    assert status._common_name("O=Corp,CN=Corp\\, Inc. CA") == "Corp\\, Inc. CA"
    assert status._common_name(None) == "-"
