"""diagnose as a new user found it (issue 15.5): /etc/hosts names resolve, ufw rule
order counts, a dropped port is not followed by a TLS wait, a private CA is named as
such, and a stale AAAA record is reported."""

from __future__ import annotations

import socket
import time

import pytest

from aisha_infra.checks import served_chain, tlscheck
from aisha_infra.tools.diagnose import diagnosis, dns_and_ports, ufw
from aisha_infra.tools.diagnose.diagnosis import Target

from .certfactory import NOW, make_intermediate, make_leaf, make_root

DOMAIN = "aibots.test"
UFW_DENY_FIRST = """Status: active
Logging: on (low)
Default: deny (incoming), allow (outgoing), deny (routed)

To                         Action      From
--                         ------      ----
8443/tcp                   DENY IN     Anywhere
22/tcp                     ALLOW IN    Anywhere
80/tcp                     ALLOW IN    Anywhere
8443/tcp                   ALLOW IN    Anywhere
8443/tcp (v6)              DENY IN     Anywhere (v6)
8443/tcp (v6)              ALLOW IN    Anywhere (v6)
"""


def test_a_reserved_name_in_etc_hosts_is_used():
    findings, addresses = dns_and_ports.check_dns(DOMAIN, None, lambda name: ["198.18.1.2"])
    assert addresses == ["198.18.1.2"]
    assert findings[0].severity == "warn" and "resolves to 198.18.1.2 (/etc/hosts)" in findings[0].message


def test_the_real_resolver_reads_etc_hosts():
    # getaddrinfo, not a DNS-only lookup: "localhost" comes from /etc/hosts.
    assert "127.0.0.1" in dns_and_ports.resolve_addresses("localhost")


def test_a_reserved_name_that_does_not_resolve_has_no_address():
    def nowhere(name):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    findings, addresses = dns_and_ports.check_dns(DOMAIN, None, nowhere)
    assert addresses == [] and findings[0].severity == "warn"


def test_a_deny_before_the_allow_is_an_error_with_a_fix_that_deletes_it():
    finding = ufw.ufw_finding(0, UFW_DENY_FIRST, "", 8443)
    assert finding.severity == "error"
    assert "8443/tcp                   DENY IN     Anywhere" in finding.message
    assert "`ufw delete deny 8443/tcp`" in finding.fix
    assert 8443 not in ufw.ufw_allowed_ports(UFW_DENY_FIRST)


def test_an_allow_before_a_deny_still_allows():
    lines = UFW_DENY_FIRST.splitlines()
    allow_first = "\n".join(lines[:6] + [lines[9], lines[6], lines[7], lines[8]]) + "\n"
    assert ufw.ufw_finding(0, allow_first, "", 8443).severity == "ok"


def test_a_rejected_port_without_protocol_names_the_rule_as_ufw_takes_it():
    status = UFW_DENY_FIRST.replace("8443/tcp                   DENY IN", "8443                       REJECT IN")
    assert "`ufw delete reject 8443`" in ufw.ufw_finding(0, status, "", 8443).fix


@pytest.fixture
def dropping_port():
    """A loopback port whose SYNs are dropped (full accept queue): connects time out,
    as behind a firewall, without sending anything off this machine."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):  # fill the accept queue (never accepted)
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.2)
    probe = socket.socket()
    probe.settimeout(1)
    try:
        probe.connect(("127.0.0.1", port))
        pytest.skip("this kernel accepts beyond the backlog; cannot simulate a dropping firewall")
    except (TimeoutError, socket.timeout):
        pass
    finally:
        probe.close()
    yield port
    for sock in fillers + [listener]:
        sock.close()


def test_a_timed_out_https_port_is_not_followed_by_a_tls_handshake(dropping_port, monkeypatch):
    def no_handshake(*args, **kwargs):
        raise AssertionError("a TLS handshake was attempted after the TCP timeout")

    monkeypatch.setattr(served_chain, "fetch_served_chain", no_handshake)
    started = time.monotonic()
    # the same dropping port for SSH, HTTP and HTTPS: the three timeouts run at once
    report = diagnosis.diagnose(
        Target(DOMAIN, "127.0.0.1", dropping_port, ssh_port=dropping_port, http_port=dropping_port),
        resolve=lambda name: ["127.0.0.1"],
    )
    elapsed = time.monotonic() - started
    errors = [f.check for f in report.findings if f.severity == "error"]
    assert errors == [f"tcp.{dropping_port}"], report.findings
    assert "timed out" in report.findings[-1].message
    assert elapsed < 2 * dns_and_ports.TCP_TIMEOUT, elapsed


def test_a_leaf_from_a_private_root_is_a_private_ca_not_an_incomplete_chain():
    private_root = make_root("Corp Internal Root")
    leaf = make_leaf(private_root, ca_issuers_url=None)  # what openssl/step CAs make by default
    findings = tlscheck.analyze_chain([leaf.cert], [], DOMAIN, NOW)
    checks = {f.check: f for f in findings if f.severity == "error"}
    assert "tls.private_ca" in checks and "tls.incomplete_chain" not in checks
    assert "Corp Internal Root" in checks["tls.private_ca"].message
    assert "--ca-bundle" in checks["tls.private_ca"].fix


def test_a_public_style_leaf_without_its_intermediate_is_still_an_incomplete_chain():
    leaf = make_leaf(make_intermediate(make_root()))  # names its issuer (AIA), as public CAs do
    findings = tlscheck.analyze_chain([leaf.cert], [], DOMAIN, NOW)
    assert "tls.incomplete_chain" in {f.check for f in findings if f.severity == "error"}


def _free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_an_ipv6_address_that_does_not_answer_is_reported():
    port = _free_port()  # nothing listens: ::1 refuses (or has no IPv6 at all)
    findings = dns_and_ports.check_ipv6(["127.0.0.1", "::1"], port, timeout=1)
    assert [(f.check, f.severity) for f in findings] == [("dns.ipv6", "error")]
    assert "AAAA record points at ::1" in findings[0].message and "Let's Encrypt" in findings[0].message
    assert f"listen [::]:{port} ssl;" in findings[0].fix


def test_an_answering_ipv6_address_is_ok():
    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with listener:
        port = listener.getsockname()[1]
        assert dns_and_ports.check_ipv6(["::1"], port, timeout=2)[0].severity == "ok"
    assert dns_and_ports.check_ipv6(["127.0.0.1"], port) == []
