"""Lab hosts logged into like real servers: `admin` with sudo, password-less or not."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from aisha_infra.lab.hosts import SUDO_USER, lab_hosts_file

pytestmark = pytest.mark.e2e


def as_login_user(host, command: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(host.ssh_command(command, user=host.ssh_user), input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_sudo_logins_and_their_inventory(lab, lab_hosts):
    passwordless, with_password = (lab_hosts(1, login="sudo")[0],
                                   lab_hosts(1, login="sudo-password")[0])

    assert as_login_user(passwordless, "id -un").stdout.strip() == SUDO_USER
    assert as_login_user(passwordless, "sudo -n id -u").stdout.strip() == "0"
    # without sudo the login user is not root: a deploy that forgot _sudo would fail
    assert as_login_user(passwordless, "cat /etc/shadow").returncode != 0

    assert as_login_user(with_password, "sudo -n true").returncode != 0  # asks a password
    wrong = as_login_user(with_password, "sudo -S -p '' id -u", stdin="wrong\n")
    assert wrong.returncode != 0
    right = as_login_user(with_password, "sudo -S -p '' id -u",
                          stdin=with_password.sudo_password + "\n")
    assert right.stdout.strip() == "0", right.stderr

    hosts_file = lab_hosts_file(lab.name)
    assert stat.S_IMODE(hosts_file.stat().st_mode) == 0o600  # holds the sudo password
    entries = {e["name"]: e for e in json.loads(hosts_file.read_text())["hosts"]}
    assert entries[passwordless.name]["ssh_user"] == SUDO_USER
    assert entries[passwordless.name]["data"] == {"_sudo": True}
    assert entries[with_password.name]["data"] == {
        "_sudo": True, "_sudo_password": with_password.sudo_password}
    _, data = with_password.pyinfra_host()
    assert data["ssh_user"] == SUDO_USER and data["_sudo_password"] == with_password.sudo_password


def test_lab_up_login_from_the_command_line(make_lab):
    lab = make_lab("login")
    cli = [str(Path(sys.executable).with_name("aisha-infra")), "lab", "up", "--name", lab.name]
    shown = subprocess.run([*cli, "--login", "sudo-password"], capture_output=True, text=True,
                           timeout=300)
    assert shown.returncode == 0, shown.stderr
    [host] = lab.hosts()
    assert f"{SUDO_USER}@{host.address}" in shown.stdout and "(sudo with password)" in shown.stdout
    assert host.sudo_password and host.sudo_password not in shown.stdout

    # asked for another login, `up` replaces the hosts instead of reusing them
    [again] = lab.up(count=1, login="sudo")
    assert again.login == "sudo" and again.sudo_password is None
    [entry] = json.loads(lab_hosts_file(lab.name).read_text())["hosts"]
    assert entry["data"] == {"_sudo": True}
