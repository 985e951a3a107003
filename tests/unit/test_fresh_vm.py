"""A fresh cloud VM: apt's lock waited for, SSH kept open, unsupported systems refused,
nginx's HTTP/2 syntax from its version. Operations run against given facts; the apt
script runs for real under sh with fake apt-get/dpkg commands that hold a lock."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
from pyinfra.api.exceptions import PyinfraError
from pyinfra.context import ctx_host
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import Directory

from aisha_infra.deploy.facts.system import NginxVersion, SshdPorts, unsupported_system, wants_http2_directive
from aisha_infra.deploy import paths
from aisha_infra.deploy.operations import apt
from aisha_infra.deploy.operations import nginx as nginx_operations
from aisha_infra.deploy.operations.nginx import site_config
from aisha_infra.deploy.settings import SettingsError, build_settings
from aisha_infra.tasks import app as app_tasks
from aisha_infra.tasks import firewall
from aisha_infra.tasks.packages import PACKAGES, packages_for, packages_removed
from tests.unit.fakehost import FakeHost, run_operation

DOMAIN = {"aisha_domain": "aibots.test"}


# --- apt ----------------------------------------------------------------------------

NO_LEFTOVER = {(Directory, frozenset({("path", paths.PACKAGES_RUN_DIR)})): None}


def test_installed_packages_run_nothing():
    commands, noops = run_operation(apt.packages_install_started,
                                    {DebPackages: {"nginx": ["1.22"], "ufw": ["0.36"]}, **NO_LEFTOVER},
                                    packages=["nginx", "ufw"], lock_wait=600)
    assert commands == [] and noops


def test_missing_packages_install_in_a_transient_unit_with_a_lock_wait():
    commands, _ = run_operation(apt.packages_install_started, {DebPackages: {"nginx": ["1.22"]}, **NO_LEFTOVER},
                                packages=["nginx", "ufw", "openssl"], lock_wait=600)
    assert len(commands) == 1
    script = commands[0]
    assert apt.install_script(["ufw", "openssl"], 600) in shlex.split(script.split("printf ", 1)[1])[1]
    assert "install -d -m 0700 -o root -g root" in script  # output and status: root's only
    assert "--collect --service-type=exec --unit=\"$unit\"" in script and paths.PACKAGES_UNIT in script


def test_a_retired_package_is_removed_in_the_same_apt_call_only_where_installed():
    installed = {"nginx": ["1.22"], "python3-certbot-nginx": ["2.1"]}
    commands, _ = run_operation(apt.packages_install_started, {DebPackages: installed, **NO_LEFTOVER},
                                packages=["nginx"], removed=["python3-certbot-nginx"], lock_wait=600)
    assert "install --fix-broken python3-certbot-nginx-" in commands[0]
    commands, noops = run_operation(apt.packages_install_started, {DebPackages: {"nginx": ["1.22"]}, **NO_LEFTOVER},
                                    packages=["nginx"], removed=["python3-certbot-nginx"], lock_wait=600)
    assert commands == [] and noops


def test_what_an_interrupted_run_left_is_cleared_without_a_new_install():
    leftover = {(Directory, frozenset({("path", paths.PACKAGES_RUN_DIR)})): {"mode": 700}}
    commands, _ = run_operation(apt.packages_install_started, {DebPackages: {"nginx": ["1.22"]}, **leftover},
                                packages=["nginx"], lock_wait=600)
    assert len(commands) == 1 and "systemd-run" not in commands[0] and 'rm -rf "$dir"' in commands[0]


@pytest.mark.parametrize("mode, certbot", [("self-signed", False), ("letsencrypt", True)])
def test_certbot_only_in_letsencrypt_mode(mode, certbot):
    settings = build_settings({**DOMAIN, "tls_mode": mode, "letsencrypt_email": "ops@aibots.test"})
    wanted, removed = packages_for(settings), packages_removed(settings)
    assert ("certbot" in wanted) is certbot and ("certbot" in removed) is not certbot  # a host switched to self-signed
    assert "python3-certbot-nginx" not in wanted and "python3-certbot-nginx" in removed
    assert set(PACKAGES) <= set(wanted) and not set(wanted) & set(removed)


def _fake_tools(tmp: Path, locked_runs: int, message: str) -> dict:
    """apt-get and dpkg that fail `locked_runs` times with `message`, then succeed; a
    sleeping process stands for the lock's holder."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    counter = tmp / "count"
    counter.write_text("0")
    for tool in ("apt-get", "dpkg"):
        script = bin_dir / tool
        script.write_text(
            "#!/bin/sh\n"
            f"n=$(cat {counter}); echo $((n + 1)) > {counter}; echo \"{tool} $*\" >> {tmp}/calls\n"
            f"if [ \"$n\" -lt {locked_runs} ]; then echo \"{message}\" >&2; exit 100; fi\n"
        )
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def _run_script(script: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)


def test_script_waits_for_a_held_lock_then_installs(tmp_path):
    holder = subprocess.Popen(["sleep", "30"])
    try:
        env = _fake_tools(tmp_path, 2, f"E: Could not get lock /var/lib/apt/lists/lock. It is held by process {holder.pid} (sleep)")
        result = _run_script(apt.install_script(["ufw"], lock_wait=30), env)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert [c.split()[-1] for c in calls] == ["update", "update", "update", "ufw"]


def test_script_gives_up_after_the_wait_naming_the_holder(tmp_path):
    holder = subprocess.Popen(["sleep", "30"])
    try:
        env = _fake_tools(tmp_path, 1000, f"E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process {holder.pid} (sleep)")
        result = _run_script(apt.install_script(["ufw"], lock_wait=3), env)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1
    assert f"still held by process {holder.pid} (sleep 30 )" in result.stderr
    assert "after waiting 3 s (apt_lock_timeout)" in result.stderr
    assert "ufw" not in (tmp_path / "calls").read_text()  # never got past the update


def test_script_stops_at_once_on_other_failures(tmp_path):
    env = _fake_tools(tmp_path, 1000, "E: The repository 'x' does not have a Release file.")
    result = _run_script(apt.install_script(["ufw"], lock_wait=60), env)
    assert result.returncode == 1 and "Release file" in result.stderr
    assert len((tmp_path / "calls").read_text().splitlines()) == 1


# --- settings -----------------------------------------------------------------------

def test_fresh_vm_settings_defaults():
    settings = build_settings(DOMAIN)
    assert settings.apt_lock_timeout == 600 and settings.apt_timeout > settings.apt_lock_timeout
    assert settings.firewall_extra_rules == ()


@pytest.mark.parametrize("data, key, fault", [
    ({"apt_lock_timeout": 0}, "apt_lock_timeout", "not a positive integer"),
    ({"pip_timeout": "10m"}, "pip_timeout", "not a positive integer"),
    ({"verify_timeout": True}, "verify_timeout", "not a positive integer"),
    ({"apt_timeout": 300, "apt_lock_timeout": 600}, "apt_timeout", "must be longer than apt_lock_timeout"),
    ({"firewall_extra_rules": "allow 9100/tcp"}, "firewall_extra_rules", "not a list"),
    ({"firewall_extra_rules": ["open 9100"]}, "firewall_extra_rules", "not a ufw rule"),
    ({"firewall_extra_rules": ["allow 22/tcp; rm -rf /"]}, "firewall_extra_rules", "not a ufw rule"),
    ({"firewall_extra_rules": ["allow from bastion to any port 22"]}, "firewall_extra_rules", "not an IP address"),
    ({"firewall_extra_rules": ["allow proto tcp from 203.0.113.5 to any port 9100"]}, "firewall_extra_rules", "show added"),
    ({"firewall_extra_rules": ["deny 8443/tcp"]}, "firewall_extra_rules", "contradicts the deploy's own 'allow 8443/tcp'"),
    ({"apt_lock_timout": 5}, "apt_lock_timout", "did you mean 'apt_lock_timeout'"),
])
def test_bad_fresh_vm_settings_are_named(data, key, fault):
    with pytest.raises(SettingsError) as error:
        build_settings({**DOMAIN, **data})
    line = next(line for line in str(error.value).splitlines() if line.strip().startswith(f"{key}:"))
    assert fault in line


def test_extra_rules_in_ufw_form_are_accepted():
    rules = ["allow from 203.0.113.5 to any port 9100 proto tcp", "limit 22/tcp", "allow from 198.51.100.0/24",
             "deny out 25", "allow 6000:6007/udp", "allow in on eth0 to any port 80"]
    assert build_settings({**DOMAIN, "firewall_extra_rules": rules}).firewall_extra_rules == tuple(rules)


# --- SSH is never cut -----------------------------------------------------------------

def test_sshd_ports_fact_reads_config_and_sockets():
    output = [
        "port 2222",
        "listenaddress [::]:2222",
        "listenaddress 0.0.0.0:2200",
        'LISTEN 0      128          0.0.0.0:2222      0.0.0.0:*    users:(("sshd",pid=80,fd=3))',
        'LISTEN 0      128             [::]:2223         [::]:*    users:(("sshd",pid=80,fd=4))',
    ]
    assert SshdPorts().process(output) == [2200, 2222, 2223]
    assert SshdPorts().process([]) is None


def _ssh_rules(data: dict, sshd_ports, connected):
    with ctx_host.use(FakeHost({})):
        return firewall.ssh_rules(build_settings({**DOMAIN, **data}), sshd_ports, connected)


def test_ssh_rules_keep_every_real_ssh_port():
    assert _ssh_rules({}, [2222], 2222) == ["allow 22/tcp", "allow 2222/tcp"]
    assert _ssh_rules({"ssh_port": 2222}, [2222], 2200) == ["allow 2200/tcp", "allow 2222/tcp"]


def test_an_admins_limit_rule_stands_in_for_allow():
    assert _ssh_rules({"firewall_extra_rules": ["limit 22/tcp"]}, [22], 22) == []


def test_unreadable_sshd_ports_stop_the_run():
    with pytest.raises(PyinfraError, match="cannot tell which ports sshd listens on"):
        _ssh_rules({}, None, 22)


def test_extra_rule_closing_ssh_stops_the_run():
    with pytest.raises(PyinfraError, match="'deny 2222/tcp', which would cut SSH"):
        _ssh_rules({"firewall_extra_rules": ["deny 2222/tcp"]}, [2222], 22)


# --- supported systems, nginx version ---------------------------------------------------

@pytest.mark.parametrize("distribution, found", [
    ({"name": "Debian", "major": 12}, None),
    ({"name": "Debian", "major": 13}, None),
    ({"name": "Debian", "major": 11, "release_meta": {"PRETTY_NAME": "Debian GNU/Linux 11 (bullseye)"}},
     "runs Debian GNU/Linux 11 (bullseye); this deploy supports Debian 12 (bookworm) and Debian 13 (trixie) only"),
    ({"name": "Ubuntu", "major": 24, "release_meta": {"PRETTY_NAME": "Ubuntu 24.04.1 LTS"}}, "runs Ubuntu 24.04.1 LTS;"),
    ({"name": "Debian", "major": None, "release_meta": {"PRETTY_NAME": "Debian GNU/Linux trixie/sid"}}, "runs Debian GNU/Linux trixie/sid;"),
    (None, "runs an unknown system;"),
])
def test_supported_systems(distribution, found):
    reason = unsupported_system(distribution)
    assert reason == found if found is None else reason.startswith(found)


@pytest.mark.parametrize("output, version", [
    (["nginx version: nginx/1.22.1"], (1, 22, 1)),
    (["  Candidate: 1.26.3-3+deb13u1"], (1, 26, 3)),
    (["  Candidate: (none)"], None),
    ([], None),
])
def test_nginx_version_fact(output, version):
    assert NginxVersion().process(output) == version


@pytest.mark.parametrize("version, directive", [((1, 22, 1), False), ((1, 25, 0), False), ((1, 25, 1), True),
                                                ((1, 26, 3), True), (None, False)])
def test_http2_directive_follows_nginx_version(version, directive):
    assert wants_http2_directive(version) is directive


@pytest.mark.parametrize("version, directive", [((1, 22, 1), False), ((1, 26, 3), True)])
def test_site_config_renders_the_syntax_of_the_hosts_nginx(monkeypatch, version, directive):
    contexts = []

    def validated_config(template, dest, context, enable_link=None):
        contexts.append(context)
        yield "render"

    monkeypatch.setattr(nginx_operations.validated_config, "_inner", validated_config)
    run_operation(site_config, {NginxVersion: version}, template="t", dest="/d", context={"http2_directive": None})
    assert contexts == [{"http2_directive": directive}]


# --- the verify step's limit --------------------------------------------------------------

def test_verify_health_check_stops_at_the_steps_limit():
    """A port that accepts connections but never answers: the settle loop and every request
    end with verify_timeout, not after their own longer limits."""
    import socket
    import time

    from aisha_infra.checks import health
    from aisha_infra.deploy.operations import verify

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.monotonic()
        with health.Endpoint("127.0.0.1", "aibots.test", silent.getsockname()[1]) as endpoint:
            ok, detail = verify._settled_health(endpoint, deadline=started + 2)
        elapsed = time.monotonic() - started
    assert not ok and detail
    assert elapsed < verify.SETTLE_SECONDS, f"took {elapsed:.1f} s"


# --- the app serves during apt when the host has what it needs ---------------------------

@pytest.mark.parametrize("data, needed", [
    ({}, ["python3"]),
    ({"fal_verify_signatures": True, "fal_jwks_url": "https://fal.test/jwks"}, ["python3", "python3-cryptography"]),
])
def test_the_bundled_app_needs_python3_and_cryptography_only_to_verify(data, needed):
    assert app_tasks.packages_to_serve(build_settings({**DOMAIN, **data})) == needed


def test_a_backend_of_your_own_waits_for_the_packages(tmp_path):
    (tmp_path / "requirements.txt").write_text("flask\n")
    settings = build_settings({**DOMAIN, "app_source": str(tmp_path), "app_start_command": "/bin/true"})
    assert set(app_tasks.packages_to_serve(settings)) == {"python3", "python3-venv", "python3-cryptography"}


@pytest.mark.parametrize("installed, early", [
    ({"python3": ["3.11"]}, True),
    ({"python3": ["3.11"], "nginx": ["1.22"]}, True),
    ({}, False),
])
def test_serving_during_apt_is_decided_from_the_packages_the_host_had(installed, early):
    with ctx_host.use(FakeHost({DebPackages: installed})):
        assert app_tasks.can_serve_before_packages(build_settings(DOMAIN)) is early
