"""The packaged deploy reads pyinfra's host data: every setting's default reaches host.data
through data_defaults, inventory data overrides it, and one bad host stops the run before
any operation is added anywhere (tested with pyinfra's own Inventory and State)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from pyinfra import host
from pyinfra.api import Config, Inventory, State, deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.context import ctx_host, ctx_state

import aisha_infra.tasks
from aisha_infra.deploy.config import host_settings
from aisha_infra.deploy.settings import DEFAULTS, SETTING_NAMES, Settings
from aisha_infra.tasks import deploy_webhook_host


def our_deploys() -> dict[str, object]:
    found = {}
    for module_info in pkgutil.iter_modules(aisha_infra.tasks.__path__):
        module = importlib.import_module(f"aisha_infra.tasks.{module_info.name}")
        for name, value in vars(module).items():
            if hasattr(value, "_inner") and getattr(value, "__module__", None) == module.__name__:
                found[f"{module_info.name}.{name}"] = value
    return found


def test_defaults_are_the_settings_defaults():
    assert tuple(DEFAULTS) == SETTING_NAMES
    assert Settings(**DEFAULTS) == Settings()


def test_every_deploy_of_ours_has_every_default():
    deploys = our_deploys()
    assert {"app.stage_app", "app.serve_app", "app.roll_back_app"} <= set(deploys)
    assert len(deploys) >= 15
    without = [name for name, func in deploys.items() if getattr(func._inner, "deploy_data", None) is not DEFAULTS]
    assert not without, f"@deploy without data_defaults=DEFAULTS: {without}"


def inventory_state(hosts: list, **groups) -> State:
    return State(Inventory((hosts, {}), **groups), Config())


def run_as(state: State, name: str, func):
    with ctx_state.use(state), ctx_host.use(state.inventory.get_host(name)):
        return func()


@deploy("Probe", data_defaults=DEFAULTS)
def settings_seen_in_a_deploy():
    return host.data.app_port, host.data.get("tls_mode"), host_settings()


def test_host_data_has_the_defaults_under_the_inventory_data():
    state = inventory_state(
        [("web-1", {"aisha_domain": "one.example.com", "nginx_https_port": 9443}),
         ("web-2", {"aisha_domain": "two.example.com"})],
        canary=(["web-2"], {"app_port": 8100}),
    )
    app_port, tls_mode, settings = run_as(state, "web-1", settings_seen_in_a_deploy)
    assert (app_port, tls_mode) == (8000, "self-signed")  # only data_defaults has them
    assert (settings.aisha_domain, settings.nginx_https_port, settings.app_port) == ("one.example.com", 9443, 8000)
    app_port, _, settings = run_as(state, "web-2", settings_seen_in_a_deploy)
    assert app_port == 8100 and (settings.aisha_domain, settings.nginx_https_port) == ("two.example.com", 8443)


def test_outside_our_deploys_host_data_has_no_defaults():
    state = inventory_state([("web-1", {"aisha_domain": "one.example.com"})])
    assert run_as(state, "web-1", lambda: host.data.get("app_port")) is None


def test_one_bad_host_stops_the_whole_deploy_before_any_operation():
    state = inventory_state([
        ("web-1", {"aisha_domain": "one.example.com"}),
        ("web-2", {"aisha_domain": "two.example.com", "nginx_https_port": 22}),
    ])
    with pytest.raises(PyinfraError) as error:
        run_as(state, "web-1", deploy_webhook_host)  # the good host's run finds the bad one
    message = str(error.value)
    assert "web-2" in message and "nginx_https_port" in message and "ssh_port" in message
    assert "web-1" not in message
    assert not any(state.ops.values()) and not state.inventory.get_host("web-1").op_hash_order
