"""The lab: disposable real Debian hosts (systemd-nspawn containers booting systemd) to deploy
to and test against, on this machine.

Each host is a copy-on-write copy (overlay) of a cached debootstrap image (see
lab_image.py), booted with `systemd-nspawn --network-veth`, reachable over SSH at 198.18.N.2
on its own /30 (this side is 198.18.N.1), and able to reach the Debian mirror and PyPI
through NAT, with their addresses in its /etc/hosts so that no DNS query ever leaves it.

Everything `up` creates is written to `<AISHA_LAB_DIR>/<lab>/state.json` *before* it is
created, so `down` removes exactly that, even after a crash half-way through `up`.

A host is logged into as root (the default), or like a real server as the user `admin`
with sudo: `login="sudo"` (password-less) or `login="sudo-password"` (sudo asks for a
password, generated per host and kept only in the lab's 0600 state and hosts files). The
lab itself (`LabHost.run`, `lab ssh`) always uses root, to prepare and inspect hosts.

    lab = Lab("demo")
    host, = lab.up(count=1, login="sudo")
    host.run("systemctl is-system-running")
    host.pyinfra_host()  # ("198.18.N.2", {"ssh_user": "admin", "_sudo": True, ...})
    lab.down()
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aisha_infra.lab.image import (
    DEFAULT_RELEASE,
    SUPPORTED_RELEASES,
    LabError,
    apt_source_hosts,
    check_release,
    ensure_host_tools,
    ensure_image,
    file_lock,
    remove_tree,
    require_root,
    run_command,
    write_file,
)

__all__ = [
    "Lab", "LabHost", "HostStatus", "LabError", "RemoteCommandError",
    "lab_hosts_file", "pyinfra_ssh_data", "state_root", "register",
]

DEFAULT_LAB = "demo"
DEFAULT_STATE_ROOT = "/var/lib/aisha-lab"
# Machine-wide bookkeeping shared by every state root; /run empties on reboot, like the hosts.
RUNTIME_DIR = Path("/run/aisha-lab")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")

NET_PREFIX = "198.18"  # RFC 2544 benchmarking range: never a real network
NETS = range(1, 255)  # host N gets 198.18.N.0/30
EXTRA_HOSTS = ("pypi.org", "files.pythonhosted.org")  # reachable besides the apt mirrors

BOOT_TIMEOUT_S = 60
STOP_TIMEOUT_S = 15
SSH_CONNECT_TIMEOUT_S = 3
LOCK_TIMEOUT_S = 600
LAB_NAME = re.compile(r"^[a-z][a-z0-9-]{0,19}$")

# How pyinfra (and every tool reading the inventory) logs into a host.
LOGINS = ("root", "sudo", "sudo-password")
DEFAULT_LOGIN = "root"
SUDO_USER = "admin"  # the user hosts.example.json shows for real servers

SSH_OPTIONS = [
    "-o", "BatchMode=yes",
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", f"ConnectTimeout={SSH_CONNECT_TIMEOUT_S}",
    "-o", "ServerAliveInterval=10",
    "-o", "ServerAliveCountMax=3",
    "-o", "IdentitiesOnly=yes",
    "-o", "LogLevel=ERROR",
]

# systemd-nspawn processes this Python process started, so it can reap them
_SPAWNED: dict[int, subprocess.Popen] = {}


def state_root() -> Path:
    return Path(os.environ.get("AISHA_LAB_DIR", DEFAULT_STATE_ROOT))


def lab_hosts_file(lab_name: str = DEFAULT_LAB) -> Path:
    """The inventory view of a lab: {"lab", "hosts": [{name, address, ssh_key, ssh_user,
    groups}]}, the first host in group "canary", the others in "production"."""
    return state_root() / lab_name / "hosts.json"


class RemoteCommandError(subprocess.CalledProcessError):
    """A command run on a lab host over SSH failed."""

    def __init__(self, host: str, result: subprocess.CompletedProcess, cmd: str):
        super().__init__(result.returncode, cmd, result.stdout, result.stderr)
        self.host = host

    def __str__(self) -> str:
        tail = "\n".join((self.stderr or self.stdout or "").strip().splitlines()[-15:])
        return f"on {self.host}: `{self.cmd}` failed (exit {self.returncode}):\n{tail}"


@dataclass
class LabHost:
    name: str  # e.g. "demo-1", also its hostname
    address: str  # container side, 198.18.N.2
    gateway: str  # this side, 198.18.N.1
    ssh_key: Path  # private key accepted by root@address
    machine: str  # systemd-nspawn machine name
    pid: int | None  # the systemd-nspawn process
    root: Path  # the host's rootfs: an overlay on the cached image
    lab: str = DEFAULT_LAB
    release: str = DEFAULT_RELEASE
    log: Path | None = None  # its console output (systemd-nspawn's stdout)
    login: str = DEFAULT_LOGIN  # one of LOGINS: how pyinfra logs in
    sudo_password: str | None = None  # login "sudo-password" only

    @property
    def ssh_user(self) -> str:
        return "root" if self.login == "root" else SUDO_USER

    @property
    def connection_data(self) -> dict:
        """pyinfra's data for logging in as this host's login user (sudo for the others)."""
        data = {**pyinfra_ssh_data(self.ssh_key), "ssh_user": self.ssh_user}
        if self.login != "root":
            data["_sudo"] = True
        if self.sudo_password:
            data["_sudo_password"] = self.sudo_password
        return data

    def ssh_command(self, command: str | None = None, *, tty: bool = False,
                    user: str = "root") -> list[str]:
        cmd = ["ssh", "-i", str(self.ssh_key), *SSH_OPTIONS, *(["-t"] if tty else [])]
        cmd.append(f"{user}@{self.address}")
        return cmd + (["--", command] if command else [])

    def run(
        self, cmd: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess:
        """Run a shell command on the host as root over SSH (output captured as text)."""
        result = subprocess.run(
            self.ssh_command(cmd), capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise RemoteCommandError(self.name, result, cmd)
        return result

    def pyinfra_host(self) -> tuple[str, dict]:
        """This host as a pyinfra inventory entry for the SSH connector, as its login user."""
        return self.address, self.connection_data


def pyinfra_ssh_data(ssh_key: Path | str) -> dict:
    """pyinfra's SSH connector data for any lab host: root with the lab's key."""
    return {
        "ssh_user": "root",
        "ssh_key": str(ssh_key),
        "ssh_known_hosts_file": "/dev/null",  # every lab host is new: nothing to remember
        "ssh_strict_host_key_checking": "off",
        "ssh_allow_agent": False,
        "ssh_look_for_keys": False,
    }


@dataclass
class HostStatus:
    host: LabHost
    running: bool  # its systemd-nspawn process is alive
    reachable: bool  # SSH with the lab key works

    @property
    def summary(self) -> str:
        if self.reachable:
            return "up"
        return "unreachable" if self.running else "stopped"


class Lab:
    """A named set of lab hosts. Several labs coexist; each host has its own /30."""

    def __init__(self, name: str = DEFAULT_LAB):
        if not LAB_NAME.match(name):
            raise LabError(
                f"lab name {name!r}: use 1-20 lowercase letters, digits or '-', "
                "starting with a letter"
            )
        self.name = name

    @property
    def dir(self) -> Path:
        return state_root() / self.name

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def ssh_key(self) -> Path:
        return state_root() / "id_ed25519"

    # --- public API -----------------------------------------------------------------------

    def up(self, count: int = 1, release: str = DEFAULT_RELEASE,
           login: str = DEFAULT_LOGIN) -> list[LabHost]:
        """Hosts of this lab, booting them if needed.

        If the lab's hosts are all alive, reachable, of `release` and `login`, they are
        reused (and more are booted if fewer than `count`); otherwise what is left of them
        is removed and `count` fresh hosts are booted.
        """
        self._check_request(count, release, login)
        image = self._prepare_host_side(release)
        with self._locked():
            state = self._load()
            if state["hosts"]:
                statuses = [self._status_of(h) for h in self._hosts_of(state)]
                if all(s.reachable and s.host.release == release and s.host.login == login
                       for s in statuses):
                    missing = count - len(statuses)
                    new = (self._boot(state, missing, release, image, login)
                           if missing > 0 else [])
                    return [s.host for s in statuses] + new
                print(f"lab {self.name}: removing hosts that are not healthy or not as asked",
                      flush=True)
                self._remove_all(state)
            return self._boot(state, count, release, image, login)

    def add_hosts(self, count: int = 1, release: str = DEFAULT_RELEASE,
                  login: str = DEFAULT_LOGIN) -> list[LabHost]:
        """Boot `count` fresh hosts in this lab, next to any it has; returns only the new."""
        self._check_request(count, release, login)
        image = self._prepare_host_side(release)
        with self._locked():
            return self._boot(self._load(), count, release, image, login)

    def destroy_host(self, host: LabHost | str) -> None:
        """Remove one host (its process, copy, address and rules); the others stay."""
        require_root()
        name = host if isinstance(host, str) else host.name
        with self._locked():
            state = self._load()
            self._remove_host(state, self._entry(state, name))

    def recreate_host(self, host: LabHost | str) -> LabHost:
        """A fresh host with the same name, in place of `host`."""
        name = host if isinstance(host, str) else host.name
        require_root()
        with self._locked():
            state = self._load()
            entry = self._entry(state, name)
            release, login = entry["release"], entry.get("login", DEFAULT_LOGIN)
            self._remove_host(state, entry)
        image = self._prepare_host_side(release)
        with self._locked():
            return self._boot(self._load(), 1, release, image, login,
                              indexes=[entry["index"]])[0]

    def down(self) -> None:
        """Remove everything `up` created for this lab, and nothing else."""
        require_root()
        with self._locked():
            self._remove_all(self._load())

    def hosts(self) -> list[LabHost]:
        """The hosts recorded in the lab's state (alive or not)."""
        return self._hosts_of(self._load())

    def status(self) -> list[HostStatus]:
        return [self._status_of(host) for host in self.hosts()]

    # --- state ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with file_lock(state_root() / ".locks" / f"{self.name}.lock", LOCK_TIMEOUT_S,
                       f"lab {self.name}"):
            yield

    def _load(self) -> dict:
        return _read_json(self.state_file) or {"lab": self.name, "hosts": []}

    def _save(self, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.state_file, state)
        _write_json(lab_hosts_file(self.name), self._inventory(state))

    def _inventory(self, state: dict) -> dict:
        # state from before the "ready" flag holds only booted hosts
        entries = sorted((e for e in state["hosts"] if e.get("ready", True)),
                         key=lambda e: e["index"])
        hosts = self._hosts_of({"hosts": entries})
        inventory = []
        for i, host in enumerate(hosts):
            entry = {"name": host.name, "address": host.address, "ssh_key": str(self.ssh_key),
                     "ssh_user": host.ssh_user, "groups": ["canary" if i == 0 else "production"]}
            sudo_data = {k: v for k, v in host.connection_data.items() if k.startswith("_")}
            if sudo_data:
                entry["data"] = sudo_data
            inventory.append(entry)
        return {"lab": self.name, "hosts": inventory}

    def _hosts_of(self, state: dict) -> list[LabHost]:
        return [
            LabHost(name=e["name"], address=e["address"], gateway=e["gateway"],
                    ssh_key=self.ssh_key, machine=e["machine"], pid=e.get("pid"),
                    root=Path(e["root"]), lab=self.name, release=e["release"],
                    log=Path(e["log"]), login=e.get("login", DEFAULT_LOGIN),
                    sudo_password=e.get("sudo_password"))
            for e in state["hosts"]
        ]

    def _entry(self, state: dict, name: str) -> dict:
        for entry in state["hosts"]:
            if entry["name"] == name:
                return entry
        raise LabError(f"lab {self.name} has no host {name!r}")

    # --- up -------------------------------------------------------------------------------

    @staticmethod
    def _check_request(count: int, release: str, login: str) -> None:
        check_release(release)
        if not 1 <= count <= 20:
            raise LabError(f"count {count}: ask for 1 to 20 hosts")
        if login not in LOGINS:
            raise LabError(f"login {login!r} is not known: choose one of {', '.join(LOGINS)}")

    def _prepare_host_side(self, release: str) -> Path:
        require_root()
        ensure_host_tools()
        self._ensure_ssh_key()
        return ensure_image(release)  # outside the lab lock: a first build takes a minute

    def _ensure_ssh_key(self) -> None:
        with file_lock(state_root() / ".locks" / "ssh-key.lock", LOCK_TIMEOUT_S, "ssh key"):
            if not self.ssh_key.exists():
                run_command(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "aisha-lab",
                             "-f", str(self.ssh_key)])

    def _boot(self, state: dict, count: int, release: str, image: Path, login: str,
              indexes: list[int] | None = None) -> list[LabHost]:
        """Boot `count` new hosts; on any failure remove the ones this call created."""
        etc_hosts_entries = _mirror_host_entries(image)
        entries: list[dict] = []
        try:
            for i in range(count):
                entry = self._plan_host(state, release, login,
                                        indexes[i] if indexes else None)
                entries.append(entry)
                self._start_host(state, entry, image, etc_hosts_entries)
            hosts = [h for h in self._hosts_of(state) if h.name in {e["name"] for e in entries}]
            self._wait_until_ready(hosts)
            for entry in entries:
                entry["ready"] = True
            self._save(state)
        except BaseException:
            for entry in entries:
                try:
                    self._remove_host(state, entry)
                except Exception as exc:  # keep the first error; `down` can finish this later
                    print(f"lab {self.name}: could not remove {entry['name']}: {exc}",
                          file=sys.stderr)
            raise
        for host in hosts:
            print(f"lab {self.name}: {host.name} up at {host.address} "
                  f"(machine {host.machine}, {host.release}, login {host.ssh_user})", flush=True)
        return hosts

    def _plan_host(self, state: dict, release: str, login: str, index: int | None) -> dict:
        """Allocate the host's /30 and names, and record them before anything exists."""
        with _machine_lock():
            net = _free_net()
            index = index or _free_index(state)
            name = f"{self.name}-{index}"
            # short: the veth is "ve-" + machine, and link names stop at 15 characters
            machine = f"lab{net}-{self.name}"[:12].rstrip("-")
            entry = {
                "name": name, "index": index, "release": release, "net": net,
                "address": f"{NET_PREFIX}.{net}.2", "gateway": f"{NET_PREFIX}.{net}.1",
                "machine": machine, "dir": str(self.dir / name),
                "root": str(self.dir / name / "rootfs"),
                "log": str(self.dir / name / "console.log"),
                "pid": None, "init_pid": None, "init_start": None, "veth": None, "rules": [],
                "ready": False,  # hosts.json lists only hosts that finished booting
                "login": login,
                "sudo_password": (secrets.token_urlsafe(18) if login == "sudo-password"
                                  else None),
            }
            state["hosts"].append(entry)
            self._save(state)
        return entry

    def _start_host(self, state: dict, entry: dict, image: Path,
                    etc_hosts_entries: list[tuple[str, str]]) -> None:
        self._mount_copy(entry, image)
        self._personalize_copy(entry, etc_hosts_entries)
        self._spawn(state, entry)
        self._configure_network(state, entry)
        self._open_route_to_mirrors(state, entry)

    def _mount_copy(self, entry: dict, image: Path) -> None:
        """The host's own copy of the image: an overlay, written to <host dir>/upper.
        Copy-on-write: a `cp -a` of the image takes 1 s on an idle machine, 5-8 s on a busy
        one; the mount takes milliseconds."""
        host_dir = Path(entry["dir"])
        remove_tree(host_dir)
        for sub in ("upper", "work", "rootfs"):
            (host_dir / sub).mkdir(parents=True)
        run_command(["mount", "-t", "overlay", "aisha-lab", "-o",
                     f"lowerdir={image},upperdir={host_dir / 'upper'},workdir={host_dir / 'work'}",
                     entry["root"]])

    def _personalize_copy(self, entry: dict, etc_hosts_entries: list[tuple[str, str]]) -> None:
        root, name = Path(entry["root"]), entry["name"]
        write_file(root, "etc/hostname", f"{name}\n")
        # its own machine id: with both files empty or absent, systemd makes one at boot
        write_file(root, "etc/machine-id", "")
        (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
        write_file(root, "etc/hosts", _etc_hosts(name, etc_hosts_entries))
        # no nameserver: names the host needs are in /etc/hosts, nothing else resolves
        write_file(root, "etc/resolv.conf", "")
        public_key = self.ssh_key.with_suffix(".pub").read_text()
        write_file(root, "root/.ssh/authorized_keys", public_key, mode=0o600)
        run_command(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{name}",
                     "-f", str(root / "etc/ssh/ssh_host_ed25519_key")])
        if entry.get("login", DEFAULT_LOGIN) != "root":
            self._add_sudo_user(root, public_key, entry.get("sudo_password"))

    @staticmethod
    def _add_sudo_user(root: Path, public_key: str, password: str | None) -> None:
        """The login user of a real server: own home and key, sudo with or without password.
        Made inside the copy (chroot) so uid and files are the image's own."""
        in_copy = ["chroot", str(root)]
        run_command([*in_copy, "useradd", "--create-home", "--shell", "/bin/bash", SUDO_USER])
        ssh_dir = f"home/{SUDO_USER}/.ssh"
        (root / ssh_dir).mkdir(mode=0o700)
        write_file(root, f"{ssh_dir}/authorized_keys", public_key, mode=0o600)
        run_command([*in_copy, "chown", "-R", f"{SUDO_USER}:{SUDO_USER}", f"/{ssh_dir}"])
        if password:
            # on stdin: a password never appears on a command line
            run_command([*in_copy, "chpasswd"], input=f"{SUDO_USER}:{password}\n")
        rule = "ALL" if password else "NOPASSWD: ALL"
        write_file(root, f"etc/sudoers.d/{SUDO_USER}",
                   f"# written by the aisha lab: {SUDO_USER} administers this host\n"
                   f"{SUDO_USER} ALL=(ALL:ALL) {rule}\n", mode=0o440)
        run_command([*in_copy, "visudo", "-c", "-q", "-f", f"/etc/sudoers.d/{SUDO_USER}"])

    def _spawn(self, state: dict, entry: dict) -> None:
        cmd = ["systemd-nspawn", "-D", entry["root"], "-M", entry["machine"], "-b",
               # no machined here (PID 1 is not systemd): do not register, keep our unit
               "--register=no", "--keep-unit", "--network-veth",
               "--resolv-conf=off", "--link-journal=no"]
        with open(entry["log"], "ab") as log:
            process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        _SPAWNED[process.pid] = process
        entry["pid"] = process.pid
        self._save(state)
        entry["init_pid"] = self._wait_for_container_init(entry)
        entry["init_start"] = _start_time(entry["init_pid"])
        self._save(state)

    def _wait_for_container_init(self, entry: dict) -> int:
        pid = entry["pid"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _process_gone(pid):
                raise LabError(f"systemd-nspawn for {entry['name']} exited at start:\n"
                               f"{_log_tail(entry['log'])}")
            init_pid = _container_init(pid)
            if init_pid:
                return init_pid
            time.sleep(0.05)
        raise LabError(f"{entry['name']}: no container init under systemd-nspawn {pid} after 10 s")

    def _configure_network(self, state: dict, entry: dict) -> None:
        entry["veth"] = self._find_veth(entry)
        self._save(state)
        inside = ["nsenter", "-t", str(entry["init_pid"]), "-n"]
        for cmd in (
            ["ip", "addr", "add", f"{entry['gateway']}/30", "dev", entry["veth"]],
            ["ip", "link", "set", entry["veth"], "up"],
            [*inside, "ip", "addr", "add", f"{entry['address']}/30", "dev", "host0"],
            [*inside, "ip", "link", "set", "host0", "up"],
            [*inside, "ip", "route", "add", "default", "via", entry["gateway"]],
        ):
            run_command(cmd)

    def _find_veth(self, entry: dict) -> str:
        """The host side of the container's veth: the link whose index host0 points to."""
        inside = ["nsenter", "-t", str(entry["init_pid"]), "-n"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            host0 = run_command([*inside, "ip", "-o", "link", "show", "host0"], check=False)
            peer = re.search(r"host0@if(\d+):", host0.stdout)
            if peer:
                for line in run_command(["ip", "-o", "link", "show"]).stdout.splitlines():
                    index, name = line.split(":")[:2]
                    if index == peer.group(1):
                        return name.strip().split("@")[0]
            time.sleep(0.05)
        raise LabError(f"{entry['name']}: the veth link of machine {entry['machine']} "
                       "did not appear within 10 s")

    def _open_route_to_mirrors(self, state: dict, entry: dict) -> None:
        _enable_forwarding(self._forwarding_user(entry))
        subnet = f"{NET_PREFIX}.{entry['net']}.0/30"
        comment = ["-m", "comment", "--comment", f"aisha-lab:{self.name}:{entry['name']}"]
        rules = [{"table": "nat", "chain": "POSTROUTING", "add": "-A",
                  "spec": ["-s", subnet, *comment, "-j", "MASQUERADE"]}]
        if _forward_chain_filters():
            # insert, so that they come before whatever drops
            rules += [
                {"table": "filter", "chain": "FORWARD", "add": "-I",
                 "spec": ["-s", subnet, *comment, "-j", "ACCEPT"]},
                {"table": "filter", "chain": "FORWARD", "add": "-I",
                 "spec": ["-d", subnet, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
                          *comment, "-j", "ACCEPT"]},
            ]
        entry["rules"] = rules
        self._save(state)
        for rule in rules:
            run_command(["iptables", "-w", "-t", rule["table"], rule["add"], rule["chain"],
                         *rule["spec"]])

    def _wait_until_ready(self, hosts: list[LabHost]) -> None:
        """Until systemd has finished booting and sshd accepts the lab key."""
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        pending = {host.name: host for host in hosts}
        last_state: dict[str, str] = {}
        while pending:
            for host in list(pending.values()):
                if host.pid is None or _process_gone(host.pid):
                    raise LabError(f"{host.name} stopped while booting:\n{_log_tail(host.log)}")
                probe = host.run("systemctl is-system-running", check=False, timeout=15)
                last_state[host.name] = probe.stdout.strip() or probe.stderr.strip()
                if last_state[host.name] in ("running", "degraded"):
                    del pending[host.name]
            if pending and time.monotonic() > deadline:
                name, host = next(iter(pending.items()))
                raise LabError(f"{name} not ready after {BOOT_TIMEOUT_S} s (last answer: "
                               f"{last_state.get(name)!r}):\n{_log_tail(host.log)}")
            if pending:
                time.sleep(0.3)

    # --- down -----------------------------------------------------------------------------

    def _remove_all(self, state: dict) -> None:
        for entry in list(state["hosts"]):
            self._remove_host(state, entry)
        for path in (self.state_file, lab_hosts_file(self.name)):
            path.unlink(missing_ok=True)
        for partial in self.dir.glob(".*.json.*.tmp"):  # a crash in the middle of _write_json
            partial.unlink()
        try:
            self.dir.rmdir()  # only if empty: what we did not create stays, and so does its dir
        except FileNotFoundError:
            pass
        except OSError:
            others = ", ".join(sorted(p.name for p in self.dir.iterdir()))
            print(f"lab {self.name}: left {self.dir} in place, it holds files the lab did not "
                  f"create: {others}", file=sys.stderr)

    def _remove_host(self, state: dict, entry: dict) -> None:
        # state written before copies became overlays has no "dir": the copy was the root
        host_dir = Path(entry.get("dir") or entry["root"])
        if host_dir.resolve().parent != self.dir.resolve():
            raise LabError(f"refusing to remove {host_dir}: not a host of lab {self.name}")
        _stop_container(entry)
        for rule in entry.get("rules", []):
            _delete_rule(rule)
        _remove_host_side_address(entry)
        _remove_nspawn_leftovers(entry)
        remove_tree(host_dir)  # unmounts the overlay first
        Path(entry["log"]).unlink(missing_ok=True)  # gone with host_dir, but in older state
        state["hosts"].remove(entry)
        self._save(state)
        _release_forwarding(self._forwarding_user(entry))

    def _forwarding_user(self, entry: dict) -> str:
        return f"{self.state_file}#{entry['name']}"

    def _status_of(self, host: LabHost) -> HostStatus:
        running = host.pid is not None and _is_our_nspawn(host.pid, host.machine, str(host.root))
        reachable = running and host.run("true", check=False, timeout=15).returncode == 0
        return HostStatus(host=host, running=running, reachable=reachable)


# --- host networking ----------------------------------------------------------------------

@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    """Serializes what all labs on the machine share: address allocation, ip_forward."""
    with file_lock(RUNTIME_DIR / "lock", LOCK_TIMEOUT_S, "lab network"):
        yield


def _free_net() -> int:
    used = set(_nets_on_links())
    for state_file in state_root().glob("*/state.json"):
        used |= {entry["net"] for entry in (_read_json(state_file) or {}).get("hosts", [])}
    for net in NETS:
        if net not in used:
            return net
    raise LabError(f"all {len(NETS)} lab networks in {NET_PREFIX}.0.0/16 are in use: "
                   "run `aisha-infra lab down` for labs you no longer need")


def _nets_on_links() -> list[int]:
    """N of every 198.18.N.x address on this machine, whoever put it there."""
    out = run_command(["ip", "-o", "-4", "addr", "show"]).stdout
    return [int(n) for n in re.findall(rf"inet {re.escape(NET_PREFIX)}\.(\d+)\.\d+/", out)]


def _free_index(state: dict) -> int:
    used = {entry["index"] for entry in state["hosts"]}
    return next(i for i in range(1, len(used) + 2) if i not in used)


def _forward_chain_filters() -> bool:
    """True when forwarded packets could be dropped: policy not ACCEPT, or drop rules."""
    rules = run_command(["iptables", "-w", "-S", "FORWARD"]).stdout.splitlines()
    return "-P FORWARD ACCEPT" not in rules or any(
        r.endswith(("-j DROP", "-j REJECT")) for r in rules)


def _delete_rule(rule: dict) -> None:
    """Delete the rule by its exact spec, if it is there (up may have crashed before adding)."""
    where = ["iptables", "-w", "-t", rule["table"]]
    if run_command([*where, "-C", rule["chain"], *rule["spec"]], check=False).returncode == 0:
        run_command([*where, "-D", rule["chain"], *rule["spec"]])


def _remove_host_side_address(entry: dict) -> None:
    """Normally the veth vanished with the container; if not, take our address off it."""
    veth = entry.get("veth")
    if not veth:
        return
    shown = run_command(["ip", "-o", "-4", "addr", "show", "dev", veth], check=False).stdout
    if f"inet {entry['gateway']}/30 " in shown:
        run_command(["ip", "addr", "del", f"{entry['gateway']}/30", "dev", veth])


def _enable_forwarding(user: str) -> None:
    """Turn on ip_forward, remembering its previous value until the last lab host is gone."""
    record_path = RUNTIME_DIR / "ip_forward.json"
    with _machine_lock():
        record = _read_json(record_path) or {"previous": IP_FORWARD.read_text().strip(),
                                             "users": []}
        if user not in record["users"]:
            record["users"].append(user)
        _write_json(record_path, record)
        IP_FORWARD.write_text("1\n")


def _release_forwarding(user: str) -> None:
    record_path = RUNTIME_DIR / "ip_forward.json"
    with _machine_lock():
        record = _read_json(record_path)
        if record is None:
            return
        record["users"] = [u for u in record["users"] if u != user and _user_exists(u)]
        if record["users"]:
            _write_json(record_path, record)
        else:
            IP_FORWARD.write_text(record["previous"] + "\n")
            record_path.unlink()


def _user_exists(user: str) -> bool:
    """Whether a host still holds ip_forward (a crash may have left stale users)."""
    state_file, _, name = user.rpartition("#")
    state = _read_json(Path(state_file)) or {"hosts": []}
    return any(entry["name"] == name for entry in state["hosts"])


def _mirror_host_entries(image: Path) -> list[tuple[str, str]]:
    """(address, name) for the image's apt mirrors and PyPI, as this machine resolves them."""
    entries = []
    for name in [*apt_source_hosts(image), *EXTRA_HOSTS]:
        try:
            infos = socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise LabError(f"cannot resolve {name} on this machine ({exc}): lab hosts reach "
                           "it through this machine's resolution") from exc
        entries.append((infos[0][4][0], name))
    return entries


def _etc_hosts(hostname: str, entries: list[tuple[str, str]]) -> str:
    lines = ["127.0.0.1\tlocalhost", f"127.0.1.1\t{hostname}",
             "::1\tlocalhost ip6-localhost ip6-loopback",
             "# written by the aisha lab: the container has no DNS"]
    return "\n".join(lines + [f"{address}\t{name}" for address, name in entries]) + "\n"


# --- processes ----------------------------------------------------------------------------

def _stop_container(entry: dict) -> None:
    """SIGTERM the host's systemd-nspawn (the container powers off), SIGKILL if it lingers."""
    pids = [entry["pid"]] if entry.get("pid") else []
    pids = [p for p in pids if _is_our_nspawn(p, entry["machine"], entry["root"])]
    if not pids:  # crashed between spawn and recording the pid: find it by its command line
        pids = [p for p in _all_pids() if _is_our_nspawn(p, entry["machine"], entry["root"])]
    inits = [(entry.get("init_pid"), entry.get("init_start"))]
    for pid in pids:
        init_pid = _container_init(pid)  # up may have crashed before recording it
        inits.append((init_pid, _start_time(init_pid) if init_pid else None))
        _terminate(pid)
    # An nspawn that had to be SIGKILLed leaves its container running (as does one stopped
    # so early in the boot that PID 1 inside ignored the poweroff): end it by its init.
    for init_pid, start_time in inits:
        if init_pid and _is_same_process(init_pid, start_time):
            _terminate(init_pid, signal.SIGKILL)


def _remove_nspawn_leftovers(entry: dict) -> None:
    """What systemd-nspawn removes itself when it exits cleanly, but not when killed: the
    image lock beside the rootfs, the rootfs inode lock and the machine's propagation dir."""
    root = Path(entry["root"])
    (root.parent / f".#{root.name}.lck").unlink(missing_ok=True)
    if root.exists():
        st = root.stat()
        Path(f"/run/systemd/nspawn/locks/inode-{st.st_dev}:{st.st_ino}").unlink(missing_ok=True)
    remove_tree(Path("/run/systemd/nspawn/propagate") / entry["machine"])


def _terminate(pid: int, first_signal: int = signal.SIGTERM) -> None:
    """Signal, wait (bounded), then SIGKILL. The signal is repeated every 2 s: nspawn passes
    each SIGTERM on as a poweroff request, which a container still early in its boot drops."""
    for sig, wait_s in ((first_signal, STOP_TIMEOUT_S), (signal.SIGKILL, 5)):
        deadline = time.monotonic() + wait_s
        next_signal = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= next_signal:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                next_signal = time.monotonic() + 2
            if _process_gone(pid):
                return
            time.sleep(0.1)
    raise LabError(f"process {pid} survived SIGKILL")


def _is_our_nspawn(pid: int, machine: str, root: str) -> bool:
    """Whether pid is (still) the systemd-nspawn of this machine and rootfs, not a reused pid."""
    args = _cmdline(pid)
    if not args or Path(args[0]).name != "systemd-nspawn" or _process_gone(pid):
        return False
    pairs = set(zip(args, args[1:]))
    return ("-M", machine) in pairs and ("-D", root) in pairs


def _is_same_process(pid: int, start_time: int | None) -> bool:
    """Whether pid is still the process that started at start_time (not a reused pid)."""
    return start_time is not None and _start_time(pid) == start_time and not _process_gone(pid)


def _process_gone(pid: int) -> bool:
    """True once pid has exited (reaping it if this process started it)."""
    process = _SPAWNED.get(pid)
    if process is not None and process.poll() is not None:
        del _SPAWNED[pid]
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def _container_init(nspawn_pid: int) -> int | None:
    """The container's PID 1: the nspawn child living in another PID namespace."""
    try:
        children = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children").read_text().split()
    except OSError:
        return None
    ours = _pid_namespace(os.getpid())
    return next((int(c) for c in children if _pid_namespace(int(c)) not in (None, ours)), None)


def _start_time(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _log_tail(log: str | Path | None, lines: int = 25) -> str:
    try:
        text = Path(log).read_text(errors="replace") if log else ""
    except OSError:
        text = ""
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


# --- files --------------------------------------------------------------------------------

def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise LabError(f"{path} is not valid JSON ({exc}): fix or remove it") from exc


def _write_json(path: Path, data: dict) -> None:
    """Atomic: readers (other labs allocating addresses) never see half a file.
    Mode 0600: a lab host's sudo password is in it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# --- command line -------------------------------------------------------------------------

def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lab", help="disposable Debian hosts (systemd-nspawn) on this machine",
        description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="lab_command", required=True)

    up = commands.add_parser("up", help="boot the lab's hosts (reused if already up)")
    up.add_argument("--count", type=int, default=1, help="number of hosts (default 1)")
    up.add_argument("--release", choices=SUPPORTED_RELEASES, default=DEFAULT_RELEASE)
    up.add_argument("--login", choices=LOGINS, default=DEFAULT_LOGIN,
                    help=f"how pyinfra logs in: root (default), or as '{SUDO_USER}' with "
                         "password-less sudo (sudo) or sudo asking a password (sudo-password)")
    up.set_defaults(run=_cli_up)

    down = commands.add_parser("down", help="remove the lab's hosts and all they use")
    down.set_defaults(run=_cli_down)

    status = commands.add_parser("status", help="the lab's hosts and whether they answer")
    status.set_defaults(run=_cli_status)

    ssh = commands.add_parser("ssh", help="SSH to a lab host as root")
    ssh.add_argument("host", metavar="HOST", help="host name (demo-1) or number (1)")
    ssh.add_argument("command", nargs=argparse.REMAINDER, help="command to run (default: shell)")
    ssh.set_defaults(run=_cli_ssh)

    for sub in (up, down, status, ssh):
        sub.add_argument("--name", default=DEFAULT_LAB, help=f"lab name (default {DEFAULT_LAB})")


def _reporting_errors(function):
    def run(args: argparse.Namespace) -> int:
        try:
            return function(args)
        except LabError as exc:
            print(f"lab: error: {exc}", file=sys.stderr)
            return 1
    return run


@_reporting_errors
def _cli_up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    hosts = Lab(args.name).up(count=args.count, release=args.release, login=args.login)
    print(f"lab {args.name}: {len(hosts)} host(s) ready in {time.monotonic() - started:.1f} s")
    for host in hosts:
        sudo = {"root": "", "sudo": " (sudo)", "sudo-password": " (sudo with password)"}
        print(f"  {host.name:<12} {host.address:<14} {host.ssh_user}@{host.address} "
              f"-i {host.ssh_key}{sudo[host.login]}")
    print(f"inventory: {lab_hosts_file(args.name)}")
    return 0


@_reporting_errors
def _cli_down(args: argparse.Namespace) -> int:
    started = time.monotonic()
    Lab(args.name).down()
    print(f"lab {args.name}: down in {time.monotonic() - started:.1f} s")
    return 0


@_reporting_errors
def _cli_status(args: argparse.Namespace) -> int:
    statuses = Lab(args.name).status()
    if not statuses:
        print(f"lab {args.name}: no hosts")
    for s in statuses:
        print(f"  {s.host.name:<12} {s.host.address:<14} {s.summary:<12} "
              f"{s.host.release} machine {s.host.machine} pid {s.host.pid}")
    return 0 if all(s.reachable for s in statuses) else 1


@_reporting_errors
def _cli_ssh(args: argparse.Namespace) -> int:
    hosts = Lab(args.name).hosts()
    wanted = args.host if not args.host.isdigit() else f"{args.name}-{args.host}"
    host = next((h for h in hosts if h.name == wanted), None)
    if host is None:
        known = (", ".join(h.name for h in hosts)
                 or f"none: run `aisha-infra lab up --name {args.name}`")
        raise LabError(f"lab {args.name} has no host {args.host!r} (hosts: {known})")
    command = " ".join(args.command) or None
    return subprocess.call(host.ssh_command(command, tty=command is None and sys.stdin.isatty()))
