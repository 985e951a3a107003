"""aisha_infra.checks.health against a tiny HTTPS server on 127.0.0.1: the exact health
answer, the fal-shaped test webhook, and TLS failures explained with their fix."""

from __future__ import annotations

import socket

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from aisha_infra.checks import health

from .tlscases import DOMAIN, build_pki
from .tlsserver import LocalTLSServer


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return build_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def good_server(pki):
    case = pki.cases["good"]
    with LocalTLSServer(case.chain, case.key) as server:
        yield server


def test_healthy_endpoint(pki, good_server):
    ok, detail = health.check_https_health("127.0.0.1", DOMAIN, good_server.port, str(pki.root), timeout=5)

    assert ok, detail
    assert '"status": "healthy"' in detail


def test_webhook_post_has_fals_shape_and_host_header(pki, good_server):
    ok, detail = health.check_webhook_post("127.0.0.1", DOMAIN, good_server.port, str(pki.root), timeout=5)

    assert ok, detail
    [posted] = good_server.posted
    body = posted["body"]
    assert set(body) == {"request_id", "gateway_request_id", "status", "payload", "error"}
    assert body["request_id"].startswith("aisha-probe-")
    assert posted["headers"]["X-Aisha-Probe"] == "1"  # the app answers it without storing it
    assert (body["status"], body["payload"], body["error"]) == ("OK", {}, None)
    assert posted["headers"]["Host"] == f"{DOMAIN}:{good_server.port}"
    assert body["request_id"] in detail


def test_one_endpoint_checks_health_and_webhook_over_one_connection(pki, good_server):
    with health.Endpoint("127.0.0.1", DOMAIN, good_server.port, str(pki.root)) as endpoint:
        findings = [endpoint.health(timeout=5), endpoint.webhook(timeout=5), endpoint.health(timeout=5)]

    assert [finding.severity for finding in findings] == ["ok", "ok", "ok"], [f.explain() for f in findings]
    assert good_server.connections == 1


def test_the_endpoint_keeps_the_chain_the_server_sent(pki, good_server):
    """verify reports the served certificate from this, without a second handshake; on a
    Python without the chain (neither public nor private API) this fails."""
    sent = [cert.public_bytes(serialization.Encoding.DER)
            for cert in x509.load_pem_x509_certificates(pki.cases["good"].chain.read_bytes())]
    with health.Endpoint("127.0.0.1", DOMAIN, good_server.port, str(pki.root)) as endpoint:
        assert endpoint.served_certs == []
        assert endpoint.health(timeout=5).severity == "ok"

    assert len(sent) >= 2 and endpoint.served_certs == sent


def test_an_oversized_answer_is_cut_and_its_connection_not_reused(pki, good_server):
    good_server.set_health(200, {"padding": "x" * (2 * health.MAX_BODY_BYTES)})
    with health.Endpoint("127.0.0.1", DOMAIN, good_server.port, str(pki.root)) as endpoint:
        first = endpoint.health(timeout=5)
        good_server.set_health(200, health.HEALTHY)
        second = endpoint.health(timeout=5)

    assert first.severity == "error" and "..." in first.message
    assert second.severity == "ok", second.explain()
    assert good_server.connections == 2


@pytest.mark.parametrize(
    "status, body, fix",
    [
        (503, {"status": "unhealthy", "service": "Aisha Bot FAL Webhook API"}, "systemctl status aisha-api"),
        (200, {"status": "healthy", "service": "Something Else"}, "journalctl -u aisha-api"),
        (404, {"error": "not found"}, "server_name"),
    ],
)
def test_anything_but_the_exact_health_answer_fails(pki, good_server, status, body, fix):
    good_server.set_health(status, body)

    ok, detail = health.check_https_health("127.0.0.1", DOMAIN, good_server.port, str(pki.root), timeout=5)

    assert not ok
    assert f"HTTP {status}" in detail and fix in detail


@pytest.mark.parametrize(
    "name, cause",
    [
        ("leaf_only", "without the intermediate"),
        ("self_signed", "self-signed certificate"),
        ("wrong_name", "not for aibots.test"),
        ("expired", "expired on"),
        ("unknown_ca", "not in the trust store"),
    ],
)
def test_tls_failures_are_explained(pki, name, cause):
    case = pki.cases[name]
    with LocalTLSServer(case.chain, case.key) as server:
        ok, detail = health.check_https_health("127.0.0.1", DOMAIN, server.port, str(pki.root), timeout=5)

    assert not ok
    assert detail.startswith("TLS verification failed: ")
    assert cause in detail and " Fix: " in detail


def test_self_signed_certificate_pinned_as_the_bundle_passes(pki):
    """The deploy's verification trusts exactly the self-signed certificate it deployed."""
    case = pki.cases["self_signed"]
    with LocalTLSServer(case.chain, case.key) as server:
        ok, detail = health.check_https_health("127.0.0.1", DOMAIN, server.port, str(case.chain), timeout=5)

    assert ok, detail


def test_without_a_bundle_the_system_store_decides(pki, good_server):
    ok, detail = health.check_https_health("127.0.0.1", DOMAIN, good_server.port, timeout=5)

    assert not ok
    assert "'Aisha Test Root CA', which is not in the trust store" in detail


def test_refused_connection_says_what_to_check():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()

    ok, detail = health.check_https_health("127.0.0.1", DOMAIN, port, timeout=2)

    assert not ok
    assert "Cannot connect to 127.0.0.1" in detail and "systemctl status nginx" in detail


def test_unreadable_bundle_is_reported(tmp_path):
    ok, detail = health.check_https_health("127.0.0.1", DOMAIN, 1, str(tmp_path / "missing.pem"), timeout=2)

    assert not ok
    assert "Cannot load the CA bundle" in detail


def test_unsigned_test_event_rejected_for_its_signature_means_the_path_works(pki, good_server, monkeypatch):
    """With fal_verify_signatures on, the app answers 401 to our unsigned event."""
    monkeypatch.setattr(
        health.Endpoint, "exchange", lambda *args, **kwargs: (401, b'{"error": "invalid signature"}')
    )

    ok, detail = health.check_webhook_post("127.0.0.1", DOMAIN, good_server.port, str(pki.root))

    assert ok
    assert "verifies fal's signatures" in detail
