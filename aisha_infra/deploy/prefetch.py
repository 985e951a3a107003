"""One round trip for the facts a converged host needs.

pyinfra 3.10 keeps no fact cache: every `host.get_fact` is its own SSH command, about 75
on a converged host. `prefetch_facts` (tasks/webhook_host.py calls it first) reads, in one command per
host, every fact that host was asked for on its previous run (remembered on this machine),
each by the fact's own command, and parses each part with the fact's own `process`;
`host.get_fact` then answers those from memory.

Sound, because what is served is what the host was when the prefetch read it:
- as soon as an operation has run a command on the host, nothing more is served from it;
  the facts still to come are read again in one command, at most REFILLS times a run:
  at the first fact asked after a change (a drift repair: the file, then the reload
  chained to it), unless a refill was already dropped since an operation last found
  nothing to change (changes in a row: a new release), then once one does; meanwhile
  facts are read one by one;
- a fact whose part failed or whose command is missing on the host, or one asked with other
  connector arguments (another sudo user, say) than the prefetch ran with, is read the
  normal way, with pyinfra's own error handling;
- a fact whose normal read waits for the host to settle (nginx's served certificate, right
  after a reload) is read in the prefetch with its `prefetch_arguments`, without waiting:
  a value it cannot vouch for exits non-zero, and the fact is read the normal way;
- what is remembered only decides which facts are read at once: a stale list costs time,
  never a wrong value. A new host (name and address) has no list, and a new machine under
  a known one (another /etc/machine-id) is not read from it: nothing is prefetched, that run.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from inspect import getcallargs
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import gevent
from pyinfra import logger
from pyinfra.api import FactBase, QuoteString, StringCommand
from pyinfra.api.arguments import pop_global_arguments
from pyinfra.api.facts import get_fact
from pyinfra.api.state import BaseStateCallback
from pyinfra.context import ctx_host
from pyinfra.facts.files import LINUX_STAT_COMMAND, Directory, File, Link, Sha1File
from pyinfra.facts.server import TmpDir
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

GROUPS = 4  # parts run at once on the host, each group's one after another
# A fact class may say how slow its command is next to a plain one (1), e.g.
# `prefetch_cost = 4` for several openssl runs: the slow ones are spread over the groups;
# and give `prefetch_arguments`, added to its arguments in the prefetch only.
REFILLS = 3  # refills after changes, a run: a fresh host changes at nearly every step
# Read by every prefetch, remembered or not: pyinfra asks TmpDir at a run's first upload
# (a drift repair after no-op runs would read it on its own).
ALWAYS = ((TmpDir, {}),)
# Facts of these modules may be named in the remembered list.
FACT_MODULES = ("pyinfra.facts.", "aisha_infra.deploy.facts.")
# The connector arguments that change what a command sees (who runs it, where, with what).
_CONNECTION_KEYS = (
    "_sudo", "_sudo_user", "_use_sudo_login", "_sudo_password", "_preserve_sudo_env",
    "_su_user", "_use_su_login", "_preserve_su_env", "_su_shell", "_su_password",
    "_doas", "_doas_user", "_dzdo", "_dzdo_user", "_shell_executable", "_chdir", "_env",
)
# pyinfra's sentinel for a fact whose required command is missing (pyinfra.api.facts).
_MISSING_COMMAND_MARKER = "##PYINFRA_NOCMD##"


def memory_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aisha-infra" / "prefetch"


def memory_name(host) -> str:
    """A host as remembered: its inventory name and the address it is reached at."""
    return f"{host.name} {host.data.get('ssh_hostname') or host.name}"


def _memory_file(host_name: str) -> Path:
    return memory_dir() / f"{hashlib.sha256(host_name.encode()).hexdigest()[:32]}.json"


def fact_key(cls: Any, kwargs: dict) -> str | None:
    """The memory's name for one fact asked with these arguments, or None when it is not
    one to prefetch (global arguments given, arguments not plain data, a fact that checks
    preconditions or needs its own shell, or one that opts out with `prefetch = False`)."""
    if not (isinstance(cls, type) and issubclass(cls, FactBase)) or issubclass(cls, Prefetched):
        return None
    if not cls.__module__.startswith(FACT_MODULES) or not getattr(cls, "prefetch", True):
        return None
    if cls.check_preconditions is not FactBase.check_preconditions or cls.shell_executable:
        return None
    if any(key.startswith("_") for key in kwargs):
        return None
    try:
        return json.dumps([f"{cls.__module__}:{cls.__qualname__}", kwargs], sort_keys=True)
    except (TypeError, ValueError):
        return None


@functools.lru_cache(maxsize=1024)  # asked for every key several times per read: 7 ms -> 0.7 ms a read
def fact_from_key(key: str) -> tuple[type[FactBase], dict] | None:
    """The fact class and arguments a remembered key names; None for anything else.
    The arguments are shared between callers: read them, never change them."""
    try:
        name, kwargs = json.loads(key)
        module, _, qualname = name.partition(":")
        if not module.startswith(FACT_MODULES) or not isinstance(kwargs, dict):
            return None
        cls = getattr(importlib.import_module(module), qualname)
    except (ValueError, TypeError, ImportError, AttributeError):
        return None
    return (cls, kwargs) if fact_key(cls, kwargs) == key else None


def part_command(fact: FactBase, kwargs: dict):
    """The command pyinfra would run for this fact (with its `prefetch_arguments`), guarded
    like pyinfra guards it when the fact requires a program (pyinfra.api.facts._get_fact).
    Some facts keep their arguments for process(): call it on the same instance."""
    kwargs = {**kwargs, **getattr(fact, "prefetch_arguments", {})}
    arguments = getcallargs(fact.command, **kwargs) if kwargs else {}
    arguments.pop("self", None)
    command = fact.command(**arguments) if callable(fact.command) else fact.command
    requires = fact.requires_command(**arguments) if callable(fact.requires_command) else fact.requires_command
    if requires:
        command = StringCommand("if", "command", "-v", requires, ">/dev/null", "2>&1;", "then", "(", command,
                                ");", "else", "echo", f"'{_MISSING_COMMAND_MARKER}';", "fi")
    return command


class Queries(tuple):
    """The keys of one prefetch; printed short (pyinfra logs a fact's arguments)."""

    def __repr__(self) -> str:
        return f"<{len(self)} facts>"

    __str__ = __repr__


# pyinfra's File, Link and Directory facts print one GNU `stat` line per path (nothing for a
# missing one), Sha1File sha1sum's line: for plain paths, one stat and one sha1sum give every
# path's line, named by the path (stat's %n, sha1sum's own) instead of a process each.
# A path that is always there (stat) and a file that is always readable (sha1sum) go
# first: without their line, the batch failed and its facts are read the normal way.
_STAT_FORMAT = LINUX_STAT_COMMAND.split("'")[1]
_PLAIN_PATH = re.compile(r"^/[A-Za-z0-9/._+-]*$")
_STAT_SENTINEL, _SHA1_SENTINEL = "/", "/dev/null"


def batched(queries: Queries) -> tuple[dict[str, str], dict[str, str]]:
    """The keys read by the one stat and the one sha1sum: {key: path} each."""
    stat, sha1 = {}, {}
    for key in queries:
        cls, kwargs = fact_from_key(key)
        path = kwargs.get("path")
        if set(kwargs) != {"path"} or not isinstance(path, str) or not _PLAIN_PATH.match(path):
            continue
        if cls in (File, Link, Directory):
            stat[key] = path
        elif cls is Sha1File:
            sha1[key] = path
    return stat, sha1


# pyinfra's SystemdStatus and SystemdEnabled run `systemctl show` per unit (~10 ms each): for
# system units named plainly, one `systemctl show` with both properties gives every unit's
# block, in the order named, from which each fact gets the lines its own command prints.
_SYSTEMD_FACTS = (SystemdStatus, SystemdEnabled)
_PLAIN_UNIT = re.compile(r"^[A-Za-z0-9@_.:-]+\.[a-z]+$")
_SYSTEM_SCOPE = {"user_mode": False, "machine": None, "user_name": None}


def systemd_batched(queries: Queries) -> dict[str, str]:
    """The keys read by the one `systemctl show`: {key: unit}."""
    units = {}
    for key in queries:
        cls, kwargs = fact_from_key(key)
        services = kwargs.get("services")
        unit = services[0] if isinstance(services, list) and len(services) == 1 else services
        if (cls in _SYSTEMD_FACTS and isinstance(unit, str) and _PLAIN_UNIT.match(unit)
                and {**_SYSTEM_SCOPE, "services": services} == {**_SYSTEM_SCOPE, **kwargs}):
            units[key] = unit
    return units


class Prefetched(FactBase):
    """
    Several facts in one command; returns its stdout lines, which parse_parts splits into
    the host's machine id and each fact's exit status and stdout lines. Each part runs in
    its own subshell with stdin closed, between two marker lines that carry a random nonce
    (no file's content can fake them); plain file facts come from one stat and one sha1sum
    (see batched). The parts run in GROUPS groups at once, each writing to its own file in a
    private temporary directory, printed one after another when all are done. When the host
    is not `machine`, only its id is read.
    """

    def command(self, queries: Queries, nonce: str, machine: str) -> StringCommand:
        stat, sha1 = batched(queries)
        systemd = systemd_batched(queries)
        jobs: list[list] = []
        costs: list[int] = []  # each job's prefetch_cost: the slow ones go to different groups
        if stat:
            jobs.append(["echo", f"@@{nonce}-stat;", "stat", "-c", QuoteString(f"%n|{_STAT_FORMAT}"), "--",
                         _STAT_SENTINEL, *sorted(set(stat.values())), "2>/dev/null", "</dev/null;",
                         "echo", f"@@{nonce}-stat-end", "\n"])
            costs.append(1)
        if sha1:
            jobs.append(["echo", f"@@{nonce}-sha1;", "sha1sum", "--", _SHA1_SENTINEL, *sorted(set(sha1.values())),
                         "2>/dev/null", "</dev/null;", "echo", f"@@{nonce}-sha1-end", "\n"])
            costs.append(1)
        if systemd:
            jobs.append(["echo", f"@@{nonce}-systemd;", "systemctl", "show", "--all", "--property", "Id",
                         *(f"--property {cls.state_key}" for cls in _SYSTEMD_FACTS), "--",
                         *dict.fromkeys(systemd.values()), "2>/dev/null", "</dev/null;",
                         "echo", f"@@{nonce}-systemd-end", "\n"])
            costs.append(1)
        for index, key in enumerate(queries):
            if key in stat or key in sha1 or key in systemd:
                continue
            cls, kwargs = fact_from_key(key)
            jobs.append(["echo", QuoteString(f"@@{nonce}:{index}"), "\n(", part_command(cls(), kwargs),
                         "\n) </dev/null\n", "echo", f'"@@{nonce}-end:{index}:$?"', "\n"])
            costs.append(getattr(cls, "prefetch_cost", 1))
        bits: list = ["m=$(cat /etc/machine-id 2>/dev/null);", "echo", f'"@@{nonce}-machine:$m";',
                      "test", '"$m"', "=", QuoteString(machine), "||", "exit", "0", "\n"]
        if not jobs:
            return StringCommand(*bits)
        groups = _balanced(jobs, costs)
        bits += ["d=$(mktemp -d)", "||", "exit", "1;", "trap", "'rm", "-rf", '"$d"\'', "EXIT", "\n"]
        for number, group in enumerate(groups):
            bits += ["{\n", *(bit for job in group for bit in job), "}", ">", f'"$d/{number}"', "&", "\n"]
        bits += ["wait;", "cat", *(f'"$d/{number}"' for number in range(len(groups))), "\n"]
        return StringCommand(*bits)

    def process(self, output):
        return list(output)  # split by parse_parts, which knows the queries and nonce

    @staticmethod
    def default():
        return []


def _balanced(jobs: list, costs: list[int]) -> list[list]:
    """At most GROUPS groups of jobs, of about equal total cost: the costliest first, each to
    the group with the least so far."""
    groups: list[list] = [[] for _ in range(min(GROUPS, len(jobs)))]
    totals = [0] * len(groups)
    for cost, job in sorted(zip(costs, jobs), key=lambda pair: -pair[0]):  # stable: ties keep their order
        lightest = totals.index(min(totals))
        groups[lightest].append(job)
        totals[lightest] += cost
    return groups


def parse_parts(lines: list[str], queries: Queries, nonce: str) -> tuple[str | None, dict[str, tuple[int, list[str]]]]:
    """Split the output of Prefetched into the machine id and each key's (exit status,
    stdout lines)."""
    parts: dict[str, tuple[int, list[str]]] = {}
    begin, end, machine_line = f"@@{nonce}:", f"@@{nonce}-end:", f"@@{nonce}-machine:"
    machine = next((line.removeprefix(machine_line) for line in lines[:1] if line.startswith(machine_line)), None)
    stat, sha1 = batched(queries)
    stat_lines, sha1_lines = _section(lines, f"@@{nonce}-stat"), _section(lines, f"@@{nonce}-sha1")
    if stat_lines is not None:
        by_path = {}
        for line in stat_lines:
            path, _, rest = line.partition("|")
            by_path[path] = rest
        if _STAT_SENTINEL in by_path:
            parts.update({key: (0, [by_path[path]] if path in by_path else []) for key, path in stat.items()})
    if sha1_lines is not None:
        by_path = {line.partition("  ")[2]: line for line in sha1_lines}
        if _SHA1_SENTINEL in by_path:
            parts.update({key: (0, [by_path[path]] if path in by_path else []) for key, path in sha1.items()})
    systemd, systemd_lines = systemd_batched(queries), _section(lines, f"@@{nonce}-systemd")
    units = list(dict.fromkeys(systemd.values()))
    blocks = _blocks(systemd_lines or [])
    if len(blocks) == len(units):  # else systemctl failed or is missing: read the normal way
        block_of = dict(zip(units, blocks))
        for key, unit in systemd.items():
            wanted = ("Id=", f"{fact_from_key(key)[0].state_key}=")
            parts[key] = (0, [line for line in block_of[unit] if line.startswith(wanted)])
    current: list[str] | None = None
    for line in lines:
        if current is None:
            current = [] if line.startswith(begin) else None
            continue
        at = line.find(end)
        if at < 0:
            current.append(line)
            continue
        if at > 0:  # the part's last line had no newline
            current.append(line[:at])
        index, _, status = line[at + len(end):].partition(":")
        if index.isdigit() and int(index) < len(queries) and status.isdigit():
            parts[queries[int(index)]] = (int(status), current)
        current = None
    return machine, parts


def _blocks(lines: list[str]) -> list[list[str]]:
    """`systemctl show` output for several units: one block of lines each, blank-line separated."""
    blocks: list[list[str]] = [[]] if lines else []
    for line in lines:
        if line:
            blocks[-1].append(line)
        else:
            blocks.append([])
    return blocks


def _section(lines: list[str], marker: str) -> list[str] | None:
    """The lines between `marker` and `marker-end`; None when it did not finish."""
    if marker not in lines or f"{marker}-end" not in lines:
        return None
    start = lines.index(marker) + 1
    return lines[start:lines.index(f"{marker}-end", start)]


@dataclass
class HostFacts:
    """One host's prefetched facts and what this run asked for."""

    machine: str  # the /etc/machine-id of the host remembered under this name
    remembered: list[str]  # keys asked on the previous run, in order (repeats kept)
    asked: list[str] = field(default_factory=list)  # this run's, in order
    following: int = 0  # how far this run followed the remembered order (past extra facts)
    parts: dict[str, tuple[int, list[str]]] = field(default_factory=dict)
    connection: tuple = ()  # the connector arguments the parts were read with
    read_while_executing: bool = False
    refills: int = 0
    refill_due: bool = False  # the parts were dropped: the facts still to come may be read again
    refilled_since_quiet: bool = False  # a refill since an operation last found nothing to change
    last_operation: str | None = None


_HOSTS: WeakKeyDictionary = WeakKeyDictionary()  # pyinfra Host -> HostFacts


def _connection(state, host) -> tuple:
    arguments = host.current_op_global_arguments
    if arguments is None:
        arguments, _ = pop_global_arguments(state, host, {})
    return tuple(repr(arguments.get(key)) for key in _CONNECTION_KEYS)


def _read(state, host, facts: HostFacts, keys: list[str]) -> None:
    queries = Queries(dict.fromkeys(key for key in keys if fact_from_key(key)))
    nonce = secrets.token_hex(8)
    lines = get_fact(state, host, Prefetched, kwargs={"queries": queries, "nonce": nonce, "machine": facts.machine},
                     apply_failed_hosts=False)  # without it, each fact is read on its own
    machine, facts.parts = parse_parts(lines or [], queries, nonce)
    if machine is not None and machine != facts.machine:  # another machine: no refills either
        facts.machine, facts.remembered, facts.refills = machine, [], REFILLS
    facts.connection = _connection(state, host)
    facts.read_while_executing = state.is_executing


def _serve(state, host, facts: HostFacts, cls, kwargs: dict, key: str):
    """The fact's value from the parts, or None to read it the normal way."""
    if facts.parts and state.is_executing and not facts.read_while_executing and state.should_check_for_changes():
        # Read before the user confirmed the changes: maybe long ago.
        facts.parts, facts.refill_due = {}, True
    if not facts.parts and facts.refill_due and facts.refills < REFILLS and facts.following:
        still_to_come = facts.remembered[facts.following - 1:]
        if still_to_come[:1] == [key]:
            facts.refills += 1
            facts.refill_due, facts.refilled_since_quiet = False, True
            _read(state, host, facts, still_to_come)
    part = facts.parts.get(key)
    if part is None or part[0] != 0 or part[1] == [_MISSING_COMMAND_MARKER]:
        return None
    if _connection(state, host) != facts.connection:
        return None
    fact, lines = cls(), part[1]
    part_command(fact, kwargs)
    return (fact.process(lines) if lines else fact.default(),)


class _Invalidate(BaseStateCallback):
    """Drops a host's parts once an operation ran a command there, says when to refill;
    remembers at the end."""

    @staticmethod
    def operation_host_start(state, host, op_hash):
        facts = _HOSTS.get(host)
        if facts is None:
            return
        if host.executing_op_hash is not None:  # an operation run from inside another
            facts.parts, facts.refill_due = {}, False
            return
        if facts.last_operation is not None:
            meta = state.ops[host][facts.last_operation].operation_meta
            if meta.executed:  # refill at the next fact, unless a refill was dropped since the last quiet one
                facts.parts, facts.refill_due = {}, not facts.refilled_since_quiet
            else:
                facts.refilled_since_quiet = False
                if not facts.parts:
                    facts.refill_due = True
        facts.last_operation = op_hash if op_hash in state.ops[host] else None

    @staticmethod
    def host_disconnect(state, host):
        facts = _HOSTS.get(host)
        if facts is None or host in state.failed_hosts or not facts.asked:
            return
        remember(memory_name(host), facts.machine, facts.asked)


def remember(host_name: str, machine: str, keys: list[str]) -> None:
    path = _memory_file(host_name)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_suffix(".new")
        with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            json.dump({"host": host_name, "machine": machine, "facts": keys}, out)
        temporary.replace(path)
    except OSError as exc:  # only speed is lost
        logger.debug(f"could not remember the facts of {host_name}: {exc}")


def remembered(host_name: str) -> tuple[str, list[str]]:
    """The machine id and the facts remembered for a host name; ("", []) when none."""
    try:
        data = json.loads(_memory_file(host_name).read_text())
    except (OSError, ValueError):
        return "", []
    if not isinstance(data, dict) or data.get("host") != host_name or not isinstance(data.get("machine"), str):
        return "", []
    facts = data.get("facts")
    return data["machine"], [key for key in facts if isinstance(key, str)] if isinstance(facts, list) else []


def _attach(state, host) -> HostFacts:
    facts = HostFacts(*remembered(memory_name(host)))
    _HOSTS[host] = facts
    original = host.get_fact

    def get_fact_prefetched(cls, *args, **kwargs):
        key = None if args else fact_key(cls, kwargs)
        if key is None:
            return original(cls, *args, **kwargs)
        facts.asked.append(key)
        if key in facts.remembered[facts.following:]:
            facts.following = facts.remembered.index(key, facts.following) + 1
        served = _serve(state, host, facts, cls, kwargs, key)
        return served[0] if served is not None else original(cls, **kwargs)

    host.get_fact = get_fact_prefetched  # this host only; pyinfra's own path for the rest
    return facts


_READS: WeakKeyDictionary = WeakKeyDictionary()  # pyinfra State -> the prefetch greenlets


def prefetch_facts(state, connected=None) -> None:
    """Read every active host's remembered facts, all hosts at once; once a run. pyinfra
    runs deploy.py for each host at the same time: every call waits for the same reads.
    `connected()`, if given, runs first for each host, in its context (socket options)."""
    if not any(isinstance(handler, _Invalidate) for handler in state.callback_handlers):
        state.add_callback_handler(_Invalidate())

    def prefetch(host, facts: HostFacts) -> None:
        with ctx_host.use(host):
            if connected:
                connected()
            always = [fact_key(cls, kwargs) for cls, kwargs in ALWAYS]
            _read(state, host, facts, facts.remembered + always)  # a new host: its machine id only

    reads = _READS.setdefault(state, [])
    for host in state.inventory.get_active_hosts():
        if host not in _HOSTS:
            reads.append(gevent.spawn(prefetch, host, _attach(state, host)))
    gevent.joinall(reads, raise_error=True)
