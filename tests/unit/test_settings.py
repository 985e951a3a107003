"""Bad configuration is rejected before any host is touched, naming the key."""

import pytest

from aisha_infra.deploy.settings import CHECKS, SETTING_NAMES, SettingsError, build_settings

BASE = {"aisha_domain": "aibots.test"}


def test_defaults_are_valid():
    s = build_settings(BASE)
    assert (s.nginx_https_port, s.app_port, s.tls_mode) == (8443, 8000, "self-signed")
    assert s.selfsigned_key_path == "/opt/aisha-backend/ssl/aibots.test.key"
    assert s.selfsigned_cert_path == "/opt/aisha-backend/ssl/aibots_test.crt"
    assert s.webhook_url == "https://aibots.test:8443/api/v1/avatar/status_update"


def test_unrelated_pyinfra_data_is_ignored():
    build_settings({**BASE, "ssh_user": "root", "ssh_key": "/k", "_sudo": True})


@pytest.mark.parametrize(
    "override, key, words",
    [
        ({"aisha_domain": ""}, "aisha_domain", "is required"),
        ({"aisha_domain": "localhost"}, "aisha_domain", "fully qualified"),
        ({"aisha_domain": "bad_name.example.com"}, "aisha_domain", "not allowed in a DNS name: '_'"),
        ({"aisha_domain": "198.18.1.2"}, "aisha_domain", "IP address"),
        ({"nginx_https_port": 70000}, "nginx_https_port", "not a TCP port"),
        ({"app_port": "8000"}, "app_port", "not a TCP port"),
        ({"app_port": 8443}, "app_port", "clashes with nginx_https_port"),
        ({"ssh_port": 80}, "nginx_http_port", "clashes with ssh_port"),
        ({"tls_mode": "acme"}, "tls_mode", "unknown"),
        ({"tls_mode": "letsencrypt"}, "letsencrypt_email", "is required"),
        ({"tls_mode": "letsencrypt", "letsencrypt_email": "nope"}, "letsencrypt_email", "not an e-mail"),
        ({"tls_mode": "letsencrypt", "letsencrypt_email": "a@b.org", "nginx_http_port": 8080}, "nginx_http_port", "must be 80"),
        ({"letsencrypt_server": "http://acme.example/dir"}, "letsencrypt_server", "https://"),
        ({"letsencrypt_extra_domains": ["ok.example.com", "not ok.example.com"]}, "letsencrypt_extra_domains", "not allowed in a DNS name"),
        ({"letsencrypt_ca_bundle": "/nonexistent.pem"}, "letsencrypt_ca_bundle", "not a file"),
        ({"app_source": "/nonexistent"}, "app_source", "not a directory"),
        ({"app_source": "/tmp"}, "app_start_command", "is required"),
        ({"aisha_user": "root"}, "aisha_user", "unprivileged"),
        ({"aisha_data_dir": "/srv/aisha"}, "aisha_data_dir", "/var/lib/"),
        ({"firewall_enabled": "yes"}, "firewall_enabled", "True or False"),
        ({"nginx_https_prot": 9443}, "nginx_https_prot", "did you mean 'nginx_https_port'"),
        ({"app_environment": {"BAD NAME": "x"}}, "app_environment", "environment variable"),
    ],
)
def test_invalid_setting_is_named(override, key, words):
    with pytest.raises(SettingsError) as error:
        build_settings({**BASE, **override}, where="web-1")
    message = str(error.value)
    assert message.startswith("web-1: invalid configuration; nothing was changed on any host.")
    line = next(line for line in message.splitlines() if line.strip().startswith(f"{key}:"))
    assert words in line


def test_every_problem_is_listed_at_once():
    with pytest.raises(SettingsError) as error:
        build_settings({"aisha_domain": "x", "nginx_https_port": 0, "tls_mode": "nope"})
    text = str(error.value)
    assert "aisha_domain" in text and "nginx_https_port" in text and "tls_mode" in text


def test_letsencrypt_settings():
    s = build_settings({**BASE, "tls_mode": "letsencrypt", "letsencrypt_email": "ops@example.org",
                        "letsencrypt_server": "staging", "letsencrypt_extra_domains": ["www.aibots.test"]})
    assert s.letsencrypt_directory_url.startswith("https://acme-staging-v02")
    assert s.letsencrypt_domains == ["aibots.test", "www.aibots.test"]
    assert s.letsencrypt_live_dir == "/etc/letsencrypt/live/aibots.test"


def test_every_setting_has_a_check():
    missing = [name for name in SETTING_NAMES if name not in CHECKS]
    assert not missing, f"settings without a check in aisha_infra/deploy/settings.py CHECKS: {missing}"
