"""The bad-input table against the validation the deploy runs before connecting:
each case fails with its own words, in one message, naming what to fix."""

from __future__ import annotations

import json

import pytest

from aisha_infra.deploy.inventory import InventoryError, read_hosts_file
from aisha_infra.deploy.settings import SettingsError, build_settings
from tests.unit.bad_input_table import CASES, DOMAIN, make_files

BASE_ENTRIES = [{"name": "web-1.example.com", "groups": ["canary"], "data": {}},
                {"name": "web-2.example.com", "groups": ["production"]}]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("bad-input"))


def first_error(text: str | None, path) -> str:
    """What the deploy reports first: the hosts file, else every host's settings
    (with group_data/all.py's domain underneath, as pyinfra merges them)."""
    if text is not None:
        path.write_text(text)
    try:
        groups = read_hosts_file(path)
    except InventoryError as exc:
        return str(exc)
    for hosts in groups.values():
        for name, data in hosts:
            try:
                build_settings({"aisha_domain": DOMAIN, **data}, where=name)
            except SettingsError as exc:
                return str(exc)
    raise AssertionError("accepted")


def test_the_table_is_wide():
    assert len(CASES) >= 30
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_refused_with_its_reason(case, files, tmp_path):
    message = first_error(case.hosts_text(BASE_ENTRIES, files), tmp_path / "hosts.json")
    assert case.expected in message, message
    assert "Traceback" not in message


def test_the_untouched_base_is_accepted(files, tmp_path):
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps(BASE_ENTRIES))
    groups = read_hosts_file(path)
    assert [name for name, _ in groups["canary"]] == ["web-1.example.com"]
    assert [name for name, _ in groups["production"]] == ["web-2.example.com"]


def test_the_example_hosts_file_is_valid():
    from tests.project import PROJECT_ROOT

    groups = read_hosts_file(PROJECT_ROOT / "hosts.example.json")
    assert len(groups["canary"]) == 1 and len(groups["production"]) == 2
