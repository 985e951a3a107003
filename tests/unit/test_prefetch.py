"""The prefetch: facts read in one command give what each fact's own command gives, and a
change made by an operation is never hidden by a value read before it.

Commands run for real on this machine (`sh -c`, pyinfra's local connector) in temporary
directories."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pyinfra
import pytest
from pyinfra import host
from pyinfra.api import Config, FactBase, Inventory, State, StringCommand, operation
from pyinfra.api.connect import connect_all
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from pyinfra.connectors.local import LocalConnector
from pyinfra.facts.files import Directory, File, FileContents, Link, Sha1File
from pyinfra.facts.server import Os, TmpDir
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus
from pyinfra.operations import server

from aisha_infra.deploy import prefetch
from aisha_infra.deploy.facts.files import DirectoryTree


class NeedsMissingProgram(FactBase):
    requires_command = "aisha-no-such-program"
    __module__ = "aisha_infra.deploy.facts.testing"  # a module the prefetch accepts

    def command(self) -> str:
        return "aisha-no-such-program --version"


class Fails(FactBase):
    __module__ = "aisha_infra.deploy.facts.testing"

    def command(self, code: int) -> str:
        return f"echo partial; exit {int(code)}"


def raw(command) -> str:
    return command.get_raw_value() if isinstance(command, StringCommand) else command


def run_sh(command: str) -> tuple[int, list[str]]:
    """Exit status and stdout lines, split as pyinfra splits them (a last line may lack "\\n")."""
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
    lines = result.stdout.split("\n")
    return result.returncode, lines[:-1] if lines[-1] == "" else lines


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "app.py").write_text("print('hi')\n")
    (tmp_path / "no-newline").write_text("last line without newline")
    # A file that prints what looks like the prefetch's markers, without the run's nonce.
    (tmp_path / "fake-markers").write_text("@@0000000000000000-end:0:0\n@@0000000000000000:1\n")
    (tmp_path / "link").symlink_to(tmp_path / "pkg")
    (tmp_path / "with space").write_text("not a plain path: read in its own part\n")
    return tmp_path


def test_each_part_is_what_the_fact_alone_gives(tree, monkeypatch):
    asked = [
        (File, {"path": str(tree / "pkg" / "app.py")}),
        (File, {"path": str(tree / "missing")}),
        (Sha1File, {"path": str(tree / "pkg" / "app.py")}),
        (Directory, {"path": str(tree / "pkg")}),
        (Link, {"path": str(tree / "link")}),
        (FileContents, {"path": str(tree / "no-newline")}),
        (FileContents, {"path": str(tree / "fake-markers")}),
        (DirectoryTree, {"path": str(tree)}),
        (Os, {}),
        (NeedsMissingProgram, {}),
        (Fails, {"code": 3}),
        # plain paths: one stat and one sha1sum for all of them
        (Sha1File, {"path": str(tree / "missing")}),
        (Sha1File, {"path": str(tree / "pkg")}),
        (Directory, {"path": str(tree / "missing")}),
        (File, {"path": str(tree / "link")}),
        (File, {"path": str(tree / "with space")}),
        (Sha1File, {"path": str(tree / "with space")}),
    ]
    monkeypatch.setattr(prefetch, "fact_from_key", lambda key: dict(keys)[key])
    keys = [(json.dumps([cls.__name__, kwargs]), (cls, kwargs)) for cls, kwargs in asked]
    queries = prefetch.Queries(key for key, _ in keys)
    nonce, machine = "0123456789abcdef", Path("/etc/machine-id").read_text().strip()

    status, lines = run_sh(raw(prefetch.Prefetched().command(queries, nonce, machine)))
    seen_machine, parts = prefetch.parse_parts(lines, queries, nonce)

    assert status == 0 and seen_machine == machine and set(parts) == set(queries)
    stat, sha1 = prefetch.batched(queries)
    assert len(stat) == 6 and len(sha1) == 3  # the plain paths
    for key, (cls, kwargs) in keys:
        alone = run_sh(raw(prefetch.part_command(cls(), kwargs)))
        assert parts[key] == alone, cls.__name__
    contents = parts[keys[5][0]][1]
    assert contents == ["last line without newline"]
    assert parts[keys[6][0]][1] == ["@@0000000000000000-end:0:0", "@@0000000000000000:1"]
    assert parts[keys[9][0]] == (0, ["##PYINFRA_NOCMD##"])  # read the normal way, then
    assert parts[keys[10][0]] == (3, ["partial"])

    # Another machine under the name: its id, and nothing read.
    status, lines = run_sh(raw(prefetch.Prefetched().command(queries, nonce, "another-machine")))
    assert prefetch.parse_parts(lines, queries, nonce) == (machine, {})


def test_only_plain_facts_of_known_modules_are_prefetched():
    key = prefetch.fact_key(File, {"path": "/etc/hosts"})
    assert prefetch.fact_from_key(key) == (File, {"path": "/etc/hosts"})
    assert prefetch.fact_key(File, {"path": "/etc/hosts", "_sudo": True}) is None  # its own connection
    assert prefetch.fact_key(File, {"path": object()}) is None
    assert prefetch.fact_key(str, {}) is None
    assert prefetch.fact_key(prefetch.Prefetched, {}) is None
    # Remembered keys name only fact classes of pyinfra's and our facts modules.
    assert prefetch.fact_from_key(json.dumps(["os:system", {"command": "id"}])) is None
    assert prefetch.fact_from_key(json.dumps(["subprocess:Popen", {}])) is None
    assert prefetch.fact_from_key("not json") is None


def test_memory_is_private_and_per_host(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    keys = [prefetch.fact_key(File, {"path": "/etc/hosts"})]
    prefetch.remember("web-1", "0a1b", keys)
    assert prefetch.remembered("web-1") == ("0a1b", keys)
    assert prefetch.remembered("web-2") == ("", [])
    (memory,) = prefetch.memory_dir().iterdir()
    assert stat.S_IMODE(memory.stat().st_mode) == 0o600
    assert stat.S_IMODE(prefetch.memory_dir().stat().st_mode) == 0o700
    memory.write_text(json.dumps({"host": "someone-else", "machine": "0a1b", "facts": keys}))
    assert prefetch.remembered("web-1") == ("", [])


SEEN: list = []


@operation(is_idempotent=True)
def record_file(path: str):
    value = host.get_fact(File, path=path)
    if host.state.is_executing:  # not the change-detection pass
        SEEN.append(value)
    yield from ()


@operation()
def read_and_touch(path: str):
    host.get_fact(File, path=path)
    yield f"touch {path}"


def run_local(operations, check_for_changes: bool = False) -> State:
    """A real pyinfra run on this machine (@local) with the prefetch, like deploy.py's;
    `pyinfra -y` by default, else with the change-detection pass first."""
    inventory = Inventory((["@local"], {}))
    state = State(inventory, Config(), check_for_changes=check_for_changes)
    connect_all(state)
    prefetch.prefetch_facts(state)
    was_cli, pyinfra.is_cli = pyinfra.is_cli, False
    try:
        for op, kwargs in operations:
            add_op(state, op, **kwargs)
        run_ops(state)
    finally:
        pyinfra.is_cli = was_cli
        for each in inventory:
            each.disconnect()
    return state


@pytest.mark.parametrize("check_for_changes", [False, True], ids=["-y", "interactive"])
def test_a_change_is_seen_by_the_facts_after_it(tmp_path, monkeypatch, check_for_changes):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    target = tmp_path / "made-by-the-run"
    operations = [
        (record_file, {"path": str(target)}),
        (server.shell, {"commands": [f"touch {target}"]}),
        (record_file, {"path": str(target)}),
        (record_file, {"path": str(target)}),
    ]
    SEEN.clear()
    run_local(operations, check_for_changes)  # nothing remembered yet: every fact on its own
    assert SEEN[0] is None and SEEN[1]["size"] == 0
    assert prefetch.remembered("@local @local")[1]  # what this run asked

    target.unlink()
    SEEN.clear()
    run_local(operations, check_for_changes)  # the first read comes from the prefetch, the rest after the change
    assert SEEN[0] is None
    assert SEEN[1] is not None and SEEN[2] is not None


def test_a_run_without_changes_reads_its_facts_once(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    target = tmp_path / "there"
    target.write_text("x")
    operations = [(record_file, {"path": str(target)})] * 3
    run_local(operations)
    commands = counting_commands(monkeypatch)
    os.utime(target, (0, 0))  # a change made outside the run, before it: seen by the prefetch
    SEEN.clear()
    run_local(operations)
    assert len(commands) == 1 and "machine-id" in commands[0]  # the prefetch, nothing else
    assert [seen["mtime"].year for seen in SEEN] == [1970] * 3


class Settles(FactBase):
    """Stands for a fact whose normal read waits for the host to settle (ServedCertificate):
    its prefetched read does not wait, and exits non-zero for a value it cannot vouch for."""

    prefetch_arguments = {"settle": False}

    def command(self, path: str, settle: bool = True) -> str:
        return f"cat {path}" if settle else f"grep -qx settled {path} || exit 3; cat {path}"


SEEN_SETTLING: list = []


@operation(is_idempotent=True)
def record_settling(path: str):
    value = host.get_fact(Settles, path=path)
    if host.state.is_executing:
        SEEN_SETTLING.append(value)
    yield from ()


def counting_commands(monkeypatch) -> list[str]:
    commands: list[str] = []
    run_shell_command = LocalConnector.run_shell_command

    def counting(self, command, *args, **kwargs):
        commands.append(str(command))
        return run_shell_command(self, command, *args, **kwargs)

    monkeypatch.setattr(LocalConnector, "run_shell_command", counting)
    return commands


def test_a_fact_is_prefetched_with_its_prefetch_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(prefetch, "FACT_MODULES", (*prefetch.FACT_MODULES, __name__))  # Settles, by name
    settling, other = tmp_path / "settling", tmp_path / "other"
    settling.write_text("settled\n")
    other.write_text("x")
    operations = [
        (record_settling, {"path": str(settling)}),
        (server.shell, {"commands": [f"echo handing-over > {settling}"]}),
        (record_file, {"path": str(other)}),
        (record_settling, {"path": str(settling)}),
    ]
    run_local(operations)  # remembered
    settling.write_text("settled\n")
    commands = counting_commands(monkeypatch)
    SEEN_SETTLING.clear()
    run_local(operations)
    assert SEEN_SETTLING == ["settled", "handing-over"]
    # The prefetch served the settled value; the refill after the change read it without
    # waiting and could not vouch for it, so it was read again on its own, the normal way.
    assert [command.startswith("m=$(cat /etc/machine-id") for command in commands] == [True, False, True, False]
    assert commands[-1].endswith(f"cat {settling}") and "grep" not in commands[-1]
    assert "grep -qx settled" in commands[0] and "grep -qx settled" in commands[2]


def test_slow_parts_go_to_different_groups():
    jobs = [f"job{number}" for number in range(7)]
    costs = [1, 5, 1, 4, 1, 4, 1]
    groups = prefetch._balanced(jobs, costs)
    assert len(groups) == prefetch.GROUPS == 4
    assert sorted(job for group in groups for job in group) == jobs
    assert [group[0] for group in groups] == ["job1", "job3", "job5", "job0"]  # the slow ones apart
    assert prefetch._balanced(["only"], [1]) == [["only"]]


def test_the_groups_leave_no_file_behind(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(prefetch, "fact_from_key", lambda key: dict(keys)[key])
    keys = [(json.dumps([cls.__name__, kwargs]), (cls, kwargs))
            for cls, kwargs in [(File, {"path": str(tree / "pkg" / "app.py")}), (Os, {}), (Fails, {"code": 1})]]
    queries = prefetch.Queries(key for key, _ in keys)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    command = raw(prefetch.Prefetched().command(queries, "0123456789abcdef", Path("/etc/machine-id").read_text().strip()))
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "TMPDIR": str(scratch)})
    assert result.returncode == 0 and "@@0123456789abcdef-end:2:1" in result.stdout
    assert list(scratch.iterdir()) == []


FAKE_SYSTEMCTL = """#!/bin/sh
# `systemctl show --all --property Id --property P ... UNIT...` as systemd prints it: one block a
# unit, blank-line separated, properties in systemd's order (Id, SubState, UnitFileState).
test "$1" = show || exit 1
shift
props= first=1
while [ $# -gt 0 ]; do
    case "$1" in --all|--) ;; --property) props="$props $2"; shift ;; *)
        [ -n "$first" ] || echo
        first=
        for p in Id SubState UnitFileState; do
            case " $props " in *" $p "*)
                case $p in Id) echo "Id=$1" ;; SubState) echo "SubState=running" ;; *) echo "UnitFileState=enabled" ;; esac ;;
            esac
        done ;;
    esac
    shift
done
"""


def test_systemd_units_come_from_one_systemctl(tmp_path, monkeypatch):
    """Real systemd is checked end to end (tests/e2e: a converged host is read in one command);
    here: each fact gets exactly the lines its own command prints, and a systemctl that
    fails leaves every unit to be read the normal way."""
    fake = tmp_path / "bin" / "systemctl"
    fake.parent.mkdir()
    fake.write_text(FAKE_SYSTEMCTL)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")

    asked = [(cls, {"services": [unit], "user_mode": False, "machine": None, "user_name": None})
             for unit in ("nginx.service", "aisha-api.socket") for cls in (SystemdStatus, SystemdEnabled)]
    asked += [(SystemdStatus, {"services": ["nginx.service"], "user_mode": True, "machine": None, "user_name": None})]
    keys = [(json.dumps([cls.__name__, kwargs]), (cls, kwargs)) for cls, kwargs in asked]
    monkeypatch.setattr(prefetch, "fact_from_key", lambda key: dict(keys)[key])
    queries = prefetch.Queries(key for key, _ in keys)
    nonce, machine = "0123456789abcdef", Path("/etc/machine-id").read_text().strip()
    assert len(prefetch.systemd_batched(queries)) == 4  # not the user-mode one

    _, lines = run_sh(raw(prefetch.Prefetched().command(queries, nonce, machine)))
    _, parts = prefetch.parse_parts(lines, queries, nonce)
    for key, (cls, kwargs) in keys:
        assert parts[key] == run_sh(raw(prefetch.part_command(cls(), kwargs))), key
    assert parts[keys[1][0]] == (0, ["Id=nginx.service", "UnitFileState=enabled"])

    fake.write_text("#!/bin/sh\nexit 1\n")
    _, lines = run_sh(raw(prefetch.Prefetched().command(queries, nonce, machine)))
    _, parts = prefetch.parse_parts(lines, queries, nonce)
    assert set(parts) == {keys[4][0]}  # the user-mode unit, in its own part


def test_a_change_refills_at_once_a_dropped_refill_waits_for_a_quiet_operation(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    files = [tmp_path / name for name in "abcd"]
    for each in files:
        each.write_text("x")
    record = [(record_file, {"path": str(each)}) for each in files]
    change = (server.shell, {"commands": [f"touch {files[1]} {files[2]} {files[3]}"]})

    lone = [record[0], change, record[1], record[2], record[3]]  # a drift repair
    run_local(lone)  # remembered
    commands = counting_commands(monkeypatch)
    os.utime(files[1], (0, 0))
    SEEN.clear()
    run_local(lone)
    assert [command.startswith("m=$(cat /etc/machine-id") for command in commands] == [True, False, True]
    assert SEEN[1]["mtime"].year > 1970  # after the change

    in_a_row = [record[0], change, change, record[1], record[2], record[3]]  # a file, then its reload
    run_local(in_a_row)
    commands.clear()
    run_local(in_a_row)
    # The prefetch, the two changes, then b, c and d in one refill.
    assert [command.startswith("m=$(cat /etc/machine-id") for command in commands] == [True, False, False, True]

    # A new release: operations that read and change. The refill read for b is dropped by
    # b's own change: c waits on its own, and d comes in a refill (c's operation was quiet).
    dropped = [record[0], change, (read_and_touch, {"path": str(files[1])}), record[2], record[3]]
    run_local(dropped)
    commands.clear()
    run_local(dropped)
    assert [command.startswith("m=$(cat /etc/machine-id") for command in commands] == [True, False, True, False, False, True]


@operation(is_idempotent=True)
def ask_temp_dir():
    host.get_fact(TmpDir)  # as pyinfra does at a run's first upload
    yield from ()


def test_the_temporary_directory_is_always_prefetched(tmp_path, monkeypatch):
    """A drift repair after no-op runs uploads a file: pyinfra's TmpDir, never asked by the
    runs before, comes with the prefetch."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    target = tmp_path / "there"
    target.write_text("x")
    run_local([(record_file, {"path": str(target)})])  # remembered, without TmpDir
    assert all("TmpDir" not in key for key in prefetch.remembered("@local @local")[1])
    commands = counting_commands(monkeypatch)
    run_local([(record_file, {"path": str(target)}), (ask_temp_dir, {})])
    assert len(commands) == 1 and "machine-id" in commands[0] and "TMPDIR" in commands[0], commands
