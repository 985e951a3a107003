"""certbot failures told apart in plain words; issuance only when needed."""

import pytest

from aisha_infra.operations.letsencrypt import certificate_problem, explain_failure

NAMES = ["aibots.test", "www.aibots.test"]
SERVER = "https://acme.example/dir"


@pytest.mark.parametrize(
    "certbot_output, words",
    [
        ("An unexpected error occurred:\nValueError: Requesting pebble.test/dir: Connection refused", "could not talk to the ACME server"),
        ("HTTPSConnectionPool(host='acme', port=443): Max retries exceeded", "could not talk to the ACME server"),
        ("Detail: DNS problem: NXDOMAIN looking up A for aibots.test", "DNS for aibots.test, www.aibots.test does not point"),
        ("Detail: 203.0.113.9: Fetching http://aibots.test/.well-known/acme-challenge/x: Connection refused", "could not reach http://aibots.test/.well-known/acme-challenge/ on port 80"),
        ("Detail: 203.0.113.9: Fetching http://aibots.test/.well-known/acme-challenge/x: Timeout during connect (likely firewall problem)", "on port 80"),
        ("urn:ietf:params:acme:error:rateLimited :: too many certificates (5) already issued", "rate limit"),
        ("Type: unauthorized\nDetail: Invalid response from http://aibots.test/.well-known/acme-challenge/x: 404", "another server"),
        ("something nobody has seen", "its own words are above"),
    ],
)
def test_failures_are_explained(certbot_output, words):
    assert words in explain_failure(certbot_output, NAMES, SERVER)


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
