"""Proof that a run never reached a host: sshd logs every login in the host's journal."""

from __future__ import annotations

from aisha_infra.lab.hosts import LabHost

CONNECTING = "--> Connecting to hosts..."


def ssh_logins(host: LabHost) -> int:
    """Logins sshd accepted so far, this query's own included (it logs in to ask)."""
    result = host.run("journalctl -q -o cat --no-pager | grep -c 'Accepted publickey' || true")
    return int(result.stdout.strip() or 0)


def assert_refused_before_connecting(run, expected: str) -> None:
    """The run failed with `expected` in one clean error, and pyinfra stopped before
    opening any connection."""
    assert run.returncode != 0, run.output[-3000:]
    assert expected in run.output, run.output[-3000:]
    assert CONNECTING not in run.output and "Traceback" not in run.output, run.output[-3000:]
