"""Backend operations pyinfra has no idempotent form for."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import StringCommand, operation
from pyinfra.facts.files import Sha1File


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
    yield StringCommand(
        f"cd {app_dir} && {shlex.quote(venv + '/bin/pip')} install --disable-pip-version-check --no-input -r {r} && cp {r} {s}"
    )
