"""The lab itself, on real containers: hosts boot, reach the Debian mirror, and leave no
trace when removed, also after a crash half-way through `up`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from aisha_infra.lab.hosts import Lab, LabHost, lab_hosts_file

pytestmark = pytest.mark.e2e

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
FORWARD_RECORD = Path("/run/aisha-lab/ip_forward.json")


def recorded_entries(lab: Lab) -> list[dict]:
    """The lab's own record of what it created (read before `down` removes it)."""
    return json.loads(lab.state_file.read_text())["hosts"] if lab.state_file.exists() else []


def traces(lab: Lab, entries: list[dict]) -> list[str]:
    """Everything the lab may have left on this machine, described; [] means clean."""
    found = []
    for entry in entries:
        for pid in (entry.get("pid"), entry.get("init_pid")):
            if pid and Path(f"/proc/{pid}").exists() and "Z" not in process_state(pid):
                found.append(f"process {pid} of {entry['name']}")
        if Path(entry["dir"]).exists():
            found.append(f"copy {entry['dir']}")
        if Path("/run/systemd/nspawn/propagate", entry["machine"]).exists():
            found.append(f"nspawn propagation dir of {entry['machine']}")
    mounts = Path("/proc/self/mounts").read_text()
    found += [f"mount: {m}" for m in mounts.splitlines() if f"{lab.dir}/" in m]
    for line in subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        if "systemd-nspawn" in line and str(lab.dir) in line and not line.startswith("Z"):
            found.append(f"nspawn process: {line}")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for entry in entries:
        if f" ve-{entry['machine']}" in links or (entry.get("veth") and
                                                  f" {entry['veth']}@" in links):
            found.append(f"veth of {entry['name']}")
    for table in ("nat", "filter"):
        rules = subprocess.run(["iptables", "-w", "-t", table, "-S"], capture_output=True,
                               text=True, check=True).stdout
        found += [f"rule: {r}" for r in rules.splitlines() if f"aisha-lab:{lab.name}:" in r]
    if lab.dir.exists():
        found.append(f"lab dir {lab.dir}: {sorted(p.name for p in lab.dir.iterdir())}")
    if FORWARD_RECORD.exists() and str(lab.state_file) in FORWARD_RECORD.read_text():
        found.append("ip_forward still held for this lab")
    return found


def process_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def assert_ip_forward_restored(before: str) -> None:
    """Restored once no lab host remains on the machine; other sessions' hosts may hold it."""
    if not FORWARD_RECORD.exists():
        assert IP_FORWARD.read_text().strip() == before


def assert_ready(host: LabHost) -> None:
    state = host.run("systemctl is-system-running", check=False).stdout.strip()
    assert state in ("running", "degraded"), f"{host.name}: {state}"


def test_up_then_down_leaves_no_trace(make_lab):
    lab = make_lab("clean")
    ip_forward_before = IP_FORWARD.read_text().strip()

    started = time.monotonic()
    host, = lab.up(count=1)
    print(f"\nup of 1 host: {time.monotonic() - started:.1f} s")

    assert_ready(host)
    assert host.run("hostname").stdout.strip() == host.name
    assert host.run("stat -c %a /root/.ssh/authorized_keys").stdout.strip() == "600"
    assert host.run("cat /etc/resolv.conf").stdout == ""  # no DNS server to leak to
    assert IP_FORWARD.read_text().strip() == "1"
    inventory = json.loads(lab_hosts_file(lab.name).read_text())
    assert inventory["hosts"] == [{"name": host.name, "address": host.address,
                                   "ssh_key": str(host.ssh_key), "ssh_user": "root",
                                   "groups": ["canary"]}]
    entries = recorded_entries(lab)
    assert traces(lab, entries), "the trace finder must see a running host"

    started = time.monotonic()
    lab.down()
    print(f"down: {time.monotonic() - started:.1f} s")

    assert traces(lab, entries) == []
    assert lab.hosts() == []
    assert_ip_forward_restored(ip_forward_before)


def test_two_hosts_install_packages_from_the_mirror(make_lab):
    lab = make_lab("two")
    started = time.monotonic()
    hosts = lab.up(count=2)
    print(f"\nup of 2 hosts: {time.monotonic() - started:.1f} s")

    assert len({h.address for h in hosts}) == 2
    assert len({h.gateway for h in hosts}) == 2
    assert [h["groups"] for h in json.loads(lab_hosts_file(lab.name).read_text())["hosts"]] \
        == [["canary"], ["production"]]

    def install_hello(host: LabHost) -> str:
        host.run("apt-get update -q && DEBIAN_FRONTEND=noninteractive "
                 "apt-get install -y -q --no-install-recommends hello", timeout=300)
        return host.run("hello").stdout

    with ThreadPoolExecutor(max_workers=2) as pool:
        greetings = list(pool.map(install_hello, hosts))
    assert greetings == ["Hello, world!\n"] * 2
    # names resolve from /etc/hosts only: no DNS query leaves the container
    assert hosts[0].run("getent hosts deb.debian.org").returncode == 0
    assert hosts[0].run("getent hosts example.org", check=False).returncode != 0

    entries = recorded_entries(lab)
    lab.down()
    assert traces(lab, entries) == []


@pytest.mark.parametrize("crash_after", ["pid", "rules"])
def test_down_cleans_up_after_up_was_killed(make_lab, crash_after):
    """SIGKILL `aisha-infra lab up` once it recorded the nspawn pid / the NAT rules."""
    lab = make_lab(f"k{crash_after}")
    up = subprocess.Popen(
        [sys.executable, "-m", "aisha_infra.cli", "lab", "up", "--name", lab.name],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120  # room for a first image build
        while not any(e.get(crash_after) for e in recorded_entries_tolerant(lab)):
            assert up.poll() is None, "up finished before reaching the crash point"
            assert time.monotonic() < deadline, f"up never recorded {crash_after}"
            time.sleep(0.01)
        up.send_signal(signal.SIGKILL)
    finally:
        up.kill()
        up.wait(timeout=10)
    assert up.returncode == -signal.SIGKILL

    entries = recorded_entries(lab)
    assert traces(lab, entries), "the crash must have left something to clean"
    lab.down()
    assert traces(lab, entries) == []


def recorded_entries_tolerant(lab: Lab) -> list[dict]:
    try:  # written atomically, but may not exist yet
        return recorded_entries(lab)
    except (OSError, json.JSONDecodeError):
        return []


def test_down_after_the_nspawn_process_was_killed(make_lab):
    """A SIGKILLed systemd-nspawn leaves its container running; down must end it too."""
    lab = make_lab("nspawn")
    host, = lab.up(count=1)
    entries = recorded_entries(lab)
    os.kill(host.pid, signal.SIGKILL)
    time.sleep(0.5)
    assert process_state(entries[0]["init_pid"]) not in ("gone", "Z")
    lab.down()
    assert traces(lab, entries) == []


def test_up_twice_reuses_healthy_hosts_and_replaces_dead_ones(make_lab):
    lab = make_lab("twice")
    first, = lab.up(count=1)
    again = lab.up(count=1)
    assert [(h.name, h.pid, h.address) for h in again] == [(first.name, first.pid,
                                                             first.address)]

    extended = lab.up(count=2)
    assert [h.pid for h in extended][:1] == [first.pid] and len(extended) == 2

    cli = [sys.executable, "-m", "aisha_infra.cli", "lab"]
    shown = subprocess.run([*cli, "ssh", "--name", lab.name, "2", "hostname"],
                           capture_output=True, text=True, timeout=60)
    assert shown.stdout.strip() == extended[1].name
    status = subprocess.run([*cli, "status", "--name", lab.name], capture_output=True,
                            text=True, timeout=60)
    assert status.returncode == 0 and status.stdout.count(" up ") == 2

    stale_entries = recorded_entries(lab)
    os.kill(first.pid, signal.SIGKILL)  # one host dies: the next up starts over
    deadline = time.monotonic() + 10  # the kill is delivered asynchronously
    while process_state(first.pid) not in ("gone", "Z") and time.monotonic() < deadline:
        time.sleep(0.05)
    replaced = lab.up(count=2)
    assert len(replaced) == 2 and first.pid not in {h.pid for h in replaced}
    for host in replaced:
        assert_ready(host)
    assert not any(process_state(e["init_pid"]) not in ("gone", "Z") for e in stale_entries)

    entries = recorded_entries(lab)
    lab.down()
    assert traces(lab, entries) == []


def test_recreate_host_gives_a_fresh_host_with_the_same_name(lab, lab_host):
    lab_host.run("touch /root/was-here")
    fresh = lab.recreate_host(lab_host)
    assert fresh.name == lab_host.name and fresh.pid != lab_host.pid
    assert fresh.run("test -e /root/was-here", check=False).returncode == 1


def test_pyinfra_connects_with_pyinfra_host(shared_lab_host, tmp_path):
    address, data = shared_lab_host.pyinfra_host()
    inventory = tmp_path / "inventory.py"
    inventory.write_text(f"hosts = [({address!r}, {data!r})]\n")
    pyinfra = Path(sys.executable).with_name("pyinfra")
    result = subprocess.run([str(pyinfra), "-y", str(inventory), "exec", "--", "hostname"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert shared_lab_host.name in result.stdout + result.stderr


def test_trixie_host(lab_hosts):
    host, = lab_hosts(1, release="trixie")
    assert_ready(host)
    assert host.run(". /etc/os-release && echo $VERSION_CODENAME").stdout.strip() == "trixie"
