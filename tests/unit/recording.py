"""Run operations through pyinfra's real machinery against a connector that records the
final command lines (after pyinfra wrapped them for _sudo, _env, ...) instead of running them.

Facts answer with empty output (their default value), so operations take their "change"
path and yield their commands; `answers` gives chosen commands an output instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyinfra
from pyinfra.api import Config, Inventory, State
from pyinfra.api.command import StringCommand
from pyinfra.api.connect import connect_all
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from pyinfra.connectors.base import BaseConnector
from pyinfra.connectors.util import (
    CommandOutput, OutputLine, extract_control_arguments, make_unix_command_for_host,
)

ASKPASS_PATH = "/tmp/pyinfra-sudo-askpass-recorded"


@dataclass
class Recorded:
    commands: list[str] = field(default_factory=list)  # final command lines, facts included
    timeouts: list[float | None] = field(default_factory=list)  # each command's _timeout
    uploads: list[tuple[str, dict]] = field(default_factory=list)  # (remote path, arguments)
    failed: bool = False  # the operation failed the host


class RecordingConnector(BaseConnector):
    recorded: Recorded
    answers: dict[str, list[str]]  # a command containing the key prints the lines

    @staticmethod
    def make_names_data(name=None):
        raise NotImplementedError("hosts are made by record_operation")

    def connect(self) -> None:
        pass

    def run_shell_command(self, command: StringCommand, print_output: bool = False,
                          print_input: bool = False, **arguments) -> tuple[bool, CommandOutput]:
        control = extract_control_arguments(arguments)  # _timeout etc.: not in the line
        final = make_unix_command_for_host(self.state, self.host, command, **arguments)
        line = str(final.get_raw_value())
        if "pyinfra-sudo-askpass-XXX" in line:
            # pyinfra installing its askpass helper for _sudo_password: say where
            return True, CommandOutput([OutputLine("stdout", ASKPASS_PATH)])
        self.recorded.commands.append(line)
        self.recorded.timeouts.append(control.get("_timeout"))
        stdout = next((lines for key, lines in self.answers.items() if key in line), [])
        return True, CommandOutput([OutputLine("stdout", text) for text in stdout])

    def put_file(self, filename_or_io, remote_filename, remote_temp_filename=None,
                 print_output: bool = False, print_input: bool = False, **arguments) -> bool:
        self.recorded.uploads.append((remote_filename, arguments))
        return True

    def get_file(self, remote_filename, filename_or_io, remote_temp_filename=None,
                 print_output: bool = False, print_input: bool = False, **arguments) -> bool:
        return True


def record_operation(op, host_data: dict, *args, answers: dict[str, list[str]] | None = None,
                     diff: bool = False, **kwargs) -> Recorded:
    """Add and execute `op(*args, **kwargs)` on one host with `host_data` (e.g. {"_sudo":
    True}), as `pyinfra` would (`diff`: as `pyinfra --diff`); returns every command line
    that reached the connector."""
    inventory = Inventory(([("recorded-host", host_data)], {}))
    state = State(inventory, Config(DIFF=diff))
    host = inventory.get_host("recorded-host")
    recorded = Recorded()
    host.connector = RecordingConnector(state, host)
    host.connector.recorded = recorded
    host.connector.answers = answers or {}
    connect_all(state)
    was_cli, pyinfra.is_cli = pyinfra.is_cli, False
    try:
        add_op(state, op, *args, **kwargs)
        run_ops(state)
    except PyinfraError as exc:
        if "No hosts remaining" not in str(exc):
            raise
        recorded.failed = True
    finally:
        pyinfra.is_cli = was_cli
    return recorded
