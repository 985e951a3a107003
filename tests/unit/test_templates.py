"""Every template rendered with default and non-default settings, checked by the
real nginx (`nginx -t`) and systemd (`systemd-analyze verify`)."""

import shutil
import subprocess
from pathlib import Path

import pytest

from aisha_infra.deploy import paths, rendering
from aisha_infra.deploy.settings import build_settings

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SETTINGS_CASES = {
    "defaults": {"aisha_domain": "aibots.test"},
    "custom": {
        "aisha_domain": "hooks.example.org",
        "nginx_https_port": 9443,
        "nginx_http_port": 8080,
        "app_port": 9001,
        "app_max_body_bytes": 5 * 1024 * 1024,
        "nginx_rate_limit_per_second": 5,
        "nginx_rate_limit_burst": 10,
        "app_environment": {"LOG_LEVEL": "debug", "ODD": 'a "quoted" 100% value'},
    },
    "letsencrypt": {
        "aisha_domain": "hooks.example.org",
        "tls_mode": "letsencrypt",
        "letsencrypt_email": "ops@example.org",
        "letsencrypt_extra_domains": ["www.hooks.example.org"],
    },
}


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def nginx_test(tmp_path: Path, site: str, snippet: str) -> subprocess.CompletedProcess:
    """`nginx -t` on the rendered site inside a throwaway prefix (Debian's mime.types)."""
    snippet_path = tmp_path / "certificate.conf"
    snippet_path.write_text(snippet)
    site = site.replace(paths.NGINX_CERT_SNIPPET_PATH, str(snippet_path))
    # nginx -t opens every log file: keep it out of /var/log (the unit tests need no root)
    (tmp_path / "site.conf").write_text(site.replace(paths.NGINX_ERROR_LOG, str(tmp_path / "nginx-error.log")))
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n include /etc/nginx/mime.types;\n include {tmp_path}/site.conf;\n}}\n"
    )
    return subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                          capture_output=True, text=True)


@pytest.mark.parametrize("case", sorted(SETTINGS_CASES))
def test_site_passes_nginx_t(tmp_path, case):
    settings = build_settings({**SETTINGS_CASES[case], "aisha_log_dir": str(tmp_path / "log")})
    (tmp_path / "log").mkdir()
    cert, key = make_cert(tmp_path, settings.aisha_domain)
    site = rendering.render("nginx/aisha-webhook.conf.j2", rendering.site_context(settings))
    snippet = rendering.render("nginx/aisha-webhook-certificate.conf.j2",
                               rendering.certificate_snippet_context(str(cert), str(key), "test"))
    result = nginx_test(tmp_path, site, snippet)
    assert result.returncode == 0, result.stderr
    assert f"listen {settings.nginx_https_port} ssl http2;" in site
    assert f"server_name {' '.join(rendering.site_context(settings)['server_names'])};" in site
    assert f"server 127.0.0.1:{settings.app_port};" in site
    assert f"access_log {tmp_path}/log/webhook_access.log;" in site
    assert "error_log /var/log/nginx/error.log warn;" in site  # the runbook's error log


def webhook_server_block(site: str) -> str:
    """The server block that proxies the webhook path (the blocks are top-level `server {`)."""
    [block] = [block for block in site.split("\nserver {") if "location = /api/v1/avatar/status_update" in block]
    return block


def test_site_answers_are_never_compressed_nor_sniffed(tmp_path):
    """Issue 13: no gzip on the TLS servers (BREACH) even though Debian's nginx.conf turns it
    on for the whole http block; nosniff on every answer of the webhook server."""
    settings = build_settings({"aisha_domain": "aibots.test", "aisha_log_dir": str(tmp_path / "log")})
    site = rendering.render("nginx/aisha-webhook.conf.j2", rendering.site_context(settings))
    assert site.count("    gzip off;") == 2  # the webhook server and the default TLS server
    webhook = webhook_server_block(site)
    assert "gzip off;" in webhook and "add_header X-Content-Type-Options nosniff always;" in webhook
    # one add_header in a location would drop the server's: there is none
    locations = webhook[webhook.index("    location "):]
    assert "add_header" not in locations and "gzip" not in locations


def test_nginx_t_rejects_a_broken_site(tmp_path):
    """The check above can fail: a site without its certificate is rejected."""
    settings = build_settings({"aisha_domain": "aibots.test", "aisha_log_dir": str(tmp_path)})
    site = rendering.render("nginx/aisha-webhook.conf.j2", rendering.site_context(settings))
    result = nginx_test(tmp_path, site, "# no certificate\n")
    assert result.returncode != 0 and "ssl_certificate" in result.stderr


def test_letsencrypt_site_serves_every_name():
    settings = build_settings(SETTINGS_CASES["letsencrypt"])
    site = rendering.render("nginx/aisha-webhook.conf.j2", rendering.site_context(settings))
    assert "server_name hooks.example.org www.hooks.example.org;" in site


def backend_home(tmp_path: Path) -> Path:
    """A stand-in for /opt/aisha-backend: ExecStart must point at an executable for
    `systemd-analyze verify` to pass."""
    base = tmp_path / "opt"
    (base / "venv" / "bin").mkdir(parents=True)
    (base / "app").mkdir()
    (base / "venv" / "bin" / "python").symlink_to(shutil.which("python3"))
    return base


@pytest.mark.parametrize("case", ["defaults", "custom"])
def test_units_pass_systemd_analyze_verify(tmp_path, case):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    base = backend_home(tmp_path)
    settings = build_settings({**SETTINGS_CASES[case], "aisha_base_dir": str(base)})
    units = tmp_path / "units"
    units.mkdir()
    (units / "aisha-api.service").write_text(rendering.render("systemd/aisha-api.service.j2", rendering.service_context(settings)))
    (units / "aisha-api.socket").write_text(rendering.render("systemd/aisha-api.socket.j2", rendering.socket_context(settings)))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(units / "aisha-api.socket"), str(units / "aisha-api.service")],
        capture_output=True, text=True,
    )
    # verify also checks units this machine's own boot pulls in; only ours matter here.
    ours = [line for line in result.stderr.splitlines() if "aisha-api" in line]
    assert result.returncode == 0 and not ours, result.stderr


def test_unit_holds_no_value_of_the_app_environment():
    """Values go to the 0600 EnvironmentFile: the unit is world-readable (systemctl show)."""
    settings = build_settings({**SETTINGS_CASES["custom"],
                               "app_environment": {"API_TOKEN": "s3cr3t-t0ken", "LOG_LEVEL": "debug"}})
    unit = rendering.render("systemd/aisha-api.service.j2", rendering.service_context(settings))
    assert "Environment=" not in unit.replace("EnvironmentFile=", "")
    assert "s3cr3t-t0ken" not in unit and "debug" not in unit
    assert "EnvironmentFile=/opt/aisha-backend/current/aisha-api.env" in unit
    assert "WorkingDirectory=/opt/aisha-backend/current/app" in unit
    assert "ExecStart=/opt/aisha-backend/venv/bin/python -m aisha_webhook_api serve" in unit
    assert "InaccessiblePaths=-/opt/aisha-backend/ssl" in unit
    assert "Type=notify" in unit


def test_environment_file_holds_every_value_verbatim():
    settings = build_settings(SETTINGS_CASES["custom"])
    text = rendering.environment_file(settings)
    assert "LOG_LEVEL='debug'" in text.splitlines()
    assert "ODD='a \"quoted\" 100% value'" in text.splitlines()
    assert "AISHA_API_PORT='9001'" in text.splitlines()


@pytest.mark.parametrize("value, line", [
    ("plain", "'plain'"),
    ("it's $HOME `x` \\ \"q\"", '"it\'s \\$HOME \\`x\\` \\\\ \\\"q\\\""'),
])
def test_environment_file_quoting(value, line):
    assert rendering.environment_file_value(value) == line


def test_secret_looking_names_are_masked():
    assert rendering.masked("FAL_API_KEY", "abc") == rendering.MASK
    assert rendering.masked("DB_PASSWORD", "abc") == rendering.MASK
    assert rendering.masked("LOG_LEVEL", "debug") == "debug"


def test_logrotate_and_renewal_hook_render():
    settings = build_settings({"aisha_domain": "aibots.test"})
    assert "/var/log/aisha/*.log {" in rendering.render("logrotate/aisha.j2", rendering.logrotate_context(settings))
    hook = rendering.render("letsencrypt/aisha-reload-nginx.sh.j2", rendering.renewal_hook_context(settings))
    assert hook.startswith("#!/bin/sh") and "nginx -t" in hook and "systemctl reload nginx" in hook


def test_site_uses_the_http2_directive_on_newer_nginx():
    settings = build_settings({"aisha_domain": "aibots.test"})
    old = rendering.render("nginx/aisha-webhook.conf.j2", rendering.site_context(settings))
    new = rendering.render("nginx/aisha-webhook.conf.j2", rendering.site_context(settings, http2_directive=True))
    assert "listen 8443 ssl http2;" in old and "http2 on;" not in old
    assert "listen 8443 ssl;" in new and "http2 on;" in new and "ssl http2" not in new


@pytest.mark.parametrize("extra", [{}, {"events_keep_days": 30, "backup_interval_minutes": 15, "backup_keep": 3}])
def test_backup_units_pass_systemd_analyze_verify(tmp_path, extra):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    base = backend_home(tmp_path)
    settings = build_settings({"aisha_domain": "aibots.test", "aisha_base_dir": str(base), **extra})
    units = tmp_path / "units"
    units.mkdir()
    service = rendering.render("systemd/aisha-backup.service.j2", rendering.backup_service_context(settings))
    (units / "aisha-backup.service").write_text(service)
    timer = rendering.render("systemd/aisha-backup.timer.j2", rendering.backup_timer_context(settings))
    (units / "aisha-backup.timer").write_text(timer)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(units / "aisha-backup.timer"), str(units / "aisha-backup.service")],
        capture_output=True, text=True,
    )
    ours = [line for line in result.stderr.splitlines() if "aisha-backup" in line]
    assert result.returncode == 0 and not ours, result.stderr
    # root keeps the copy ("+"), the app user takes it and prunes
    assert f"ExecStartPost=+{base}/venv/bin/python -m aisha_webhook_api events keep" in service
    assert ("--older-than-days 30" in service) == ("events_keep_days" in extra)
    assert f"OnUnitActiveSec={settings.backup_interval_minutes}min" in timer
