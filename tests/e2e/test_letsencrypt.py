"""tls_mode = "letsencrypt" end to end against Pebble, Let's Encrypt's own test ACME
server, deployed as a real server's login user (`admin`, sudo with a password): real
HTTP-01 validation over the lab host's nginx, renewal (also one nginx refused to load),
the degraded state when the ACME server fails, and carrying certificates to a
replacement host (deployed as root)."""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from aisha_infra.checks import health
from aisha_infra.tools.webhook import write_test_key
from tests.e2e.conftest import DOMAIN
from tests.e2e.deploylib import run_deploy, write_hosts_file
from tests.e2e.pebble import ACME_NAME, Pebble

pytestmark = pytest.mark.e2e
AISHA_INFRA = str(Path(sys.executable).with_name("aisha-infra"))
RENEW = ("REQUESTS_CA_BUNDLE=/etc/letsencrypt/aisha-acme-ca.pem "
         "certbot renew --force-renewal --no-random-sleep-on-renew -q")
RELOAD_PENDING = "/run/aisha-nginx-reload-pending"
REPAIR_OPERATION = "Verify | nginx serves the certificate its configuration names (else nginx -t, reload)"


def served_certificate(address: str) -> x509.Certificate:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    import socket
    with socket.create_connection((address, 8443), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


class Scenario:
    """One lab host, one Pebble beside it, and the settings that point them at each other."""

    def __init__(self, host, workdir: Path):
        self.host, self.workdir = host, workdir
        self.pebble = Pebble(workdir / "pebble", listen=host.gateway, target=host.address)
        self.root = workdir / "pebble-root.pem"
        self.root.write_text("")  # filled once Pebble runs (its root is new at every start)
        # letsencrypt mode verifies fal's signatures by default: a local JWKS, so the app
        # never tries to fetch fal's real one from the lab
        _, self.fal_jwks = write_test_key(workdir / "fal")
        self.overrides: dict = {}
        host.run(f"echo '{host.gateway} {ACME_NAME}' >> /etc/hosts")

    def settings(self, **overrides) -> dict:
        return {"tls_mode": "letsencrypt", "letsencrypt_email": "ops@aibots.test",
                "letsencrypt_server": self.pebble.directory_url,
                "letsencrypt_ca_bundle": str(self.pebble.acme_ca),
                "verify_ca_bundle": str(self.root), "fal_jwks_file": str(self.fal_jwks),
                **self.overrides, **overrides}

    def deploy(self, **overrides):
        hosts_file = write_hosts_file(self.workdir / "hosts.json", [self.host], data=self.settings(**overrides))
        return run_deploy(hosts_file)

    def start_pebble(self) -> None:
        self.pebble.start()
        self.root.write_text(self.pebble.root_pem())


@pytest.fixture(scope="module")
def scenario(lab, tmp_path_factory):
    host = lab.add_hosts(count=1, login="sudo-password")[0]
    scenario = Scenario(host, tmp_path_factory.mktemp("letsencrypt"))
    try:
        yield scenario
    finally:
        scenario.pebble.stop()
        lab.destroy_host(host.name)


def summary_lines(run) -> list[str]:
    """The summary lines, which must be the last lines of the output."""
    lines = run.output.rstrip().splitlines()
    summaries = [line for line in lines if "aisha-infra summary [" in line]
    assert summaries and lines[-len(summaries):] == summaries, run.output[-3000:]
    return summaries


def test_unreachable_acme_server_fails_the_run_but_keeps_https(scenario):
    run = scenario.deploy()  # Pebble is not running yet
    assert run.returncode != 0, run.output[-4000:]
    assert "Let's Encrypt issuance failed for aibots.test" in run.output
    assert "certbot could not talk to the ACME server" in run.output
    assert "TLS state: DEGRADED" in run.output and "letsencrypt_on_failure='degrade'" in run.output
    [summary] = summary_lines(run)
    assert "TLS DEGRADED" in summary and "health OK" in summary
    assert "give fal: https://aibots.test:8443/api/v1/avatar/status_update" in summary
    served = served_certificate(scenario.host.address)
    assert served.issuer == served.subject  # still the self-signed certificate
    assert scenario.host.run("nginx -t").returncode == 0

    accepted = scenario.deploy(letsencrypt_on_failure="degrade")
    assert accepted.returncode == 0, accepted.output[-4000:]
    assert "certbot could not talk to the ACME server" in accepted.output
    assert "TLS DEGRADED" in summary_lines(accepted)[0]


def test_issues_by_http01_and_serves_the_chain(scenario):
    scenario.start_pebble()
    run = scenario.deploy().check()
    assert "Let's Encrypt issued a certificate for aibots.test" in run.output
    assert "TLS state: OK" in run.output and "DEGRADED" not in run.output
    assert "Certificate: issuer CN=Pebble Intermediate" in run.output
    assert "2 certificate(s) sent" in run.output  # leaf and intermediate, from the health connection
    [summary] = summary_lines(run)
    assert "TLS OK | issuer CN=Pebble Intermediate" in summary and "health OK" in summary
    # certbot ran as root through sudo: admin could not have written these
    assert scenario.host.run(f"stat -c %U /etc/letsencrypt/live/{DOMAIN}/privkey.pem").stdout.strip() == "root"
    # verified from here against Pebble's root, through the intermediate nginx sends
    ok, detail = health.check_https_health(scenario.host.address, DOMAIN, 8443, ca_bundle=str(scenario.root))
    assert ok, detail
    snippet = scenario.host.run("cat /etc/nginx/snippets/aisha-webhook-certificate.conf").stdout
    assert f"ssl_certificate /etc/letsencrypt/live/{DOMAIN}/fullchain.pem;" in snippet
    assert "validation" in Path(scenario.pebble.workdir / "pebble.log").read_text().lower()


def test_second_run_issues_nothing(scenario):
    before = served_certificate(scenario.host.address).serial_number
    run = scenario.deploy().check()
    assert run.totals["changed"] == 0, run.changed_operations
    assert served_certificate(scenario.host.address).serial_number == before


def test_forced_renewal_is_served_without_another_step(scenario):
    before = served_certificate(scenario.host.address).serial_number
    scenario.host.run(RENEW)
    after = wait_for_new_serial(scenario, before)
    assert after != before, "nginx still serves the old certificate: the deploy hook did not reload it"
    assert scenario.host.run("systemctl is-enabled certbot.timer").stdout.strip() == "enabled"


def wait_for_new_serial(scenario, before: int, seconds: float = 20) -> int:
    """The first serial other than `before` served within `seconds` (old nginx workers
    finish their connections first), else `before`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        serial = served_certificate(scenario.host.address).serial_number
        if serial != before:
            return serial
        time.sleep(0.5)
    return before


def renew_while_an_include_is_broken(scenario) -> int:
    """A renewal nginx refuses to load: the hook leaves the retry flag, the old serial stays."""
    before = served_certificate(scenario.host.address).serial_number
    scenario.host.run("echo 'this is not nginx;' > /etc/nginx/conf.d/broken.conf")
    assert scenario.host.run("nginx -t", check=False).returncode != 0
    scenario.host.run(RENEW + " || true")  # certbot reports the failed hook, the renewal stands
    assert scenario.host.run(f"test -e {RELOAD_PENDING}", check=False).returncode == 0
    renewed = scenario.host.run(f"openssl x509 -noout -serial -in /etc/letsencrypt/live/{DOMAIN}/cert.pem").stdout
    assert int(renewed.strip().split("=")[1], 16) != before
    assert served_certificate(scenario.host.address).serial_number == before
    return before


def test_renewal_nginx_refused_is_served_by_the_next_deploy(scenario):
    before = renew_while_an_include_is_broken(scenario)
    # the retry timer must not get there first: this proves the deploy's own repair
    scenario.host.run(f"rm -f {RELOAD_PENDING} /etc/nginx/conf.d/broken.conf")
    run = scenario.deploy().check()
    assert REPAIR_OPERATION in run.changed_operations, run.changed_operations
    assert run.totals["changed"] == 1, run.changed_operations
    assert served_certificate(scenario.host.address).serial_number != before
    assert "TLS OK" in summary_lines(run)[0]
    assert scenario.deploy().check().totals["changed"] == 0


def test_renewal_nginx_refused_is_served_by_the_retry_timer_once_fixed(scenario):
    before = renew_while_an_include_is_broken(scenario)
    assert scenario.host.run("systemctl is-active aisha-nginx-reload-retry.timer").stdout.strip() == "active"
    retry = "systemctl start aisha-nginx-reload-retry.service"  # what the timer does every 5 minutes
    assert scenario.host.run(retry, check=False).returncode != 0  # still broken: nothing reloaded
    assert served_certificate(scenario.host.address).serial_number == before
    scenario.host.run("rm -f /etc/nginx/conf.d/broken.conf")
    scenario.host.run(retry)
    journal = scenario.host.run("journalctl -u aisha-nginx-reload-retry.service -u nginx.service --no-pager | tail -20; "
                                "tail -5 /var/log/nginx/error.log", check=False).stdout
    assert wait_for_new_serial(scenario, before) != before, journal
    assert scenario.host.run(f"test -e {RELOAD_PENDING}", check=False).returncode != 0


def test_changed_names_get_a_new_certificate(scenario):
    scenario.overrides["letsencrypt_extra_domains"] = ["www.aibots.test"]  # kept by the later tests
    run = scenario.deploy().check()
    assert "the configuration asks for ['aibots.test', 'www.aibots.test']" in run.output
    assert "TLS state: OK" in run.output
    names = served_certificate(scenario.host.address).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert set(names.value.get_values_for_type(x509.DNSName)) == {"aibots.test", "www.aibots.test"}
    assert "server_name aibots.test www.aibots.test;" in scenario.host.run(
        "cat /etc/nginx/sites-available/aisha-webhook.conf").stdout


def diagnose(scenario) -> tuple[int, dict]:
    result = subprocess.run(
        [AISHA_INFRA, "diagnose", f"https://{DOMAIN}:8443", "--address", scenario.host.address,
         "--ca-bundle", str(scenario.root), "--ssh-key", str(scenario.host.ssh_key),
         "--known-hosts-file", str(scenario.workdir / "known_hosts"), "--json"],
        capture_output=True, text=True, timeout=180,
    )
    return result.returncode, json.loads(result.stdout)


def findings(report: dict, severity: str) -> dict[str, dict]:
    items = report["findings"] if "findings" in report else report["targets"][0]["findings"]
    return {f["check"]: f for f in items if f["severity"] == severity}


def test_diagnose_finds_nothing_wrong_then_the_missing_intermediate(scenario):
    status, report = diagnose(scenario)
    assert status == 0 and not findings(report, "error"), findings(report, "error")

    # the classic curl (60): nginx pointed at the leaf without its intermediate
    scenario.host.run("sed -i 's#/fullchain.pem;#/cert.pem;#' /etc/nginx/snippets/aisha-webhook-certificate.conf "
                      "&& nginx -t -q && systemctl reload nginx")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, report = diagnose(scenario)
        if status != 0:
            break
        time.sleep(0.5)
    errors = findings(report, "error")
    assert status == 1 and "tls.incomplete_chain" in errors, errors
    assert "fullchain.pem" in errors["tls.incomplete_chain"]["fix"]

    repaired = scenario.deploy().check()  # drift repaired by the deploy itself
    assert "Nginx | Point the site at its certificate" in repaired.changed_operations
    assert diagnose(scenario)[0] == 0


def test_switched_to_self_signed_and_back_serves_the_same_certificate(scenario):
    """tls_mode back to self-signed: certbot goes (its timer would go on renewing a
    certificate nginx no longer serves), /etc/letsencrypt stays; switched back, the same
    certificate serves again without asking the ACME server."""
    serial = served_certificate(scenario.host.address).serial_number
    self_signed = {"tls_mode": "self-signed", "verify_ca_bundle": None}  # checked against the deployed one
    run = scenario.deploy(**self_signed).check()
    assert "TLS state: OK" in run.output
    served = served_certificate(scenario.host.address)
    assert served.issuer == served.subject
    assert scenario.host.run("dpkg-query -W -f '${Status}' certbot", check=False).stdout.strip() != "install ok installed"
    assert scenario.host.run("systemctl is-active certbot.timer", check=False).stdout.strip() != "active"
    assert scenario.host.run(f"test -s /etc/letsencrypt/live/{DOMAIN}/fullchain.pem", check=False).returncode == 0
    assert scenario.deploy(**self_signed).check().totals["changed"] == 0

    back = scenario.deploy().check()  # (Pebble keeps running: its root is new at every start)
    assert "requesting a certificate" not in back.output and "TLS state: OK" in back.output
    assert served_certificate(scenario.host.address).serial_number == serial
    assert scenario.host.run("systemctl is-active certbot.timer", check=False).stdout.strip() == "active"
    assert scenario.deploy().check().totals["changed"] == 0


def test_carry_over_serves_the_same_certificate_without_the_acme_server(scenario, lab, tmp_path):
    archive = tmp_path / "letsencrypt.tar.gz"
    export = subprocess.run([AISHA_INFRA, "certs", "export", scenario.host.address, "--out", str(archive),
                             "--ssh-key", str(scenario.host.ssh_key), "--ssh-user", "root",
                             "--known-hosts-file", str(scenario.workdir / "known_hosts")],
                            capture_output=True, text=True, timeout=120)
    assert export.returncode == 0, export.stderr
    assert stat.S_IMODE(os.stat(archive).st_mode) == 0o600
    serial = served_certificate(scenario.host.address).serial_number
    scenario.pebble.stop()  # the replacement must not need it

    replacement = lab.add_hosts(count=1)[0]
    try:
        data = {**scenario.settings(), "letsencrypt_restore_archive": str(archive)}
        hosts_file = write_hosts_file(tmp_path / "hosts.json", [replacement], data=data)
        run = run_deploy(hosts_file).check()
        assert "requesting a certificate" not in run.output and "TLS state: OK" in run.output
        assert served_certificate(replacement.address).serial_number == serial
        modes = replacement.run("stat -c '%a %U' /etc/letsencrypt/archive/aibots.test/privkey*.pem").stdout.strip().splitlines()
        assert all(line.startswith("600 root") for line in modes), modes
        assert run_deploy(hosts_file).check().totals["changed"] == 0
    finally:
        lab.destroy_host(replacement.name)

