"""Uploads inside our own operations, and what `pyinfra --diff` shows of them.

files.put would print its own diff against the file it writes: for a staged file
(`<dest>.aisha-new`, a new release's directory) that is the whole file as new, for a
secret its content. Our operations upload with `upload`, which prints nothing, and
say themselves what changes against the live file: `show_diff` (as files.put shows
it) or `show_hidden` (that a secret changes, not its content). `text_file` is files.put
for a new release's files, diffed against the ones serving.
"""

from __future__ import annotations

import hashlib
import shlex
from io import StringIO
from typing import IO

from pyinfra import host, logger
from pyinfra.api import FileUploadCommand, StringCommand, operation
from pyinfra.api.output import format_text
from pyinfra.facts.files import File, FileContents, Sha1File
from pyinfra.operations.util.files import generate_color_diff


def upload(src: str | IO, dest: str, mode: str, user: str = "root", group: str = "root", then: str | None = None):
    """The commands that put `src` (a local path or a file object) at `dest`, owned and
    moded as given; `dest`'s directory must keep others out until the chmod. `then`, a
    script, runs after the chmod in the same command (one round trip less)."""
    temp_dir = (host.current_op_global_arguments or {}).get("_temp_dir")
    yield FileUploadCommand(src, dest, remote_temp_filename=host.get_temp_filename(dest, temp_directory=temp_dir))
    ownership = f"chown {shlex.quote(f'{user}:{group}')} {shlex.quote(dest)} && chmod {mode} {shlex.quote(dest)}"
    yield StringCommand(f"{ownership} || exit 1\n{then}" if then else ownership)


def diff_lines(live: list[str] | None, content: str) -> list[str]:
    """A unified diff of the live file's lines (FileContents' form) to `content`, as files.put prints it."""
    return list(generate_color_diff([line + "\n" for line in live or []], content.splitlines(keepends=True)))


def show_diff(dest: str, content: str, live: str | None = None) -> None:
    """Under --diff: how `content` differs from the live file (`live`, default `dest`)."""
    if not host.state.config.DIFF:
        return
    current = host.get_fact(FileContents, path=live or dest)
    host.log(f"Will {'create' if current is None else 'modify'} {format_text(dest, bold=True)}", logger.info)
    for line in diff_lines(current, content):
        logger.info("  %s", line)
    logger.info("")


def show_hidden(dest: str, what: str) -> None:
    """Under --diff: that `dest` changes, never its content (`what` says what it holds)."""
    if host.state.config.DIFF:
        host.log(f"Will write {format_text(dest, bold=True)}: {what}, content not shown", logger.info)


@operation()
def text_file(dest: str, content: str, live: str, mode: str = "0644", user: str = "root", group: str = "root"):
    """
    A text file (files.put's checks) whose --diff compares with the file it replaces.

    + dest: path on the host (a new release's file)
    + content: the file's text
    + live: the file serving now (the current release's), which --diff compares with
    + mode, user, group: as files.put
    """
    existing = host.get_fact(File, path=dest) or {}
    if (host.get_fact(Sha1File, path=dest) == hashlib.sha1(content.encode()).hexdigest()
            and (existing.get("mode"), existing.get("user"), existing.get("group")) == (int(mode[-3:]), user, group)):
        host.noop(f"{dest} is up to date")
        return
    show_diff(dest, content, live=live)
    yield from upload(StringIO(content), dest, mode, user, group)
