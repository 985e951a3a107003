"""The self-signed certificate: its fact read from real openssl output, and when it is regenerated."""

import subprocess
import time

from aisha_infra.deploy.facts.tls import CertificateState
from aisha_infra.deploy.operations import tls
from tests.unit.fakehost import run_operation

DAY = 86400


def openssl_cert(tmp_path, name="aibots.test", days=365, other_key=False):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", str(days), "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    if other_key:
        subprocess.run(["openssl", "genpkey", "-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-out", str(key)], check=True, capture_output=True)
    return cert, key


def read_fact(cert, key):
    fact = CertificateState()
    output = subprocess.run(["sh", "-c", fact.command(str(cert), str(key))], capture_output=True, text=True).stdout
    return fact.process(output.splitlines()) if output.strip() else fact.default()


def test_fact_reads_names_expiry_and_key_match(tmp_path):
    state = read_fact(*openssl_cert(tmp_path, days=10))
    assert state["names"] == ["aibots.test"] and state["key_matches"] is True and state["self_signed"]
    assert 9 * DAY < state["not_after"] - time.time() <= 10 * DAY


def test_fact_sees_a_foreign_key_and_a_missing_file(tmp_path):
    assert read_fact(*openssl_cert(tmp_path, other_key=True))["key_matches"] is False
    assert read_fact(tmp_path / "missing.pem", tmp_path / "missing.key") is None


def regenerate(state):
    facts = {CertificateState: state}
    commands, noops = run_operation(tls.self_signed_certificate, facts, domain="aibots.test", cert="/c.crt",
                                    key="/k.key", owner="aisha", days=365, renew_days=30)
    return commands


def test_regenerated_only_when_needed():
    valid = {"names": ["aibots.test"], "not_after": time.time() + 200 * DAY, "key_matches": True}
    assert regenerate(valid) == []
    assert regenerate(None)  # missing
    assert regenerate({**valid, "names": ["old.example.com"]})  # another domain
    assert regenerate({**valid, "not_after": time.time() + 10 * DAY})  # expiring within 30 days
    assert regenerate({**valid, "key_matches": False})
    command = regenerate(None)[0]
    assert "-subj /CN=aibots.test" in command and "subjectAltName=DNS:aibots.test" in command
    assert "chmod 0600 /k.key.new" in command and "mv -f /c.crt.new /c.crt" in command
