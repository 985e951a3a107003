"""Issue 14 (and 13, item 8) on the shared deployed host: the manual runbook's checks and
troubleshooting steps, typed as an operator would, work on a fresh deploy and show the
delivery just sent. (curl gets --resolve only because the lab has no DNS.)"""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from tests.e2e import client
from tests.e2e.conftest import DOMAIN

pytestmark = pytest.mark.e2e

PORT = 8443
URL = f"https://{DOMAIN}:{PORT}/api/v1/avatar/status_update"
EXPORT = (
    "cd /opt/aisha-backend/app && AISHA_DATA_DIR=/var/lib/aisha "
    "/opt/aisha-backend/venv/bin/python -m aisha_webhook_api events export --format jsonl"
)
# The runbook's two checks, verbatim after the URL.
RUNBOOK_CHECKS = (
    ["-H", "Content-Type: application/json", "-d", '{"test": true}'],
    ["-H", "Content-Type: application/json",
     "-d", '{"request_id": "test-123", "status": "completed", "result": {"test": true}}'],
)


def curl(deployed_host, *args: str, user_agent: str) -> tuple[int, str]:
    """`curl -k -X POST <URL> ...` from the control machine: (HTTP status, body)."""
    result = subprocess.run(
        ["curl", "-k", "-sS", "--max-time", "20", "--resolve", f"{DOMAIN}:{PORT}:{deployed_host.address}",
         "-A", user_agent, "-w", "\n%{http_code}", "-X", "POST", URL, *args],
        capture_output=True, text=True, timeout=30, check=True,
    )
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


def events(deployed_host) -> list[dict]:
    return [json.loads(line) for line in deployed_host.host.run(EXPORT).stdout.splitlines() if line]


@pytest.fixture(scope="module")
def runbook_deliveries(deployed_host):
    """Both runbook checks sent once: [(user agent, status, reply)]."""
    sent = []
    for check in RUNBOOK_CHECKS:
        user_agent = f"runbook-{uuid.uuid4()}"
        status, body = curl(deployed_host, *check, user_agent=user_agent)
        sent.append((user_agent, status, json.loads(body)))
    return sent


def test_runbook_checks_answer_2xx_and_are_stored_flagged(deployed_host, runbook_deliveries):
    [(_, status_1, reply_1), (_, status_2, reply_2)] = runbook_deliveries
    assert (status_1, reply_1["stored"]) == (200, True), reply_1
    assert reply_1["flags"] == ["unsigned", "request_id_generated", "unknown_status"]
    assert (status_2, reply_2) == (200, {"stored": True, "request_id": "test-123",
                                         "flags": ["unsigned", "unknown_status"]})

    stored = {event["request_id"]: event for event in events(deployed_host)}
    first, second = stored[reply_1["request_id"]], stored["test-123"]
    assert json.loads(first["raw_body"]) == {"test": True} and first["flags"] == reply_1["flags"]
    assert second["status"] == "completed" and second["flags"] == ["unsigned", "unknown_status"]


def test_journal_has_one_line_per_delivery(deployed_host, runbook_deliveries):
    journal = deployed_host.host.run("journalctl -u aisha-api.service --no-pager -n 200").stdout
    generated = runbook_deliveries[0][2]["request_id"]
    [line] = [line for line in journal.splitlines() if f"request_id={generated} " in line]
    assert '"POST /api/v1/avatar/status_update HTTP/1.1" 200' in line
    assert "stored" in line and "status=null flags=unsigned,request_id_generated,unknown_status" in line
    [line] = [line for line in journal.splitlines() if "request_id=test-123 " in line]
    assert "stored request_id=test-123 status=completed flags=unsigned,unknown_status" in line


def test_access_log_has_each_delivery(deployed_host, runbook_deliveries):
    log = deployed_host.host.run("tail -n 200 /var/log/aisha/webhook_access.log").stdout
    for user_agent, _, _ in runbook_deliveries:
        [line] = [line for line in log.splitlines() if user_agent in line]
        assert '"POST /api/v1/avatar/status_update HTTP/' in line and '" 200 ' in line  # curl speaks h2


def test_nginx_error_log_shows_a_refused_delivery(deployed_host, tmp_path):
    """A body over app_max_body_bytes is refused by nginx (413), which says so in
    /var/log/nginx/error.log, where the runbook looks."""
    marker = f"too-large-{uuid.uuid4()}"
    body = tmp_path / "too-large.json"
    body.write_text(json.dumps({"request_id": marker, "pad": "x" * (2 * 1024 * 1024)}))
    count = "grep -c 'client intended to send too large body' /var/log/nginx/error.log || true"
    before = int(deployed_host.host.run(count).stdout)
    status, _ = curl(deployed_host, "-H", "Content-Type: application/json", "--data-binary", f"@{body}",
                     user_agent=marker)
    assert status == 413
    log = deployed_host.host.run("tail -n 50 /var/log/nginx/error.log").stdout
    assert int(deployed_host.host.run(count).stdout) == before + 1
    assert 'request: "POST /api/v1/avatar/status_update HTTP/' in log
    assert marker not in {event["request_id"] for event in events(deployed_host)}


def test_ufw_status_lists_8443(deployed_host):
    status = deployed_host.host.run("ufw status").stdout
    assert "Status: active" in status
    assert any(line.startswith("8443/tcp") and "ALLOW" in line for line in status.splitlines()), status


def test_checks_of_deploy_and_diagnose_are_not_stored(deployed_host):
    """The deploy's own verification posted its probe (the first run said so); the app
    answered it without storing it."""
    assert "Webhook POST OK" in deployed_host.first_run.output
    assert "(request_id aisha-probe-" in deployed_host.first_run.output
    assert not [e for e in events(deployed_host) if e["request_id"].startswith(("aisha-probe-", "diagnose-"))]
    journal = deployed_host.host.run("journalctl -u aisha-api.service --no-pager -n 500").stdout
    assert "probe request_id=aisha-probe-" in journal and "not stored (X-Aisha-Probe)" in journal


def test_health_writes_nothing_and_answers_are_neither_compressed_nor_sniffed(deployed_host):
    wal = "stat -c '%s %Y' /var/lib/aisha/events.sqlite3 /var/lib/aisha/events.sqlite3-wal"
    before = deployed_host.host.run(wal).stdout
    with client.pool(deployed_host.address, DOMAIN, PORT, str(deployed_host.cert_pem)) as pool:
        for _ in range(5):
            health = client.request(pool, "GET", "/health", DOMAIN, PORT, headers={"Accept-Encoding": "gzip"})
            assert health.status == 200 and health.headers["X-Content-Type-Options"] == "nosniff"
        # nginx's own error page: Debian's nginx.conf would gzip it (BREACH)
        missing = client.request(pool, "GET", "/nothing-here", DOMAIN, PORT, headers={"Accept-Encoding": "gzip"})
    assert missing.status == 404 and "Content-Encoding" not in missing.headers
    assert missing.headers["X-Content-Type-Options"] == "nosniff"
    assert deployed_host.host.run(wal).stdout == before
