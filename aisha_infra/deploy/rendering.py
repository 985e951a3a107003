"""Templates and the variables each one gets, in one place.

The deploy (through files.template or our own operations) and the unit tests render
with the same function, so what `nginx -t` checks in the tests is what the hosts get.
"""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

from pyinfra.api.util import get_template

from aisha_infra.deploy import paths
from aisha_infra.deploy.settings import Settings

# Package data (templates/ in the repository).
TEMPLATE_DIR = Path(str(importlib.resources.files("aisha_infra.templates")))
# Block tags do not leave blank lines behind (matters in systemd units).
JINJA_OPTIONS = {"trim_blocks": True, "lstrip_blocks": True}
MANAGED_BANNER = "Managed by aisha-infra (pyinfra); local changes are overwritten."

RELOAD_RETRY_MINUTES = 5
WATCH_USER = "aisha-watch"
NODE_EXPORTER_PORT = 9100


def template_path(name: str) -> Path:
    return TEMPLATE_DIR / name


def template_source(name: str) -> dict:
    """files.template arguments that render `name` exactly as `render` does."""
    return {
        "src": str(template_path(name)),
        "jinja_env_kwargs": dict(JINJA_OPTIONS),
        "managed_banner": MANAGED_BANNER,
    }


def render(name: str, context: dict) -> str:
    template = get_template(str(template_path(name)), jinja_env_kwargs=dict(JINJA_OPTIONS))
    return template.render(managed_banner=MANAGED_BANNER, **context)


def site_context(s: Settings, http2_directive: bool = False) -> dict:
    """`http2_directive`: nginx >= 1.25.1 (Debian 13) wants `http2 on;` instead of
    the `listen ... http2` it deprecates."""
    return {
        "http2_directive": http2_directive,
        "domain": s.aisha_domain,
        "server_names": s.letsencrypt_domains if s.tls_mode == "letsencrypt" else [s.aisha_domain],
        "https_port": s.nginx_https_port,
        "http_port": s.nginx_http_port,
        "app_port": s.app_port,
        "log_dir": s.aisha_log_dir,
        "nginx_error_log": paths.NGINX_ERROR_LOG,
        "max_body_bytes": s.app_max_body_bytes,
        "rate_limit_per_second": s.nginx_rate_limit_per_second,
        "rate_limit_burst": s.nginx_rate_limit_burst,
        "acme_webroot": paths.ACME_WEBROOT,
        "certificate_snippet": paths.NGINX_CERT_SNIPPET_PATH,
    }


def certificate_snippet_context(certificate: str, certificate_key: str, source: str) -> dict:
    return {"certificate": certificate, "certificate_key": certificate_key, "source": source}


def app_environment(s: Settings) -> dict:
    """Environment of aisha-api.service: the bundled app's knobs plus the user's own."""
    env = {}
    if s.uses_bundled_app:
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "AISHA_DATA_DIR": s.aisha_data_dir,
                "AISHA_API_HOST": "127.0.0.1",
                "AISHA_API_PORT": str(s.app_port),
                "AISHA_MAX_BODY_BYTES": str(s.app_max_body_bytes),
                "AISHA_FAL_VERIFY_SIGNATURES": "1" if s.verifies_signatures else "0",
                "AISHA_FAL_JWKS_URL": s.fal_jwks_url,
            }
        )
        if s.fal_jwks_file:
            env["AISHA_FAL_JWKS_FILE"] = remote_jwks_path(s)
    else:
        env.update({"AISHA_API_HOST": "127.0.0.1", "AISHA_API_PORT": str(s.app_port)})
    env.update({k: str(v) for k, v in (s.app_environment or {}).items()})
    return env


def remote_jwks_path(s: Settings) -> str:
    # in the release, beside app/ (the code upload deletes files it does not know)
    return f"{s.current_release_link}/{paths.REMOTE_JWKS_NAME}"


def environment_file_path(s: Settings) -> str:
    return f"{s.current_release_link}/{paths.RELEASE_ENV_NAME}"


# Names whose values are secrets: never in a world-readable file, a diff or a log.
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSW|PASSPHRASE|KEY|CREDENTIAL|AUTH|PRIVATE|COOKIE|DSN", re.I)
MASK = "********"


def looks_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def masked(name: str, value: str) -> str:
    return MASK if looks_secret(name) else value


def environment_file_value(value: str) -> str:
    """A value as systemd's EnvironmentFile= reads it back verbatim: single quotes take
    everything literally; a value holding one is double-quoted with \\ escapes."""
    if "'" not in value:
        return f"'{value}'"
    escaped = "".join("\\" + c if c in '\\"$`' else c for c in value)
    return f'"{escaped}"'


def environment_file(s: Settings) -> str:
    """The app's environment (EnvironmentFile=, 0600 root): values stay out of the unit,
    which every local user can read (`systemctl show`)."""
    lines = [f"# {MANAGED_BANNER}"]
    lines += [f"{name}={environment_file_value(value)}" for name, value in sorted(app_environment(s).items())]
    return "\n".join(lines) + "\n"


def service_context(s: Settings) -> dict:
    # The bundled app needs no network of its own when systemd hands it the socket,
    # unless it must fetch fal's JWKS from the internet.
    fetches_jwks = s.verifies_signatures and not s.fal_jwks_file
    return {
        "service_user": s.aisha_user,
        "working_directory": f"{s.current_release_link}/app",
        "command": s.app_command,
        "environment_file": environment_file_path(s),
        # The bundled app tells systemd when it serves: a start that fails fails `systemctl restart`.
        "notify": s.uses_bundled_app,
        "state_directory": s.aisha_data_dir.removeprefix("/var/lib/"),
        "ssl_dir": s.ssl_dir,
        "socket_activation": s.uses_socket_activation,
        "private_network": s.uses_bundled_app and s.uses_socket_activation and not fetches_jwks,
    }


def socket_context(s: Settings) -> dict:
    return {"app_port": s.app_port}


def logrotate_context(s: Settings) -> dict:
    return {"log_dir": s.aisha_log_dir}


def renewal_hook_context(s: Settings) -> dict:
    return {
        "reload_pending_flag": paths.RELOAD_PENDING_FLAG,
        "retry_timer": Path(paths.RELOAD_RETRY_TIMER_PATH).name,
        "renewal_hook": paths.RENEWAL_HOOK_PATH,
        "retry_minutes": RELOAD_RETRY_MINUTES,
    }


def backup_service_context(s: Settings) -> dict:
    return {
        "service_user": s.aisha_user,
        "app_dir": s.app_dir,
        "python": f"{s.venv_dir}/bin/python",
        "data_dir": s.aisha_data_dir,
        "database": s.events_database_path,
        "state_directory": s.aisha_data_dir.removeprefix("/var/lib/"),
        "staging_directory": paths.BACKUP_STAGING_DIRECTORY,
        "staged_snapshot": f"/run/{paths.BACKUP_STAGING_DIRECTORY}/{paths.EVENTS_DATABASE_NAME}",
        "backup_dir": s.backup_dir,
        "keep": s.backup_keep,
        "keep_days": s.events_keep_days,
    }


def backup_timer_context(s: Settings) -> dict:
    return {"interval_minutes": s.backup_interval_minutes}


def watch_config(s: Settings, host_name: str) -> dict:
    """The watch's configuration file (no secret: the alert URL is a systemd credential)."""
    expected = [s.selfsigned_cert_path]
    if s.tls_mode == "letsencrypt":  # live once issued; self-signed while degraded
        expected.insert(0, f"{paths.WATCH_LIVE_COPY_DIR}/cert.pem")
    return {
        "host": host_name,
        "domain": s.aisha_domain,
        "https_port": s.nginx_https_port,
        "expected_certificates": expected,
        "certificate_min_days": s.watch_certificate_min_days,
        "disk_min_free_percent": s.watch_disk_min_free_percent,
        "data_dir": s.aisha_data_dir,
        "state_dir": paths.WATCH_STATE_DIR,
        "alert_fields": s.alert_webhook_fields or {},
    }


def watch_service_context(s: Settings) -> dict:
    return {
        "watch_user": WATCH_USER,
        "script": paths.WATCH_SCRIPT_PATH,
        "config": paths.WATCH_CONFIG_PATH,
        "state_directory": paths.WATCH_STATE_DIR.removeprefix("/var/lib/"),
        "live_certificate": f"{s.letsencrypt_live_dir}/cert.pem" if s.tls_mode == "letsencrypt" else None,
        "live_copy_dir": paths.WATCH_LIVE_COPY_DIR,
        "alert_credential": paths.WATCH_ALERT_URL_PATH if s.alert_webhook_url else None,
    }


def watch_timer_context(s: Settings) -> dict:
    return {"interval_seconds": s.watch_interval_seconds}


def node_exporter_context(s: Settings) -> dict:
    # Only localhost can scrape unless metrics_allow_from opens the port in ufw.
    address = "" if s.metrics_allow_from else "127.0.0.1"
    return {"listen": f"{address}:{NODE_EXPORTER_PORT}", "textfile_directory": paths.WATCH_STATE_DIR}
