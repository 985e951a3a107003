"""The on-host watch end to end: aisha-watch.timer on a real lab host alerts a receiver
on the lab's control side (the host's gateway address) when the served certificate is
older than the deployed one and when health fails, says when each is resolved, alerts
a failed certbot run, and exports metrics that curl scrapes on the host."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e.conftest import DOMAIN
from tests.e2e.deploylib import run_deploy, write_hosts_file
from tests.e2e.test_letsencrypt import Scenario

pytestmark = pytest.mark.e2e
INTERVAL = 10  # seconds between two checks in this test (the default is 300)
# One interval, plus the time a loaded machine takes to run the checker and post.
ALERT_WITHIN = INTERVAL + 20
CERT = "/opt/aisha-backend/ssl/aibots_test.crt"
KEY = "/opt/aisha-backend/ssl/aibots.test.key"


class Receiver:
    """A JSON webhook receiver on the host's gateway address (this machine's side)."""

    def __init__(self, address: str):
        self.alerts: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.alerts.append({"path": self.path, **json.loads(body)})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((address, 0), Handler)
        self.url = f"http://{address}:{self.server.server_address[1]}/hooks/T0KEN-secret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, check: str, state: str, after: int, timeout: float = ALERT_WITHIN) -> dict:
        """The first alert for `check` in `state` received after the first `after` alerts."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [a for a in self.alerts[after:] if a["check"] == check and a["state"] == state]
            if found:
                return found[0]
            time.sleep(0.5)
        raise AssertionError(f"no {state} alert for {check} within {timeout} s; received: {self.alerts}")

    def count(self) -> int:
        with self.lock:
            return len(self.alerts)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def watched(lab, tmp_path_factory):
    host = lab.add_hosts(count=1)[0]
    receiver = Receiver(host.gateway)
    try:
        data = {
            "watch_interval_seconds": INTERVAL,
            "alert_webhook_url": receiver.url,
            "alert_webhook_fields": {"chat_id": "42"},
            "metrics_enabled": True,
        }
        hosts_file = write_hosts_file(tmp_path_factory.mktemp("watch") / "hosts.json", [host], data=data)
        first = run_deploy(hosts_file).check()
        yield host, receiver, hosts_file, first
    finally:
        receiver.stop()
        lab.destroy_host(host.name)


def test_second_run_changes_nothing(watched):
    _, _, hosts_file, first = watched
    assert "Watch | Run aisha-watch.timer" in first.output
    run = run_deploy(hosts_file).check()
    assert run.totals["changed"] == 0, f"changed on re-run: {run.changed_operations}"


def test_healthy_host_reports_ok_and_no_alert(watched):
    host, receiver, _, _ = watched
    last = json.loads(host.run("cat /var/lib/aisha-watch/last.json").stdout)
    assert last["ok"], last
    assert last["checks"]["served_matches"]["file"] == CERT
    assert last["checks"]["certificate"]["days_left"] > 300
    assert receiver.count() == 0, receiver.alerts
    # The checker runs unprivileged; the URL (it holds a token) is readable by root only.
    assert host.run("stat -c %U /var/lib/aisha-watch/last.json").stdout.strip() == "aisha-watch"
    assert host.run("stat -c '%a %U' /etc/aisha-watch/alert-webhook-url").stdout.split() == ["600", "root"]
    assert "T0KEN" not in host.run("cat /etc/aisha-watch/config.json /etc/systemd/system/aisha-watch.service").stdout


def test_metrics_scraped_with_curl_on_the_host(watched):
    host, _, _, _ = watched
    host.run("command -v curl || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl",
             timeout=300)
    metrics = host.run("curl -sf --max-time 10 http://127.0.0.1:9100/metrics").stdout
    assert 'aisha_watch_check_ok{check="health"} 1' in metrics
    assert "aisha_certificate_days_left 3" in metrics  # 36x days: a fresh self-signed certificate
    assert "aisha_app_restarts 0" in metrics
    listeners = host.run("ss -Hltn 'sport = :9100'").stdout
    assert "127.0.0.1:9100" in listeners and "*:9100" not in listeners, listeners


def test_served_certificate_older_than_the_deployed_one_alerts(watched):
    host, receiver, _, _ = watched
    seen = receiver.count()
    # A renewed certificate on disk that nginx was not reloaded for.
    host.run(f"openssl req -x509 -new -key {KEY} -subj /CN={DOMAIN} -addext subjectAltName=DNS:{DOMAIN} "
             f"-days 365 -out {CERT}.new && cat {CERT}.new > {CERT} && rm {CERT}.new")
    alert = receiver.wait_for("served_matches", "alert", seen)
    assert alert["path"] == "/hooks/T0KEN-secret" and alert["chat_id"] == "42"
    assert alert["host"] and alert["domain"] == DOMAIN
    assert "not reloaded" in alert["message"] and alert["text"].startswith("[ALERT]")
    seen = receiver.count()
    host.run("systemctl reload nginx")
    receiver.wait_for("served_matches", "resolved", seen)


def test_failing_health_alerts_and_recovers(watched):
    host, receiver, _, _ = watched
    seen = receiver.count()
    host.run("systemctl stop aisha-api.socket aisha-api.service")
    try:
        alert = receiver.wait_for("health", "alert", seen)
        assert "502" in alert["message"], alert
    finally:
        host.run("systemctl start aisha-api.socket aisha-api.service")
    receiver.wait_for("health", "resolved", seen)


def test_turning_the_watch_off_stops_its_timer(watched):
    host, _, hosts_file, _ = watched
    data = json.loads(hosts_file.read_text())
    data[0]["data"]["watch_enabled"] = False
    off = hosts_file.with_name("hosts-watch-off.json")
    off.write_text(json.dumps(data))
    run = run_deploy(off).check()
    assert "Watch (off) | Stop aisha-watch.timer" in run.changed_operations
    assert host.run("systemctl is-active aisha-watch.timer", check=False).stdout.strip() == "inactive"
    assert host.run("systemctl is-enabled aisha-watch.timer", check=False).stdout.strip() == "disabled"
    assert run_deploy(off).check().totals["changed"] == 0

@pytest.fixture(scope="module")
def watched_letsencrypt(lab, tmp_path_factory):
    """A Let's Encrypt host (Pebble beside it) watched every INTERVAL seconds."""
    host = lab.add_hosts(count=1)[0]
    receiver = Receiver(host.gateway)
    scenario = Scenario(host, tmp_path_factory.mktemp("watch-le"))
    try:
        scenario.start_pebble()
        # node_exporter open to this machine only (the host's gateway address) through ufw
        scenario.overrides.update(watch_interval_seconds=INTERVAL, alert_webhook_url=receiver.url,
                                  metrics_enabled=True, metrics_allow_from=[host.gateway])
        scenario.deploy().check()
        yield host, receiver, scenario
    finally:
        receiver.stop()
        scenario.pebble.stop()
        lab.destroy_host(host.name)


def test_metrics_allowed_from_one_address_only(watched_letsencrypt):
    host, _, scenario = watched_letsencrypt
    rules = host.run("ufw status").stdout
    assert f"9100/tcp                   ALLOW       {host.gateway}" in rules, rules
    assert "9100/tcp                   ALLOW       Anywhere" not in rules
    with urllib.request.urlopen(f"http://{host.address}:9100/metrics", timeout=10) as response:
        assert 'aisha_watch_check_ok{check="served_matches"} 1' in response.read().decode()
    run = scenario.deploy().check()
    assert run.totals["changed"] == 0, f"changed on re-run: {run.changed_operations}"


def test_served_certificate_older_than_the_live_one_alerts(watched_letsencrypt):
    host, receiver, _ = watched_letsencrypt
    live = "/run/aisha-watch-live/cert.pem"
    # served == live at first; root copied only the public certificate for the watch
    last = json.loads(host.run("cat /var/lib/aisha-watch/last.json").stdout)
    assert last["checks"]["served_matches"] == {**last["checks"]["served_matches"], "ok": True, "file": live}
    assert host.run("ls /run/aisha-watch-live").stdout.split() == ["cert.pem"]
    seen = receiver.count()
    # Renewed, but without the deploy hook that reloads nginx: live is newer than served.
    host.run("REQUESTS_CA_BUNDLE=/etc/letsencrypt/aisha-acme-ca.pem certbot renew --force-renewal "
             "--no-directory-hooks --no-random-sleep-on-renew -q")
    alert = receiver.wait_for("served_matches", "alert", seen)
    assert live in alert["message"] and "not reloaded" in alert["message"]
    seen = receiver.count()
    host.run("systemctl reload nginx")
    receiver.wait_for("served_matches", "resolved", seen)


def test_failed_certbot_run_alerts(watched_letsencrypt):
    """certbot is installed in letsencrypt mode only."""
    host, receiver, _ = watched_letsencrypt
    assert "aisha-watch.service" in host.run("systemctl show -p OnFailure certbot.service").stdout
    seen = receiver.count()
    # certbot itself fails: a runtime drop-in (gone at reboot, removed below) replaces its command.
    dropin = "/run/systemd/system/certbot.service.d/zz-test-fail.conf"
    host.run(f"mkdir -p {dropin.rsplit('/', 1)[0]} && printf '[Service]\\nExecStart=\\nExecStart=/bin/false\\n' > {dropin} "
             "&& systemctl daemon-reload && (systemctl start certbot.service || true)")
    try:
        alert = receiver.wait_for("certbot", "alert", seen)
        assert "failed" in alert["message"]
    finally:
        host.run(f"rm -f {dropin} && systemctl daemon-reload && systemctl reset-failed certbot.service")
