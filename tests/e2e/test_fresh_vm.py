"""Issue 12 on fresh lab hosts that behave like a cloud VM's first minutes: another
process holds apt's locks, a run is interrupted during apt, sshd listens on another
port than the `ssh_port` setting, and a system the deploy does not support."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time

import pytest

from aisha_infra.deploy import paths
from aisha_infra.lab.hosts import LabHost
from aisha_infra.tasks.packages import PACKAGES
from tests.project import PROJECT_ROOT
from tests.e2e.deploylib import PYINFRA, run_deploy, write_hosts_file

pytestmark = pytest.mark.e2e

LOCK_SECONDS = 20
RELEASED_AT = "/run/aisha-test-lock-released"
# What unattended-upgrades does right after boot, as apt does it: fcntl locks on the
# package lists and on dpkg's frontend lock (flock(1) would not block apt).
HOLD_APT_LOCKS = (
    "import fcntl, time\n"
    "locks = [open(path, 'w') for path in ('/var/lib/apt/lists/lock', '/var/lib/dpkg/lock-frontend')]\n"
    "for lock in locks:\n"
    "    fcntl.lockf(lock, fcntl.LOCK_EX)\n"
    f"time.sleep({LOCK_SECONDS})\n"
    f"open('{RELEASED_AT}', 'w').write(str(time.time()))\n"
)
EXTRA_RULE = "allow from 203.0.113.5 to any port 9100 proto tcp"


@pytest.fixture(scope="module")
def locked_host(lab):
    """A fresh host, deployed while another process held apt's locks."""
    host = lab.add_hosts(count=1)[0]
    try:
        yield host
    finally:
        lab.destroy_host(host.name)


def host_time(host: LabHost, dpkg_log_line: str) -> float:
    stamp = " ".join(dpkg_log_line.split()[:2])
    return float(host.run(f"date -d {shlex.quote(stamp)} +%s").stdout)


def test_deploy_waits_for_apt_locks_and_converges(locked_host, tmp_path):
    host = locked_host
    dpkg_log_lines = int(host.run("cat /var/log/dpkg.log 2>/dev/null | wc -l").stdout)  # the image's own
    host.run(f"systemd-run --unit=aisha-test-apt-lock python3 -c {shlex.quote(HOLD_APT_LOCKS)}")
    assert host.run("systemctl is-active aisha-test-apt-lock").stdout.strip() == "active"
    hosts_file = write_hosts_file(tmp_path / "hosts.json", [host])

    first = run_deploy(hosts_file).check()

    released = float(host.run(f"cat {RELEASED_AT}").stdout)
    first_dpkg_action = host.run(f"sed -n {dpkg_log_lines + 1}p /var/log/dpkg.log").stdout
    assert host_time(host, first_dpkg_action) >= int(released), "dpkg ran while the lock was held"
    assert "HTTPS health OK" in first.output
    assert run_deploy(hosts_file).check().totals["changed"] == 0


def test_unsupported_system_stops_before_any_change(locked_host, tmp_path):
    host = locked_host
    hosts_file = write_hosts_file(tmp_path / "hosts.json", [host])
    host.run("rm /etc/os-release && printf '%s\\n' 'PRETTY_NAME=\"Ubuntu 24.04.1 LTS\"' 'NAME=\"Ubuntu\"' "
             "'VERSION_ID=\"24.04\"' 'ID=ubuntu' > /etc/os-release && ufw allow 3306/tcp")
    try:
        run = run_deploy(hosts_file)
    finally:
        host.run("rm /etc/os-release && ln -s ../usr/lib/os-release /etc/os-release")
    assert run.returncode != 0
    assert f"{host.name}: runs Ubuntu 24.04.1 LTS; this deploy supports Debian 12 (bookworm)" in run.output
    assert "Starting operation" not in run.output
    assert "3306" in host.run("ufw show added").stdout  # nothing changed: the stray rule is still there
    host.run("ufw delete allow 3306/tcp")


def install_retired_stand_in(host: LabHost) -> None:
    """Something for the package step to do: a package earlier versions installed (a stand-in)."""
    host.run("mkdir -p /tmp/retired/DEBIAN && printf '%s\\n' 'Package: python3-certbot-nginx' 'Version: 0.0-test' "
             "'Architecture: all' 'Maintainer: test <test@aibots.test>' 'Description: stand-in' "
             "> /tmp/retired/DEBIAN/control && dpkg-deb -b /tmp/retired /tmp/retired.deb >/dev/null "
             "&& dpkg -i /tmp/retired.deb >/dev/null && rm -rf /tmp/retired /tmp/retired.deb")


# The background installs still running (one that ended may stay listed, inactive, where
# systemd cannot remove its cgroup, as in the lab's containers now and then).
INSTALLS_RUNNING = f"systemctl list-units --no-legend --plain --state=activating,active,deactivating {paths.PACKAGES_UNITS}"


def assert_no_install_left(host: LabHost) -> None:
    """The background install leaves neither its unit nor its files."""
    assert host.run(f"test -e {paths.PACKAGES_RUN_DIR}", check=False).returncode != 0
    assert host.run(f"{INSTALLS_RUNNING}").stdout.strip() == ""


def deploy_with_dpkg_hook(host: LabHost, hosts_file, command: str):
    """A deploy while dpkg runs `command` before it installs anything (removed after)."""
    hook = "/etc/apt/apt.conf.d/99aisha-test-hook"
    host.run(f"echo {shlex.quote(f'DPkg::Pre-Invoke {{ {json.dumps(command)}; }};')} > {hook}")
    try:
        return run_deploy(hosts_file)
    finally:
        host.run(f"rm -f {hook}")


def assert_apt_failed(host: LabHost, failed, words: str) -> None:
    """The run failed saying `words`, before anything that needs the packages, and left nothing."""
    assert failed.returncode != 0
    assert words in failed.output, failed.output[-3000:]
    assert "Starting operation: Nginx |" not in failed.output
    assert_no_install_left(host)


def test_failing_apt_fails_the_host_with_apts_own_words(locked_host, tmp_path):
    host = locked_host
    hosts_file = write_hosts_file(tmp_path / "hosts.json", [host])
    install_retired_stand_in(host)
    failed = deploy_with_dpkg_hook(host, hosts_file, "echo aisha-test: dpkg refused >&2; false")
    assert_apt_failed(host, failed, "aisha-test: dpkg refused")
    assert run_deploy(hosts_file).check().totals["changed"] > 0
    assert_no_install_left(host)


def test_apt_past_apt_timeout_is_stopped_and_leaves_nothing_running(locked_host, tmp_path):
    host = locked_host
    hosts_file = write_hosts_file(tmp_path / "hosts.json", [host], data={"apt_lock_timeout": 1, "apt_timeout": 15})
    install_retired_stand_in(host)
    failed = deploy_with_dpkg_hook(host, hosts_file, "sleep 300")
    assert_apt_failed(host, failed, "did not finish within 15 s (apt_timeout) and was stopped")
    assert host.run("pgrep -x 'sleep|apt-get|dpkg'", check=False).stdout.strip() == ""  # its cgroup is gone
    run_deploy(hosts_file).check()
    assert_no_install_left(host)


def test_lock_held_too_long_fails_naming_its_holder(locked_host, tmp_path):
    host = locked_host
    hosts_file = write_hosts_file(tmp_path / "hosts.json", [host], data={"apt_lock_timeout": 3, "apt_timeout": 120})
    install_retired_stand_in(host)
    hold = HOLD_APT_LOCKS.replace(f"time.sleep({LOCK_SECONDS})", "time.sleep(120)")
    host.run(f"systemd-run --unit=aisha-test-apt-lock-long python3 -c {shlex.quote(hold)}")
    try:
        failed = run_deploy(hosts_file)
    finally:
        host.run("systemctl stop aisha-test-apt-lock-long")
    assert failed.returncode != 0
    holder = re.search(r"apt's lock was still held by process \d+ \((.*?)\) after waiting 3 s \(apt_lock_timeout\)",
                       failed.output)
    assert holder and "python3 -c import fcntl" in holder.group(1), failed.output[-3000:]
    assert "Starting operation: Nginx |" not in failed.output  # nothing after the failed step
    assert_no_install_left(host)
    run_deploy(hosts_file).check()
    assert host.run("dpkg-query -W -f='${db:Status-Abbrev}' python3-certbot-nginx", check=False).stdout[:2] != "ii"


def test_interrupted_run_then_next_run_converges(lab_hosts, tmp_path):
    host = lab_hosts(1)[0]
    hosts_file = write_hosts_file(tmp_path / "hosts.json", [host])
    log = tmp_path / "interrupted.log"
    env = {**os.environ, "AISHA_HOSTS": str(hosts_file), "PYTHONPATH": str(PROJECT_ROOT)}
    with log.open("w") as output:
        deploy = subprocess.Popen([PYINFRA, "-y", "inventory.py", "deploy.py"], cwd=PROJECT_ROOT, env=env,
                                  stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while deploy.poll() is None and time.monotonic() < deadline:
            if host.run("grep -qx dpkg /proc/[0-9]*/comm", check=False).returncode == 0:
                break
            time.sleep(0.3)
        assert deploy.poll() is None, f"the deploy ended before dpkg ran:\n{log.read_text()[-3000:]}"
        deploy.send_signal(signal.SIGINT)
        deploy.wait(timeout=60)
    finally:
        if deploy.poll() is None:
            deploy.kill()
            deploy.wait()
    interrupted = log.read_text()
    # pyinfra exits 0 on Ctrl-C: the log shows the run stopped during the package step
    assert "Exiting upon user request" in interrupted and "Starting operation: Nginx |" not in interrupted
    # apt runs in its own unit: the interrupted run did not stop it halfway, it finishes.
    host.run(f"timeout 300 sh -c 'while [ -n \"$({INSTALLS_RUNNING})\" ]; do sleep 0.5; done'")
    states = host.run(f"dpkg-query -W -f='${{db:Status-Abbrev}}\\n' {' '.join(PACKAGES)}").stdout.split()
    assert states == ["ii"] * len(PACKAGES), states

    run_deploy(hosts_file).check()
    assert_no_install_left(host)
    assert run_deploy(hosts_file).check().totals["changed"] == 0


def test_sshd_on_another_port_stays_reachable(lab_hosts, tmp_path):
    host = lab_hosts(1)[0]
    host.run("echo 'Port 2222' > /etc/ssh/sshd_config.d/aisha-test-port.conf && systemctl restart ssh")
    assert host.run("true", check=False).returncode != 0, "sshd still answers on 22"
    # pyinfra connects on 2222 from an SSH config file; the ssh_port setting stays 22.
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(f"Host {host.address}\n    Port 2222\n")
    hosts_file = write_hosts_file(tmp_path / "hosts.json", [host],
                                  data={"ssh_config_file": str(ssh_config), "firewall_extra_rules": [EXTRA_RULE]})

    first = run_deploy(hosts_file).check()

    ssh_2222 = host.ssh_command("ufw status; ufw show added")
    ssh_2222[1:1] = ["-p", "2222"]
    firewall = subprocess.run(ssh_2222, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert firewall.returncode == 0, firewall.stderr
    assert "Status: active" in firewall.stdout
    assert {"ufw allow 2222/tcp", "ufw allow 22/tcp", f"ufw {EXTRA_RULE}"} <= set(firewall.stdout.splitlines())
    assert "Firewall | Allow only SSH (22, 2222), HTTP (80) and HTTPS (8443), plus firewall_extra_rules" in first.output
    # the next run connects through the active firewall, and has nothing to change
    assert run_deploy(hosts_file).check().totals["changed"] == 0
