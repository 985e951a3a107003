"""Served certificate = configured certificate: the fact read with real openssl against a
real TLS server, the repair it leads to, the renewal hook and its retry units, and the
summary line at the end of a run."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from aisha_infra.deploy import paths, rendering
from aisha_infra.deploy.facts import tls as tls_facts
from aisha_infra.deploy.facts.tls import ServedCertificate
from aisha_infra.deploy.operations import verify
from aisha_infra.deploy.settings import build_settings
from tests.unit.certfactory import make_self_signed, write_pem
from tests.unit.fakehost import run_operation
from tests.unit.tlsserver import LocalTLSServer


def read_fact(port: int, config: Path):
    fact = ServedCertificate()
    result = subprocess.run(["sh", "-c", fact.command(port, "aibots.test", str(config))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return fact.process(result.stdout.splitlines())


@pytest.fixture
def certificates(tmp_path):
    """Two self-signed pairs (old, new) and a snippet naming the new one."""
    paths = {}
    for label in ("old", "new"):
        issued = make_self_signed()
        paths[label] = (write_pem(tmp_path / f"{label}.crt", issued.pem), write_pem(tmp_path / f"{label}.key", issued.key_pem))
    snippet = tmp_path / "snippet.conf"
    snippet.write_text(rendering.render("nginx/aisha-webhook-certificate.conf.j2", rendering.certificate_snippet_context(
        str(paths["new"][0]), str(paths["new"][1]), "test")))
    return paths, snippet


def test_fact_sees_the_configured_certificate_served(certificates):
    paths, snippet = certificates
    with LocalTLSServer(*paths["new"]) as server:
        state = read_fact(server.port, snippet)
    assert state["path"] == str(paths["new"][0]) and state["served"] == state["configured"]
    assert len(state["served"].split(":")) == 32  # a SHA-256 fingerprint
    by_openssl = subprocess.run(["openssl", "x509", "-in", str(paths["new"][0]), "-noout", "-fingerprint", "-sha256"],
                                capture_output=True, text=True, check=True).stdout
    assert state["configured"] == by_openssl.strip().split("=", 1)[1]  # as openssl prints it


def test_fact_sees_an_old_certificate_still_served(certificates, monkeypatch):
    monkeypatch.setattr(tls_facts, "SERVED_SETTLE_TRIES", 1)
    paths, snippet = certificates
    with LocalTLSServer(*paths["old"]) as server:
        state = read_fact(server.port, snippet)
    assert state["served"] != state["configured"]


def test_the_prefetched_read_keeps_only_the_configured_certificate_served(certificates, monkeypatch):
    """The prefetch's read (settle=False) does not wait for nginx to hand over: an old or
    missing certificate exits 3, and the fact is read again, settling, when verify asks."""
    monkeypatch.setattr(tls_facts, "SERVED_SETTLE_INTERVAL", 30)  # a wait would show
    paths, snippet = certificates
    fact = ServedCertificate()
    arguments = {**ServedCertificate.prefetch_arguments, "port": 0, "domain": "aibots.test", "config": str(snippet)}

    def prefetched(port: int) -> subprocess.CompletedProcess:
        command = fact.command(**{**arguments, "port": port})
        return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=20)

    with LocalTLSServer(*paths["new"]) as server:
        served = prefetched(server.port)
        port = server.port
    assert served.returncode == 0
    state = fact.process(served.stdout.splitlines())
    assert state["path"] == str(paths["new"][0]) and state["served"] == state["configured"]
    with LocalTLSServer(*paths["old"]) as server:
        old = prefetched(server.port)
    assert (old.returncode, old.stdout) == (3, "")
    nothing = prefetched(port)  # the server is gone
    assert (nothing.returncode, nothing.stdout) == (3, "")


def test_fact_is_none_when_nothing_is_served_or_named(certificates, tmp_path):
    paths, snippet = certificates
    with LocalTLSServer(*paths["new"]) as server:
        port = server.port
        assert read_fact(port, tmp_path / "missing.conf") is None
    assert read_fact(port, snippet) is None  # the server is gone


def repair(state):
    return run_operation(verify.serves_configured_certificate, {ServedCertificate: state},
                         port=8443, domain="aibots.test", config="/etc/nginx/snippets/x.conf")


def test_a_stale_certificate_is_repaired_by_a_tested_reload():
    commands, _ = repair({"path": "/etc/letsencrypt/live/aibots.test/fullchain.pem", "configured": "AA:01", "served": "BB:02"})
    assert commands == ["nginx -t -q && systemctl reload nginx.service"]


@pytest.mark.parametrize("state", [{"path": "/c.pem", "configured": "AA:01", "served": "AA:01"}, None])
def test_nothing_to_repair(state):
    commands, noops = repair(state)
    assert commands == [] and noops


@pytest.fixture
def hook(tmp_path):
    """The rendered renewal hook, with stub nginx and systemctl that record their calls."""
    bin_dir, flag = tmp_path / "bin", tmp_path / "reload-pending"
    bin_dir.mkdir()
    for tool in ("nginx", "systemctl"):
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> {tmp_path}/calls\n'
                        f'[ "{tool}" != nginx ] || [ ! -e {tmp_path}/nginx-broken ]\n')
        stub.chmod(0o755)
    context = {**rendering.renewal_hook_context(build_settings({"aisha_domain": "aibots.test"})),
               "reload_pending_flag": str(flag)}
    script = tmp_path / "hook.sh"
    script.write_text(rendering.render("letsencrypt/aisha-reload-nginx.sh.j2", context))

    def run(broken: bool):
        (tmp_path / "nginx-broken").unlink(missing_ok=True)
        if broken:
            (tmp_path / "nginx-broken").touch()
        (tmp_path / "calls").unlink(missing_ok=True)
        result = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=30,
                                env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
        calls = (tmp_path / "calls").read_text().splitlines()
        return result, calls, flag.exists()

    return run


def test_renewal_hook_refuses_a_broken_config_and_leaves_the_retry_flag(hook):
    result, calls, flagged = hook(broken=True)
    assert result.returncode == 1 and calls == ["nginx -t -q"] and flagged
    assert "aisha-nginx-reload-retry.timer" in result.stderr


def test_renewal_hook_reloads_and_clears_the_flag(hook):
    hook(broken=True)
    result, calls, flagged = hook(broken=False)
    assert result.returncode == 0 and calls == ["nginx -t -q", "systemctl reload nginx.service"] and not flagged


def test_retry_units_pass_systemd_analyze_verify(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    context = rendering.renewal_hook_context(build_settings({"aisha_domain": "aibots.test"}))
    units = []
    for dest in (paths.RELOAD_RETRY_SERVICE_PATH, paths.RELOAD_RETRY_TIMER_PATH):
        unit = tmp_path / Path(dest).name
        unit.write_text(rendering.render(f"systemd/{unit.name}.j2", context))
        units.append(str(unit))
    service = Path(units[0]).read_text()
    assert f"ConditionPathExists={paths.RELOAD_PENDING_FLAG}" in service
    assert f"nginx -t -q && systemctl reload nginx.service && rm -f {paths.RELOAD_PENDING_FLAG}" in service
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *units], capture_output=True, text=True)
    ours = [line for line in result.stderr.splitlines() if "aisha-nginx-reload-retry" in line]
    assert result.returncode == 0 and not ours, result.stderr


URL = "https://aibots.test:8443/api/v1/avatar/status_update"


def test_summary_line_says_what_fal_will_see():
    summary = verify.HostSummary(URL, tls="OK", issuer="CN=Pebble Intermediate", days_left=89, health="OK")
    assert summary.line("web-1", failed=False) == (
        f"[web-1] TLS OK | issuer CN=Pebble Intermediate | 89 days left | health OK | give fal: {URL}")
    early = verify.HostSummary(URL).line("web-2", failed=True)
    assert "TLS NOT VERIFIED" in early and "the run failed on this host before the check" in early
    assert "health not checked (verify_enabled=False)" in verify.HostSummary(URL).line("web-3", failed=False)


class FakeState:
    def __init__(self, failed=(), is_executing=True):
        self.failed_hosts, self.is_executing = {NamedHost(name) for name in failed}, is_executing


class NamedHost:
    def __init__(self, name):
        self.name = name


def test_summaries_are_printed_at_the_end_of_a_run(caplog, monkeypatch):
    monkeypatch.setattr(verify, "SUMMARIES", {
        "web-1": verify.HostSummary(URL, tls="OK", issuer="CN=R11", days_left=80, health="OK"),
        "web-2": verify.HostSummary(URL, tls="DEGRADED (self-signed: Let's Encrypt issuance failed)", health="OK"),
        "web-3": verify.HostSummary(URL),
    })
    with caplog.at_level(logging.INFO, logger="pyinfra"):
        verify.print_summaries(FakeState(failed=["web-2", "web-3"]))
        verify.print_summaries(FakeState(is_executing=False))  # --dry: nothing to say
    lines = [r.getMessage() for r in caplog.records]
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.ERROR, logging.ERROR]
    assert lines[0] == f"aisha-infra summary [web-1] TLS OK | issuer CN=R11 | 80 days left | health OK | give fal: {URL}"
    assert lines[1].startswith("aisha-infra summary [web-2] TLS DEGRADED") and "health OK" in lines[1]
    assert "health not checked (the run failed" in lines[2]
