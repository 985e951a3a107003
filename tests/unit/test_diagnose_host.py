"""Host-side checks (what `diagnose --ssh-key` runs over SSH), with a runner that
executes the real `nginx -t`/`nginx -T`, `cat` and `openssl` locally on a
configuration shaped like the project's site, and canned answers for the rest."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from aisha_infra.tools.diagnose import host, nginx_config, remote, ufw
from aisha_infra.tools import ssh as ssh_module
from aisha_infra.tools.ssh import SSHHost
from aisha_infra.checks.certificates import parse_pem_certs

from .certfactory import write_pem
from .tlscases import DOMAIN, build_pki

PORT = 8443
UFW_GOOD = """Status: active
Logging: on (low)
Default: deny (incoming), allow (outgoing), deny (routed)
New profiles: skip

To                         Action      From
--                         ------      ----
22/tcp                     ALLOW IN    Anywhere
80/tcp                     ALLOW IN    Anywhere
8443/tcp                   ALLOW IN    Anywhere
22/tcp (v6)                ALLOW IN    Anywhere (v6)
80/tcp (v6)                ALLOW IN    Anywhere (v6)
8443/tcp (v6)              ALLOW IN    Anywhere (v6)
"""

needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return build_pki(tmp_path_factory.mktemp("pki"))


class LocalHost:
    """A Runner: nginx against a private configuration, real cat/openssl/sh, canned
    ufw/systemctl/journalctl. Records every command it was given."""

    def __init__(self, conf, canned=None):
        self.conf = conf
        self.commands = []
        self.canned = {
            "true": (0, "", ""),
            "ufw status verbose": (0, UFW_GOOD, ""),
            "systemctl is-active nginx aisha-api": (0, "active\nactive\n", ""),
            "journalctl -u nginx -u aisha-api -p err -n 20 --no-pager": (0, "-- No entries --\n", ""),
            **(canned or {}),
        }

    def __call__(self, command):
        self.commands.append(command)
        if command in self.canned:
            return self.canned[command]
        if command in ("nginx -t", "nginx -T"):
            command = f"{command} -c {self.conf} -e stderr"
        result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=20)
        return result.returncode, result.stdout, result.stderr


def write_site(tmp_path, cert, key):
    """nginx.conf -> sites/*.conf -> certificate snippet, like the deploy lays it out."""
    (tmp_path / "sites").mkdir()
    (tmp_path / "snippets").mkdir()
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\n"
        "events {}\n"
        "http {\n"
        "    access_log off;\n"
        f"    include {tmp_path}/sites/*.conf;\n"
        "}\n"
    )
    (tmp_path / "sites" / "aisha-webhook.conf").write_text(
        "server {\n"
        f"    listen {PORT} ssl default_server;\n"
        f"    listen [::]:{PORT} ssl default_server;\n"
        "    ssl_reject_handshake on;\n"
        "}\n"
        "server {\n"
        f"    listen {PORT} ssl http2;  # the webhook site\n"
        f"    server_name {DOMAIN};\n"
        f"    include {tmp_path}/snippets/aisha-webhook-certificate.conf;\n"
        "    location / { return 404; }\n"
        "}\n"
    )
    (tmp_path / "snippets" / "aisha-webhook-certificate.conf").write_text(
        f'ssl_certificate {cert};\nssl_certificate_key "{key}";\n'
    )
    return tmp_path / "nginx.conf"


def named(findings, check):
    return next(f for f in findings if f.check == check)


def not_ok(findings):
    return [(f.check, f.severity) for f in findings if f.severity != "ok"]


@needs_nginx
def test_healthy_host_is_all_ok(tmp_path, pki):
    case = pki.cases["good"]
    run = LocalHost(write_site(tmp_path, case.chain, case.key))

    findings = host.check_host(run, DOMAIN, PORT, nginx_conf=str(run.conf))

    assert not_ok(findings) == []
    assert {f.check for f in findings} >= {"ufw", "nginx.config", "nginx.certificate", "tls.key_match", "journal"}
    certificate = named(findings, "nginx.certificate")
    assert str(case.chain) in certificate.message and str(case.key) in certificate.message


@needs_nginx
def test_key_mismatch_is_found_in_the_files_nginx_uses(tmp_path, pki):
    case = pki.cases["good"]
    run = LocalHost(write_site(tmp_path, case.chain, pki.other_key))

    findings = host.check_host(run, DOMAIN, PORT, nginx_conf=str(run.conf))

    assert not_ok(findings) == [("nginx.config", "error"), ("tls.key_mismatch", "error")]
    assert "key values mismatch" in named(findings, "nginx.config").message
    # nginx -T prints nothing for a broken configuration: the files were read with cat.
    assert any(c.startswith("for f in ") for c in run.commands)
    # The private key never leaves the host: only its public half is read.
    assert not any(c.startswith("cat") and str(pki.other_key) in c for c in run.commands)


@needs_nginx
def test_intermediate_before_leaf_is_wrong_order_not_key_mismatch(tmp_path, pki):
    case = pki.cases["good"]
    leaf, intermediate = parse_pem_certs(case.chain.read_bytes())
    reversed_chain = write_pem(tmp_path / "reversed.pem", *(c.public_bytes(Encoding.PEM) for c in (intermediate, leaf)))
    run = LocalHost(write_site(tmp_path, reversed_chain, case.key))

    findings = host.check_host(run, DOMAIN, PORT, nginx_conf=str(run.conf))

    assert not_ok(findings) == [("nginx.config", "error"), ("tls.chain_order", "error")]


@needs_nginx
def test_cert_pem_instead_of_fullchain(tmp_path, pki):
    case = pki.cases["leaf_only"]
    run = LocalHost(write_site(tmp_path, case.chain, case.key))

    findings = host.check_host(run, DOMAIN, PORT, nginx_conf=str(run.conf))

    assert not_ok(findings) == [("tls.incomplete_chain", "error")]
    assert f"/etc/letsencrypt/live/{DOMAIN}/fullchain.pem" in named(findings, "tls.incomplete_chain").fix


@needs_nginx
def test_nginx_serving_an_older_certificate_than_its_file(tmp_path, pki):
    case = pki.cases["good"]
    run = LocalHost(write_site(tmp_path, case.chain, case.key))
    served = parse_pem_certs(pki.cases["expiring"].chain.read_bytes())[0]

    findings = host.check_host(run, DOMAIN, PORT, served_leaf=served, nginx_conf=str(run.conf))

    assert not_ok(findings) == [("tls.stale", "warn")]
    assert "systemctl reload nginx" in named(findings, "tls.stale").fix


@needs_nginx
def test_no_site_for_the_domain(tmp_path, pki):
    case = pki.cases["good"]
    run = LocalHost(write_site(tmp_path, case.chain, case.key))

    findings = host.check_host(run, "elsewhere.test", PORT, nginx_conf=str(run.conf))

    assert not_ok(findings) == [("nginx.certificate", "error")]


def test_services_down_and_journal_errors_are_reported():
    run = LocalHost(
        "/nonexistent",
        {
            "nginx -t": (0, "", ""),
            "nginx -T": (0, "", ""),
            "systemctl is-active nginx aisha-api": (3, "active\nfailed\n", ""),
            "journalctl -u nginx -u aisha-api -p err -n 20 --no-pager": (
                0,
                "Nov 26 12:00:01 host aisha-api[42]: database is locked\n",
                "",
            ),
        },
    )

    findings = host.check_host(run, DOMAIN, PORT)

    assert ("service.aisha-api", "error") in not_ok(findings)
    assert ("service.nginx", "error") not in not_ok(findings)
    journal = named(findings, "journal")
    assert journal.severity == "warn" and "database is locked" in journal.message


def test_ssh_that_does_not_connect_stops_early():
    run = LocalHost("/nonexistent", {"true": (255, "", "root@198.18.1.2: Permission denied (publickey).\n")})

    findings = host.check_host(run, DOMAIN, PORT)

    assert not_ok(findings) == [("ssh", "error")]
    assert "Permission denied" in findings[0].message
    assert run.commands == ["true"]


# --- ufw ----------------------------------------------------------------------------------


def test_ufw_allowed_ports_understands_profiles_ranges_and_sources():
    status = """Status: active

To                         Action      From
--                         ------      ----
OpenSSH                    LIMIT IN    Anywhere
Nginx Full                 ALLOW IN    Anywhere
8000:8100/tcp              ALLOW IN    Anywhere
9000/udp                   ALLOW IN    Anywhere
5432/tcp                   ALLOW IN    10.0.0.0/8
"""
    assert ufw.ufw_allowed_ports(status) == {22, 80, 443, *range(8000, 8101)}


@pytest.mark.parametrize(
    "rc, out, err, expected",
    [
        (0, UFW_GOOD, "", "ok"),
        (0, "Status: inactive\n", "", "warn"),
        (127, "", "sh: 1: ufw: not found", "warn"),
        (0, UFW_GOOD.replace("8443/tcp", "8444/tcp"), "", "error"),
        (0, UFW_GOOD.replace("80/tcp", "81/tcp"), "", "warn"),
    ],
)
def test_ufw_finding(rc, out, err, expected):
    finding = ufw.ufw_finding(rc, out, err, PORT)
    assert finding.severity == expected
    if expected == "error":
        assert f"ufw allow {PORT}/tcp" in finding.fix


# --- nginx configuration parsing -------------------------------------------------------------------


def test_nginx_tls_files_picks_the_server_for_domain_and_port():
    dump = """# configuration file /etc/nginx/nginx.conf:
http {
    ssl_certificate /etc/ssl/http-level.pem;   # inherited by servers without their own
    ssl_certificate_key /etc/ssl/http-level.key;
    include /etc/nginx/sites-enabled/*;
}

# configuration file /etc/nginx/sites-enabled/other:
server { listen 8443 ssl; server_name other.example; ssl_certificate /o.pem; ssl_certificate_key /o.key; }
server { listen 443 ssl; server_name aibots.example; ssl_certificate /wrong-port.pem; ssl_certificate_key /w.key; }

# configuration file /etc/nginx/sites-enabled/aisha:
server {
    listen [::]:8443 ssl http2;
    server_name aibots.example www.aibots.example;
    include snippets/cert.conf;
}
server { listen 127.0.0.1:9443 ssl; server_name *.wild.example; }

# configuration file /etc/nginx/snippets/cert.conf:
ssl_certificate "/etc/letsencrypt/live/aibots.example/fullchain.pem";
ssl_certificate_key /etc/letsencrypt/live/aibots.example/privkey.pem;
"""
    files = nginx_config.split_nginx_dump(dump)

    assert nginx_config.nginx_tls_files(files, 8443, "aibots.example") == (
        "/etc/letsencrypt/live/aibots.example/fullchain.pem",
        "/etc/letsencrypt/live/aibots.example/privkey.pem",
    )
    assert nginx_config.nginx_tls_files(files, 9443, "a.wild.example") == ("/etc/ssl/http-level.pem", "/etc/ssl/http-level.key")
    assert nginx_config.nginx_tls_files(files, 8443, "nobody.example") is None


def test_ssh_runner_command_line(monkeypatch):
    seen = {}

    def fake_run(command, **kwargs):
        seen["command"], seen["timeout"] = command, kwargs["timeout"]
        return subprocess.CompletedProcess(command, 0, "ok\n", "")

    monkeypatch.setattr(ssh_module.subprocess, "run", fake_run)

    run = remote.ssh_runner(SSHHost("198.18.1.2", user="deploy", key="/keys/lab", sudo=True), timeout=7)
    assert run("nginx -t") == (0, "ok\n", "")

    command = seen["command"]
    assert command[0] == "ssh" and "BatchMode=yes" in command
    assert command[command.index("-i") + 1] == "/keys/lab"
    assert command[-4:] == ["deploy", "--", "198.18.1.2", "sudo -H -n sh -c 'nginx -t'"]
    assert seen["timeout"] == 7


def test_ssh_runner_adds_the_fix_for_a_sudo_password_prompt(monkeypatch):
    refused = subprocess.CompletedProcess([], 1, "", "sudo: a password is required\n")
    monkeypatch.setattr(ssh_module.subprocess, "run", lambda command, **kwargs: refused)
    _, _, err = remote.ssh_runner(SSHHost("web-1", user="admin", sudo=True))("true")
    assert err.splitlines()[-1].endswith("give it as _sudo_password in the host's data (or allow NOPASSWD sudo)")
