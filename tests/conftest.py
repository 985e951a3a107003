"""Shared fixtures: lab hosts (real Debian containers, see aisha_infra/lab/hosts.py) for e2e tests.

- `lab`: this session's Lab; every host in it is removed at the end, even on failure.
- `lab_hosts(count=1, release="bookworm", login="root")`: boots fresh hosts, removed after
  the test. `login="sudo"` logs in as `admin` with password-less sudo, `"sudo-password"` as
  `admin` whose sudo asks a password (a real server's setup): `host.pyinfra_host()` and
  `write_hosts_file` then carry `ssh_user`, `_sudo: True` (and `_sudo_password`).
- `lab_host`: one fresh host for one test; `sudo_lab_host`: the same, logged into as `admin`
  with password-less sudo. For a host shared by a module's tests use a module-scoped fixture
  calling `lab.add_hosts(count=1, login="sudo")` (removed with the session lab).
- `shared_lab_host`: one host booted once and shared by every test of the session; leave it
  as you found it (or use `lab_host`).
- `make_lab(suffix)`: another, separate lab (for tests about labs themselves).

A host is a LabHost: `.address`, `.ssh_key`, `.run(cmd)` (always as root, to prepare and
inspect), `.pyinfra_host()` / `.connection_data` (as its login user), `.ssh_user`,
`.sudo_password`; destroy or replace one with `lab.destroy_host(host)` /
`lab.recreate_host(host)` (same login).

Lab names carry the pytest process id, so sessions running at the same time on one machine
do not tear down each other's hosts; labs of sessions that died are removed at start.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import sys

import pytest

from aisha_infra.lab.hosts import Lab, LabHost, state_root

SESSION_LAB = f"test-{os.getpid()}"
_OUR_LAB = re.compile(r"^test-(\d+)(-[a-z0-9]+)?$")

_labs_to_remove: dict[str, Lab] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(
        reason="e2e: lab hosts need root (systemd-nspawn, veth links, iptables): "
               "run pytest as root"
    )
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


def _remove_labs() -> None:
    """Tear down every lab this session made; also runs at exit and on SIGTERM/SIGHUP."""
    for name, lab in list(_labs_to_remove.items()):
        try:
            lab.down()
        except Exception as exc:  # keep going: the other labs still need removing
            print(f"conftest: could not remove lab {name}: {exc}", file=sys.stderr)
        _labs_to_remove.pop(name, None)


def _interrupt(signum: int, frame: object) -> None:
    # pytest turns KeyboardInterrupt into an orderly stop that runs fixture teardowns
    raise KeyboardInterrupt(f"signal {signum}")


def _remove_labs_of_dead_sessions() -> None:
    for lab_dir in state_root().glob("test-*"):
        match = _OUR_LAB.match(lab_dir.name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            Lab(lab_dir.name).down()


def _register(lab: Lab) -> Lab:
    if not _labs_to_remove:
        atexit.register(_remove_labs)
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) is signal.SIG_DFL:
                signal.signal(signum, _interrupt)
    _labs_to_remove[lab.name] = lab
    return lab


@pytest.fixture(scope="session")
def lab() -> Lab:
    _remove_labs_of_dead_sessions()
    session_lab = _register(Lab(SESSION_LAB))
    try:
        yield session_lab
    finally:
        session_lab.down()
        _labs_to_remove.pop(session_lab.name, None)


@pytest.fixture
def lab_hosts(lab: Lab):
    """Factory: `lab_hosts(count=1, release="bookworm", login="root")` -> fresh hosts, gone
    after the test."""
    booted: list[LabHost] = []

    def boot(count: int = 1, release: str = "bookworm", login: str = "root") -> list[LabHost]:
        hosts = lab.add_hosts(count=count, release=release, login=login)
        booted.extend(hosts)
        return hosts

    yield boot
    for host in booted:
        if host.name in {h.name for h in lab.hosts()}:  # the test may have destroyed it
            lab.destroy_host(host.name)


@pytest.fixture
def lab_host(lab_hosts) -> LabHost:
    return lab_hosts(1)[0]


@pytest.fixture
def sudo_lab_host(lab_hosts) -> LabHost:
    """A fresh host logged into as `admin` with password-less sudo, for one test."""
    return lab_hosts(1, login="sudo")[0]


@pytest.fixture(scope="session")
def shared_lab_host(lab: Lab) -> LabHost:
    """Booted once, removed with the session lab."""
    return lab.add_hosts(count=1)[0]


@pytest.fixture
def make_lab():
    """Factory: `make_lab("crash")` -> a separate, empty Lab, removed after the test."""
    made: list[Lab] = []

    def make(suffix: str) -> Lab:
        new_lab = _register(Lab(f"{SESSION_LAB}-{suffix}"))
        made.append(new_lab)
        return new_lab

    yield make
    for made_lab in made:
        made_lab.down()
        _labs_to_remove.pop(made_lab.name, None)
