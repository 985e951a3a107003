"""Backend operations pyinfra has no idempotent, or no fast, form for."""

from __future__ import annotations

import hashlib
import os
import shlex
from fnmatch import fnmatch
from io import StringIO
from pathlib import Path

from pyinfra import host, logger, state
from pyinfra.api import FileUploadCommand, OperationError, StringCommand, operation
from pyinfra.facts.files import File, FileContents, Sha1File
from pyinfra.operations import files

from aisha_infra.deploy import paths, rendering
from aisha_infra.deploy.facts.files import DirectoryTree
from aisha_infra.deploy.facts.releases import ReleaseState
from aisha_infra.deploy.operations.uploads import show_diff, show_hidden, upload


def wanted_tree(src: Path, user: str, group: str, mode: str, dir_mode: str,
                exclude: list[str], exclude_dir: list[str]) -> dict | None:
    """What files.sync(delete=True) leaves on the host, in DirectoryTree's form, from the
    same walk and exclusions; None when the source is missing or has symlinks inside (left
    to files.sync). `src` itself may be a link, as the repository's aisha_infra/backend is."""
    if not src.is_dir():
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


def show_tree_diff(local: Path, wanted: dict, dest: str, live: str) -> None:
    """Under --diff: how a new copy of `local` differs from the serving one (`live`), file by file."""
    if not state.config.DIFF:
        return
    serving = host.get_fact(DirectoryTree, path=live) or {}
    for path, entry in sorted(wanted.items()):
        old = serving.get(path)
        if entry[0] != "f" or (old and old[0] == "f" and old[-1] == entry[-1]):
            continue
        try:
            text = (local / path).read_text()
        except UnicodeDecodeError:
            host.log(f"Will write {dest}/{path} (binary)", logger.info)
            continue
        show_diff(f"{dest}/{path}", text, live=f"{live}/{path}")
    for path in sorted(path for path, entry in serving.items() if entry[0] == "f" and path not in wanted):
        host.log(f"Will leave out {live}/{path} (not in {local.name}/)", logger.info)


def copied_tree(local: Path, wanted: dict, dest: str, user: str, group: str, mode: str, dir_mode: str):
    """The commands that copy `wanted` (wanted_tree's form) from `local` to a missing `dest`."""
    directories = [dest] + [f"{dest}/{path}" for path, entry in sorted(wanted.items()) if path and entry[0] == "d"]
    yield StringCommand(f"install -d -m {dir_mode} -o {shlex.quote(user)} -g {shlex.quote(group)} "
                        + " ".join(shlex.quote(directory) for directory in directories))
    for path, entry in sorted(wanted.items()):
        if entry[0] == "f":
            yield from upload(str(local / path), f"{dest}/{path}", mode, user, group)


@operation()
def mirrored_directory(src: str, dest: str, user: str, group: str, mode: str, dir_mode: str,
                       exclude: list[str], exclude_dir: list[str], live: str | None = None):
    """
    files.sync(delete=True), after one fact about the whole tree shows whether it has
    anything to do: files.sync alone reads two facts per file, even when nothing changed.
    A missing `dest` (a new release) is copied file by file, and --diff compares it with
    `live` (the serving release's) instead of showing every file as new.

    + src: local directory
    + dest: directory on the host, made an exact copy of src
    + user, group, mode, dir_mode: owner and modes of every file and directory
    + exclude: file patterns (matched against the local path) neither copied nor deleted
    + exclude_dir: directory patterns (matched against the relative path) not copied
    + live: the directory `dest` replaces, which --diff compares with (default: dest)
    """
    local = Path(state.cwd) / src if state.cwd else Path(src)  # as files.sync finds it
    wanted = wanted_tree(local, user, group, mode, dir_mode, exclude, exclude_dir)
    remote = host.get_fact(DirectoryTree, path=dest)
    if wanted is not None and in_sync(wanted, remote, dest, exclude):
        host.noop(f"{dest} is an exact copy of {src}")
        return
    if wanted is not None and remote is None:
        show_tree_diff(local, wanted, dest, live or dest)
        yield from copied_tree(local, wanted, dest, user, group, mode, dir_mode)
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


def release_id(src: Path, exclude: list[str], exclude_dir: list[str], *parts: str | bytes) -> str:
    """A release's name: the digest of its code (as uploaded) and of every other file it
    holds, so the same code and configuration always make the same release."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(src):
        base = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames
                             if not any(fnmatch((base / d).relative_to(src).as_posix(), p) for p in exclude_dir))
        for name in sorted(filenames):
            path = base / name
            if any(fnmatch(str(path), pattern) for pattern in exclude):
                continue
            content = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
            digest.update(f"{path.relative_to(src).as_posix()}\0{len(content)}\0".encode() + content)
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(f"\0part\0{len(data)}\0".encode() + data)
    return digest.hexdigest()[:12]


def environment_changes(old: str | None, new: str) -> list[str]:
    """What --diff may show of an environment file: names, and values unless secret."""
    def pairs(text: str) -> dict[str, str]:
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))

    before, after = pairs(old or ""), pairs(new)
    lines = []
    for name in sorted(before.keys() | after.keys()):
        if before.get(name) != after.get(name):
            if name not in after:
                lines.append(f"- {name}")
            else:
                lines.append(f"{'~' if name in before else '+'} {name}={rendering.masked(name, after[name])}")
    return lines


@operation()
def secret_file(dest: str, content: str, live: str | None = None, environment: bool = True):
    """
    A root-only file (0600 root:root) whose content never shows: not in --diff (an
    environment file: the names of changed variables, values of secret-looking ones
    masked; else nothing of it), not in the world-readable moment between upload and
    chmod that files.put has.

    + dest: path on the host, in a directory only root can write
    + content: the file's text
    + live: the file this one replaces, which --diff compares with (default: dest)
    + environment: content is NAME=value lines
    """
    wanted = hashlib.sha1(content.encode()).hexdigest()
    if host.get_fact(Sha1File, path=dest) == wanted and (host.get_fact(File, path=dest) or {}).get("mode") == 600:
        host.noop(f"{dest} is up to date")
        return
    if not environment:
        show_hidden(dest, "a secret (0600 root)")
    elif state.config.DIFF:
        current = host.get_fact(FileContents, path=live or dest)
        host.log(f"Will write {dest} (0600 root):", logger.info)
        for line in environment_changes("\n".join(current) if current else None, content) or ["(no variable changes)"]:
            logger.info("  %s", line)
    q = shlex.quote(dest)
    # Uploads go through a file the SSH user writes first (sudo); it is made 0600 before
    # any content lands in it, and the destination before it is filled.
    temp = host.get_temp_filename(dest)
    yield StringCommand(f"install -m 0600 -o \"${{SUDO_USER:-$(id -un)}}\" /dev/null {shlex.quote(temp)} && "
                        f"install -m 0600 -o root -g root /dev/null {q}.new")
    yield FileUploadCommand(StringIO(content), f"{dest}.new", remote_temp_filename=temp)
    yield StringCommand(f"chown root:root {q}.new && chmod 0600 {q}.new && mv -f {q}.new {q} && "
                        f"rm -f {shlex.quote(temp)}")


def activation_script(base: str, release: str, unit: str, service: str, keep: int, settle: int,
                      legacy_files: list[str]) -> str:
    """Make `release` current and restart `service` on it; when it does not come up,
    say why in the app's own words (its journal) and go back to what ran before."""
    q = shlex.quote
    new = q(f"releases/{release}")
    return "\n".join([
        f"cd {q(base)} || exit 1",
        f"new={new}; unit={q(unit)}; service={q(service)}",
        'old=$(readlink current || true); since=$(date +%s)',
        'saved=.aisha-api.service.before',
        'if test -f "$unit"; then cp -p "$unit" "$saved"; else rm -f "$saved"; fi',
        'link() { ln -sfn "$1" .current.new && mv -Tf .current.new current; }',
        'install_unit() { install -m 0644 -o root -g root "$1" "$unit.new" && mv -f "$unit.new" "$unit" '
        '&& systemctl daemon-reload; }',
        # Ready (Type=notify), then still running, not restarted, after a moment.
        f'started() {{ systemctl restart "$service" && sleep {int(settle)} && systemctl is-active --quiet "$service" '
        '&& test "$(systemctl show -P NRestarts "$service")" = 0; }',
        # <base>/app (commands may name it) follows current; the old layout's directory
        # stays aside until the release serves.
        'if test -d app && ! test -L app; then rm -rf .app.before && mv app .app.before; fi',
        f'if link "$new" && ln -sfn current/app app && install_unit "$new/{paths.RELEASE_UNIT_NAME}" && started; then',
        '  case "$old" in releases/*) test "$old" = "$new" || ln -sfn "$old" previous;; esac',
        '  touch "$new"; rm -rf .app.before',
        *(f"  rm -f {q(path)}" for path in legacy_files),
        f'  ls -1t releases | tail -n +{int(keep) + 1} | while read -r name; do',
        '    case "releases/$name" in "$(readlink current)"|"$(readlink previous)") ;; *) rm -rf "releases/$name";; esac',
        '  done',
        '  rm -f "$saved"; echo "release ${new#releases/} is serving"; exit 0',
        'fi',
        'echo "aisha-api did not start on release ${new#releases/}; in its own words:" >&2',
        'sleep 1; journalctl "_SYSTEMD_UNIT=$service" --since "@$since" -o cat -q --no-pager | tail -n 12 | sed "s/^/    /" >&2',
        'if test -n "$old"; then link "$old"; else rm -f current; fi',
        'if test -d .app.before; then rm -f app && mv .app.before app; fi',
        'if test -f "$saved"; then install_unit "$saved"; rm -f "$saved"; fi',
        'if test -n "$old" || test -d app; then',
        '  if systemctl restart "$service"; then echo "rolled back: ${old:-the previous app} is serving again" >&2;',
        '  else echo "rolled back to ${old:-the previous app}, which does not start either" >&2; fi',
        'else systemctl stop "$service"; fi',
        'exit 1',
    ])


@operation()
def release_activated(base: str, unit: str, service: str, keep: int, release: str | None = None,
                      unit_sha1: str | None = None, legacy_files: list[str] | None = None, settle: int = 2):
    """
    Run `service` on a release: switch <base>/current to it, install its unit, restart,
    and check it came up; if not, switch back to the release (and unit) that ran before
    and fail with the app's own words. Keeps the `keep` newest releases and the previous one.

    + base: the app's base directory (releases/, current, previous, app -> current/app)
    + unit: the installed unit file (a copy of the release's own)
    + service: the systemd service to restart
    + keep: releases to keep
    + release: the release id; None = the previous release (a rollback)
    + unit_sha1: SHA1 of the release's unit (known before it is uploaded)
    + legacy_files: files of the layout before releases, removed once a release serves
    """
    facts = host.get_fact(ReleaseState, base=base, unit=unit, release_unit=paths.RELEASE_UNIT_NAME) or {}
    if release is None:
        previous = facts.get("previous", "")
        if not previous.startswith("releases/"):
            raise OperationError(f"no previous release in {base}: nothing to roll back to")
        release, unit_sha1 = previous.removeprefix("releases/"), facts.get("previous_unit_sha1")
    if (facts.get("current") == f"releases/{release}" and facts.get("unit_sha1") == unit_sha1
            and facts.get("app") == "link"):
        host.noop(f"release {release} is current")
        return
    yield StringCommand(activation_script(base, release, unit, service, keep, settle, legacy_files or []))
