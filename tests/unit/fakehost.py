"""Run one operation's generator against given facts, as pyinfra's own operation tests do."""

from __future__ import annotations

from pyinfra.api import StringCommand
from pyinfra.context import ctx_host


class FakeHost:
    print_prefix = "[fakehost] "

    def __init__(self, facts: dict):
        self.facts = facts  # {(FactClass, frozenset(kwargs.items())) or FactClass: value}
        self.noops: list[str] = []
        self.name = "fakehost"

    def get_fact(self, fact_cls, *args, **kwargs):
        key = (fact_cls, frozenset(kwargs.items()))
        if key in self.facts:
            return self.facts[key]
        return self.facts[fact_cls]

    def noop(self, message: str) -> None:
        self.noops.append(message)


def run_operation(op, facts: dict, *args, **kwargs) -> tuple[list[str], list[str]]:
    """Commands (as strings) and noop messages the operation yields for `facts`."""
    host = FakeHost(facts)
    with ctx_host.use(host):
        commands = [_as_text(c) for c in op._inner(*args, **kwargs)]
    return commands, host.noops


def _as_text(command) -> str:
    if isinstance(command, str):
        return command
    if isinstance(command, StringCommand):
        return str(command.get_raw_value())
    return repr(command)
