"""The on-host checker (aisha_infra/deploy/onhost/aisha_watch.py) and the watch's units and
settings: expiry read from DER, served vs deployed file, alerts only on changes, a
failed alert retried and never fatal, metrics in Prometheus' text format."""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives import serialization

from aisha_infra.deploy import paths, rendering
from aisha_infra.deploy.onhost import aisha_watch
from aisha_infra.deploy.settings import SettingsError, build_settings
from tests.unit.certfactory import DAY, NOW, make_leaf, make_root, make_self_signed, write_pem

BASE = {"aisha_domain": "aibots.test"}


def der(issued) -> bytes:
    return issued.cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("not_after", [NOW + 3 * DAY, datetime.datetime(2051, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)])
def test_expiry_read_from_der_matches_cryptography(not_after):
    # 2051 is a GeneralizedTime, earlier dates a UTCTime.
    leaf = make_leaf(make_root(), not_before=NOW - DAY, not_after=not_after.replace(microsecond=0))
    assert aisha_watch.certificate_not_after(der(leaf)) == leaf.cert.not_valid_after_utc


def test_certificate_under_the_minimum_days_fails():
    leaf = make_leaf(make_root(), not_before=NOW - 80 * DAY, not_after=NOW + 10 * DAY)
    result = aisha_watch.certificate_result(der(leaf), 21, NOW.timestamp())
    assert not result["ok"] and round(result["days_left"]) == 10 and "under 21 days" in result["message"]
    assert aisha_watch.certificate_result(der(leaf), 5, NOW.timestamp())["ok"]


def test_served_certificate_compared_with_the_first_existing_file(tmp_path):
    served, renewed = make_self_signed(), make_self_signed()
    deployed = write_pem(tmp_path / "deployed.crt", served.pem)
    live = tmp_path / "live.pem"
    ok = aisha_watch.served_matches_result(der(served), [str(live), str(deployed)])
    assert ok["ok"] and ok["file"] == str(deployed)
    write_pem(live, renewed.pem)  # a newer certificate nginx was not reloaded for
    stale = aisha_watch.served_matches_result(der(served), [str(live), str(deployed)])
    assert not stale["ok"] and stale["file"] == str(live) and "not reloaded" in stale["message"]
    assert not aisha_watch.served_matches_result(der(served), [str(tmp_path / "none")])["ok"]
    assert not aisha_watch.served_matches_result(None, [str(deployed)])["ok"]


def test_disk_check_uses_the_threshold(tmp_path):
    free = aisha_watch.disk_result(str(tmp_path), 1)["free_percent"]
    assert aisha_watch.disk_result(str(tmp_path), int(free))["ok"]
    low = aisha_watch.disk_result(str(tmp_path), int(free) + 1)
    assert not low["ok"] and f"under {int(free) + 1} %" in low["message"]
    assert not aisha_watch.disk_result(str(tmp_path / "missing"), 10)["ok"]


def test_alerts_only_on_changes():
    results = {name: {"ok": True, "message": ""} for name in aisha_watch.ALERTED}
    assert aisha_watch.changes_to_alert(results, {}) == []  # first run, all fine: silence
    results["health"]["ok"] = False
    assert aisha_watch.changes_to_alert(results, {}) == [("health", False)]
    assert aisha_watch.changes_to_alert(results, {"health": False}) == []  # already alerted
    results["health"]["ok"] = True
    assert aisha_watch.changes_to_alert(results, {"health": False}) == [("health", True)]  # resolved


class FlakyReceiver:
    """Answers 500 `failures` times, then 200; records what it got."""

    def __init__(self, failures: int):
        self.failures, self.bodies = failures, []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                receiver.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(500 if len(receiver.bodies) <= receiver.failures else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_failed_alert_is_retried_then_delivered():
    receiver = FlakyReceiver(failures=2)
    try:
        assert aisha_watch.post_alert(receiver.url, {"text": "x"}, attempts=3, pause=0) is None
        assert len(receiver.bodies) == 3
    finally:
        receiver.close()


def test_undelivered_alert_is_kept_for_the_next_run(tmp_path, monkeypatch, capsys):
    receiver = FlakyReceiver(failures=100)
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / aisha_watch.ALERT_CREDENTIAL).write_text(receiver.url + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    monkeypatch.setattr(aisha_watch, "ALERT_PAUSE_SECONDS", 0)
    results = {name: {"ok": True, "message": "fine"} for name in aisha_watch.ALERTED}
    results["disk"] = {"ok": False, "message": "2 % free"}
    config = {"host": "h1", "domain": "aibots.test", "alert_fields": {"chat_id": "7"}}
    try:
        aisha_watch.send_alerts(config, results, tmp_path, 0.0)
        assert json.loads((tmp_path / "notified.json").read_text()) == {}  # not delivered: not recorded
        assert "not delivered (HTTP 500" in capsys.readouterr().err
        assert receiver.url not in capsys.readouterr().err  # the token never reaches the log
        receiver.failures = 0
        aisha_watch.send_alerts(config, results, tmp_path, 0.0)
        assert json.loads((tmp_path / "notified.json").read_text()) == {"disk": False}
        last = receiver.bodies[-1]
        assert (last["chat_id"], last["check"], last["state"]) == ("7", "disk", "alert")
        assert last["text"] == "[ALERT] h1 (aibots.test) disk: 2 % free"
    finally:
        receiver.close()


def test_unreachable_receiver_does_not_raise():
    # Port 9 on loopback: nothing listens, the connection is refused at once.
    assert "refused" in aisha_watch.post_alert("http://127.0.0.1:9/x", {}, attempts=2, pause=0).lower()


def test_metrics_are_prometheus_text():
    results = {
        "certificate": {"ok": True, "days_left": 80.5},
        "served_matches": {"ok": False},
        "health": {"ok": True},
        "certbot": {"ok": True},
        "disk": {"ok": True, "free_percent": 55.0},
        "app": {"ok": True, "restarts": 3, "active_since": 1700000000.0},
    }
    text = aisha_watch.metrics_text(results, 1700000100.0)
    assert 'aisha_watch_check_ok{check="served_matches"} 0' in text
    assert "aisha_certificate_days_left 80.5\n" in text and "aisha_disk_free_ratio 0.55\n" in text
    assert "aisha_app_restarts 3\n" in text and "# TYPE aisha_app_restarts gauge" in text
    if shutil.which("promtool"):
        assert subprocess.run(["promtool", "check", "metrics"], input=text, text=True).returncode == 0


def test_units_pass_systemd_analyze_verify(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    settings = build_settings({**BASE, "tls_mode": "letsencrypt", "letsencrypt_email": "a@b.org",
                               "alert_webhook_url": "https://hooks.slack.com/services/T/B/x"})
    service = rendering.render("systemd/aisha-watch.service.j2", rendering.watch_service_context(settings))
    timer = rendering.render("systemd/aisha-watch.timer.j2", rendering.watch_timer_context(settings))
    assert "LoadCredential=alert-webhook-url:/etc/aisha-watch/alert-webhook-url" in service
    assert "hooks.slack.com" not in service
    assert "/etc/letsencrypt/live/aibots.test/cert.pem" in service and "privkey" not in service
    assert "OnUnitActiveSec=300s" in timer
    (tmp_path / "aisha-watch.service").write_text(service.replace(paths.WATCH_SCRIPT_PATH, aisha_watch.__file__))
    (tmp_path / "aisha-watch.timer").write_text(timer)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "aisha-watch.timer"),
                             str(tmp_path / "aisha-watch.service")], capture_output=True, text=True)
    ours = [line for line in result.stderr.splitlines() if "aisha-watch" in line]
    assert result.returncode == 0 and not ours, result.stderr


def test_watch_config_holds_no_secret_and_prefers_the_live_certificate():
    settings = build_settings({**BASE, "tls_mode": "letsencrypt", "letsencrypt_email": "a@b.org",
                               "alert_webhook_url": "https://api.telegram.org/bot123:SECRET/sendMessage"})
    config = rendering.watch_config(settings, "web-1")
    assert "SECRET" not in json.dumps(config)
    assert config["expected_certificates"] == ["/run/aisha-watch-live/cert.pem", settings.selfsigned_cert_path]
    assert rendering.node_exporter_context(settings)["listen"] == "127.0.0.1:9100"


@pytest.mark.parametrize(
    "override, key, words",
    [
        ({"watch_interval_seconds": 5}, "watch_interval_seconds", "from 10 to 86400"),
        ({"watch_disk_min_free_percent": 0}, "watch_disk_min_free_percent", "from 1 to 99"),
        ({"alert_webhook_url": "hooks.slack.com/x"}, "alert_webhook_url", "not an http(s) URL"),
        ({"alert_webhook_fields": ["chat_id"]}, "alert_webhook_fields", "not a mapping"),
        ({"metrics_enabled": True, "metrics_allow_from": ["203.0.113.300"]}, "metrics_allow_from", "not an IP address"),
        ({"metrics_enabled": True, "metrics_allow_from": ["0.0.0.0/0"]}, "metrics_allow_from", "everyone"),
        ({"metrics_allow_from": ["203.0.113.7"]}, "metrics_allow_from", "needs metrics_enabled"),
        ({"metrics_enabled": True, "metrics_allow_from": ["203.0.113.7"], "firewall_enabled": False},
         "metrics_allow_from", "needs firewall_enabled"),
        ({"watch_intervall_seconds": 60}, "watch_intervall_seconds", "did you mean 'watch_interval_seconds'"),
    ],
)
def test_bad_watch_settings_are_rejected(override, key, words):
    with pytest.raises(SettingsError) as error:
        build_settings({**BASE, **override})
    assert f"{key}: " in str(error.value) and words in str(error.value)


def test_metrics_allow_from_opens_only_those_addresses():
    from aisha_infra.tasks.watch import metrics_firewall_rules

    settings = build_settings({**BASE, "metrics_enabled": True, "metrics_allow_from": ["203.0.113.7", "2001:db8::/64"]})
    assert metrics_firewall_rules(settings) == [
        "allow from 203.0.113.7 to any port 9100 proto tcp",
        "allow from 2001:db8::/64 to any port 9100 proto tcp",
    ]
    assert rendering.node_exporter_context(settings)["listen"] == ":9100"


def test_a_bad_alert_url_is_refused_without_repeating_its_token():
    with pytest.raises(SettingsError) as error:
        build_settings({**BASE, "alert_webhook_url": "https://api.telegram.org/bot123:T0KEN/send Message"})
    assert "alert_webhook_url: contains ' ': percent-encode them" in str(error.value)
    assert "T0KEN" not in str(error.value)
    with pytest.raises(SettingsError) as error:
        build_settings({**BASE, "alert_webhook_fields": {"chat_id": {1, 2}}})
    assert "cannot be sent as JSON" in str(error.value)
