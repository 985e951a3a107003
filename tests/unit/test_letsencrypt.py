"""certbot failures told apart in plain words (from certbot's real output); issuance only
when needed; certbot runs through the connection exactly as the operation says (_sudo ...)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from pyinfra.api import FunctionCommand, StringCommand
from pyinfra.connectors.util import make_unix_command
from pyinfra.context import ctx_host
from pyinfra.facts.hardware import Ipv4Addrs, Ipv6Addrs

from aisha_infra.deploy.facts.tls import CertificateState
from aisha_infra.deploy.operations import letsencrypt
from aisha_infra.deploy.operations.letsencrypt import certificate_problem, explain_failure
from aisha_infra.deploy.settings import SettingsError, build_settings
from tests.unit.fakehost import FakeHost

NAMES = ["aibots.test", "www.aibots.test"]
SERVER = "https://acme.example/dir"
FIXTURES = Path(__file__).parent / "fixtures" / "certbot"
LAB_HOST = ["198.18.3.2"]  # the lab host the fixtures were captured on

# fixture -> words of its own explanation, found in no other
EXPLAINED = {
    "name-not-resolving.txt": "does not resolve (no A/AAAA record)",
    "name-resolves-elsewhere.txt": "points at 198.18.3.1, which is not this host (198.18.3.2)",
    "port-80-blocked.txt": "could not reach http://aibots.test/.well-known/acme-challenge/ on port 80 at 198.18.3.2",
    "acme-server-unreachable.txt": "could not talk to the ACME server https://acme.example/dir",
    "rate-limited.txt": "rate limit was hit",
    "caa.txt": "CAA record for aibots.test, www.aibots.test forbids",
}


def test_every_fixture_is_explained():
    assert sorted(EXPLAINED) == sorted(p.name for p in FIXTURES.glob("*.txt"))


@pytest.mark.parametrize("fixture", sorted(EXPLAINED))
def test_real_certbot_output_gets_its_own_explanation(fixture):
    output = (FIXTURES / fixture).read_text()
    assert "Requesting" in output or "Saving debug log" in output  # certbot's real preamble
    explanation = explain_failure(output, NAMES, SERVER, LAB_HOST)
    assert EXPLAINED[fixture] in explanation
    others = [words for name, words in EXPLAINED.items() if name != fixture]
    assert not any(words in explanation for words in others), explanation


def test_requesting_a_certificate_alone_is_not_an_unreachable_server():
    output = "Saving debug log to /var/log/letsencrypt/letsencrypt.log\nRequesting a certificate for aibots.test\n"
    assert "could not talk to the ACME server" not in explain_failure(output, NAMES, SERVER)


@pytest.mark.parametrize(
    "certbot_output, words",
    [  # Let's Encrypt's (boulder's) wording of the same failures
        ("Detail: DNS problem: NXDOMAIN looking up A for aibots.test - check that a DNS record exists", "does not resolve"),
        ("Type:   connection\nDetail: 203.0.113.9: Fetching http://aibots.test/.well-known/acme-challenge/x: "
         "Timeout during connect (likely firewall problem)", "points at 203.0.113.9, which is not this host"),
        ("Type:   connection\nDetail: 198.18.3.2: Fetching http://aibots.test/.well-known/acme-challenge/x: "
         "Connection refused", "on port 80 at 198.18.3.2"),
        ("HTTPSConnectionPool(host='acme', port=443): Max retries exceeded", "could not talk to the ACME server"),
        ("Type:   unauthorized\nDetail: 198.18.3.2: Invalid response from http://aibots.test/.well-known/acme-challenge/x: 404",
         "another server"),
        ("something nobody has seen", "its own words are above"),
    ],
)
def test_lets_encrypt_wording(certbot_output, words):
    assert words in explain_failure(certbot_output, NAMES, SERVER, LAB_HOST)


def test_without_known_addresses_a_connection_failure_is_port_80():
    output = (FIXTURES / "name-resolves-elsewhere.txt").read_text()
    assert "on port 80 at 198.18.3.1" in explain_failure(output, NAMES, SERVER)


def cert(names, not_after=2_000_000_000, key_matches=True):
    return {"names": names, "not_after": not_after, "key_matches": key_matches}


def test_issue_only_when_needed():
    now = 1_900_000_000
    assert certificate_problem(None, NAMES, now) == "no certificate yet"
    assert certificate_problem(cert(NAMES), NAMES, now) is None
    assert certificate_problem(cert(list(reversed(NAMES))), NAMES, now) is None
    assert "covers" in certificate_problem(cert(["aibots.test"]), NAMES, now)
    assert "expired" in certificate_problem(cert(NAMES, not_after=now - 1), NAMES, now)
    assert "private key" in certificate_problem(cert(NAMES, key_matches=False), NAMES, now)


class ConnectedHost(FakeHost):
    """A host in an operation whose connector arguments come from host data, running
    shell commands the way pyinfra's SSH connector builds them (make_unix_command)."""

    def __init__(self, facts, global_arguments, output=""):
        super().__init__(facts)
        self.current_op_global_arguments = global_arguments
        self.output, self.ran, self.connector_arguments = output, [], []

    def run_shell_command(self, command, print_output=False, print_input=False, **arguments):
        self.connector_arguments.append(dict(arguments))
        # what the SSH connector keeps for itself rather than the command line
        for key in ("_success_exit_codes", "_timeout", "_get_pty", "_stdin"):
            arguments.pop(key, None)
        self.ran.append(make_unix_command(command, **arguments).get_raw_value())

        class Output:
            output = self.output
        return False, Output()


def run_issuance(global_arguments, output="", timeout=300):
    facts = {CertificateState: None, Ipv4Addrs: {"host0": ["198.18.3.2"]}, Ipv6Addrs: {}}
    host = ConnectedHost(facts, global_arguments, output)
    with ctx_host.use(host):
        commands = list(letsencrypt.certificate._inner(names=NAMES, email="ops@aibots.test", server=SERVER,
                                                       webroot="/var/www/aisha-acme", timeout=timeout))
        [command] = commands
        assert isinstance(command, FunctionCommand)
        command.execute(None, host, {})
    return host, letsencrypt.ISSUANCE_FAILURES.pop(host.name)


def test_certbot_runs_with_the_operations_sudo_password_and_env():
    host, _ = run_issuance({"_sudo": True, "_sudo_password": "s3cret", "_sudo_askpass_path": "/tmp/askpass",
                            "_env": {"LC_ALL": "C"}, "_timeout": 600, "_ignore_errors": False})
    [ran], [arguments] = host.ran, host.connector_arguments
    assert ran.startswith("sudo -H -A -k sh -c 'export LC_ALL=C && timeout --kill-after=15 300 certbot certonly")
    assert arguments["_sudo_password"] == "s3cret" and arguments["_timeout"] == 600  # the connector's to use
    assert "_ignore_errors" not in arguments  # an operation argument, not the connector's


def test_certbot_runs_as_the_su_user():
    [ran] = run_issuance({"_su_user": "root"})[0].ran
    assert ran.startswith("su root") and "certbot certonly" in ran


def test_certbot_is_bounded_and_a_timeout_names_the_step_and_limit():
    host, reason = run_issuance({"_sudo": True}, timeout=42,
                                output=f"Requesting a certificate for aibots.test\n{letsencrypt.TIMED_OUT_MARKER}\n")
    assert "timeout --kill-after=15 42 certbot certonly" in host.ran[0]
    assert "did not finish within 42 s (letsencrypt_timeout)" in reason


def test_certbot_failure_is_recorded_with_the_host_addresses():
    output = (FIXTURES / "name-resolves-elsewhere.txt").read_text()
    _, reason = run_issuance({"_sudo": True}, output=output)
    assert "not this host (198.18.3.2)" in reason


def test_certbot_command_is_a_string_command_pyinfra_can_wrap():
    command = letsencrypt.certbot_command(NAMES, "ops@aibots.test", SERVER, "/w", "/ca.pem", 300)
    wrapped = make_unix_command(StringCommand(command), _sudo=True).get_raw_value()
    assert wrapped.startswith("sudo -H -n sh -c") and "REQUESTS_CA_BUNDLE=/ca.pem timeout" in wrapped


@pytest.mark.parametrize("override, words", [
    ({"letsencrypt_timeout": 0}, "letsencrypt_timeout: 0 is not a positive integer"),
    ({"letsencrypt_on_failure": "stop"}, "letsencrypt_on_failure: 'stop' is unknown; use one of 'fail', 'degrade'"),
])
def test_letsencrypt_failure_settings_are_validated(override, words):
    with pytest.raises(SettingsError) as error:
        build_settings({"aisha_domain": "aibots.test", **override})
    assert words in str(error.value)


def test_a_degraded_run_fails_unless_asked_not_to():
    settings = build_settings({"aisha_domain": "aibots.test"})
    assert settings.letsencrypt_on_failure == "fail" and settings.letsencrypt_timeout == 300


@pytest.mark.parametrize("failure, on_failure, fails", [
    ("port 80 closed", "fail", True),
    ("port 80 closed", "degrade", False),
    (None, "fail", False),
])
def test_the_last_step_fails_a_degraded_host_by_default(failure, on_failure, fails, monkeypatch):
    host = FakeHost({})
    host.state = SimpleNamespace(is_executing=True)
    monkeypatch.setattr(letsencrypt, "ISSUANCE_FAILURES", {host.name: failure} if failure else {})
    with ctx_host.use(host):
        commands = list(letsencrypt.issued_as_asked._inner(names=NAMES, on_failure=on_failure))
    assert [c.function for c in commands] == ([letsencrypt.fail_host] if fails else [])
    assert bool(host.noops) != fails
    if fails:
        [message] = commands[0].args
        assert "TLS DEGRADED" in message and "port 80 closed" in message and "letsencrypt_on_failure='degrade'" in message
