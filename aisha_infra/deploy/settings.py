"""Every setting of the deploy: its default, what it is for, and its validation.

Settings are ordinary pyinfra data: set them in group_data/all.py (or a group file,
or per host in the inventory) and they override the defaults below. The deploy
validates every host's settings before pyinfra connects to any host (see
aisha_infra/deploy/config.py), so a typo or a bad value stops the run with the key and the
fault named and nothing touched. Values end up unquoted in nginx, systemd and shell
command lines on the host: the checks below allow only what is safe there, and what
is uploaded (JWKS, restore archive, the app's environment) is checked here first.
"""

from __future__ import annotations

import difflib
import importlib.resources
import ipaddress
import json
import posixpath
import re
import shlex
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aisha_infra.deploy import paths

# The bundled reference app: package data (backend/ in the repository).
BUNDLED_BACKEND = Path(str(importlib.resources.files("aisha_infra.backend")))

LETSENCRYPT_SERVERS = {
    "production": "https://acme-v02.api.letsencrypt.org/directory",
    "staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}
TLS_MODES = ("self-signed", "letsencrypt")


@dataclass(frozen=True)
class Settings:
    # --- identity -------------------------------------------------------------
    # Public DNS name fal calls; the certificate and nginx server_name use it.
    aisha_domain: str = ""
    # System user and group that own and run the backend (no login shell).
    aisha_user: str = "aisha"
    # Backend home: app/, venv/, ssl/ live below it.
    aisha_base_dir: str = "/opt/aisha-backend"
    # nginx access log of the webhook site and other logs of ours.
    aisha_log_dir: str = "/var/log/aisha"
    # Where the app keeps its durable event store (systemd StateDirectory).
    aisha_data_dir: str = "/var/lib/aisha"

    # --- app --------------------------------------------------------------------
    # Loopback port the app listens on (held by systemd socket activation).
    app_port: int = 8000
    # Local directory uploaded to <base>/app; None = the bundled reference API.
    app_source: str | None = None
    # Command systemd runs in <base>/app; None = the bundled API's command.
    # For your own backend use absolute paths, e.g. "/opt/aisha-backend/venv/bin/gunicorn app:app".
    app_start_command: str | None = None
    # systemd holds the listening socket (restarts queue connections instead of refusing
    # them); the app must accept it (LISTEN_FDS). None = on for the bundled app, off for
    # your own backend, which then binds AISHA_API_HOST:AISHA_API_PORT itself.
    app_socket_activation: bool | None = None
    # Extra environment variables for the app (name -> value).
    app_environment: dict | None = None
    # Largest webhook body accepted, in bytes (nginx answers 413 beyond, the app too).
    app_max_body_bytes: int = 1024 * 1024

    # --- app releases -----------------------------------------------------------
    # Releases kept in <base>/releases (the current and the previous one always stay);
    # `aisha-infra rollback` goes back to the previous one.
    app_releases_keep: int = 3

    # --- fal webhook signatures ------------------------------------------------
    # Verify X-Fal-Webhook-Signature (Ed25519) and reject unsigned deliveries with 401.
    # None = by tls_mode: on for "letsencrypt" (a public server), off for "self-signed" (labs).
    fal_verify_signatures: bool | None = None
    # fal's published JWKS; the app fetches and caches it.
    fal_jwks_url: str = "https://rest.alpha.fal.ai/.well-known/jwks.json"
    # Local JWKS file uploaded instead of fetching the URL (also allows an offline app).
    fal_jwks_file: str | None = None

    # --- nginx -------------------------------------------------------------------
    # HTTPS port fal calls.
    nginx_https_port: int = 8443
    # Plain HTTP port: ACME HTTP-01 challenges, everything else redirected to HTTPS.
    nginx_http_port: int = 80
    # Sustained requests per second per client address before 429.
    nginx_rate_limit_per_second: int = 100
    # Requests above the rate absorbed without delay before 429.
    nginx_rate_limit_burst: int = 200

    # --- TLS -----------------------------------------------------------------------
    # "self-signed" (default, for labs and tests) or "letsencrypt" (real servers).
    tls_mode: str = "self-signed"
    # Validity of a generated self-signed certificate.
    tls_selfsigned_days: int = 365
    # Regenerate a self-signed certificate expiring within this many days.
    tls_selfsigned_renew_days: int = 30
    # Contact for Let's Encrypt expiry notices; required with tls_mode=letsencrypt.
    letsencrypt_email: str | None = None
    # "production", "staging" or any ACME directory URL (https).
    letsencrypt_server: str = "production"
    # Local PEM bundle certbot uses to trust a private ACME server (e.g. Pebble).
    letsencrypt_ca_bundle: str | None = None
    # More names on the same certificate (each needs DNS pointing at the host).
    letsencrypt_extra_domains: tuple = ()
    # tar.gz of /etc/letsencrypt from the host this one replaces (`aisha-infra certs export`):
    # restored when the host has no certificate yet, so nothing is re-issued.
    letsencrypt_restore_archive: str | None = None
    # Issuance failed: the host keeps serving the self-signed certificate either way;
    # "fail" ends the run with an error (exit 1), "degrade" reports it and ends with success.
    letsencrypt_on_failure: str = "fail"
    # Seconds certbot may take to obtain a certificate before it is stopped.
    letsencrypt_timeout: int = 300

    # --- firewall --------------------------------------------------------------
    # Manage ufw: allow SSH, HTTP and HTTPS only, deny everything else incoming.
    firewall_enabled: bool = True
    # Port sshd listens on; allowed before ufw is enabled so SSH is never cut.
    ssh_port: int = 22

    # --- event store backups ----------------------------------------------------
    # Snapshot the event store on a timer (SQLite online backup: consistent while webhooks
    # arrive). None = on for the bundled app, off for your own backend (whose store we do not know).
    backup_enabled: bool | None = None
    # Minutes between two snapshots.
    backup_interval_minutes: int = 60
    # Snapshots kept on the host; older ones are deleted.
    backup_keep: int = 48
    # Where snapshots are kept: root only (directory 0700, files 0600), out of the app user's reach.
    backup_dir: str = "/var/backups/aisha"
    # Snapshot from `aisha-infra events pull` (checked here first: SQLite, integrity_check ok,
    # the app's schema), restored when the host has no event store yet.
    events_restore_archive: str | None = None
    # Delete events older than this many days from the live store at each backup; None = keep all.
    events_keep_days: int | None = None

    # --- end-of-run verification (from the control machine) -------------------
    # Check HTTPS health and the webhook path at the end of the run.
    verify_enabled: bool = True
    # Address to connect to; None = the address pyinfra uses for the host.
    verify_address: str | None = None
    # PEM bundle to verify the served chain; None = the deployed self-signed certificate
    # in self-signed mode, the system trust store in letsencrypt mode.
    verify_ca_bundle: str | None = None

    # --- fresh VMs: waiting, limits, SSH kept open --------------------------------
    # Seconds to wait, in all, for another apt/dpkg (unattended-upgrades right after a
    # VM boots, or an interrupted run's apt) to release its lock before failing.
    apt_lock_timeout: int = 600
    # Seconds the package step may take in all (lock waiting and downloads included).
    apt_timeout: int = 1800
    # Seconds `pip install -r requirements.txt` of your backend may take.
    pip_timeout: int = 900
    # Seconds the end-of-run check from the control machine may take.
    verify_timeout: int = 120
    # Your own ufw rules to keep, written as `ufw show added` prints them, e.g.
    # "allow from 203.0.113.5 to any port 9100 proto tcp"; every other rule is removed.
    firewall_extra_rules: tuple = ()

    # --- on-host watch (timer) and alerts ----------------------------------------
    # Check the host from itself on a timer: served certificate, /health, certbot, disk, restarts.
    watch_enabled: bool = True
    # Seconds between two checks.
    watch_interval_seconds: int = 300
    # Alert when the served certificate expires within this many days.
    watch_certificate_min_days: int = 21
    # Alert when the data directory's file system has less than this share free (percent).
    watch_disk_min_free_percent: int = 10
    # URL that gets a JSON POST on every change of state (holds a token: stored 0600 root).
    # None = no alerts (metrics and `aisha-infra status` still show the state).
    alert_webhook_url: str | None = None
    # Extra JSON fields of every alert, e.g. {"chat_id": "123456"} for Telegram's sendMessage.
    alert_webhook_fields: dict | None = None
    # Install prometheus-node-exporter and export the watch's results as metrics (textfile collector).
    metrics_enabled: bool = False
    # Addresses or networks (CIDR) that may scrape node_exporter on port 9100; empty = localhost only.
    metrics_allow_from: tuple = ()

    # --- derived values -----------------------------------------------------------
    @property
    def app_dir(self) -> str:
        """The running release's code: a link to current/app."""
        return f"{self.aisha_base_dir}/{paths.APP_LINK_NAME}"

    @property
    def releases_dir(self) -> str:
        return f"{self.aisha_base_dir}/{paths.RELEASES_DIR_NAME}"

    @property
    def current_release_link(self) -> str:
        return f"{self.aisha_base_dir}/{paths.CURRENT_RELEASE_LINK_NAME}"

    @property
    def venv_dir(self) -> str:
        return f"{self.aisha_base_dir}/{paths.VENV_DIR_NAME}"

    @property
    def ssl_dir(self) -> str:
        return f"{self.aisha_base_dir}/{paths.SSL_DIR_NAME}"

    @property
    def selfsigned_key_path(self) -> str:
        return f"{self.ssl_dir}/{self.aisha_domain}.key"

    @property
    def selfsigned_cert_path(self) -> str:
        return f"{self.ssl_dir}/{self.aisha_domain.replace('.', '_')}.crt"

    def endpoint_address(self, name: str, data) -> str:
        """Where the control machine reaches this host's HTTPS endpoint: verify_address,
        else the address pyinfra connects to (`data`'s ssh_hostname, else the host name)."""
        return self.verify_address or data.get("ssh_hostname") or name

    @property
    def pinned_certificate(self) -> str | None:
        """The certificate on the host that checks from the control machine trust: the
        deployed self-signed one, unless verify_ca_bundle or Let's Encrypt says otherwise."""
        if self.verify_ca_bundle is None and self.tls_mode == "self-signed":
            return self.selfsigned_cert_path
        return None

    @property
    def verifies_signatures(self) -> bool:
        if self.fal_verify_signatures is None:
            return self.tls_mode == "letsencrypt"
        return self.fal_verify_signatures

    @property
    def letsencrypt_domains(self) -> list[str]:
        return [self.aisha_domain, *self.letsencrypt_extra_domains]

    @property
    def letsencrypt_directory_url(self) -> str:
        return LETSENCRYPT_SERVERS.get(self.letsencrypt_server, self.letsencrypt_server)

    @property
    def letsencrypt_live_dir(self) -> str:
        return f"{paths.LETSENCRYPT_LIVE_DIR}/{self.aisha_domain}"

    @property
    def app_source_dir(self) -> Path:
        return Path(self.app_source) if self.app_source else BUNDLED_BACKEND

    @property
    def uses_bundled_app(self) -> bool:
        return self.app_source is None

    @property
    def uses_socket_activation(self) -> bool:
        if self.app_socket_activation is None:
            return self.uses_bundled_app
        return self.app_socket_activation

    @property
    def app_command(self) -> str:
        if self.app_start_command:
            return self.app_start_command
        return f"{self.venv_dir}/bin/python -m aisha_webhook_api serve"

    @property
    def backups_on(self) -> bool:
        if self.backup_enabled is None:
            return self.uses_bundled_app
        return self.backup_enabled

    @property
    def events_database_path(self) -> str:
        return f"{self.aisha_data_dir}/{paths.EVENTS_DATABASE_NAME}"

    @property
    def webhook_url(self) -> str:
        return f"https://{self.aisha_domain}:{self.nginx_https_port}/api/v1/avatar/status_update"


SETTING_NAMES = tuple(f.name for f in fields(Settings))
# Every setting's default, as pyinfra data: each @deploy of ours passes it as data_defaults,
# so host.data has every key inside our deploys and inventory data overrides it.
DEFAULTS = {f.name: f.default for f in fields(Settings)}
# Prefixes that mark a data key as ours, so a misspelt one is caught instead of ignored.
# (ssh_ is pyinfra's own: ssh_user, ssh_key, ...)
OUR_PREFIXES = (
    "aisha_", "app_", "fal_", "nginx_", "tls_", "letsencrypt_", "firewall_", "verify_",
    "backup_", "events_", "apt_", "pip_", "watch_", "alert_", "metrics_",
)


class SettingsError(ValueError):
    """Bad configuration, found before any host is touched."""


_DOMAIN_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_DOMAIN_CHARS = re.compile(r"[a-z0-9.-]")
_EMAIL_LOCAL = re.compile(r"^[A-Za-z0-9._%+-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Paths on the host land in nginx, systemd and logrotate files unquoted: plain characters only.
_PATH_CHARS = re.compile(r"[A-Za-z0-9/._+-]")
# RFC 3986 characters minus quotes, backslash and the like; '%' only as an escape.
_URL_CHARS = re.compile(r"[A-Za-z0-9._~:/?#\[\]@!&()*+,;=%-]")
# ExecStart= is not a shell: systemd gives these a meaning of its own.
_SYSTEMD_COMMAND_SPECIALS = "%$\\;"


def _bad_characters(value: str, allowed: re.Pattern) -> str:
    return ", ".join(repr(char) for char in dict.fromkeys(value) if not allowed.fullmatch(char))


def _control_character_problem(value: Any) -> str | None:
    """Any string in a setting (also inside lists and mappings) must be one printable line:
    a newline in a value would add lines to the nginx site or the systemd unit."""
    if isinstance(value, dict):
        texts = [(repr(key), key) for key in value] + [(f"{key}={item!r}", item) for key, item in value.items()]
    elif isinstance(value, (list, tuple)):
        texts = [(repr(item), item) for item in value]
    else:
        texts = [(repr(value), value)]
    for shown, text in texts:
        if isinstance(text, str):
            for char in text:
                if ord(char) < 32 or 127 <= ord(char) < 160 or char in "\u2028\u2029":
                    return f"{shown} contains a control character ({char!r}); settings are single-line text"
    return None


def _domain_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return "is required: the public DNS name fal will call, e.g. 'webhooks.example.com'"
    if len(value) > 253:
        return f"{value!r} is longer than 253 characters"
    try:
        ipaddress.ip_address(value)
        return f"{value!r} is an IP address; certificates and SNI need a DNS name"
    except ValueError:
        pass
    bad = _bad_characters(value, _DOMAIN_CHARS)
    if bad:
        return (f"{value!r} contains characters not allowed in a DNS name: {bad} "
                "(use lower-case letters, digits, hyphens and dots)")
    labels = value.split(".")
    if len(labels) < 2:
        return f"{value!r} is not a fully qualified name (it needs a dot, e.g. 'webhooks.example.com')"
    for label in labels:
        if not _DOMAIN_LABEL.match(label):
            return (
                f"{value!r} is not a valid DNS name (label {label!r}: use lower-case letters, "
                "digits and inner hyphens, 1-63 characters)"
            )
    return None


def _email_problem(value: Any) -> str | None:
    if value is None:
        return None
    local, at, domain = value.partition("@") if isinstance(value, str) else ("", "", "")
    if not at or not _EMAIL_LOCAL.match(local) or _domain_problem(domain):
        return f"{value!r} is not an e-mail address (like 'ops@example.com')"
    return None


def _https_url_problem(value: Any) -> str | None:
    """A URL the host fetches from the internet: https, a host name, nothing that could
    break out of the file it is written to, no credentials (the unit is world-readable)."""
    example = "e.g. 'https://rest.alpha.fal.ai/.well-known/jwks.json'"
    if not isinstance(value, str) or not value:
        return f"{value!r} is not a URL; {example}"
    bad = _bad_characters(value, _URL_CHARS)
    if bad:
        return f"{value!r} contains characters not allowed in a URL: {bad}"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        return f"{value!r} is not a valid URL ({exc})"
    if parts.scheme != "https":
        return f"{value!r} must use https:// (it is fetched over the internet); {example}"
    if not parts.hostname:
        return f"{value!r} has no host name; {example}"
    if parts.username or parts.password:
        return f"{value!r} must not hold credentials (user:password@)"
    return None


def _port_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        return f"{value!r} is not a TCP port (an integer from 1 to 65535)"
    return None


def _positive_int_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"{value!r} is not a positive integer"
    return None


def _bool_problem(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"{value!r} is not True or False"


def _file_problem(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not Path(value).expanduser().is_file():
        return f"{value!r} is not a file on the control machine"
    return None


def _local_dir_problem(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not Path(value).expanduser().is_dir():
        return f"{value!r} is not a directory on the control machine"
    return None


def _pem_bundle_problem(value: Any) -> str | None:
    problem = _file_problem(value)
    if problem or value is None:
        return problem
    from cryptography import x509  # only when set: it costs ~10 ms to import

    try:
        x509.load_pem_x509_certificates(Path(value).expanduser().read_bytes())
    except ValueError:
        return f"{value!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    return None


def _jwks_file_problem(value: Any) -> str | None:
    from aisha_infra.deploy.bundled_app import jwks_problem

    problem = _file_problem(value)
    if problem or value is None:
        return problem
    problem = jwks_problem(Path(value).expanduser())
    return f"{value!r} {problem}" if problem else None


def _abs_path_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value.startswith("/"):
        return f"{value!r} is not an absolute path (it must start with '/')"
    bad = _bad_characters(value, _PATH_CHARS)
    if bad:
        return (f"{value!r} contains characters not allowed in a path on the host: {bad} "
                "(use letters, digits and / . _ - +)")
    if value == "/" or posixpath.normpath(value) != value or "/../" in f"{value}/":
        return f"{value!r} is not a normalised path (no '.', '..', '//' or trailing '/'), e.g. '/opt/aisha-backend'"
    return None


def _command_problem(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        return f"{value!r} is not a command line (a string)"
    try:
        words = shlex.split(value)
    except ValueError as exc:
        return f"{value!r} cannot be split like a shell command line ({exc})"
    if not words:
        return "is empty: say how systemd starts your backend"
    if not words[0].startswith("/"):
        return f"{value!r} must start with an absolute path to the program, e.g. '/opt/aisha-backend/venv/bin/gunicorn app:app'"
    specials = [char for char in _SYSTEMD_COMMAND_SPECIALS if char in value]
    if specials:
        return (f"{value!r} contains {', '.join(map(repr, specials))}, which systemd's ExecStart= reads "
                "its own way (% specifiers, $ variables, \\ escapes, ; separators): put such logic in a script and start that")
    return None


def _app_environment_problem(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and _ENV_NAME.match(k) for k in value):
        return f"{value!r} is not a mapping of environment variable names to values"
    for name, item in value.items():
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            return f"{name}={item!r}: values must be text or numbers"
    return None


def _data_dir_problem(value: Any) -> str | None:
    problem = _abs_path_problem(value)
    if problem:
        return problem
    if not value.startswith("/var/lib/"):
        return f"{value!r} must be below /var/lib/ (systemd's StateDirectory)"
    return None


def _user_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not re.match(r"^[a-z_][a-z0-9_-]{0,31}$", value) or value == "root":
        return f"{value!r} is not a valid unprivileged user name"
    return None


def _one_of(*allowed: str):
    def problem(value: Any) -> str | None:
        if value not in allowed:
            return f"{value!r} is unknown; use one of {', '.join(map(repr, allowed))}"
        return None
    return problem


def _acme_server_problem(value: Any) -> str | None:
    if value in LETSENCRYPT_SERVERS:
        return None
    problem = _https_url_problem(value)
    if problem:
        return f"is neither 'production', 'staging' nor an https:// ACME directory URL: {problem}"
    return None


def _domain_list_problem(value: Any) -> str | None:
    if not isinstance(value, (list, tuple)):
        return f"{value!r} is not a list of DNS names"
    return "; ".join(filter(None, map(_domain_problem, value))) or None


def _address_problem(value: Any) -> str | None:
    if value is None:
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if _domain_problem(value):
            return f"{value!r} is neither an IP address nor a DNS name"
    return None


_UFW_PORTS = r"\d{1,5}(:\d{1,5})?(,\d{1,5}(:\d{1,5})?)*"
# The form `ufw show added` prints, which is how the firewall step recognises a rule as kept.
_UFW_RULE = re.compile(
    r"^(allow|deny|reject|limit)( (in|out))?( on [A-Za-z0-9_.-]+)?"
    rf"( {_UFW_PORTS}(/(tcp|udp))?"
    rf"|( from (?!any$|any )[^ ]+| from any(?= port))?( port {_UFW_PORTS})?"
    rf"( to (?!any$|any )[^ ]+| to any(?= port))?( port {_UFW_PORTS})?( proto (tcp|udp|ah|esp|gre|ipv6|igmp))?)$"
)


def _ufw_rule_problem(rule: Any) -> str | None:
    example = "e.g. 'allow 9100/tcp' or 'allow from 203.0.113.5 to any port 9100 proto tcp'"
    if not isinstance(rule, str) or not _UFW_RULE.match(rule):
        return f"{rule!r} is not a ufw rule in the form `ufw show added` prints it ({example})"
    if not re.search(r" (from|to) |/|^\S+( (in|out))?( on \S+)? \d", rule):
        return f"{rule!r} names neither a port nor an address ({example})"
    for address in re.findall(r" (?:from|to) (\S+)", rule):
        if address != "any":
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError:
                return f"{rule!r}: {address!r} is not an IP address or network"
    return None


def _ufw_rules_problem(value: Any) -> str | None:
    if not isinstance(value, (list, tuple)):
        return f"{value!r} is not a list of ufw rules"
    return "; ".join(filter(None, map(_ufw_rule_problem, value))) or None


def _seconds_problem(value: Any) -> str | None:
    message = _positive_int_problem(value)
    return message and f"{message} (seconds)"


def _int_between(low: int, high: int):
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"{value!r} is not an integer from {low} to {high}"
        return None

    return check


def _alert_url_problem(value: Any) -> str | None:
    # The URL holds a token: the messages do not repeat it.
    if value is None:
        return None
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+", value):
        return "is not an http(s) URL (e.g. a Slack incoming webhook or Telegram's sendMessage)"
    bad = _bad_characters(value, _URL_CHARS)
    return f"contains {bad}: percent-encode them" if bad else None


def _alert_fields_problem(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        return f"{value!r} is not a mapping of JSON field names to values"
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        return f"{value!r} cannot be sent as JSON: {exc}"
    return None


def _networks_problem(value: Any) -> str | None:
    if not isinstance(value, (list, tuple)):
        return f"{value!r} is not a list of addresses or networks"
    for entry in value:
        try:
            network = ipaddress.ip_network(entry, strict=True)
        except (TypeError, ValueError):
            return f"{entry!r} is not an IP address or network (e.g. '203.0.113.7' or '203.0.113.0/24')"
        if network.prefixlen == 0:
            return f"{entry!r} opens the metrics to everyone; name the scraper's addresses"
    return None


# Each setting's own check: (value) -> problem or None. A new setting adds its line here
# (tests/unit/test_settings.py fails for a setting without one).
CHECKS = {
    "aisha_domain": _domain_problem,
    "aisha_user": _user_problem,
    "aisha_base_dir": _abs_path_problem,
    "aisha_log_dir": _abs_path_problem,
    "aisha_data_dir": _data_dir_problem,
    "app_port": _port_problem,
    "app_source": _local_dir_problem,
    "app_start_command": _command_problem,
    "app_socket_activation": lambda v: None if v is None else _bool_problem(v),
    "app_environment": _app_environment_problem,
    "app_max_body_bytes": _positive_int_problem,
    "app_releases_keep": lambda v: _positive_int_problem(v) or (
        None if v >= 2 else f"{v!r} keeps no release to roll back to: use 2 or more"),
    "fal_verify_signatures": lambda v: None if v is None else _bool_problem(v),
    "fal_jwks_url": _https_url_problem,
    "fal_jwks_file": _jwks_file_problem,
    "nginx_https_port": _port_problem,
    "nginx_http_port": _port_problem,
    "nginx_rate_limit_per_second": _positive_int_problem,
    "nginx_rate_limit_burst": _positive_int_problem,
    "tls_mode": _one_of(*TLS_MODES),
    "tls_selfsigned_days": _positive_int_problem,
    "tls_selfsigned_renew_days": _positive_int_problem,
    "letsencrypt_email": _email_problem,
    "letsencrypt_server": _acme_server_problem,
    "letsencrypt_ca_bundle": _pem_bundle_problem,
    "letsencrypt_extra_domains": _domain_list_problem,
    "letsencrypt_restore_archive": _file_problem,
    "letsencrypt_on_failure": _one_of("fail", "degrade"),
    "letsencrypt_timeout": _positive_int_problem,
    "firewall_enabled": _bool_problem,
    "ssh_port": _port_problem,
    "verify_enabled": _bool_problem,
    "verify_address": _address_problem,
    "verify_ca_bundle": _file_problem,  # read on the control machine only, by the verification
    "backup_enabled": lambda v: None if v is None or isinstance(v, bool) else f"{v!r} is not True, False or None",
    "backup_interval_minutes": _positive_int_problem,
    "backup_keep": _positive_int_problem,
    "backup_dir": _abs_path_problem,
    "events_restore_archive": _file_problem,
    "events_keep_days": lambda v: None if v is None else _positive_int_problem(v) and (
        f"{_positive_int_problem(v)} (days), or None to keep every event"),
    "apt_lock_timeout": _seconds_problem,
    "apt_timeout": _seconds_problem,
    "pip_timeout": _seconds_problem,
    "verify_timeout": _seconds_problem,
    "firewall_extra_rules": _ufw_rules_problem,
    "watch_enabled": _bool_problem,
    "watch_interval_seconds": _int_between(10, 86400),
    "watch_certificate_min_days": _int_between(1, 365),
    "watch_disk_min_free_percent": _int_between(1, 99),
    "alert_webhook_url": _alert_url_problem,
    "alert_webhook_fields": _alert_fields_problem,
    "metrics_enabled": _bool_problem,
    "metrics_allow_from": _networks_problem,
}


def _check_each(values: dict[str, Any]) -> list[tuple[str, str]]:
    """Problems with single values, as (key, message). A value with a control character
    gets that one message: its own check would only add noise."""
    problems = []
    for key in SETTING_NAMES:
        message = _control_character_problem(values[key])
        check = CHECKS.get(key)
        if not message and check:
            message = check(values[key])
        if message:
            problems.append((key, message))
    return problems


def _backup_problems(values: dict[str, Any]) -> list[tuple[str, str]]:
    """The event store backup settings together (each value alone is checked by CHECKS)."""
    from aisha_infra.deploy.snapshots import snapshot_problem  # it runs the bundled backend's check

    problems = []
    enabled, own_backend = values["backup_enabled"], values["app_source"] is not None
    if enabled is True and own_backend:
        problems.append(("backup_enabled", "backs up the bundled app's event store; your own backend (app_source) keeps its own data"))
    backup_dir, data_dir = values["backup_dir"], str(values["aisha_data_dir"])
    if not _abs_path_problem(backup_dir) and (
            backup_dir == data_dir or backup_dir.startswith(data_dir + "/") or data_dir.startswith(backup_dir + "/")):
        problems.append(("backup_dir", f"{backup_dir!r} overlaps aisha_data_dir {data_dir!r}, which the app user can write; "
                                       "keep snapshots apart, e.g. '/var/backups/aisha'"))
    if values["events_keep_days"] is not None and (enabled is False or own_backend):
        problems.append(("events_keep_days", "pruning runs with the backups: it needs backup_enabled and the bundled app"))
    archive = values["events_restore_archive"]
    if archive is not None and not _file_problem(archive):
        message = None
        if own_backend:
            message = "restores the bundled app's event store; remove it when app_source is set"
        elif fault := snapshot_problem(archive):
            message = (f"{archive!r} is not a usable event snapshot: {fault}. "
                       "Use a file written by `aisha-infra events pull`.")
        if message:
            problems.append(("events_restore_archive", message))
    return problems


def _watch_problems(values: dict[str, Any]) -> list[tuple[str, str]]:
    """Who may scrape the metrics, together with what opens them (each value alone is
    checked by CHECKS)."""
    problems = []
    if values["metrics_allow_from"] and not values["metrics_enabled"]:
        problems.append(("metrics_allow_from", "needs metrics_enabled = True (there is nothing to scrape without it)"))
    if values["metrics_allow_from"] and not values["firewall_enabled"]:
        problems.append(("metrics_allow_from", "needs firewall_enabled = True: without ufw, node_exporter would be open to everyone"))
    return problems


def _check_together(values: dict[str, Any]) -> list[tuple[str, str]]:
    """Problems that only show when values are seen together."""
    problems = []
    ports = {key: values[key] for key in ("ssh_port", "nginx_http_port", "nginx_https_port", "app_port")}
    seen: dict[Any, str] = {}
    for key, port in ports.items():
        if port in seen:
            problems.append((key, f"{port} clashes with {seen[port]}; every port needs its own number"))
        seen.setdefault(port, key)

    if values["tls_mode"] == "letsencrypt":
        if not values["letsencrypt_email"]:
            problems.append(("letsencrypt_email", "is required with tls_mode='letsencrypt' (Let's Encrypt sends expiry notices there)"))
        if values["nginx_http_port"] != 80:
            problems.append(("nginx_http_port", "must be 80 with tls_mode='letsencrypt': ACME HTTP-01 validation always connects to port 80"))

    if values["app_source"] is not None:
        if not values["app_start_command"]:
            problems.append(("app_start_command", "is required with app_source: say how systemd starts your backend"))
    verifies = values["fal_verify_signatures"]
    if verifies is None:
        verifies = values["tls_mode"] == "letsencrypt"
    if verifies and not (values["fal_jwks_url"] or values["fal_jwks_file"]):
        problems.append(("fal_jwks_url", "fal_verify_signatures needs fal_jwks_url or fal_jwks_file"))

    archive = values["letsencrypt_restore_archive"]
    if archive and not _file_problem(archive) and not _domain_problem(values["aisha_domain"]):
        from aisha_infra.deploy.letsencrypt_archive import ArchiveError, checked_archive

        try:
            checked_archive(archive, values["aisha_domain"])
        except ArchiveError as exc:
            problems.append(("letsencrypt_restore_archive", f"{archive!r} {exc}; nothing from it was restored"))
    return problems


# The bundled app's variables the deploy derives from settings (aisha_infra/deploy/rendering.py).
_BUNDLED_APP_VARIABLES = {
    "AISHA_DATA_DIR": "aisha_data_dir",
    "AISHA_API_PORT": "app_port",
    "AISHA_MAX_BODY_BYTES": "app_max_body_bytes",
    "AISHA_FAL_VERIFY_SIGNATURES": "fal_verify_signatures",
    "AISHA_FAL_JWKS_URL": "fal_jwks_url",
    "AISHA_FAL_JWKS_FILE": "fal_jwks_file",
}


def _bundled_app_problems(settings: Settings) -> list[tuple[str, str]]:
    """The bundled app's environment, as the unit will set it, through the app's own
    configuration rules: a value it refuses never reaches the host."""
    from aisha_infra.deploy.bundled_app import environment_problem
    from aisha_infra.deploy.rendering import app_environment

    if not settings.uses_bundled_app:
        return []
    problem = environment_problem(app_environment(settings))
    if problem is None:
        return []
    variable, detail = problem
    if variable in (settings.app_environment or {}):
        key = "app_environment"
    else:
        key = _BUNDLED_APP_VARIABLES.get(variable, "app_environment")
    return [(key, f"the bundled app refuses {variable}: {detail}")]


def _fresh_vm_problems(values: dict[str, Any]) -> list[tuple[str, str]]:
    """Limits and firewall rules together (each value alone is checked by CHECKS)."""
    problems = []
    lock, step = values["apt_lock_timeout"], values["apt_timeout"]
    if not _seconds_problem(lock) and not _seconds_problem(step) and step <= lock:
        problems.append(("apt_timeout", f"{step} must be longer than apt_lock_timeout ({lock}): "
                                        "the step waits for the lock, then installs"))
    rules = values["firewall_extra_rules"]
    if _ufw_rules_problem(rules):
        return problems
    own_ports = {values["nginx_http_port"], values["nginx_https_port"]}
    for rule in rules:
        simple = re.match(r"^(deny|reject|limit) (\d+)(/tcp)?$", rule)
        if simple and int(simple.group(2)) in own_ports:
            # ufw keeps one rule per port and protocol: it and our `allow` would replace each other every run
            problems.append(("firewall_extra_rules",
                             f"{rule!r} contradicts the deploy's own 'allow {simple.group(2)}/tcp' (HTTP/HTTPS)"))
    return problems


def unknown_keys(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Keys that look like ours (by prefix) but are not settings: almost always typos."""
    problems = []
    for key in data:
        if key.startswith(OUR_PREFIXES) and key not in SETTING_NAMES:
            close = difflib.get_close_matches(key, SETTING_NAMES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append((key, f"is not a setting of this deploy{hint}"))
    return problems


def build_settings(data: dict[str, Any], where: str = "") -> Settings:
    """Validate `data` (pyinfra host data) and return the settings, or raise SettingsError
    listing every problem with its key."""
    values = dict(DEFAULTS)
    values.update({k: v for k, v in data.items() if k in SETTING_NAMES})
    for key in ("letsencrypt_extra_domains", "firewall_extra_rules", "metrics_allow_from"):
        if isinstance(values[key], list):
            values[key] = tuple(values[key])

    problems = (unknown_keys(data) + _check_each(values) + _check_together(values) + _backup_problems(values)
                + _fresh_vm_problems(values) + _watch_problems(values))
    if not problems:  # the app's own rules need values that passed ours
        problems = _bundled_app_problems(Settings(**values))
    if problems:
        prefix = f"{where}: " if where else ""
        lines = [f"  {key}: {message}" for key, message in problems]
        raise SettingsError(
            f"{prefix}invalid configuration; nothing was changed on any host.\n"
            + "\n".join(lines)
            + "\nSet these in group_data/all.py (or per host in the inventory)."
        )
    return Settings(**values)
