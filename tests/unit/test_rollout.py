"""`aisha-infra rollout` without lab hosts: stage planning, reading the per-host results
of real pyinfra runs (on @local), --fail-percent, the health gate (fake checks and clock,
and real HTTPS on loopback), and whole rollouts driven through a stand-in for the pyinfra
command."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from aisha_infra import cli
from aisha_infra.tools import rollout
from aisha_infra.tools.inventory import load as load_inventory
from aisha_infra.tools.pyinfra_report import CONFIG_FILE, REPORT_ENV
from aisha_infra.tools.rollout import GateTarget, HostOutcome, PyinfraRun, RolloutError, Stage
from aisha_infra.deploy.settings import build_settings

from .tlscases import DOMAIN, build_pki
from .tlsserver import LocalTLSServer


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return build_pki(tmp_path_factory.mktemp("pki"))


# --- planning ----------------------------------------------------------------------------------


def test_stages_are_inventory_groups_in_the_given_order(tmp_path):
    inventory = tmp_path / "inventory.py"
    inventory.write_text(textwrap.dedent("""
        canary = [("web-1", {"ssh_user": "root"})]
        production = (["web-2", ("web-3", {"aisha_domain": "b.example.com"})], {"ssh_port": 2222})
        staging = []
        _private = ["not-a-group"]
        NOT_HOSTS = [1, 2]
    """))
    groups = load_inventory(str(inventory)).groups  # as pyinfra loads it
    assert {name: groups[name] for name in ("canary", "production")} == {"canary": ["web-1"], "production": ["web-2", "web-3"]}
    assert groups["staging"] == [] and "_private" not in groups and "NOT_HOSTS" not in groups

    assert rollout.plan_stages(groups, ["canary", "production"]) == [
        Stage("canary", ("web-1",)),
        Stage("production", ("web-2", "web-3")),
    ]
    assert [s.name for s in rollout.plan_stages(groups, ["production", "staging"])] == ["production", "staging"]


@pytest.mark.parametrize(
    ("order", "message"),
    [
        (["canary", "prod"], "no inventory group named prod; the inventory has canary, production"),
        (["canary", "canary"], "names canary more than once"),
        ([], "--stages is empty"),
    ],
)
def test_bad_stage_lists_are_refused(order, message):
    with pytest.raises(RolloutError, match=message):
        rollout.plan_stages({"canary": ["a"], "production": ["b"]}, order)


@pytest.mark.parametrize(
    ("hosts", "percent", "allowed"),
    [(1, 0, 0), (1, 50, 0), (2, 50, 1), (10, 20, 2), (10, 25, 2), (4, 25, 1), (3, 99, 2), (3, 0, 0)],
)
def test_fail_percent_tolerates_a_share_but_keeps_one_host(hosts, percent, allowed):
    assert rollout.allowed_failures(hosts, percent) == allowed


@pytest.mark.parametrize(
    ("checks", "soak", "interval", "rounds"),
    [(3, 0, 10, 3), (3, 60, 10, 7), (10, 5, 1, 10), (1, 1, 0.5, 3), (2, 0, 0, 2)],
)
def test_gate_rounds_cover_the_checks_and_the_soak(checks, soak, interval, rounds):
    assert rollout.gate_rounds(checks, soak, interval) == rounds


def test_each_stage_runs_the_command_a_person_would_run():
    command = rollout.pyinfra_command("inventory.py", "canary", dry=False, data=["tls_mode=letsencrypt"])
    assert command == [rollout.PYINFRA, "-y", "inventory.py", "deploy.py", "--limit", "canary",
                       "--data", "tls_mode=letsencrypt", "--config", str(CONFIG_FILE)]
    assert rollout.shown_command(command) == "pyinfra -y inventory.py deploy.py --limit canary --data tls_mode=letsencrypt"
    dry = rollout.pyinfra_command("inventory.py", "production", dry=True)
    assert "-y" not in dry and rollout.shown_command(dry) == "pyinfra --dry inventory.py deploy.py --limit production"


# --- pyinfra's output ------------------------------------------------------------------------------

# A deploy run by the real pyinfra on @local (harmless commands): per-host results come
# from pyinfra's state (aisha_infra.tools.pyinfra_report), never from the text it prints.
REAL_DEPLOY = """\
import os
from pyinfra import host
from pyinfra.api import FunctionCommand, operation
from pyinfra.operations import files, server
from aisha_infra.deploy.operations.letsencrypt import fail_host

@operation()
def failing_check():
    yield FunctionCommand(fail_host, ("HTTPS health check failed: answered HTTP 502: <html>\\r\\n<head><title>502 Bad "
                                      "Gateway</title></head>\\r\\n<body><center><h1>502 Bad Gateway</h1></center></body></html>",), {})

server.shell(name=f"Greet {host.name}", commands=["echo hello"])
files.directory(name="Keep the project folder", path=os.getcwd())
changed = server.shell(name="Change something", commands=["true"])
server.shell(name="Reload if it changed", commands=["true"], _if=changed.did_change)
if os.environ.get("FAIL") == "command":
    server.shell(name="Fail on purpose", commands=["echo out; echo oops-on-stderr >&2; false"])
if os.environ.get("FAIL") == "check":
    failing_check(name="Verify | HTTPS health")
server.shell(name="After the failure", commands=["true"])
"""


def run_real_pyinfra(folder: Path, *arguments: str, fail: str = "") -> PyinfraRun:
    (folder / "deploy.py").write_text(REAL_DEPLOY)
    pyinfra = Path(sys.executable).with_name("pyinfra")
    with pytest.MonkeyPatch.context() as patch:  # run_pyinfra hands its environment on
        patch.setenv("FAIL", fail)
        patch.chdir(folder)
        return rollout.run_pyinfra([str(pyinfra), *arguments, "deploy.py", "--config", str(CONFIG_FILE)],
                                   lambda line: None, timeout=120)


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("real-pyinfra")
    return {
        "ok": run_real_pyinfra(folder, "-y", "@local"),
        "command": run_real_pyinfra(folder, "-y", "@local", fail="command"),
        "check": run_real_pyinfra(folder, "-y", "@local", fail="check"),
        "dry": run_real_pyinfra(folder, "--dry", "@local"),
        "unreachable": run_real_pyinfra(folder, "-y", "127.0.0.1", "--data", "ssh_port=1",
                                        "--data", "ssh_connect_retries=0"),
    }


def test_per_host_changes_come_from_pyinfras_results(real_runs):
    run = real_runs["ok"]
    assert run.returncode == 0
    outcome = rollout.deploy_outcomes(run, ["@local"])["@local"]
    # greet, change, reload (its _if held) and "after" changed; the existing folder did not
    assert (outcome.changed, outcome.unchanged, outcome.failure) == (4, 1, None)
    assert rollout._deploy_column(outcome, dry=False) == "changed (4 of 5 ops)"


def test_a_failed_command_names_the_hosts_own_operation_and_its_output(real_runs):
    run = real_runs["command"]
    outcome = rollout.deploy_outcomes(run, ["@local"])["@local"]
    check, message = outcome.failure
    assert run.returncode == 1 and check == "deploy"
    assert message == "Fail on purpose: oops-on-stderr"  # what the command said on stderr
    assert rollout.why_stopped(run) == "No hosts remaining!"


def test_a_failed_check_says_why_once_with_html_reduced_to_its_status_line(real_runs):
    outcome = rollout.deploy_outcomes(real_runs["check"], ["@local"])["@local"]
    assert outcome.failure == ("deploy", "Verify | HTTPS health: HTTPS health check failed: answered HTTP 502: "
                                         "[HTML page: 502 Bad Gateway]")


def test_a_host_that_cannot_be_reached_fails_with_the_connection_error(real_runs):
    run = real_runs["unreachable"]
    outcome = rollout.deploy_outcomes(run, ["127.0.0.1"])["127.0.0.1"]
    assert run.returncode == 1 and outcome.failure[1].startswith("connection: Could not connect")
    assert "port 1" in outcome.failure[1] and outcome.changed is None


def test_a_pyinfra_run_that_ended_without_results_fails_every_host():
    outcomes = rollout.deploy_outcomes(PyinfraRun(3, None), ("web-1",))
    assert outcomes["web-1"].failure == ("deploy", "pyinfra stopped: pyinfra exited with status 3 (its output above says why)")
    stopped = PyinfraRun(1, {"error": "unsupported system; nothing was changed on any host.", "hosts": {}})
    assert rollout.deploy_outcomes(stopped, ("web-1",))["web-1"].failure[1] == \
        "pyinfra stopped: unsupported system; nothing was changed on any host."
    assert rollout.why_stopped(PyinfraRun(-9, None, timed_out=0.5)) == "stopped after 0.5 s without finishing"


def test_each_host_gets_its_own_name_of_an_operation_pyinfra_merged():
    from types import SimpleNamespace

    from pyinfra.api.operation import OperationMeta
    from pyinfra.api.state import StateOperationHostData, StateOperationMeta

    from aisha_infra.tools.pyinfra_report import _host_operation_name

    meta = StateOperationMeta((1,))
    meta.names.update({"TLS | Self-signed certificate for a.example", "TLS | Self-signed certificate for b.example"})
    state = SimpleNamespace(op_meta={"op": meta})

    def host_data(name):
        return StateOperationHostData(lambda: iter(()), {"name": name}, OperationMeta("op", None))

    assert _host_operation_name(state, None, "op", host_data("Self-signed certificate for b.example")) == \
        "TLS | Self-signed certificate for b.example"
    unnamed = StateOperationMeta((2,))
    unnamed.names.add("Nginx | files.put")  # pyinfra's name for an operation without name=
    auto = StateOperationHostData(lambda: iter(()), {}, OperationMeta("put", None))
    assert _host_operation_name(SimpleNamespace(op_meta={"put": unnamed}), None, "put", auto) == "Nginx | files.put"


def test_dry_run_lists_what_would_change_per_host(real_runs):
    run = real_runs["dry"]
    outcome = rollout.dry_outcomes(run, ["@local"])["@local"]
    assert run.returncode == 0 and outcome.failure is None
    assert outcome.would_change == ["Greet @local", "Change something", "After the failure"]
    assert outcome.may_change == ["Reload if it changed"]

    failed = rollout.dry_outcomes(PyinfraRun(1, {"error": "web-3: invalid configuration", "hosts": {}}), ("web-3",))
    assert failed["web-3"].failure == ("plan", "pyinfra stopped: web-3: invalid configuration")


def test_pyinfra_progress_is_echoed_while_it_runs(tmp_path):
    script = tmp_path / "fake.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys
        print("--> Starting operation: One", file=sys.stderr, flush=True)
        print("    [web-1] \\033[32mSuccess\\033[0m", flush=True)
        open(os.environ["{REPORT_ENV}"], "w").write(json.dumps({{"error": None, "hosts": {{}}}}))
    """))
    seen = []
    run = rollout.run_pyinfra([sys.executable, str(script)], seen.append)
    assert run.returncode == 0 and run.report == {"error": None, "hosts": {}}
    assert seen == ["  --> Starting operation: One", "      [web-1] Success"]


def test_a_stuck_pyinfra_is_stopped(tmp_path):
    run = rollout.run_pyinfra([sys.executable, "-c", "import time; time.sleep(30)"], lambda line: None, timeout=0.5)
    assert run.returncode != 0 and rollout.why_stopped(run) == "stopped after 0.5 s without finishing"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ('answered HTTP 502: <html>\\r\\n<head><title>502 Bad Gateway</title></head>\\r\\n<body>...</body></html>',
         "answered HTTP 502: [HTML page: 502 Bad Gateway]"),
        ("answered HTTP 404: <!DOCTYPE html><p>nothing</p>", "answered HTTP 404: [HTML page]"),
        ("line one\n  line two", "line one line two"),
        ("x" * 500, "x" * (rollout.BRIEF_CHARACTERS - 3) + "..."),
    ],
)
def test_failures_are_brief(text, shown):
    assert rollout.brief(text) == shown


# --- the gate ----------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def targets(*names):
    """Targets whose address is their name, so a fake check knows who it checks."""
    return [GateTarget(name, name, DOMAIN, 8443, None) for name in names]


def scripted(answers: dict[str, list[bool]]):
    """A check answering per host from a script: True passes, False fails."""
    calls: list[str] = []

    def check(name, domain, port, ca_bundle):
        calls.append(name)
        ok = answers[name][sum(c == name for c in calls) - 1]
        return ok, f"{name} {'healthy' if ok else 'answered HTTP 502'}"

    check.calls = calls
    return check


def test_gate_passes_hosts_that_pass_every_check_then_posts_a_webhook():
    outcomes = {n: HostOutcome(n) for n in ("a", "b")}
    clock, lines = FakeClock(), []
    health_check = scripted({"a": [True] * 4, "b": [True] * 4})
    webhook = scripted({"a": [True], "b": [True]})
    rollout.run_gate(targets("a", "b"), outcomes, 4, 10, 0, lines.append,
                     check_health=health_check, check_webhook=webhook, sleep=clock.sleep, clock=clock)
    assert [(o.health_passes, o.webhook_ok, o.failure) for o in outcomes.values()] == [(4, True, None)] * 2
    assert clock.sleeps == [10, 10, 10] and clock.now == 130  # checks at t+0, 10, 20, 30
    assert "health check 4/4: 2/2 host(s) healthy (t+30 s)" in "\n".join(lines)
    assert sorted(webhook.calls) == ["a", "b"]


def test_a_failed_check_fails_the_host_and_stops_a_gate_without_tolerance():
    outcomes = {n: HostOutcome(n) for n in ("a", "b")}
    clock, lines = FakeClock(), []
    health_check = scripted({"a": [True, False, True], "b": [True, True, True]})
    webhook = scripted({"a": [True], "b": [True]})
    rollout.run_gate(targets("a", "b"), outcomes, 3, 5, 0, lines.append,
                     check_health=health_check, check_webhook=webhook, sleep=clock.sleep, clock=clock)
    assert outcomes["a"].failure == ("https-health", "a answered HTTP 502")
    assert outcomes["a"].health_passes == 1
    assert health_check.calls.count("b") == 2  # stopped after the round that failed
    assert webhook.calls == [] and not outcomes["b"].webhook_ok
    assert "  a: health check 2 FAILED (why: in the summary)" in lines  # the summary says why, once
    assert "gate stopped: more hosts failed than the stage tolerates" in "\n".join(lines)


def test_a_tolerated_failure_drops_the_host_and_the_others_go_on():
    outcomes = {n: HostOutcome(n) for n in ("a", "b", "c")}
    clock = FakeClock()
    health_check = scripted({"a": [False], "b": [True] * 3, "c": [True] * 3})
    webhook = scripted({"b": [True], "c": [False]})
    rollout.run_gate(targets("a", "b", "c"), outcomes, 3, 1, 1, lambda line: None,
                     check_health=health_check, check_webhook=webhook, sleep=clock.sleep, clock=clock)
    assert health_check.calls.count("a") == 1  # never checked again
    assert outcomes["b"].webhook_ok and outcomes["b"].health_passes == 3
    assert outcomes["c"].failure == ("webhook-post", "c answered HTTP 502")


def test_late_checks_do_not_sleep_to_catch_up():
    clock = FakeClock()

    def slow(address, domain, port, ca_bundle):
        clock.now += 7  # each check takes longer than the interval
        return True, "healthy"

    outcomes = {"a": HostOutcome("a")}
    rollout.run_gate(targets("a"), outcomes, 3, 5, 0, lambda line: None,
                     check_health=slow, check_webhook=slow, sleep=clock.sleep, clock=clock)
    assert clock.sleeps == [0.0, 0.0] and outcomes["a"].health_passes == 3


def settings_of(**data):
    return build_settings({"aisha_domain": DOMAIN, **data})


def test_self_signed_hosts_are_checked_against_their_own_deployed_certificate(tmp_path, pki):
    fetched = []

    def fetch(name, data, path):
        fetched.append((name, path))
        return pki.cases["self_signed"].chain.read_text()

    data = {"ssh_hostname": "198.18.7.2"}
    target = rollout.gate_target("web-1", data, settings_of(), tmp_path, fetch)
    assert fetched == [("web-1", "/opt/aisha-backend/ssl/aibots_test.crt")]
    assert (target.address, target.domain, target.port) == ("198.18.7.2", DOMAIN, 8443)
    assert Path(target.ca_bundle).read_text() == pki.cases["self_signed"].chain.read_text()

    with pytest.raises(OSError, match="holds no PEM certificate"):
        rollout.gate_target("web-1", data, settings_of(), tmp_path, lambda *a: "")


def test_letsencrypt_hosts_use_the_system_store_or_the_configured_bundle(tmp_path, pki):
    def no_fetch(*args):
        raise AssertionError("nothing to fetch")

    letsencrypt = settings_of(tls_mode="letsencrypt", letsencrypt_email="ops@example.com", verify_address="203.0.113.9")
    target = rollout.gate_target("web-1", {"ssh_hostname": "198.18.7.2"}, letsencrypt, tmp_path, no_fetch)
    assert (target.address, target.ca_bundle) == ("203.0.113.9", None)

    bundle = settings_of(verify_ca_bundle=str(pki.root), nginx_https_port=443)
    target = rollout.gate_target("web-1.example.com", {}, bundle, tmp_path, no_fetch)
    assert (target.address, target.port, target.ca_bundle) == ("web-1.example.com", 443, str(pki.root))


def test_gate_checks_real_https_on_loopback(tmp_path, pki):
    case = pki.cases["self_signed"]
    with LocalTLSServer(case.chain, case.key) as server:
        target = GateTarget("web-1", "127.0.0.1", DOMAIN, server.port, str(case.chain))
        outcomes = {"web-1": HostOutcome("web-1")}
        rollout.run_gate([target], outcomes, 2, 0, 0, lambda line: None)
        assert outcomes["web-1"].webhook_ok and outcomes["web-1"].health_passes == 2
        assert server.posted[0]["body"]["request_id"].startswith("aisha-probe-")

        server.set_health(200, {"status": "starting"})  # not the exact JSON
        outcomes = {"web-1": HostOutcome("web-1")}
        rollout.run_gate([target], outcomes, 2, 0, 0, lambda line: None)
        assert outcomes["web-1"].failure[0] == "https-health" and '"status": "healthy"' in outcomes["web-1"].failure[1]

    with LocalTLSServer(case.chain, case.key) as server:
        untrusted = GateTarget("web-1", "127.0.0.1", DOMAIN, server.port, str(pki.root))
        outcomes = {"web-1": HostOutcome("web-1")}
        rollout.run_gate([untrusted], outcomes, 1, 0, 0, lambda line: None)
        assert outcomes["web-1"].failure[0] == "https-health"  # verification is on


# --- whole rollouts, with a stand-in for pyinfra ----------------------------------------------------

FAKE_PYINFRA = """\
#!{python}
# Stands in for pyinfra: logs its arguments, prints progress and writes per-host results
# as pyinfra_report does (checked against the real pyinfra above).
import json, os, sys
args = sys.argv[1:]
stage = args[args.index("--limit") + 1]
with open(os.environ["FAKE_PYINFRA_LOG"], "a") as log:
    log.write(" ".join(args[:args.index("--config")]) + "\\n")
hosts = json.loads(os.environ["FAKE_PYINFRA_HOSTS"])[stage]  # host -> changed/unchanged/error
words = {{"changed": "Success", "unchanged": "No changes", "error": "Error: executed 0 commands"}}
print("--> Starting operation: App | Render aisha-api.service", file=sys.stderr)
for host, what in hosts.items():
    print(f"    [{{host}}] {{words[what]}}", file=sys.stderr)
dry = "--dry" in args
statuses = {{"changed": "changed", "unchanged": "no change", "error": "error"}}
report = {{"error": None, "hosts": {{host: {{
    "failed": what == "error" and not dry, "connect_error": None,
    "operations": [{{"name": f"App | Render aisha-api.service for {{host}}",
                    "status": "not run" if dry else statuses[what],
                    "change": ("yes" if what == "changed" else "no") if dry else None,
                    "error": "Error: executed 0 commands" if what == "error" and not dry else None}}]}}
    for host, what in hosts.items()}}}}
with open(os.environ["{report_env}"], "w") as out:
    json.dump(report, out)
sys.exit(1 if "error" in hosts.values() and not dry else 0)
"""


class Project:
    """A project directory with an inventory of hosts served by local HTTPS servers."""

    def __init__(self, path: Path, pki, monkeypatch):
        self.path, self.pki = path, pki
        self.log = path / "pyinfra.log"
        self.servers: dict[str, LocalTLSServer] = {}
        fake = path / "pyinfra"
        fake.write_text(FAKE_PYINFRA.format(python=sys.executable, report_env=REPORT_ENV))
        fake.chmod(0o755)
        (path / "deploy.py").write_text("")
        monkeypatch.chdir(path)
        monkeypatch.setattr(rollout, "PYINFRA", str(fake))
        monkeypatch.setenv("FAKE_PYINFRA_LOG", str(self.log))

    def hosts(self, monkeypatch, groups: dict[str, dict[str, str]], **extra_data):
        """groups: {group: {host: what its deploy does}}; each host gets a healthy server."""
        case = self.pki.cases["good"]
        lines = []
        for group, hosts in groups.items():
            members = []
            for name in hosts:
                server = self.servers[name] = LocalTLSServer(case.chain, case.key).__enter__()
                data = {"aisha_domain": DOMAIN, "verify_address": "127.0.0.1", "nginx_https_port": server.port,
                        "verify_ca_bundle": str(self.pki.root), **extra_data}
                members.append((name, data))
            lines.append(f"{group} = {members!r}")
        (self.path / "inventory.py").write_text("\n".join(lines) + "\n")
        monkeypatch.setenv("FAKE_PYINFRA_HOSTS", json.dumps(groups))

    def runs(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def close(self):
        for server in self.servers.values():
            server.__exit__(None, None, None)


@pytest.fixture
def project(tmp_path, pki, monkeypatch):
    made = Project(tmp_path, pki, monkeypatch)
    yield made
    made.close()


FAST = ["--soak", "0", "--checks", "2", "--interval", "0"]


def test_stages_run_in_order_and_the_summary_says_what_changed(project, monkeypatch, capsys):
    project.hosts(monkeypatch, {"canary": {"c-1": "changed"}, "production": {"p-1": "unchanged", "p-2": "changed"}})
    assert cli.main(["rollout", *FAST]) == 0
    assert project.runs() == [
        "-y inventory.py deploy.py --limit canary",
        "-y inventory.py deploy.py --limit production",
    ]
    out = capsys.readouterr().out
    assert out.index("==> Stage 1/2: canary (c-1)") < out.index("[c-1] Success") < out.index("==> Stage 2/2: production")
    summary = out[out.index("==> Summary"):]
    assert "canary: passed in" in summary and "production: passed in" in summary
    assert "c-1  changed (1 of 1 ops)" in summary
    assert "p-1  unchanged (1 ops)" in summary
    assert "gate passed (2 health checks, webhook POST)" in summary
    assert "Rollout complete" in summary
    assert all(len(server.posted) == 1 for server in project.servers.values())


def test_an_unhealthy_canary_stops_the_rollout_before_production(project, monkeypatch, capsys):
    project.hosts(monkeypatch, {"canary": {"c-1": "changed"}, "production": {"p-1": "changed"}})
    project.servers["c-1"].set_health(503, {"error": "starting"})
    assert cli.main(["rollout", *FAST]) == 1
    assert project.runs() == ["-y inventory.py deploy.py --limit canary"]
    out = capsys.readouterr().out
    assert out.count("GET https://aibots.test:") == 1  # the failure, once: in the summary
    assert "c-1: health check 1 FAILED (why: in the summary)" in out
    assert "    https-health: GET https://aibots.test:" in out
    assert "p-1  not started" in out
    assert out.rstrip().splitlines()[-1].startswith("Rollout STOPPED at stage canary (c-1 failed https-health) after ")
    assert out.rstrip().endswith("; untouched: production.")
    assert project.servers["p-1"].posted == []


def test_a_failed_deploy_stops_the_rollout_and_names_the_host(project, monkeypatch, capsys):
    project.hosts(monkeypatch, {"canary": {"c-1": "error"}, "production": {"p-1": "changed"}})
    assert cli.main(["rollout", *FAST]) == 1
    out = capsys.readouterr().out
    assert out.count("Error: executed 0 commands") == 2  # pyinfra's own line, then the summary's, once
    assert "deploy: App | Render aisha-api.service for c-1: Error: executed 0 commands" in out
    assert project.runs() == ["-y inventory.py deploy.py --limit canary"]
    assert project.servers["c-1"].posted == []  # no gate for a host whose deploy failed


def test_fail_percent_lets_a_large_stage_go_on(project, monkeypatch, capsys):
    production = {f"p-{i}": "changed" for i in range(1, 5)}
    production["p-4"] = "error"
    project.hosts(monkeypatch, {"canary": {"c-1": "changed"}, "production": production, "late": {"l-1": "changed"}})
    project.servers["p-3"].set_health(502, {})

    assert cli.main(["rollout", "--stages", "canary,production,late", *FAST, "--fail-percent", "50"]) == 0
    out = capsys.readouterr().out
    assert "production: passed with 2 failed host(s) tolerated (--fail-percent 50)" in out
    assert len(project.runs()) == 3
    last = out.rstrip().splitlines()[-1]
    assert "every stage passed its gate" not in out
    assert last.endswith("with 2 failed host(s) tolerated by --fail-percent 50: p-3 (https-health), p-4 (deploy).")

    capsys.readouterr()
    project.log.unlink()
    assert cli.main(["rollout", "--stages", "canary,production,late", *FAST, "--fail-percent", "25"]) == 1
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1].startswith("Rollout STOPPED at stage production (p-3 failed https-health, p-4 failed deploy)")
    assert out.rstrip().endswith("untouched: late.")
    assert [r.split("--limit ")[1] for r in project.runs()] == ["canary", "production"]


def test_dry_run_plans_every_stage_and_changes_nothing(project, monkeypatch, capsys):
    project.hosts(monkeypatch, {"canary": {"c-1": "changed"}, "production": {"p-1": "unchanged"}})
    assert cli.main(["rollout", "--dry"]) == 0
    assert project.runs() == [
        "--dry inventory.py deploy.py --limit canary",
        "--dry inventory.py deploy.py --limit production",
    ]
    out = capsys.readouterr().out
    assert "Summary (dry run: nothing was changed)" in out
    assert "c-1  would change 1 op(s)" in out and "~ App | Render aisha-api.service for c-1" in out
    assert "for p-1" not in out  # each host's plan names its own operations
    assert "p-1  no changes" in out
    assert all(server.posted == [] for server in project.servers.values())


def test_stage_with_no_hosts_is_skipped(project, monkeypatch, capsys):
    project.hosts(monkeypatch, {"canary": {}, "production": {"p-1": "unchanged"}})
    assert cli.main(["rollout", *FAST]) == 0
    assert project.runs() == ["-y inventory.py deploy.py --limit production"]
    assert "canary: no hosts, skipped" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--fail-percent", "100"], "--fail-percent must be from 0 to below 100"),
        (["--checks", "0"], "--checks must be at least 1"),
        (["--soak", "30", "--interval", "0"], "--soak needs an --interval above 0"),
        (["--stages", "canary,staging"], "no inventory group named staging"),
        (["--inventory", "missing.py"], "the inventory missing.py does not exist"),
    ],
)
def test_bad_arguments_exit_2_before_anything_runs(project, monkeypatch, capsys, arguments, message):
    project.hosts(monkeypatch, {"canary": {"c-1": "changed"}, "production": {}})
    assert cli.main(["rollout", *arguments]) == 2
    assert message in capsys.readouterr().err
    assert project.runs() == []


def test_invalid_settings_of_any_staged_host_exit_2_before_anything_runs(project, monkeypatch, capsys):
    project.hosts(monkeypatch, {"canary": {"c-1": "changed"}, "production": {"p-1": "changed"}}, nginx_htps_port=1)
    assert cli.main(["rollout", *FAST]) == 2
    err = capsys.readouterr().err
    assert "c-1: invalid configuration" in err and "nginx_htps_port" in err
    assert project.runs() == []


def test_must_run_in_the_project_directory(project, monkeypatch, capsys):
    project.hosts(monkeypatch, {"canary": {"c-1": "changed"}, "production": {}})
    (project.path / "deploy.py").unlink()
    assert cli.main(["rollout"]) == 2
    assert "run the rollout from the project directory" in capsys.readouterr().err


@pytest.mark.parametrize(("seconds", "shown"), [(6.34, "6.3 s"), (119.6, "119.6 s"), (176.7, "2 min 57 s"), (179.6, "3 min 0 s")])
def test_durations_read_naturally(seconds, shown):
    assert rollout._seconds(seconds) == shown


# --- automatic rollback of a failed stage ----------------------------------------------------

def test_hosts_switched_to_a_new_release_come_from_pyinfras_results():
    def host(*operations):
        return {"failed": False, "connect_error": None,
                "operations": [{"name": name, "status": status, "change": None, "error": None} for name, status in operations]}

    release = "App | Serve release 0123456789ab (back to the old one if it does not start)"
    report = {"error": None, "hosts": {
        "web-1": host((release, "changed")),
        "web-2": host((release, "no change")),
        "web-3": host(("Nginx | Render the webhook site", "changed")),
    }}
    assert rollout.switched_release(PyinfraRun(0, report)) == {"web-1"}
    assert rollout.switched_release(PyinfraRun(1, None)) == set()


def failed_stage(new_release: bool) -> rollout.StageResult:
    result = rollout.StageResult(Stage("canary", ("web-1",)), status="failed")
    result.hosts = {"web-1": HostOutcome("web-1", failure=("webhook-post", "answered 413"), new_release=new_release)}
    return result


def test_a_failed_host_on_a_new_release_is_rolled_back_and_the_summary_says_so(monkeypatch):
    calls = []
    monkeypatch.setattr("aisha_infra.tools.rollback.roll_back", lambda inventory, hosts, echo, data: calls.append(hosts) or True)
    result = failed_stage(new_release=True)
    later = rollout.StageResult(Stage("production", ("web-2",)))
    rollout.roll_back_stage(result, rollout.Options("inventory.py", 1, 1, 0), print)
    assert calls == [["web-1"]] and result.rolled_back == ["web-1"]
    summary = rollout.render_summary([result, later], dry=False, total_seconds=1)
    assert "untouched: production; rolled back: web-1." in summary


def test_a_host_whose_new_release_never_served_is_not_rolled_back_twice(monkeypatch):
    monkeypatch.setattr("aisha_infra.tools.rollback.roll_back", lambda *args: pytest.fail("rolled back"))
    lines = []
    result = failed_stage(new_release=False)
    rollout.roll_back_stage(result, rollout.Options("inventory.py", 1, 1, 0), lines.append)
    assert "nothing to roll back" in lines[0] and result.rolled_back == []


def test_rollback_runs_pyinfra_with_the_rollback_deploy_per_limit():
    from aisha_infra.tools.rollback import rollback_command

    command = rollback_command("inventory.py", ["canary", "web-9"], ["aisha_base_dir=/srv/aisha"])
    assert command[1:] == ["-y", "inventory.py", "rollback.py", "--data", "aisha_base_dir=/srv/aisha",
                           "--limit", "canary", "--limit", "web-9", "--config", str(CONFIG_FILE)]
    assert cli.build_parser().parse_args(["rollout", "--no-rollback"]).rollback is False
    assert cli.build_parser().parse_args(["rollout"]).rollback is True
