"""Which app release a host runs, read in one command."""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase


class ReleaseState(FactBase):
    """
    Returns the releases of an app base directory and the unit systemd runs, or None
    when the base directory is missing:

    .. code:: python

        {
            "current": "releases/3f786850e387",  # "" when there is none (first deploy, old layout)
            "previous": "releases/0beec7b5ea3f",
            "unit_sha1": "...",  # the installed unit, "" when missing
            "current_unit_sha1": "...",  # the current release's own unit
            "previous_unit_sha1": "...",
            "app": "link",  # <base>/app: "link", "dir" (the layout before releases) or "none"
        }
    """

    @staticmethod
    def default():
        return None

    def command(self, base: str, unit: str, release_unit: str) -> str:
        b, u = shlex.quote(base), shlex.quote(unit)
        sha = "sha1sum < {} 2>/dev/null | cut -d' ' -f1"
        return (
            f"cd {b} 2>/dev/null || exit 0; "
            'echo "current=$(readlink current)"; echo "previous=$(readlink previous)"; '
            f'echo "unit_sha1=$({sha.format(u)})"; '
            f'echo "current_unit_sha1=$({sha.format("current/" + shlex.quote(release_unit))})"; '
            f'echo "previous_unit_sha1=$({sha.format("previous/" + shlex.quote(release_unit))})"; '
            'if test -L app; then echo app=link; elif test -d app; then echo app=dir; else echo app=none; fi'
        )

    def process(self, output):
        state = dict(line.split("=", 1) for line in output if "=" in line)
        return state if "app" in state else None
