import pytest
from pyinfra.api.exceptions import OperationValueError

from aisha_infra.deploy.facts.ufw import UfwState
from aisha_infra.deploy.operations import ufw
from tests.unit.fakehost import run_operation

WANTED = ["allow 22/tcp", "allow 80/tcp", "allow 8443/tcp"]


def ufw_facts(enabled=False, policies=None, rules=()):
    return {UfwState: {"enabled": enabled, "policies": policies or {}, "rules": list(rules)}}


def test_fact_parses_config_and_added_rules():
    output = [
        "ENABLED=yes",
        'DEFAULT_INPUT_POLICY="DROP"',
        'DEFAULT_OUTPUT_POLICY="ACCEPT"',
        'DEFAULT_FORWARD_POLICY="DROP"',
        "Added user rules (see 'ufw status' for running firewall):",
        "ufw allow 22/tcp",
        "ufw allow 8443/tcp",
    ]
    assert UfwState().process(output) == {
        "enabled": True,
        "policies": {"incoming": "deny", "outgoing": "allow", "routed": "deny"},
        "rules": ["allow 22/tcp", "allow 8443/tcp"],
    }


def test_fact_on_fresh_install():
    output = ["ENABLED=no", 'DEFAULT_INPUT_POLICY="DROP"', "Added user rules (see 'ufw status' for running firewall):", "(None)"]
    state = UfwState().process(output)
    assert state["enabled"] is False and state["rules"] == []


def test_fresh_host_adds_ssh_first():
    commands, _ = run_operation(ufw.allow_only, ufw_facts(), rules=WANTED, protect=["allow 22/tcp"])
    assert commands == ["ufw allow 22/tcp", "ufw allow 80/tcp", "ufw allow 8443/tcp"]


def test_converged_rules_yield_nothing():
    commands, noops = run_operation(ufw.allow_only, ufw_facts(rules=WANTED), rules=WANTED, protect=["allow 22/tcp"])
    assert commands == [] and noops


def test_drift_is_repaired_add_before_delete():
    facts = ufw_facts(rules=["allow 22/tcp", "allow 3306/tcp"])
    commands, _ = run_operation(ufw.allow_only, facts, rules=WANTED, protect=["allow 22/tcp"])
    assert commands == ["ufw allow 80/tcp", "ufw allow 8443/tcp", "ufw delete allow 3306/tcp"]


def test_protected_ssh_rule_is_never_deleted():
    facts = ufw_facts(rules=["allow 2222/tcp"])
    commands, _ = run_operation(ufw.allow_only, facts, rules=["allow 80/tcp"], protect=["allow 2222/tcp"])
    assert commands == ["ufw allow 80/tcp"]


def test_bad_rule_is_rejected():
    with pytest.raises(OperationValueError):
        run_operation(ufw.allow_only, ufw_facts(), rules=["open 22"])


@pytest.mark.parametrize(
    "policies, expected",
    [({}, ["ufw default deny incoming"]), ({"incoming": "allow"}, ["ufw default deny incoming"]), ({"incoming": "deny"}, [])],
)
def test_default_policy(policies, expected):
    commands, _ = run_operation(ufw.default_policy, ufw_facts(policies=policies), direction="incoming", policy="deny")
    assert commands == expected


@pytest.mark.parametrize("enabled, expected", [(False, ["ufw --force enable"]), (True, [])])
def test_enable(enabled, expected):
    commands, _ = run_operation(ufw.enabled, ufw_facts(enabled=enabled), enabled=True)
    assert commands == expected
