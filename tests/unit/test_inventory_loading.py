"""The tools load inventories as the pyinfra CLI does (aisha_infra/tools/inventory.py), and
the deploy validates only the hosts it deploys (aisha_infra/deploy/config.py)."""

from __future__ import annotations

import textwrap

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.exceptions import PyinfraError

from aisha_infra import cli
from aisha_infra.deploy.config import validate_inventory
from aisha_infra.deploy.inventory import InventoryError
from aisha_infra.tools import inventory as tools_inventory


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "group_data").mkdir()
    (tmp_path / "group_data" / "all.py").write_text("aisha_domain = 'all.example'\nnginx_https_port = 1\n")
    (tmp_path / "group_data" / "canary.py").write_text("import os\nnginx_https_port = 2\ntls_mode = 'letsencrypt'\n")
    (tmp_path / "inventory.py").write_text(textwrap.dedent("""
        print("inventory files may print")  # never mixed into what the tools read
        _private = ['ignored']
        canary = [('c1', {'tls_mode': 'self-signed'}), 'c2']
        production = (['p1', 'p2'], {'nginx_https_port': 3})
        staging = []
    """))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_data_is_merged_as_pyinfra_merges_it(project):
    inventory = tools_inventory.load("inventory.py")
    hosts = inventory.hosts
    assert list(hosts) == ["c1", "c2", "p1", "p2"] and inventory.selected == ["c1", "c2", "p1", "p2"]
    assert hosts["c1"]["aisha_domain"] == "all.example"
    # the host's own data wins; group_data/<group>.py wins over the group's data in inventory.py
    assert (hosts["c1"]["nginx_https_port"], hosts["c1"]["tls_mode"]) == (2, "self-signed")
    assert (hosts["c2"]["nginx_https_port"], hosts["c2"]["tls_mode"]) == (2, "letsencrypt")
    assert hosts["p1"]["nginx_https_port"] == 3
    assert "os" not in hosts["c2"]  # an import is not data
    assert inventory.groups["canary"] == ["c1", "c2"] and inventory.groups["staging"] == []
    assert "_private" not in inventory.groups


def test_data_overrides_and_limit_mean_what_they_mean_to_pyinfra(project):
    inventory = tools_inventory.load("inventory.py", ["tls_mode=letsencrypt", "nginx_https_port=8443"], ["canary", "p[2]"])
    assert inventory.selected == ["c1", "c2", "p2"]  # a group, and a glob of host names
    assert [name for name, _ in inventory.selected_hosts()] == ["c1", "c2", "p2"]
    # --data wins over everything, typed as pyinfra types it
    assert {(data["tls_mode"], data["nginx_https_port"]) for data in inventory.hosts.values()} == {("letsencrypt", 8443)}


@pytest.mark.parametrize(
    ("data", "limit", "message"),
    [
        ([], ["canry"], "--limit 'canry' matches no host or group of the inventory (groups: canary, "),
        (["tls_mode"], [], "--data 'tls_mode' is not KEY=VALUE"),
    ],
)
def test_a_limit_that_matches_nothing_or_bad_data_is_refused(project, data, limit, message):
    with pytest.raises(InventoryError) as caught:
        tools_inventory.load("inventory.py", data, limit)
    assert str(caught.value).startswith(message)


def test_a_missing_inventory_file_is_not_taken_for_a_host_name(project):
    with pytest.raises(InventoryError, match="the inventory file missing.py does not exist in "):
        tools_inventory.load("missing.py")


def test_an_inventory_pyinfra_cannot_load_says_so(project):
    (project / "inventory.py").write_text("canary = [\n")
    with pytest.raises(InventoryError, match=r"pyinfra could not load inventory.py: .*SyntaxError"):
        tools_inventory.load("inventory.py")


def test_status_and_diagnose_take_pyinfras_limit(project, capsys):
    # production has a setting no deploy accepts: status checks settings of the hosts it selects
    (project / "group_data" / "production.py").write_text("tls_mode = 'bogus'\n")
    assert cli.main(["status", "--limit", "production", "--json"]) == 2
    assert "tls_mode" in capsys.readouterr().err
    assert cli.main(["diagnose", "--inventory", "inventory.py", "--limit", "nothing-*"]) == 2
    assert "--limit 'nothing-*' matches no host or group" in capsys.readouterr().err


def _state(limit: list[str] | None) -> State:
    inventory = Inventory(
        (["canary-1", "prod-1"], {}),
        canary=(["canary-1"], {"aisha_domain": "canary.example.com"}),
        production=(["prod-1"], {"aisha_domain": "prod.example.com", "nginx_https_port": "not-a-port"}),
    )
    hosts = None if limit is None else [inventory.get_host(name) for name in limit]
    return State(inventory, Config(), initial_limit=hosts)


def test_validation_covers_the_hosts_being_deployed_only():
    assert list(validate_inventory(_state(["canary-1"]))) == ["canary-1"]
    with pytest.raises(PyinfraError) as caught:
        validate_inventory(_state(None))
    assert "prod-1" in str(caught.value) and "nginx_https_port" in str(caught.value)
