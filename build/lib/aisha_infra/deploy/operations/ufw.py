"""ufw operations: read the UfwState fact, yield only the commands that change something.

pyinfra 3.10 ships no ufw support. These follow pyinfra's own operations: compare
the wanted state with the fact and `host.noop` when there is nothing to do.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import operation
from pyinfra.api.exceptions import OperationValueError

from aisha_infra.deploy.facts.ufw import UfwState

POLICIES = ("allow", "deny", "reject")
DIRECTIONS = ("incoming", "outgoing", "routed")


def _check_rule(rule: str) -> None:
    action, _, port = rule.partition(" ")
    if action not in ("allow", "deny", "reject", "limit") or not port:
        raise OperationValueError(f"ufw rule {rule!r} must look like 'allow 22/tcp'")


@operation()
def allow_only(rules: list[str], protect: list[str] | tuple = ()):
    """
    Make `rules` (e.g. ``["allow 22/tcp", "allow 8443/tcp"]``) the only ufw user rules.

    + rules: wanted rules, added in this order when missing
    + protect: rules (the SSH ones) that are never deleted, even if not listed

    Missing rules are added before any other rule is deleted, so SSH stays open
    throughout. Runs while ufw is inactive too, so rules exist before it is enabled.
    """
    rules = list(dict.fromkeys(rules))  # an extra rule may repeat one of ours
    for rule in rules:
        _check_rule(rule)
    current = host.get_fact(UfwState)["rules"]
    keep = set(rules) | set(protect)

    to_add = [rule for rule in rules if rule not in current]
    to_delete = [rule for rule in current if rule not in keep]
    for rule in to_add:
        yield f"ufw {rule}"
    for rule in to_delete:
        yield f"ufw delete {rule}"
    if not to_add and not to_delete:
        host.noop(f"ufw rules are exactly: {', '.join(rules)}")


@operation()
def default_policy(direction: str, policy: str):
    """
    Set ufw's default policy for a direction.

    + direction: incoming, outgoing or routed
    + policy: allow, deny or reject
    """
    if direction not in DIRECTIONS or policy not in POLICIES:
        raise OperationValueError(f"ufw default policy {policy!r} {direction!r} is not valid")
    if host.get_fact(UfwState, with_rules=False)["policies"].get(direction) == policy:
        host.noop(f"ufw default {direction} policy is already {policy}")
        return
    yield f"ufw default {policy} {direction}"


@operation()
def enabled(enabled: bool = True):
    """
    Enable (or disable) ufw; enabling also loads it at boot.

    + enabled: whether ufw should be active
    """
    if host.get_fact(UfwState, with_rules=False)["enabled"] == enabled:
        host.noop(f"ufw is already {'enabled' if enabled else 'disabled'}")
        return
    # --force: `ufw enable` otherwise asks whether to continue over SSH.
    yield "ufw --force enable" if enabled else "ufw disable"
