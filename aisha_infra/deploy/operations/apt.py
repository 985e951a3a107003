"""Package installation that waits for apt's lock instead of racing it.

A fresh cloud VM runs unattended-upgrades / apt-daily right after boot, and a run
interrupted during apt leaves apt (or a half-configured dpkg) behind. pyinfra's
apt.packages fails at once on a held lock, and `apt-get update` ignores
DPkg::Lock::Timeout for its own lock (/var/lib/apt/lists/lock), so this operation
runs one script that waits for every lock up to a shared deadline, finishes an
interrupted dpkg, and, when the deadline passes, names the process holding the lock.

A fresh host spends most of its provision in that script, so it can run in the background
(packages_install_started, then packages_install_waited): as a transient systemd unit in
its own cgroup, which an interrupted run or a dropped SSH connection does not stop halfway,
while the steps that need none of the packages run.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import StringCommand, operation
from pyinfra.api.exceptions import OperationValueError
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import Directory

from aisha_infra.deploy import paths

_INSTALL_SCRIPT = r"""
lock_wait={lock_wait}
deadline=$(( $(date +%s) + lock_wait ))
export DEBIAN_FRONTEND=noninteractive

lock_holder() {{
    pid=$(printf '%s\n' "$1" | sed -n -e 's/.*held by process \([0-9][0-9]*\).*/\1/p' \
        -e 's/.*locked by another process with pid \([0-9][0-9]*\).*/\1/p' | head -n 1)
    if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ]; then
        echo "process $pid ($(tr '\0\n' '  ' < "/proc/$pid/cmdline" | cut -c 1-200))"
    elif [ -n "$pid" ]; then
        echo "process $pid"
    else
        echo "another apt or dpkg process"
    fi
}}

# Runs "$@" until it stops failing on a held lock; other failures end the run at once.
with_lock_wait() {{
    while :; do
        remaining=$(( deadline - $(date +%s) ))
        [ "$remaining" -gt 0 ] || remaining=0
        if output=$("$@" 2>&1); then printf '%s\n' "$output"; return 0; fi
        case "$output" in
            *"Could not get lock"*|*"Unable to acquire the dpkg frontend lock"*|*"locked by another process"*) ;;
            *) printf '%s\n' "$output" >&2; exit 1 ;;
        esac
        if [ "$(date +%s)" -ge "$deadline" ]; then
            printf '%s\n' "$output" >&2
            echo "apt's lock was still held by $(lock_holder "$output") after waiting ${{lock_wait}} s (apt_lock_timeout)." >&2
            echo "On a fresh VM this is usually unattended-upgrades or apt-daily: let it finish (or stop it), then re-run the deploy; or raise apt_lock_timeout." >&2
            exit 1
        fi
        sleep 2
    done
}}

apt_get() {{
    remaining=$(( deadline - $(date +%s) ))
    [ "$remaining" -gt 0 ] || remaining=0
    apt-get -y -o DPkg::Lock::Timeout="$remaining" \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}}

with_lock_wait apt_get update
# A run stopped during apt can leave dpkg half done; apt refuses to install until it is finished.
if [ -n "$(ls -A /var/lib/dpkg/updates 2>/dev/null)" ]; then
    with_lock_wait dpkg --force-confdef --force-confold --configure -a
fi
with_lock_wait apt_get install --fix-broken {packages}
"""


def install_script(packages: list[str], lock_wait: int) -> str:
    return _INSTALL_SCRIPT.format(
        lock_wait=int(lock_wait), packages=" ".join(shlex.quote(p) for p in packages)
    ).strip()


def _changes(packages: list[str], removed: list[str] | tuple) -> list[str]:
    """apt-get install's arguments for what is not yet as wanted: missing packages, and
    `name-` for each one to remove that is installed."""
    installed = host.get_fact(DebPackages)
    return ([package for package in packages if package not in installed]
            + [f"{package}-" for package in removed if package in installed])


# Shared by the start and the wait: an install unit still runs (or is starting or stopping).
_UNIT_RUNNING = """
running() {
    [ -n "$(systemctl list-units --no-legend --plain --state=activating,active,deactivating,reloading "$units" 2>/dev/null)" ]
}
"""


def background_start_script(changes: list[str], lock_wait: int) -> str:
    """Wait (up to `lock_wait`) for an install an interrupted run left running, then start
    install_script as a unit of its own (paths.PACKAGES_UNITS); with no `changes`, only clear
    what that run left."""
    q = shlex.quote
    run_dir = q(paths.PACKAGES_RUN_DIR)
    lines = [
        f"dir={run_dir}; units={q(paths.PACKAGES_UNITS)}; lock_wait={int(lock_wait)}",
        _UNIT_RUNNING.strip(),
        "deadline=$(( $(date +%s) + lock_wait ))",
        "while running; do",
        '    if [ "$(date +%s)" -ge "$deadline" ]; then',
        '        echo "$units (a package install an earlier run started) still runs after waiting ${lock_wait} s'
        ' (apt_lock_timeout): let it finish, then re-run the deploy; or raise apt_lock_timeout." >&2',
        "        exit 1",
        "    fi",
        "    sleep 1",
        "done",
        'rm -rf "$dir"',
    ]
    if changes:
        run = (f"sh {run_dir}/install.sh > {run_dir}/output 2>&1; echo $? > {run_dir}/status.new "
               f"&& mv {run_dir}/status.new {run_dir}/status")
        lines += [
            'install -d -m 0700 -o root -g root "$dir" || exit 1',
            f'printf "%s\\n" {q(install_script(changes, lock_wait))} > "$dir/install.sh" || exit 1',
            'date +%s > "$dir/started" || exit 1',
            f'unit={q(paths.PACKAGES_UNIT)}-$(date +%s%N).service; echo "$unit" > "$dir/unit" || exit 1',
            # --collect: the unit is gone once it ends, failed or not.
            'systemd-run --quiet --collect --service-type=exec --unit="$unit" '
            '--description="aisha-infra: install packages" /bin/sh -c ' + q(run),
        ]
    return "\n".join(lines)


def background_wait_script(timeout: int) -> str:
    """Wait for the install unit's exit status, up to `timeout` seconds after it started; show
    apt's output (on stderr when it failed), and leave nothing behind."""
    return "\n".join([
        f"dir={shlex.quote(paths.PACKAGES_RUN_DIR)}; units={shlex.quote(paths.PACKAGES_UNITS)}; timeout={int(timeout)}",
        _UNIT_RUNNING.strip(),
        # Its last act is writing the status: then it only has to exit (5 s at most).
        'ended() { n=0; while running && [ "$n" -lt 50 ]; do sleep 0.1; n=$((n + 1)); done; }',
        'test -f "$dir/started" || exit 0  # the start only cleared what an interrupted run left',
        'unit=$(cat "$dir/unit")',
        'deadline=$(( $(cat "$dir/started") + timeout ))',
        'while ! test -f "$dir/status"; do',
        '    if ! running && ! test -f "$dir/status"; then',
        '        cat "$dir/output" >&2 2>/dev/null',
        '        echo "$unit ended without finishing the package install (stopped from outside?); re-run the deploy." >&2',
        '        rm -rf "$dir"; exit 1',
        "    fi",
        '    if [ "$(date +%s)" -ge "$deadline" ]; then',
        '        systemctl stop "$unit"',
        '        cat "$dir/output" >&2',
        '        echo "The package install did not finish within ${timeout} s (apt_timeout) and was stopped. '
        'Re-run the deploy (it finishes what dpkg left half done), or raise apt_timeout." >&2',
        '        rm -rf "$dir"; exit 1',
        "    fi",
        "    sleep 0.2",
        "done",
        'status=$(cat "$dir/status")',
        'ended',
        'if [ "$status" = 0 ]; then cat "$dir/output"; else cat "$dir/output" >&2; fi',
        'rm -rf "$dir"',
        'exit "$status"',
    ])


@operation()
def packages_install_started(packages: list[str], lock_wait: int, removed: list[str] | tuple = ()):
    """
    Install the missing ones of `packages`, after refreshing the package lists, in the
    background: install_script runs as a transient unit, which packages_install_waited
    waits for. Its output and exit status stay in a directory only root can read.

    + packages: Debian package names
    + lock_wait: seconds to wait, in all, for other apt/dpkg processes to release their locks
    + removed: packages to remove if installed

    Nothing runs when every package is as wanted and no earlier run left an install behind.
    """
    if isinstance(lock_wait, bool) or not isinstance(lock_wait, int) or lock_wait < 0:
        raise OperationValueError(f"lock_wait {lock_wait!r} is not a number of seconds")
    changes = _changes(packages, removed)
    if not changes and not host.get_fact(Directory, path=paths.PACKAGES_RUN_DIR):
        host.noop(f"installed: {', '.join(packages)}")
        return
    yield StringCommand(background_start_script(changes, lock_wait))


@operation()
def packages_install_waited(timeout: int):
    """
    Wait for the install packages_install_started started; fail with apt's own output
    (and the lock holder, if that was it) when it failed. Call it with
    `_if=<the start>.did_change`: no start, nothing to wait for.

    + timeout: seconds the install may take from its start (then it is stopped)
    """
    yield StringCommand(background_wait_script(timeout))
