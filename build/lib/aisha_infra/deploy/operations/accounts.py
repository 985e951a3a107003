"""Accounts, checked with a fact about one account instead of all of them."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import operation
from pyinfra.operations import server

from aisha_infra.deploy.facts.accounts import Account


@operation()
def system_user(user: str, group: str, home: str, shell: str):
    """
    A system account without a home directory of its own, as pyinfra's server.user
    makes it; server.user runs only when the account is missing or differs.

    + user: account name
    + group: its primary group (must exist)
    + home: home directory recorded in /etc/passwd (not created)
    + shell: login shell
    """
    if host.get_fact(Account, user=user) == {"home": home, "shell": shell, "group": group}:
        host.noop(f"user {user} exists with home {home}, shell {shell} and group {group}")
        return
    yield from server.user._inner(
        user=user,
        group=group,
        system=True,
        shell=shell,
        home=home,
        create_home=False,
        ensure_home=False,
    )
