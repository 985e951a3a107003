"""Backend operations pyinfra has no idempotent, or no fast, form for."""

from __future__ import annotations

import hashlib
import os
import shlex
from fnmatch import fnmatch
from pathlib import Path

from pyinfra import host, state
from pyinfra.api import StringCommand, operation
from pyinfra.facts.files import File, Sha1File
from pyinfra.operations import files

from aisha_infra.facts.files import DirectoryTree


def wanted_tree(src: Path, user: str, group: str, mode: str, dir_mode: str,
                exclude: list[str], exclude_dir: list[str]) -> dict | None:
    """What files.sync(delete=True) leaves on the host, in DirectoryTree's form, from the
    same walk and exclusions; None when the source is missing or has symlinks (left to
    files.sync)."""
    if not src.is_dir() or src.is_symlink():
        return None
    file_entry, dir_entry = ("f", user, group, f"{int(mode, 8):o}"), ("d", user, group, f"{int(dir_mode, 8):o}")
    tree = {"": dir_entry}
    for dirpath, dirnames, filenames in os.walk(src):
        base = Path(dirpath)
        for name in list(dirnames):
            relative = (base / name).relative_to(src).as_posix()
            if any(fnmatch(relative, pattern) for pattern in exclude_dir):
                dirnames.remove(name)
            elif (base / name).is_symlink():
                return None
            else:
                tree[relative] = dir_entry
        for name in filenames:
            path = base / name
            if any(fnmatch(str(path), pattern) for pattern in exclude):
                continue
            if path.is_symlink():
                return None
            tree[path.relative_to(src).as_posix()] = (*file_entry, hashlib.sha1(path.read_bytes()).hexdigest())
    return tree


def in_sync(wanted: dict, remote: dict | None, dest: str, exclude: list[str]) -> bool:
    """True when files.sync(delete=True) would change nothing: every wanted entry is there
    as wanted, and every extra entry is a directory (it leaves those alone) or one it keeps
    (excluded). Anything else is left to files.sync."""
    if remote is None or any(remote.get(path) != entry for path, entry in wanted.items()):
        return False
    extra = [path for path, entry in remote.items() if path not in wanted and entry[0] != "d"]
    return all(any(fnmatch(f"{dest}/{path}", pattern) for pattern in exclude) for path in extra)


@operation()
def mirrored_directory(src: str, dest: str, user: str, group: str, mode: str, dir_mode: str,
                       exclude: list[str], exclude_dir: list[str]):
    """
    files.sync(delete=True), after one fact about the whole tree shows whether it has
    anything to do: files.sync alone reads two facts per file, even when nothing changed.

    + src: local directory
    + dest: directory on the host, made an exact copy of src
    + user, group, mode, dir_mode: owner and modes of every file and directory
    + exclude: file patterns (matched against the local path) neither copied nor deleted
    + exclude_dir: directory patterns (matched against the relative path) not copied
    """
    local = Path(state.cwd) / src if state.cwd else Path(src)  # as files.sync finds it
    wanted = wanted_tree(local, user, group, mode, dir_mode, exclude, exclude_dir)
    if wanted is not None and in_sync(wanted, host.get_fact(DirectoryTree, path=dest), dest, exclude):
        host.noop(f"{dest} is an exact copy of {src}")
        return
    yield from files.sync._inner(
        src=src, dest=dest, user=user, group=group, mode=mode, dir_mode=dir_mode,
        delete=True, exclude=exclude, exclude_dir=exclude_dir,
    )


def lists_packages(requirements: Path) -> bool:
    """Does a local requirements.txt name anything to install (not only comments)?"""
    if not requirements.is_file():
        return False
    return any(line.split("#", 1)[0].strip() for line in requirements.read_text().splitlines())


@operation()
def virtualenv(path: str):
    """
    A virtualenv that also sees the system's packages (python3-cryptography), without
    pip: ensurepip is half of a fresh provision's own time, and only a backend with
    requirements needs pip (requirements_installed adds it then).

    + path: the virtualenv directory
    """
    if host.get_fact(File, path=f"{path}/bin/activate"):
        host.noop(f"virtualenv {path} exists")
        return
    yield f"python3 -m venv --system-site-packages --without-pip {shlex.quote(path)}"


@operation()
def requirements_installed(venv: str, requirements: str):
    """
    Install `requirements` into `venv` when they changed since the last successful install.

    + venv: virtualenv directory
    + requirements: requirements.txt on the host

    `pip install -r` always runs and always looks changed; instead a copy of the file
    is kept in the venv after a successful install and compared by checksum, so a
    failed install is retried on the next run and an unchanged one costs nothing.
    """
    stamp = f"{venv}/.aisha-requirements.txt"
    wanted = host.get_fact(Sha1File, path=requirements)
    if wanted is None:
        host.noop(f"no {requirements}: nothing to install")
        return
    if host.get_fact(Sha1File, path=stamp) == wanted:
        host.noop(f"requirements in {venv} are up to date")
        return
    r, s = shlex.quote(requirements), shlex.quote(stamp)
    # From the app directory, so relative paths in it (vendored wheels) work.
    app_dir = shlex.quote(requirements.rsplit("/", 1)[0] or "/")
    python = shlex.quote(f"{venv}/bin/python")
    yield StringCommand(
        f"cd {app_dir} && ({python} -m pip --version >/dev/null 2>&1 || {python} -m ensurepip --default-pip) && "
        f"{python} -m pip install --disable-pip-version-check --no-input -r {r} && cp {r} {s}"
    )
