"""Every custom operation honours the connection: with `_sudo` in the host's data, each
command it runs, its fact reads included, reaches the connector wrapped in sudo (with
`_sudo_password`, through pyinfra's askpass helper), and so do `_sudo_user`, `_env` and
`_timeout`. Operations run through pyinfra's own execution (tests/unit/recording.py), so a
function command calling host.run_shell_command without the arguments is caught too."""

from __future__ import annotations

import pytest
from pyinfra.api import FunctionCommand, operation

from aisha_infra.deploy.operations import accounts, app, apt, letsencrypt, nginx, tls, ufw, verify
from aisha_infra.deploy.rendering import certificate_snippet_context, site_context
from aisha_infra.deploy.settings import build_settings
from tests.unit.recording import Recorded, record_operation

SUDO = {"_sudo": True}
SUDO_PASSWORD = {"_sudo": True, "_sudo_password": "lab-secret"}
SHA1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"


def backend_source(tmp_path):
    (tmp_path / "main.py").write_text("print('hello')\n")
    return str(tmp_path)


# operation, its arguments (a function of tmp_path), fact answers
OPERATIONS = {
    "accounts.system_user": (accounts.system_user, lambda tmp: dict(
        user="aisha", group="aisha", home="/opt/aisha-backend", shell="/usr/sbin/nologin"),
        {"uname -s": ["Linux"], "command -v useradd": ["/usr/sbin/useradd"]}),
    "apt.packages_install_started": (apt.packages_install_started, lambda tmp: dict(packages=["ufw"], lock_wait=600),
                                     {}),
    "apt.packages_install_waited": (apt.packages_install_waited, lambda tmp: dict(timeout=1800), {}),
    "app.mirrored_directory": (app.mirrored_directory, lambda tmp: dict(
        src=backend_source(tmp), dest="/opt/aisha-backend/app", user="aisha", group="aisha",
        mode="0644", dir_mode="0755", exclude=["*.pyc"], exclude_dir=["__pycache__"]), {}),
    "app.virtualenv": (app.virtualenv, lambda tmp: dict(path="/opt/aisha-backend/venv"), {}),
    "app.requirements_installed": (app.requirements_installed, lambda tmp: dict(
        venv="/opt/aisha-backend/venv", requirements="/opt/aisha-backend/app/requirements.txt"),
        {"/app/requirements.txt": [f"{SHA1}  /opt/aisha-backend/app/requirements.txt"]}),
    "nginx.validated_config": (nginx.validated_config, lambda tmp: dict(
        template="nginx/aisha-webhook-certificate.conf.j2",
        dest="/etc/nginx/snippets/aisha-webhook-certificate.conf",
        context=certificate_snippet_context("/x.crt", "/x.key", "self-signed")), {}),
    "nginx.site_config": (nginx.site_config, lambda tmp: dict(
        template="nginx/aisha-webhook.conf.j2", dest="/etc/nginx/sites-available/aisha-webhook.conf",
        context=site_context(build_settings({"aisha_domain": "a.test"}))),
        {"nginx -v": ["nginx version: nginx/1.26.3"]}),
    "nginx.certificate_snippet": (nginx.certificate_snippet, lambda tmp: dict(
        dest="/etc/nginx/snippets/aisha-webhook-certificate.conf", selfsigned_cert="/x.crt",
        selfsigned_key="/x.key", letsencrypt_live_dir="/etc/letsencrypt/live/a.test",
        names=["a.test"]), {}),
    "nginx.reloaded": (nginx.reloaded, lambda tmp: dict(service="nginx.service"), {}),
    "tls.self_signed_certificate": (tls.self_signed_certificate, lambda tmp: dict(
        domain="a.test", cert="/opt/aisha-backend/ssl/a.crt",
        key="/opt/aisha-backend/ssl/a.key", owner="aisha"), {}),
    "ufw.allow_only": (ufw.allow_only, lambda tmp: dict(rules=["allow 22/tcp"]), {}),
    "ufw.default_policy": (ufw.default_policy, lambda tmp: dict(
        direction="incoming", policy="deny"), {}),
    "ufw.enabled": (ufw.enabled, lambda tmp: {}, {}),
    # certbot itself runs in a FunctionCommand that passes the connector arguments on
    "letsencrypt.certificate": (letsencrypt.certificate, lambda tmp: dict(
        names=["a.test"], email="ops@a.test", server="https://acme.test/dir", webroot="/var/www/aisha-acme"), {}),
    "verify.serves_configured_certificate": (verify.serves_configured_certificate, lambda tmp: dict(
        port=8443, domain="a.test", config="/etc/nginx/snippets/aisha-webhook-certificate.conf"),
        {"ssl_certificate": ["path=/c.pem", "configured=AA:01", "served=BB:02"]}),
    # the certificate to trust is read from the host (a fact) before anything is checked
    "verify.https_endpoint": (verify.https_endpoint, lambda tmp: dict(
        address="127.0.0.1", domain="a.test", port=8443, webhook_url="https://a.test:8443/x",
        pinned_cert="/opt/aisha-backend/ssl/a.crt"), {}),
}


def record(name: str, host_data: dict, tmp_path) -> Recorded:
    op, arguments, answers = OPERATIONS[name]
    return record_operation(op, host_data, answers=answers, **arguments(tmp_path))


def sudo_wrapped(line: str, password: bool) -> bool:
    if password:  # pyinfra passes the password to its askpass helper, sudo -A reads it
        return line.startswith("env SUDO_ASKPASS=") and " sudo -H -A -k sh -c " in line
    return line.startswith("sudo -H -n sh -c ")


@pytest.mark.parametrize("host_data", [SUDO, SUDO_PASSWORD], ids=["sudo", "sudo-password"])
@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_every_command_runs_with_sudo(name, host_data, tmp_path):
    recorded = record(name, host_data, tmp_path)
    assert recorded.commands or recorded.uploads, f"{name} ran nothing: the test proves nothing"
    password = "_sudo_password" in host_data
    unwrapped = [line for line in recorded.commands if not sudo_wrapped(line, password)]
    assert unwrapped == [], f"{name} ran commands without sudo"
    for remote_path, arguments in recorded.uploads:  # files.put/sync: moved into place by sudo
        assert arguments.get("_sudo") is True, f"{name} uploaded {remote_path} without sudo"


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_the_other_connection_arguments_reach_every_command(name, tmp_path):
    recorded = record(name, {"_sudo": True, "_sudo_user": "aisha", "_env": {"AISHA_PROBE": "1"},
                             "_timeout": 77}, tmp_path)
    assert recorded.commands
    assert all(line.startswith("sudo -H -n -u aisha sh -c ") for line in recorded.commands)
    assert all("export AISHA_PROBE=1 && " in line for line in recorded.commands)
    assert set(recorded.timeouts) == {77}


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_as_root_nothing_is_wrapped(name, tmp_path):
    recorded = record(name, {}, tmp_path)
    assert not any("sudo" in line.split(" sh -c ")[0] for line in recorded.commands)


def _ignores_the_connection(state, host):
    host.run_shell_command("certbot renew")  # no connector arguments: runs as the login user
    return True


@operation()
def function_command_without_arguments():
    yield FunctionCommand(_ignores_the_connection, (), {})


def test_a_function_command_ignoring_the_connection_is_caught():
    recorded = record_operation(function_command_without_arguments, SUDO)
    assert [line for line in recorded.commands if not sudo_wrapped(line, False)] == [
        "sh -c 'certbot renew'"]
