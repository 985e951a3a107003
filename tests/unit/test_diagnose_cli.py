"""`aisha-infra diagnose` end to end against local TLS servers: exit status, the
human table, --json, and hosts from a pyinfra inventory."""

from __future__ import annotations

import json

import pytest

from aisha_infra import cli
from aisha_infra.tools.diagnose import diagnosis, dns_and_ports, output, targets
from aisha_infra.checks.findings import Finding

from .tlscases import DOMAIN, build_pki
from .tlsserver import LocalTLSServer


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return build_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def no_dns(monkeypatch):
    """Tests never ask a DNS server: the lab name resolves to loopback only."""
    monkeypatch.setattr(dns_and_ports, "resolve_addresses", lambda domain: ["127.0.0.1"])


def serve(pki, name):
    case = pki.cases[name]
    return LocalTLSServer(case.chain, case.key)


def test_good_chain_exits_0_with_json_findings(pki, capsys):
    with serve(pki, "good") as server:
        status = cli.main(
            ["diagnose", f"https://{DOMAIN}:{server.port}", "--address", "127.0.0.1", "--ca-bundle", str(pki.root), "--json"]
        )

    result = json.loads(capsys.readouterr().out)
    assert status == 0 and result["ok"] is True
    [target] = result["targets"]
    assert (target["domain"], target["address"], target["port"]) == (DOMAIN, "127.0.0.1", server.port)
    assert [c["subject"] for c in target["chain"]] == [
        f"CN={DOMAIN},O=Aisha Test PKI",
        "CN=Aisha Test Intermediate,O=Aisha Test PKI",
    ]
    checks = {f["check"]: f["severity"] for f in target["findings"]}
    assert checks["tls.trust"] == checks["http.health"] == checks["http.webhook"] == "ok"
    assert all(set(f) == {"check", "severity", "message", "fix"} for f in target["findings"])


def test_broken_chain_exits_1_with_a_plain_table_and_the_fix(pki, capsys):
    with serve(pki, "leaf_only") as server:
        status = cli.main(["diagnose", f"https://{DOMAIN}:{server.port}", "--address", "127.0.0.1", "--ca-bundle", str(pki.root)])

    out = capsys.readouterr().out
    assert status == 1
    assert "\033[" not in out  # no colour when stdout is not a terminal
    assert "error  tls.incomplete_chain" in out
    assert f"fix: Serve the full chain: in the nginx site set `ssl_certificate /etc/letsencrypt/live/{DOMAIN}/fullchain.pem;`" in " ".join(out.split())
    assert "certificates sent (TLSv1.3), in order:" in out


def test_port_defaults_to_8443_and_url_port_wins(pki):
    parser = cli.build_parser()

    [from_url] = targets.targets_from_args(parser.parse_args(["diagnose", "https://a.example:9443"]))
    [default] = targets.targets_from_args(parser.parse_args(["diagnose", "a.example"]))
    [explicit] = targets.targets_from_args(parser.parse_args(["diagnose", "https://a.example:9443", "--port", "7443"]))

    assert (from_url.domain, from_url.port) == ("a.example", 9443)
    assert default.port == 8443
    assert explicit.port == 7443
    assert from_url.ssh is None  # host-side checks only when asked for


def test_colour_per_severity_on_a_terminal():
    report = diagnosis.Report(
        diagnosis.Target(DOMAIN),
        findings=[Finding("a", "ok", "fine"), Finding("b", "warn", "hm", "do x"), Finding("c", "error", "bad", "do y")],
    )

    text = output.render_text([report], colour=True)

    assert "\033[32mok" in text and "\033[33mwarn" in text and "\033[31merror" in text
    assert "=> 1 error(s), 1 warning(s)" in text


def test_no_target_is_a_usage_error(capsys):
    assert cli.main(["diagnose"]) == 2
    assert "give a URL" in capsys.readouterr().err


def test_inventory_hosts_with_their_data(pki, tmp_path, monkeypatch, capsys):
    ssh_calls = []

    def fake_ssh_runner(ssh, timeout=20):
        ssh_calls.append((ssh.hostname, ssh.user, ssh.key, ssh.port, ssh.sudo))
        return lambda command: (255, "", f"{ssh.user}@{ssh.hostname}: Permission denied (publickey).")

    monkeypatch.setattr(targets, "ssh_runner", fake_ssh_runner)
    with serve(pki, "self_signed") as server:
        inventory = tmp_path / "inventory.py"
        inventory.write_text(
            "canary = [\n"
            f"    ('lab-1', {{'ssh_hostname': '127.0.0.1', 'aisha_domain': '{DOMAIN}',\n"
            f"               'nginx_https_port': {server.port}, 'ssh_key': '/keys/lab', 'ssh_user': 'root'}}),\n"
            "]\n"
        )
        status = cli.main(["diagnose", "--inventory", str(inventory), "--json"])

    result = json.loads(capsys.readouterr().out)
    [target] = result["targets"]
    assert (target["name"], target["address"], target["port"]) == ("lab-1", "127.0.0.1", server.port)
    assert ssh_calls == [("127.0.0.1", "root", "/keys/lab", None, False)]
    severities = {f["check"]: f["severity"] for f in target["findings"]}
    # The project's default tls_mode is self-signed: expected, so only a warning...
    assert severities["tls.self_signed"] == "warn"
    # ...but SSH did not let us in, which is an error.
    assert severities["ssh"] == "error" and status == 1
