"""Commands on the host being diagnosed: the Runner the host checks are given, and
the one that runs them over SSH."""

from __future__ import annotations

from collections.abc import Callable

from aisha_infra.tools.ssh import SSHError, SSHHost, SSHTimeout

SSH_TIMEOUT = 20

# run(command) -> (exit status, stdout, stderr), on the host being diagnosed.
Runner = Callable[[str], tuple[int, str, str]]


def ssh_runner(ssh: SSHHost, timeout: float = SSH_TIMEOUT) -> Runner:
    """A Runner over SSH (see aisha_infra/tools/ssh.py: as pyinfra connects, sudo when the
    connection says so), bounded by `timeout` per command."""

    def run(remote_command: str) -> tuple[int, str, str]:
        try:
            result = ssh.run(remote_command, timeout=timeout)
        except SSHError as exc:
            return (124 if isinstance(exc, SSHTimeout) else 255), "", str(exc)
        err = result.stderr
        if result.returncode != 0 and (explained := ssh.failure(result)) != last_line(err):
            err = f"{err.rstrip()}\n{explained}"  # the known fix, as the last line
        return result.returncode, result.stdout, err

    return run


def last_line(text: str) -> str:
    """The last non-empty line of `text` (a command's stderr): usually why it failed."""
    return last_lines(text, 1)


def last_lines(text: str, count: int) -> str:
    """The last `count` non-empty lines of `text`, joined into one line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-count:])
