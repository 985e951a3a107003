#!/usr/bin/python3
"""aisha-watch: check this webhook host from itself and report changes.

Run by aisha-watch.timer as the unprivileged user aisha-watch (standard library only):
`aisha_watch.py CONFIG.json`. It checks, over localhost with the site's SNI name, the
served certificate (days left; the same as the deployed or live certificate), GET
/health (which stores nothing), certbot.service's last result, free space for the data
directory and aisha-api's restart count. It then writes
- last.json: every result, read by `aisha-infra status`;
- aisha.prom: the same as Prometheus metrics, for node_exporter's textfile collector;
- alerts: one JSON POST per check whose state changed since the last alert delivered
  (a failed delivery is logged and tried again on the next run).
A problem found is reported, not an error: the program exits 0 unless it cannot run at all.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HEALTH_PATH = "/health"
NETWORK_TIMEOUT = 10
ALERT_ATTEMPTS = 3
ALERT_PAUSE_SECONDS = 2
ALERT_CREDENTIAL = "alert-webhook-url"
# Checks whose failure is alerted, in report order; "app" is information only.
ALERTED = ("certificate", "served_matches", "health", "certbot", "disk")


def check_all(config: dict, now: float) -> dict:
    """{check: {"ok": bool, "message": str, ...values}} for every check."""
    results = {}
    served_der = None
    try:
        served_der = served_certificate(config["https_port"], config["domain"])
    except (OSError, ssl.SSLError) as exc:
        results["certificate"] = {"ok": False, "message": f"no certificate served on localhost:{config['https_port']}: {exc}"}
    if served_der is not None:
        results["certificate"] = certificate_result(served_der, config["certificate_min_days"], now)
    results["served_matches"] = served_matches_result(served_der, config["expected_certificates"])
    results["health"] = health_result(config["https_port"], config["domain"])
    results["certbot"] = certbot_result()
    results["disk"] = disk_result(config["data_dir"], config["disk_min_free_percent"])
    results["app"] = app_result()
    return results


# --- the checks -----------------------------------------------------------------------------


def served_certificate(port: int, domain: str) -> bytes:
    """The leaf certificate nginx sends for `domain` (DER). Not verified here: it is
    compared with the deployed file instead."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=NETWORK_TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname=domain) as tls:
            return tls.getpeercert(binary_form=True)


def certificate_result(der: bytes, min_days: int, now: float) -> dict:
    not_after = certificate_not_after(der)
    days_left = (not_after.timestamp() - now) / 86400
    ok = days_left >= min_days
    message = f"the served certificate expires {not_after:%Y-%m-%d} ({days_left:.0f} days left)"
    if not ok:
        message += f", under {min_days} days: renew it (`certbot renew`, or re-run the deploy)"
    return {"ok": ok, "message": message, "days_left": round(days_left, 2), "not_after": not_after.isoformat()}


def served_matches_result(served_der: bytes | None, expected_paths: list[str]) -> dict:
    """Is the served leaf the first certificate of the first expected file that exists
    (Let's Encrypt's live certificate, else the deployed self-signed one)?"""
    if served_der is None:
        return {"ok": False, "message": "nothing served to compare"}
    for path in expected_paths:
        try:
            pem = Path(path).read_text()
        except FileNotFoundError:
            continue
        except OSError as exc:
            return {"ok": False, "message": f"cannot read {path}: {exc}"}
        start = pem.find("-----BEGIN CERTIFICATE-----")
        end = pem.find("-----END CERTIFICATE-----", start)
        if start < 0 or end < 0:
            return {"ok": False, "message": f"{path} holds no certificate"}
        expected = ssl.PEM_cert_to_DER_cert(pem[start : end + len("-----END CERTIFICATE-----")])
        if served_der == expected:
            return {"ok": True, "message": f"the served certificate is the one in {path}", "file": path}
        return {
            "ok": False,
            "file": path,
            "message": f"nginx serves another certificate than {path} (expires "
            f"{certificate_not_after(served_der):%Y-%m-%d}; the file: {certificate_not_after(expected):%Y-%m-%d}): "
            "it was not reloaded after the file changed: `nginx -t && systemctl reload nginx`",
        }
    return {"ok": False, "message": f"none of the expected certificate files exists: {', '.join(expected_paths)}"}


def health_result(port: int, domain: str) -> dict:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the certificate is checked on its own, above
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=NETWORK_TIMEOUT) as raw:
            with context.wrap_socket(raw, server_hostname=domain) as tls:
                request = f"GET {HEALTH_PATH} HTTP/1.1\r\nHost: {domain}\r\nConnection: close\r\n\r\n"
                tls.sendall(request.encode())
                response = b""
                while len(response) < 65536:
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    response += chunk
    except (OSError, ssl.SSLError) as exc:
        return {"ok": False, "message": f"GET {HEALTH_PATH} failed: {exc}"}
    seconds = round(time.monotonic() - started, 3)
    head, _, body = response.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ")
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    try:
        healthy = json.loads(body.decode()).get("status") == "healthy"
    except (ValueError, AttributeError):
        healthy = False  # chunked or not JSON: the bundled app sends neither
    if status == 200 and healthy:
        return {"ok": True, "message": f"GET {HEALTH_PATH} answered 200 healthy in {seconds} s", "status": status}
    return {
        "ok": False,
        "status": status,
        "message": f"GET {HEALTH_PATH} answered {status_line or 'nothing'}: `systemctl status aisha-api` and "
        "`journalctl -u aisha-api -n 50` say why",
    }


def certbot_result() -> dict:
    unit = systemctl_show("certbot.service", ("LoadState", "Result", "ExecMainExitTimestamp"))
    if unit.get("LoadState") != "loaded":
        return {"ok": True, "message": "certbot is not installed", "result": None}
    result = unit.get("Result", "")
    last_run = _unix_time(unit.get("ExecMainExitTimestamp", ""))
    if result == "success":
        return {"ok": True, "message": "certbot.service's last run succeeded", "result": result, "last_run": last_run}
    return {
        "ok": False,
        "result": result,
        "last_run": last_run,
        "message": f"certbot.service's last run failed ({result}): `journalctl -u certbot -n 50` says why; "
        "renewal is retried twice a day by certbot.timer",
    }


def disk_result(path: str, min_free_percent: int) -> dict:
    try:
        stats = os.statvfs(path)
    except OSError as exc:
        return {"ok": False, "message": f"cannot read free space of {path}: {exc}"}
    free_percent = 100.0 * stats.f_bavail / stats.f_blocks if stats.f_blocks else 0.0
    free_bytes = stats.f_bavail * stats.f_frsize
    ok = free_percent >= min_free_percent
    message = f"{free_percent:.1f} % ({free_bytes / 2**30:.2f} GiB) free for {path}"
    if not ok:
        message += f", under {min_free_percent} %: free space before the event store cannot write"
    return {"ok": ok, "message": message, "free_percent": round(free_percent, 2), "free_bytes": free_bytes}


def app_result() -> dict:
    unit = systemctl_show("aisha-api.service", ("ActiveState", "NRestarts", "ActiveEnterTimestamp"))
    restarts = int(unit["NRestarts"]) if unit.get("NRestarts", "").isdigit() else None
    active_since = _unix_time(unit.get("ActiveEnterTimestamp", ""))
    state = unit.get("ActiveState", "unknown")
    return {
        "ok": state == "active",
        "message": f"aisha-api is {state}, restarted {restarts} time(s) by systemd",
        "state": state,
        "restarts": restarts,
        "active_since": active_since if state == "active" else None,
    }


def systemctl_show(unit: str, properties: tuple[str, ...]) -> dict[str, str]:
    command = ["systemctl", "show", unit, "--timestamp=unix", *(f"--property={p}" for p in properties)]
    try:
        output = subprocess.run(command, capture_output=True, text=True, timeout=NETWORK_TIMEOUT, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def _unix_time(value: str) -> float | None:
    return float(value[1:]) if value.startswith("@") and value[1:].isdigit() else None


# --- the certificate's expiry, from DER (the standard library has no X.509 parser) -----------


def _der_items(data: bytes, start: int, end: int):
    """(tag, content start, content end) of each DER element between start and end."""
    position = start
    while position < end:
        tag = data[position]
        length = data[position + 1]
        position += 2
        if length & 0x80:
            count = length & 0x7F
            length = int.from_bytes(data[position : position + count], "big")
            position += count
        yield tag, position, position + length
        position += length


def certificate_not_after(der: bytes) -> datetime.datetime:
    """notAfter of an X.509 certificate: Certificate > tbsCertificate > validity."""
    _, cert_start, cert_end = next(_der_items(der, 0, len(der)))
    _, tbs_start, tbs_end = next(_der_items(der, cert_start, cert_end))
    fields = list(_der_items(der, tbs_start, tbs_end))
    if fields[0][0] == 0xA0:  # [0] version is optional
        fields = fields[1:]
    _, validity_start, validity_end = fields[3]  # serial, signature, issuer, validity
    times = list(_der_items(der, validity_start, validity_end))
    tag, start, end = times[1]
    text = der[start:end].decode("ascii")
    layout = "%y%m%d%H%M%SZ" if tag == 0x17 else "%Y%m%d%H%M%SZ"  # UTCTime or GeneralizedTime
    return datetime.datetime.strptime(text, layout).replace(tzinfo=datetime.timezone.utc)


# --- results: last.json, metrics, alerts --------------------------------------------------------


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def metrics_text(results: dict, now: float) -> str:
    lines = [
        "# HELP aisha_watch_check_ok 1 when the watch's check passes, 0 when it fails.",
        "# TYPE aisha_watch_check_ok gauge",
    ]
    lines += [f'aisha_watch_check_ok{{check="{name}"}} {int(result["ok"])}' for name, result in results.items()]
    values = [
        ("aisha_certificate_days_left", "Days until the served certificate expires.", results["certificate"].get("days_left")),
        ("aisha_disk_free_ratio", "Free share of the data directory's file system.",
         None if results["disk"].get("free_percent") is None else results["disk"]["free_percent"] / 100),
        ("aisha_app_restarts", "Times systemd restarted aisha-api (NRestarts).", results["app"].get("restarts")),
        ("aisha_app_active_since_timestamp_seconds", "When aisha-api last became active.", results["app"].get("active_since")),
        ("aisha_watch_last_run_timestamp_seconds", "When the watch last ran.", now),
    ]
    for name, help_text, value in values:
        if value is not None:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
    return "\n".join(lines) + "\n"


def changes_to_alert(results: dict, notified: dict) -> list[tuple[str, bool]]:
    """(check, ok) for each alerted check whose state differs from the last alert
    delivered; a check never alerted before counts as having been ok."""
    return [(name, results[name]["ok"]) for name in ALERTED if name in results and results[name]["ok"] != notified.get(name, True)]


def alert_payload(host: str, domain: str, check: str, result: dict, fields: dict, now: float) -> dict:
    state = "resolved" if result["ok"] else "alert"
    icon = "OK" if result["ok"] else "ALERT"
    return {
        **fields,
        "text": f"[{icon}] {host} ({domain}) {check}: {result['message']}",
        "host": host,
        "domain": domain,
        "check": check,
        "state": state,
        "message": result["message"],
        "time": datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(),
    }


def post_alert(url: str, payload: dict, attempts: int = ALERT_ATTEMPTS, pause: float = ALERT_PAUSE_SECONDS) -> str | None:
    """POST `payload` as JSON; None when delivered, else the last error (after `attempts` tries)."""
    body = json.dumps(payload).encode()
    error = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(pause * attempt)
        request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=NETWORK_TIMEOUT) as response:
                response.read(65536)
            return None
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code} {exc.reason}"
        except (OSError, ValueError) as exc:
            error = str(getattr(exc, "reason", None) or exc)
    return error


def send_alerts(config: dict, results: dict, state_dir: Path, now: float) -> None:
    notified_file = state_dir / "notified.json"
    try:
        notified = json.loads(notified_file.read_text())
    except (FileNotFoundError, ValueError):
        notified = {}
    url = alert_url()
    for check, ok in changes_to_alert(results, notified):
        if url is None:
            notified[check] = ok  # nowhere to send: the metrics and status still show it
            continue
        payload = alert_payload(config["host"], config["domain"], check, results[check], config.get("alert_fields") or {}, now)
        error = post_alert(url, payload)
        if error is None:
            notified[check] = ok
            print(f"alert sent: {payload['text']}")
        else:
            # The URL holds a token: log only that it failed and why.
            print(f"alert for {check} not delivered ({error}); trying again at the next run", file=sys.stderr)
    write_atomically(notified_file, json.dumps(notified, indent=2))


def alert_url() -> str | None:
    """The webhook URL, from systemd's credential (never in a world-readable file)."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    try:
        return (Path(directory) / ALERT_CREDENTIAL).read_text().strip() or None
    except FileNotFoundError:
        return None


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: aisha_watch.py CONFIG.json", file=sys.stderr)
        return 2
    config = json.loads(Path(argv[1]).read_text())
    state_dir = Path(config["state_dir"])
    now = time.time()
    results = check_all(config, now)
    problems = [name for name in ALERTED if not results[name]["ok"]]
    summary = {"time": now, "ok": not problems, "problems": problems, "checks": results}
    write_atomically(state_dir / "last.json", json.dumps(summary, indent=2))
    write_atomically(state_dir / "aisha.prom", metrics_text(results, now))
    send_alerts(config, results, state_dir, now)
    for name in problems:
        print(f"{name}: {results[name]['message']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
