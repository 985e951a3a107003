"""SSH for the operator tools (diagnose, rollout, certs export): one way to reach a host,
the way pyinfra reaches it, from the same inventory data.

- The system `ssh` client, like pyinfra's own rsync: `~/.ssh/config` applies (ProxyJump,
  Port, User, IdentityFile); what the inventory sets (`ssh_user`, `ssh_port`, `ssh_key`,
  `ssh_config_file`) wins over it, as in pyinfra.
- Host keys as pyinfra checks them: `ssh_strict_host_key_checking` (default "accept-new":
  a new host is remembered, a changed key is refused; "yes" refuses unknown hosts too)
  against `ssh_known_hosts_file` (default ~/.ssh/known_hosts). Checking is off only where
  the inventory says so, which only the lab's own hosts do.
- Remote commands run with sudo when the data says `_sudo` (`_sudo_user` too): `sudo -n`,
  or with `_sudo_password` `sudo -S`, the password written to ssh's stdin, so it is never
  on a command line or in a process list, here or on the host.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOST_KEY_POLICY = "accept-new"  # pyinfra's default
# pyinfra's ssh_strict_host_key_checking values -> OpenSSH's StrictHostKeyChecking. "ask"
# cannot ask without a terminal (BatchMode): it refuses unknown hosts, as "yes" does.
HOST_KEY_POLICIES = {"accept-new": "accept-new", "yes": "yes", "ask": "yes", "no": "no",
                     "off": "no"}
CONNECT_TIMEOUT_S = 10


class SSHError(OSError):
    """A host cannot be reached (or not with this connection data); the message says why."""


class SSHTimeout(SSHError):
    """A command over SSH did not finish in time."""


@dataclass(frozen=True)
class SSHHost:
    hostname: str  # what ssh connects to: ssh_hostname, else the inventory name
    user: str | None = None  # None: ~/.ssh/config's User, else the local user
    port: int | None = None  # None: ~/.ssh/config's Port, else 22
    key: str | None = None
    config_file: str | None = None  # None: ~/.ssh/config
    known_hosts_file: str | None = None  # None: ~/.ssh/known_hosts
    host_key_policy: str = DEFAULT_HOST_KEY_POLICY  # a key of HOST_KEY_POLICIES
    allow_agent: bool = True
    sudo: bool = False
    sudo_user: str | None = None
    sudo_password: str | None = field(default=None, repr=False)
    connect_timeout: int = CONNECT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.host_key_policy not in HOST_KEY_POLICIES:
            raise SSHError(
                f"ssh_strict_host_key_checking={self.host_key_policy!r} for {self.hostname}: "
                f"use one of {', '.join(HOST_KEY_POLICIES)} (default {DEFAULT_HOST_KEY_POLICY})")

    @classmethod
    def from_data(cls, name: str, data: Mapping, **overrides) -> SSHHost:
        """The host `name` as pyinfra's SSH connector would reach it with inventory `data`.
        `overrides` (e.g. command line flags) replace data values unless they are None."""
        values = {
            "hostname": data.get("ssh_hostname") or name,
            "user": data.get("ssh_user"),
            "port": int(data["ssh_port"]) if data.get("ssh_port") else None,
            "key": data.get("ssh_key"),
            "config_file": data.get("ssh_config_file"),
            "known_hosts_file": data.get("ssh_known_hosts_file"),
            "host_key_policy": data.get("ssh_strict_host_key_checking")
            or DEFAULT_HOST_KEY_POLICY,
            "allow_agent": data.get("ssh_allow_agent", True) is not False,
            "sudo": bool(data.get("_sudo")),
            "sudo_user": data.get("_sudo_user"),
            "sudo_password": data.get("_sudo_password"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def remote_command(self, command: str) -> str:
        """`command` as it runs on the host: through sudo when the connection says so."""
        if not self.sudo:
            return command
        sudo = ["sudo", "-H"]
        if self.sudo_user:
            sudo += ["-u", shlex.quote(self.sudo_user)]
        # -k: sudo reads the password even when it has cached credentials
        sudo += ["-S", "-k", "-p", "''"] if self.sudo_password else ["-n"]
        return f"{' '.join(sudo)} sh -c {shlex.quote(command)}"

    def ssh_command(self, command: str | None = None) -> list[str]:
        """The ssh command line (no secret in it) running `command` on the host."""
        argv = [
            "ssh",
            "-o", "BatchMode=yes",  # never a prompt: a tool must not hang on one
            "-o", f"ConnectTimeout={self.connect_timeout}",
            "-o", "LogLevel=ERROR",
            "-o", f"StrictHostKeyChecking={HOST_KEY_POLICIES[self.host_key_policy]}",
        ]  # fmt: skip
        if self.config_file:
            argv += ["-F", str(Path(self.config_file).expanduser())]
        if self.known_hosts_file:
            argv += ["-o", f"UserKnownHostsFile={Path(self.known_hosts_file).expanduser()}"]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.key:
            argv += ["-i", str(Path(self.key).expanduser()), "-o", "IdentitiesOnly=yes"]
        if not self.allow_agent:
            argv += ["-o", "IdentityAgent=none"]
        if self.user:
            argv += ["-l", self.user]
        argv += ["--", self.hostname]
        return argv if command is None else [*argv, self.remote_command(command)]

    def run(self, command: str, *, timeout: float, text: bool = True,
            stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
        """Run `command` on the host (bounded by `timeout`), stderr captured. The sudo
        password, if any, is the first line of ssh's stdin (nothing else reads it).
        Raises SSHError when ssh is missing or the time is up."""
        secret = (f"{self.sudo_password}\n" if self.sudo and self.sudo_password else None)
        stdin_data = secret if text or secret is None else secret.encode()
        try:
            return subprocess.run(
                self.ssh_command(command), input=stdin_data,
                stdin=subprocess.DEVNULL if stdin_data is None else None,
                stdout=stdout, stderr=subprocess.PIPE, text=text, timeout=timeout, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise SSHTimeout(f"ssh to {self.hostname} did not finish within {timeout:g} s") from None
        except FileNotFoundError:
            raise SSHError("the ssh command is missing (apt-get install openssh-client)") from None

    def failure(self, result: subprocess.CompletedProcess) -> str:
        """Why `result` failed, in one line, with the fix when it is a known one."""
        stderr = result.stderr.decode(errors="replace") if isinstance(result.stderr, bytes) \
            else (result.stderr or "")
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {result.returncode}"
        if "a password is required" in stderr or "a terminal is required" in stderr:
            return (f"{last}: sudo on {self.hostname} asks for a password; give it as "
                    "_sudo_password in the host's data (or allow NOPASSWD sudo)")
        if "incorrect password" in stderr:
            return f"{last}: the _sudo_password for {self.hostname} is wrong"
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or "Host key verification failed" in stderr:
            return (f"{last}: the host key of {self.hostname} is not the one in known_hosts; "
                    "if the host was rebuilt, check its new key and remove the old one with "
                    f"`ssh-keygen -R {self.hostname}`")
        return last


def add_ssh_arguments(parser: argparse.ArgumentParser) -> None:
    """The SSH flags of the operator tools; each one wins over the inventory's value."""
    parser.add_argument("--ssh-user", help="SSH user (default: the inventory's, else ~/.ssh/config's); "
                        "a user other than root runs the commands with sudo")
    parser.add_argument("--ssh-key", metavar="FILE", help="SSH private key")
    parser.add_argument("--ssh-port", type=int, help="SSH port (default: the inventory's, else ~/.ssh/config's)")
    parser.add_argument("--sudo", action="store_true", help="run the commands with sudo (inventory: _sudo)")
    parser.add_argument("--known-hosts-file", metavar="FILE",
                        help="known_hosts to check and remember host keys in (default ~/.ssh/known_hosts)")
    parser.add_argument("--strict-host-key-checking", choices=("accept-new", "yes"),
                        help="accept-new (default, like pyinfra): remember new hosts, refuse changed "
                             "keys; yes: refuse unknown hosts too")


def ssh_overrides(args: argparse.Namespace) -> dict:
    """SSHHost.from_data overrides from add_ssh_arguments' flags (None: keep the inventory's)."""
    # the tools read root-only files: a user named on the command line other than root uses sudo
    sudo = args.sudo or args.ssh_user not in (None, "root")
    return {"user": args.ssh_user, "key": args.ssh_key, "port": args.ssh_port,
            "known_hosts_file": args.known_hosts_file,
            "host_key_policy": args.strict_host_key_checking, "sudo": True if sudo else None}


def ssh_flags_given(args: argparse.Namespace) -> bool:
    """Whether any SSH flag was given."""
    return any(value not in (None, False) for value in ssh_overrides(args).values())
