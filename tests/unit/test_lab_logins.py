"""What a lab's hosts.json says about how to log in, read back as pyinfra's inventory data
(no host booted: the lab's state is written by hand)."""

from __future__ import annotations

import json
import stat

import pytest

from aisha_infra.lab.hosts import Lab, LabError, lab_hosts_file
from aisha_infra.lab.inventory import lab_groups


def entry(index: int, login: str, password: str | None = None) -> dict:
    return {"name": f"lab-{index}", "index": index, "release": "bookworm", "net": index,
            "address": f"198.18.{index}.2", "gateway": f"198.18.{index}.1",
            "machine": f"lab{index}", "dir": f"/nowhere/lab-{index}",
            "root": f"/nowhere/lab-{index}/rootfs", "log": f"/nowhere/lab-{index}/console.log",
            "ready": True, "login": login, "sudo_password": password}


def test_hosts_file_carries_the_login_and_pyinfra_reads_it(tmp_path, monkeypatch):
    monkeypatch.setenv("AISHA_LAB_DIR", str(tmp_path))
    lab = Lab("lab")
    state = {"lab": "lab", "hosts": [entry(2, "sudo-password", "pw-1"), entry(1, "root"),
                                     entry(3, "sudo")]}
    lab._save(state)

    path = lab_hosts_file("lab")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the sudo password is in it
    assert stat.S_IMODE(lab.state_file.stat().st_mode) == 0o600
    hosts = json.loads(path.read_text())["hosts"]
    assert [(h["name"], h["ssh_user"], h.get("data")) for h in hosts] == [
        ("lab-1", "root", None),
        ("lab-2", "admin", {"_sudo": True, "_sudo_password": "pw-1"}),
        ("lab-3", "admin", {"_sudo": True}),
    ]

    monkeypatch.setenv("AISHA_LAB", "lab")
    groups = lab_groups()
    [(_, canary)] = groups["canary"]
    production = dict(groups["production"])
    assert canary["ssh_user"] == "root" and "_sudo" not in canary
    assert production["lab-2"]["_sudo_password"] == "pw-1"
    assert production["lab-3"]["ssh_user"] == "admin" and production["lab-3"]["_sudo"] is True
    # lab hosts only: new host keys at every boot, nothing to remember
    assert production["lab-3"]["ssh_strict_host_key_checking"] == "off"

    [host] = [h for h in lab.hosts() if h.name == "lab-2"]
    address, data = host.pyinfra_host()  # what tests put into their own hosts files
    assert address == production["lab-2"].pop("ssh_hostname") == "198.18.2.2"
    assert data == production["lab-2"]


def test_an_unknown_login_is_refused_before_anything_is_made():
    with pytest.raises(LabError, match=r"login 'admin' is not known: choose one of root, sudo, sudo-password"):
        Lab("lab").add_hosts(1, login="admin")
