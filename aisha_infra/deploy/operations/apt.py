"""Package installation that waits for apt's lock instead of racing it.

A fresh cloud VM runs unattended-upgrades / apt-daily right after boot, and a run
interrupted during apt leaves apt (or a half-configured dpkg) behind. pyinfra's
apt.packages fails at once on a held lock, and `apt-get update` ignores
DPkg::Lock::Timeout for its own lock (/var/lib/apt/lists/lock), so this operation
runs one script that waits for every lock up to a shared deadline, finishes an
interrupted dpkg, and, when the deadline passes, names the process holding the lock.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import StringCommand, operation
from pyinfra.api.exceptions import OperationValueError
from pyinfra.facts.deb import DebPackages

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


@operation()
def packages_installed(packages: list[str], lock_wait: int, removed: list[str] | tuple = ()):
    """
    Install the missing ones of `packages`, after refreshing the package lists.

    + packages: Debian package names
    + lock_wait: seconds to wait, in all, for other apt/dpkg processes to release their locks
    + removed: packages to remove if installed (in the same apt-get call: `name-`)

    Nothing runs (not even `apt-get update`) when every package is installed and none to remove is.
    """
    if isinstance(lock_wait, bool) or not isinstance(lock_wait, int) or lock_wait < 0:
        raise OperationValueError(f"lock_wait {lock_wait!r} is not a number of seconds")
    installed = host.get_fact(DebPackages)
    missing = [package for package in packages if package not in installed]
    unwanted = [package for package in removed if package in installed]
    if not missing and not unwanted:
        host.noop(f"installed: {', '.join(packages)}")
        return
    yield StringCommand(install_script(missing + [f"{package}-" for package in unwanted], lock_wait))
