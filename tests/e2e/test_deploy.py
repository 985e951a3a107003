"""The deploy end to end on a fresh lab host: converge, converge again with zero
changes, then look at the host from outside and inside like an operator would."""

from __future__ import annotations

import json
import re
import socket
import uuid

import pytest

from aisha_infra.checks import health
from aisha_infra.deploy import paths
from aisha_infra.tasks.packages import PACKAGES
from tests.e2e import client
from tests.e2e.conftest import DOMAIN
from tests.e2e.deploylib import copy_project, run_deploy

pytestmark = pytest.mark.e2e
SITE = "/etc/nginx/sites-available/aisha-webhook.conf"


def tcp_open(address: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def test_first_run_proves_health_and_prints_the_webhook_url(deployed_host):
    output = deployed_host.first_run.output
    assert "HTTPS health OK" in output
    assert "Webhook POST OK" in output
    assert f"FAL_WEBHOOK_URL=https://{DOMAIN}:8443/api/v1/avatar/status_update" in output
    assert deployed_host.first_run.totals["changed"] > 10


def test_packages_install_while_the_rest_is_staged(deployed_host):
    """apt runs in the background from the first operation; the user, the release (served:
    the lab image has python3), backups and the watch's files come before the wait, and
    everything needing the packages after it. Nothing of the install is left."""
    started = re.findall(r"--> Starting operation: (\w[\w ]*?) \| (.*?)\s*$", deployed_host.first_run.output, re.M)
    names = [f"{deploy} | {operation}" for deploy, operation in started]
    wait = names.index(f"Packages | Wait for the install ({paths.PACKAGES_UNITS})")
    assert names[0].startswith("Packages | Install ")
    before, after = {name.split(" | ")[0] for name in names[:wait]}, {name.split(" | ")[0] for name in names[wait:]}
    assert {"Service user", "App", "Backups", "Watch"} <= before and not {"TLS", "Nginx", "Firewall", "Verify"} & before
    assert {"TLS", "Nginx", "Firewall", "Verify"} <= after
    assert any(name.startswith("App | Serve release ") for name in names[:wait])
    assert "Watch | Check once now with the new watch" in names[wait:]
    host = deployed_host.host
    # The watch's timer is enabled early but starts only once the site is live (nginx reloaded
    # for it): its first check never sees a host half done.
    journal = host.run("journalctl -q -o short-unix --no-pager -u nginx.service -u aisha-watch.timer").stdout
    first = {event: next(float(line.split()[0]) for line in journal.splitlines() if event in line)
             for event in ("Reloaded nginx.service", "Started aisha-watch.timer")}
    assert first["Started aisha-watch.timer"] > first["Reloaded nginx.service"], journal
    assert host.run(f"test -e {paths.PACKAGES_RUN_DIR}", check=False).returncode != 0
    assert host.run("systemctl list-units --no-legend --plain --state=activating,active,deactivating "
                    f"{paths.PACKAGES_UNITS}").stdout.strip() == ""


def test_second_run_changes_nothing(deployed_host):
    run = run_deploy(deployed_host.hosts_file).check()
    assert run.totals["changed"] == 0, f"changed on re-run: {run.changed_operations}"
    assert "HTTPS health OK" in run.output  # still verified every time


def test_a_converged_host_is_read_in_one_command(deployed_host):
    """The facts of the run before come back in one command (aisha_infra/deploy/prefetch.py),
    the served-certificate check too: the run changed nothing on the host."""
    run_deploy(deployed_host.hosts_file).check()  # the run before, remembered
    run = run_deploy(deployed_host.hosts_file, "-vv").check()
    commands = [line for line in run.output.splitlines() if line.startswith("[") and "] >>> " in line]
    assert run.totals["changed"] == 0
    assert len(commands) == 1, commands
    prefetch_command = run.output[run.output.index(commands[0]):run.output.index("Loaded fact")]
    assert "machine-id" in commands[0] and "openssl s_client" in prefetch_command, commands


def test_a_drift_repair_of_the_site_sends_it_reloads_and_reads_once_more(deployed_host):
    """One file drifted after a no-op run (the bench's case): the prefetch (pyinfra's
    temporary directory for the upload too), the checked swap, the reload chained to it, and
    one read of every fact after the reload, the served certificate too."""
    assert run_deploy(deployed_host.hosts_file).check().totals["changed"] == 0  # the run before, remembered
    deployed_host.host.run(f"printf '#' >> {paths.NGINX_SITE_PATH}")
    run = run_deploy(deployed_host.hosts_file, "-vv").check()
    assert set(run.changed_operations) - {"Grand total"} == {
        "Nginx | Render the webhook site (TLS on 8443), live only if nginx -t passes",
        "Nginx | Reload nginx for the new configuration or certificate"}
    commands = [line for line in run.output.splitlines() if line.startswith("[") and "] >>> " in line]
    assert len(commands) == 4, commands
    assert "machine-id" in commands[0] and f"{paths.NGINX_SITE_PATH}.aisha-new" in commands[1]
    assert "systemctl try-reload-or-restart nginx.service" in commands[2]
    refill = run.output[run.output.index(commands[3]):]
    assert "machine-id" in commands[3] and "openssl s_client" in refill[:refill.index("Loaded fact")]
    assert "nginx serves the configured certificate" in run.output
    assert run_deploy(deployed_host.hosts_file).check().totals["changed"] == 0


def test_services_running_and_enabled(deployed_host):
    run = deployed_host.host.run
    for unit in ("nginx.service", "aisha-api.socket", "aisha-api.service", "ufw.service"):
        assert run(f"systemctl is-active {unit}").stdout.strip() == "active", unit
    for unit in ("nginx.service", "aisha-api.socket", "aisha-api.service", "ufw.service"):
        assert run(f"systemctl is-enabled {unit}").stdout.strip() == "enabled", unit
    assert run("getent passwd aisha").stdout.strip().endswith(":/usr/sbin/nologin")


def test_self_signed_host_gets_only_its_packages(deployed_host):
    installed = deployed_host.host.run("dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n'").stdout
    status = dict(line.split(" ", 1) for line in installed.splitlines())
    assert all(status.get(package, "").startswith("ii") for package in PACKAGES), installed
    assert not {"certbot", "python3-certbot-nginx"} & {p for p, s in status.items() if s.startswith("ii")}


def test_only_ssh_http_https_answer_from_outside(deployed_host):
    address = deployed_host.address
    assert tcp_open(address, 22) and tcp_open(address, 80) and tcp_open(address, 8443)
    assert not tcp_open(address, 8000), "the app port must not be reachable from outside"
    listeners = deployed_host.host.run("ss -Hltn 'sport = :8000'").stdout
    assert "127.0.0.1:8000" in listeners and "0.0.0.0:8000" not in listeners and "*:8000" not in listeners


def test_key_and_certificate_modes(deployed_host):
    stat = deployed_host.host.run(
        "stat -c '%a %U:%G %n' /opt/aisha-backend/ssl/aibots.test.key /opt/aisha-backend/ssl/aibots_test.crt"
    ).stdout.split("\n")
    assert stat[0] == "600 aisha:aisha /opt/aisha-backend/ssl/aibots.test.key"
    assert stat[1] == "644 aisha:aisha /opt/aisha-backend/ssl/aibots_test.crt"
    names = deployed_host.host.run("openssl x509 -in /opt/aisha-backend/ssl/aibots_test.crt -noout -ext subjectAltName -subject").stdout
    assert f"DNS:{DOMAIN}" in names and f"CN = {DOMAIN}" in names


def test_health_over_verified_https_from_the_control_machine(deployed_host):
    ok, detail = health.check_https_health(deployed_host.address, DOMAIN, 8443, ca_bundle=str(deployed_host.cert_pem))
    assert ok, detail
    # and verification is really on: without trusting the certificate it fails
    ok, detail = health.check_https_health(deployed_host.address, DOMAIN, 8443, ca_bundle=None)
    assert not ok and "self-signed" in detail.lower()


def test_webhook_post_is_stored(deployed_host):
    request_id = f"e2e-{uuid.uuid4()}"
    answer = client.post_json(deployed_host.address, DOMAIN, 8443, "/api/v1/avatar/status_update",
                              client.fal_event(request_id), ca_bundle=str(deployed_host.cert_pem))
    assert answer.status == 200, answer.data
    events = deployed_host.host.run(
        "cd /opt/aisha-backend/app && runuser -u aisha -- env AISHA_DATA_DIR=/var/lib/aisha "
        "/opt/aisha-backend/venv/bin/python -m aisha_webhook_api events export --format jsonl"
    ).stdout
    stored = [json.loads(line) for line in events.splitlines() if request_id in line]
    assert len(stored) == 1
    log = deployed_host.host.run("tail -n 50 /var/log/aisha/webhook_access.log").stdout
    assert "POST /api/v1/avatar/status_update" in log


def test_broken_site_template_keeps_the_old_config_serving(deployed_host, tmp_path):
    before = deployed_host.host.run(f"sha256sum {SITE}").stdout.split()[0]
    project = copy_project(tmp_path / "project")
    template = project / "templates/nginx/aisha-webhook.conf.j2"
    template.write_text(template.read_text().replace("proxy_pass http://aisha_api;", "proxy_pass http://aisha_api", 1))

    run = run_deploy(deployed_host.hosts_file, cwd=project)

    assert run.returncode != 0
    assert "nginx rejected the new /etc/nginx/sites-available/aisha-webhook.conf" in run.output
    assert "[emerg]" in run.output and "test failed" in run.output  # nginx's own words
    assert deployed_host.host.run(f"sha256sum {SITE}").stdout.split()[0] == before
    assert deployed_host.host.run("nginx -t").returncode == 0
    assert deployed_host.host.run("systemctl is-active nginx").stdout.strip() == "active"
    ok, detail = health.check_https_health(deployed_host.address, DOMAIN, 8443, ca_bundle=str(deployed_host.cert_pem))
    assert ok, detail


def test_diff_shows_a_setting_change_as_one_line_and_the_run_applies_it(deployed_host, tmp_path):
    hosts = json.loads(deployed_host.hosts_file.read_text())
    hosts[0]["data"]["nginx_rate_limit_burst"] = 250
    changed = tmp_path / "hosts.json"
    changed.write_text(json.dumps(hosts))
    try:
        shown = run_deploy(changed, "--diff", "--dry", yes=False).check()
        output = re.sub(r"\x1b\[[0-9;]*m", "", shown.output)
        assert f"Will modify {SITE}" in output, output[-6000:]
        assert ".aisha-new" not in output
        diff = {line.strip() for line in output.splitlines() if re.match(r"\s+[-+] ", line)}
        assert diff == {"-     limit_req zone=aisha_webhook burst=200 nodelay;",
                        "+     limit_req zone=aisha_webhook burst=250 nodelay;"}, output[-6000:]
        assert "burst=200" in deployed_host.host.run(f"grep burst= {SITE}").stdout  # --dry changed nothing

        applied = run_deploy(changed).check()
        assert "Nginx | Render the webhook site" in " ".join(applied.changed_operations)
        assert "burst=250" in deployed_host.host.run(f"grep burst= {SITE}").stdout
    finally:
        run_deploy(deployed_host.hosts_file).check()
    assert "burst=200" in deployed_host.host.run(f"grep burst= {SITE}").stdout


def test_drift_is_repaired(deployed_host):
    run = deployed_host.host.run
    run("chmod 0644 /opt/aisha-backend/ssl/aibots.test.key && ufw allow 3306/tcp && "
        "systemctl stop aisha-api.service nginx.service && "
        "echo '# drift' >> /etc/nginx/sites-available/aisha-webhook.conf")
    try:
        deploy = run_deploy(deployed_host.hosts_file).check()
        assert {"TLS | Private key is 0600 and the service user's",
                "Firewall | Allow only SSH (22), HTTP (80) and HTTPS (8443)",
                "App | Run aisha-api.service",
                "Nginx | Render the webhook site (TLS on 8443), live only if nginx -t passes",
                "Nginx | Run nginx"} <= set(deploy.changed_operations)  # a stopped nginx: the reload leaves it, this starts it
        assert "HTTPS health OK" in deploy.output
    finally:
        assert run("stat -c %a /opt/aisha-backend/ssl/aibots.test.key").stdout.strip() == "600"
    assert "3306" not in run("ufw show added").stdout
    assert "# drift" not in run("cat /etc/nginx/sites-available/aisha-webhook.conf").stdout
    assert run_deploy(deployed_host.hosts_file).check().totals["changed"] == 0


def test_bad_configuration_stops_before_any_operation(deployed_host, tmp_path):
    hosts = json.loads(deployed_host.hosts_file.read_text())
    hosts[0]["data"].update({"nginx_https_prot": 9443, "tls_mode": "acme", "app_port": 8443})
    bad = tmp_path / "hosts.json"
    bad.write_text(json.dumps(hosts))
    before = deployed_host.host.run("find /etc/nginx /etc/systemd/system /opt/aisha-backend -newer /etc/hostname | wc -l").stdout

    run = run_deploy(bad)

    assert run.returncode != 0
    assert "invalid configuration; nothing was changed on any host" in run.output
    assert "nginx_https_prot: is not a setting of this deploy; did you mean 'nginx_https_port'?" in run.output
    assert "tls_mode: 'acme' is unknown" in run.output
    assert "app_port: 8443 clashes with nginx_https_port" in run.output
    assert "Starting operation" not in run.output
    assert deployed_host.host.run("find /etc/nginx /etc/systemd/system /opt/aisha-backend -newer /etc/hostname | wc -l").stdout == before
