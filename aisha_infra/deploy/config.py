"""Bridge between pyinfra's host data and our validated Settings."""

from __future__ import annotations

from weakref import WeakKeyDictionary

from pyinfra import host
from pyinfra.api.exceptions import PyinfraError
from pyinfra.facts.server import LinuxDistribution

from aisha_infra.deploy.facts.system import unsupported_system
from aisha_infra.deploy.settings import Settings, SettingsError, build_settings


def settings_for(host) -> Settings:
    return build_settings(host.data.dict(), where=host.name)


# deploy.py runs once per host: the inventory is validated on the first run only.
_VALIDATED: WeakKeyDictionary = WeakKeyDictionary()


def validate_inventory(state) -> dict[str, Settings]:
    """Validate the settings of every host being deployed at once, before any operation
    is prepared anywhere; raise one error that lists every bad key of every such host.
    Under --limit only the hosts it selects are deployed, so only they are checked: a
    broken entry elsewhere in the inventory does not block them."""
    if state in _VALIDATED:
        return _VALIDATED[state]
    problems, settings = [], {}
    for inventory_host in filter(state.is_host_in_limit, state.inventory):
        try:
            settings[inventory_host.name] = settings_for(inventory_host)
        except SettingsError as exc:
            problems.append(str(exc))
    if problems:
        raise PyinfraError("\n".join(problems))
    _VALIDATED[state] = settings
    return settings


def host_settings() -> Settings:
    """The settings of the host being deployed, from its host.data (under which our
    @deploys put DEFAULTS). Every deploy of ours starts with it: the first call validates
    every host being deployed, so a bad value on any of them stops the run before any operation."""
    return validate_inventory(host.state)[host.name]


def validate_before_connecting(state) -> None:
    """Check the settings of every host being deployed (see validate_inventory) before
    pyinfra opens the first SSH connection: a bad value stops the run without touching,
    or even logging into, any host.

    Called from inventory.py, which pyinfra runs before the inventory is complete
    (group_data and --data come after it). pyinfra initialises the state with the
    complete inventory right before connecting, so validation runs right after that."""
    init = state.init

    def init_then_validate(*args, **kwargs):
        init(*args, **kwargs)
        validate_inventory(state)

    state.init = init_then_validate


_SYSTEMS_CHECKED: WeakKeyDictionary = WeakKeyDictionary()


def check_supported_systems(state) -> None:
    """Stop the run while it is still being prepared, so before any change on any host,
    when a host runs anything but a supported Debian; one error names every such host."""
    if state in _SYSTEMS_CHECKED:
        return
    problems = []
    for inventory_host in state.inventory.iter_activated_hosts():
        reason = unsupported_system(inventory_host.get_fact(LinuxDistribution))
        if reason:
            problems.append(f"  {inventory_host.name}: {reason}")
    if problems:
        raise PyinfraError("unsupported system; nothing was changed on any host.\n" + "\n".join(problems))
    _SYSTEMS_CHECKED[state] = True
