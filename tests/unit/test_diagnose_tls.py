"""Each cause of a failing TLS chain is told apart, with its fix: first as pure
analysis of certificates, then against real TLS servers on 127.0.0.1."""

from __future__ import annotations

import socket
import threading

import pytest

from aisha_infra.checks import certificates, served_chain, tlscheck
from aisha_infra.tools.diagnose.diagnosis import Target, diagnose

from .certfactory import NOW, make_intermediate, make_leaf, make_root, make_self_signed
from .tlscases import DOMAIN, build_pki
from .tlsserver import LocalTLSServer

CASES = [
    "good",
    "leaf_only",
    "wrong_order",
    "self_signed",
    "unknown_ca",
    "staging_ca",
    "wrong_name",
    "expired",
    "not_yet_valid",
    "expiring",
]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return build_pki(tmp_path_factory.mktemp("pki"))


def problems(findings, prefix="tls."):
    return [(f.check, f.severity) for f in findings if f.severity != "ok" and f.check.startswith(prefix)]


def named(findings, check):
    return next(f for f in findings if f.check == check)


def load(path):
    return certificates.parse_pem_certs(path.read_bytes())


# --- pure analysis --------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_each_cause_is_named_with_its_fix(pki, name):
    case = pki.cases[name]
    roots = certificates.load_trust_store(str(pki.root), include_system=False)

    findings = tlscheck.analyze_chain(load(case.chain), roots, DOMAIN, NOW)

    if case.check is None:
        assert problems(findings) == []
        assert {f.check for f in findings} >= {"tls.trust", "tls.name", "tls.expiry"}
    else:
        assert problems(findings) == [(case.check, case.severity)]
        assert case.fix_mentions in named(findings, case.check).fix


def test_leaf_after_its_intermediate_is_an_error(pki):
    root = make_root()
    intermediate = make_intermediate(root)
    leaf = make_leaf(intermediate)

    findings = tlscheck.analyze_chain([intermediate.cert, leaf.cert], [root.cert], DOMAIN, NOW)

    assert problems(findings) == [("tls.chain_order", "error")]
    assert "first certificate sent is 'Aisha Test Intermediate'" in named(findings, "tls.chain_order").message


def test_self_signed_is_expected_in_self_signed_mode():
    cert = make_self_signed().cert

    findings = tlscheck.analyze_chain([cert], [], DOMAIN, NOW, tls_mode="self-signed")

    assert problems(findings) == [("tls.self_signed", "warn")]
    assert "expected" in named(findings, "tls.self_signed").message
    assert not tlscheck.chain_trusted(findings)


def test_self_signed_trusted_through_the_bundle_still_warns_that_fal_will_not():
    cert = make_self_signed().cert

    findings = tlscheck.analyze_chain([cert], [cert], DOMAIN, NOW)

    assert problems(findings) == [("tls.self_signed", "warn")]
    assert "fal.ai will not trust it" in named(findings, "tls.self_signed").message
    assert tlscheck.chain_trusted(findings)


def test_an_unrelated_intermediate_is_named_in_the_incomplete_chain():
    root = make_root()
    leaf = make_leaf(make_intermediate(root, "R11"))
    stale = make_intermediate(root, "R10")

    findings = tlscheck.analyze_chain([leaf.cert, stale.cert], [root.cert], DOMAIN, NOW)

    assert problems(findings) == [("tls.incomplete_chain", "error")]
    assert "does send 'R10', but that did not sign it" in named(findings, "tls.incomplete_chain").message


def test_pebble_chain_names_pebble_and_its_root_endpoint():
    root = make_root("Pebble Root CA 1a2b3c")
    intermediate = make_intermediate(root, "Pebble Intermediate CA 4d5e6f")
    leaf = make_leaf(intermediate)

    findings = tlscheck.analyze_chain([leaf.cert, intermediate.cert], [], DOMAIN, NOW)

    assert problems(findings) == [("tls.staging_ca", "error")]
    staging = named(findings, "tls.staging_ca")
    assert "Pebble" in staging.message and "/roots/0" in staging.fix


def test_wildcard_covers_one_label_only():
    root = make_root()
    leaf = make_leaf(root, ["*.example.org"]).cert

    assert tlscheck.name_finding(leaf, "hooks.example.org").severity == "ok"
    assert tlscheck.name_finding(leaf, "a.hooks.example.org").check == "tls.name_mismatch"
    assert tlscheck.name_finding(leaf, "example.org").check == "tls.name_mismatch"


def test_ip_address_names_match_ip_sans():
    leaf = make_leaf(make_root(), ["198.18.1.2"]).cert

    assert tlscheck.name_finding(leaf, "198.18.1.2").severity == "ok"


def test_no_certificate_at_all_is_an_error():
    assert problems(tlscheck.analyze_chain([], [], DOMAIN, NOW)) == [("tls.chain", "error")]


def test_old_protocols_warn():
    assert tlscheck.protocol_finding("TLSv1.3").severity == "ok"
    assert tlscheck.protocol_finding("TLSv1.1").severity == "warn"


def test_key_match(pki):
    case = pki.cases["good"]
    leaf = load(case.chain)[0]

    right = tlscheck.key_match_finding(leaf, certificates.load_public_key(case.key.read_bytes()), "c", "k", DOMAIN)
    wrong = tlscheck.key_match_finding(leaf, certificates.load_public_key(pki.other_key.read_bytes()), "c", "k", DOMAIN)

    assert right.severity == "ok"
    assert (wrong.check, wrong.severity) == ("tls.key_mismatch", "error")
    assert f"/etc/letsencrypt/live/{DOMAIN}/privkey.pem" in wrong.fix


# --- certificate files as nginx loads them ------------------------------------------------------


def test_cert_file_with_intermediate_first_is_wrong_order_not_key_mismatch(pki):
    good = load(pki.cases["good"].chain)
    key = certificates.load_public_key(pki.cases["good"].key.read_bytes())

    findings = tlscheck.analyze_cert_file(list(reversed(good)), key, "/x/fullchain.pem", "/x/privkey.pem", DOMAIN)

    assert problems(findings) == [("tls.chain_order", "error")]
    assert "key values mismatch" in named(findings, "tls.chain_order").message


def test_cert_file_with_another_key_is_a_key_mismatch(pki):
    good = load(pki.cases["good"].chain)
    other = certificates.load_public_key(pki.other_key.read_bytes())

    findings = tlscheck.analyze_cert_file(good, other, "/x/fullchain.pem", "/x/privkey.pem", DOMAIN)

    assert problems(findings) == [("tls.key_mismatch", "error")]


def test_cert_file_with_the_leaf_only_is_an_incomplete_chain(pki):
    leaf = load(pki.cases["leaf_only"].chain)
    key = certificates.load_public_key(pki.cases["leaf_only"].key.read_bytes())

    findings = tlscheck.analyze_cert_file(leaf, key, "/etc/letsencrypt/live/x/cert.pem", "/k", DOMAIN)

    assert problems(findings) == [("tls.incomplete_chain", "error")]
    assert "fullchain.pem" in named(findings, "tls.incomplete_chain").fix


# --- real TLS servers on 127.0.0.1 -------------------------------------------------------------


@pytest.fixture
def other_ports():
    """Two listening TCP sockets standing in for the host's SSH and HTTP ports."""
    sockets = []
    try:
        for _ in range(2):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(8)
            sockets.append(sock)
        yield [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def local_target(server, other_ports, **kwargs):
    ssh_port, http_port = other_ports
    return Target(domain=DOMAIN, address="127.0.0.1", port=server.port, ssh_port=ssh_port, http_port=http_port, **kwargs)


def only_loopback(domain):
    return ["127.0.0.1"]


@pytest.mark.parametrize("name", CASES)
def test_served_chain_is_diagnosed_as_exactly_its_cause(pki, other_ports, name):
    case = pki.cases[name]
    with LocalTLSServer(case.chain, case.key) as server:
        report = diagnose(local_target(server, other_ports), ca_bundle=str(pki.root), resolve=only_loopback)

    assert [c["subject"] for c in report.chain] == [c.subject.rfc4514_string() for c in load(case.chain)]
    assert report.protocol in ("TLSv1.2", "TLSv1.3")
    not_ok = [(f.check, f.severity) for f in report.findings if f.severity != "ok"]
    # The lab name resolves only to loopback: a warning, whatever the TLS state.
    expected = [("dns", "warn")] + ([(case.check, case.severity)] if case.check else [])
    assert not_ok == expected
    if case.check:
        assert case.fix_mentions in named(report.findings, case.check).fix
    # The app behind a broken TLS setup is still checked, without verification.
    assert {f.check for f in report.findings if f.severity == "ok"} >= {"http.health", "http.webhook"}
    assert report.failed is (case.severity == "error")


def test_good_chain_is_clean(pki, other_ports):
    case = pki.cases["good"]
    with LocalTLSServer(case.chain, case.key) as server:
        report = diagnose(local_target(server, other_ports), ca_bundle=str(pki.root), resolve=only_loopback)

    tls_and_http = [f for f in report.findings if f.check.startswith(("tls.", "http.", "tcp."))]
    assert all(f.severity == "ok" for f in tls_and_http)
    assert "TLS not verified" not in " ".join(f.message for f in tls_and_http)
    assert not report.failed


def test_served_certificate_against_a_key_file(pki, other_ports):
    case = pki.cases["good"]
    with LocalTLSServer(case.chain, case.key) as server:
        mismatch = diagnose(
            local_target(server, other_ports), ca_bundle=str(pki.root), key_file=str(pki.other_key), resolve=only_loopback
        )
        match = diagnose(local_target(server, other_ports), ca_bundle=str(pki.root), key_file=str(case.key), resolve=only_loopback)

    assert problems(mismatch.findings) == [("tls.key_mismatch", "error")]
    assert any(f.check == "tls.key_match" and f.severity == "ok" for f in match.findings)


def test_self_signed_host_in_self_signed_mode_only_warns(pki, other_ports):
    case = pki.cases["self_signed"]
    with LocalTLSServer(case.chain, case.key) as server:
        report = diagnose(local_target(server, other_ports, tls_mode="self-signed"), resolve=only_loopback)

    assert problems(report.findings) == [("tls.self_signed", "warn")]
    assert not report.failed


def test_nothing_listening_is_a_handshake_finding_that_says_so(pki, other_ports):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens on it now
    ssh_port, http_port = other_ports

    report = diagnose(
        Target(DOMAIN, "127.0.0.1", port, ssh_port=ssh_port, http_port=http_port), resolve=only_loopback
    )

    errors = {f.check: f for f in report.findings if f.severity == "error"}
    assert set(errors) == {f"tcp.{port}", "tls.handshake"}
    assert "connection refused" in errors["tls.handshake"].message
    assert "systemctl status nginx" in errors["tls.handshake"].fix


def test_plain_http_on_the_tls_port_is_recognised(other_ports):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def answer_http():
        listener.settimeout(5)
        try:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            pass

    thread = threading.Thread(target=answer_http, daemon=True)
    thread.start()
    try:
        served = served_chain.fetch_served_chain("127.0.0.1", port, DOMAIN, timeout=5)
    finally:
        thread.join(timeout=5)
        listener.close()

    finding = served_chain.connection_finding(served, "127.0.0.1", port, DOMAIN)
    assert "wrong version number" in finding.message
    assert f"listen {port} ssl;" in finding.fix
