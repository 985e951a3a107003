"""Hardening of a deployed host, proven with the tools operators trust: sslyze against
Mozilla's "intermediate" TLS profile, `systemd-analyze security` for the service, a TCP
connect sweep for the firewall, and plain requests for nginx's limits and refusals."""

from __future__ import annotations

import ipaddress
import re
import shlex
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sslyze import (
    CertificateInfoExtraArgument,
    ScanCommand,
    ScanCommandsExtraArguments,
    Scanner,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanResult,
    ServerScanStatusEnum,
)
from sslyze.mozilla_tls_profile.tls_config_checker import (
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)

from aisha_infra.deploy.settings import build_settings
from tests.e2e import client
from tests.e2e.conftest import DOMAIN
from tests.unit import certfactory

pytestmark = [
    pytest.mark.e2e,
    # sslyze's bundled trust stores hold old roots that cryptography warns about
    pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive"),
]

SETTINGS = build_settings({"aisha_domain": DOMAIN})  # what deployed_host runs with
HTTPS = SETTINGS.nginx_https_port
HTTP = SETTINGS.nginx_http_port
WEBHOOK = "/api/v1/avatar/status_update"
LAB_NETWORK = ipaddress.ip_network("198.18.0.0/15")


# --- helpers -------------------------------------------------------------------------

def served_certificate(address: str, server_hostname: str | None) -> bytes:
    """DER of the certificate the host presents for `server_hostname` (None: no SNI)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # what the server does with the name is the point here
    with socket.create_connection((address, HTTPS), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_hostname) as tls:
            return tls.getpeercert(binary_form=True)


def wait_until_served(address: str, certificate: x509.Certificate, seconds: float = 10) -> None:
    """nginx reloads in the background: wait until its new workers serve `certificate`."""
    expected = certificate.public_bytes(Encoding.DER)
    deadline = time.monotonic() + seconds
    while served_certificate(address, DOMAIN) != expected:
        assert time.monotonic() < deadline, f"nginx did not serve the new certificate within {seconds} s"
        time.sleep(0.2)


def scan_tls(address: str, ca_file: Path) -> ServerScanResult:
    """sslyze's scans for Mozilla's checker (plus HTTP headers), SNI = DOMAIN, to `address`."""
    request = ServerScanRequest(
        server_location=ServerNetworkLocation(hostname=DOMAIN, port=HTTPS, ip_address=address),
        scan_commands=SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER | {ScanCommand.HTTP_HEADERS},
        scan_commands_extra_arguments=ScanCommandsExtraArguments(
            certificate_info=CertificateInfoExtraArgument(custom_ca_file=ca_file)
        ),
    )
    scanner = Scanner()
    scanner.queue_scans([request])
    (result,) = scanner.get_results()
    assert result.scan_status == ServerScanStatusEnum.COMPLETED, result.connectivity_error_trace
    return result


def mozilla_intermediate_issues(result: ServerScanResult) -> dict[str, str]:
    try:
        check_server_against_tls_configuration(
            result, MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
        )
    except ServerNotCompliantWithTlsConfiguration as not_compliant:
        return not_compliant.issues
    return {}


def http_exchange(address: str, request: bytes) -> bytes:
    """Send raw bytes to the plain HTTP port; everything the server sends until it closes."""
    with socket.create_connection((address, HTTP), timeout=5) as conn:
        conn.sendall(request)
        received = b""
        while chunk := conn.recv(65536):  # ends at the server's close, or times out
            received += chunk
        return received


def tcp_state(address: str, port: int, timeout: float = 1.0) -> str:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return "open"
    except ConnectionRefusedError:
        return "refused"  # a reset: nothing listens, but the firewall let the packet through
    except TimeoutError:
        return "dropped"
    except OSError as exc:
        return f"error: {exc}"


@pytest.fixture
def https(deployed_host):
    """A verified HTTPS pool to the deployed site (trusting its self-signed certificate)."""
    with client.pool(deployed_host.address, DOMAIN, HTTPS, str(deployed_host.cert_pem)) as pool:
        yield lambda method, path, **kw: client.request(pool, method, path, DOMAIN, HTTPS, **kw)


@pytest.fixture
def serving_a_test_ca_chain(deployed_host, tmp_path) -> Path:
    """The site serves a chain from a throwaway CA (root -> intermediate -> leaf, shaped like
    Let's Encrypt's) instead of its self-signed certificate; put back afterwards.

    Mozilla's profile includes a trusted certificate path, and sslyze validates paths with
    cryptography's web-PKI rules, which never accept a self-signed certificate as a leaf
    (it is its own CA). Only the certificate files change: the TLS configuration scanned is
    the deployed one. Returns the root to trust (sslyze's custom CA file)."""
    root = certfactory.make_root()
    intermediate = certfactory.make_intermediate(root)
    leaf = certfactory.make_leaf(intermediate, [DOMAIN])
    ca_file = tmp_path / "test-root.pem"
    ca_file.write_bytes(root.pem)

    run, address = deployed_host.host.run, deployed_host.address
    cert, key = SETTINGS.selfsigned_cert_path, SETTINGS.selfsigned_key_path
    original = x509.load_pem_x509_certificate(deployed_host.cert_pem.read_bytes())
    run(f"cp -a {cert} {cert}.hardening-test && cp -a {key} {key}.hardening-test")
    try:
        chain, leaf_key = (leaf.pem + intermediate.pem).decode(), leaf.key_pem.decode()
        # writing into the existing files keeps their owner and modes
        run(f"printf %s {shlex.quote(chain)} > {cert} && printf %s {shlex.quote(leaf_key)} > {key}"
            " && systemctl reload nginx")
        wait_until_served(address, leaf.cert)
        yield ca_file
    finally:
        run(f"mv -f {cert}.hardening-test {cert} && mv -f {key}.hardening-test {key} && systemctl reload nginx")
        wait_until_served(address, original)


# --- TLS: sslyze against Mozilla "intermediate" ----------------------------------------

def test_tls_is_mozilla_intermediate_compliant(deployed_host, serving_a_test_ca_chain):
    scan = scan_tls(deployed_host.address, serving_a_test_ca_chain)

    assert mozilla_intermediate_issues(scan) == {}
    result = scan.scan_result
    versions = {name: getattr(result, f"{name}_cipher_suites").result.is_tls_version_supported
                for name in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1", "tls_1_2", "tls_1_3")}
    assert versions == {"ssl_2_0": False, "ssl_3_0": False, "tls_1_0": False, "tls_1_1": False,
                        "tls_1_2": True, "tls_1_3": True}
    hsts = result.http_headers.result.strict_transport_security_header
    assert hsts is not None and hsts.max_age == 63072000


def test_self_signed_mode_misses_only_a_trusted_path(deployed_host):
    """The default deploy differs from the profile in trust alone (see the fixture above):
    key type, signature, lifespan, protocols, ciphers and curves all comply."""
    result = scan_tls(deployed_host.address, deployed_host.cert_pem)
    assert set(mozilla_intermediate_issues(result)) == {"certificate_path_validation"}


def test_unknown_names_get_no_tls_handshake(deployed_host):
    address = deployed_host.address
    assert served_certificate(address, DOMAIN) == x509.load_pem_x509_certificate(
        deployed_host.cert_pem.read_bytes()).public_bytes(Encoding.DER)
    for name in ("unknown.test", None):  # a wrong name, and none at all (IP-only scanners)
        with pytest.raises(ssl.SSLError) as refused:
            served_certificate(address, name)
        assert refused.value.reason == "TLSV1_UNRECOGNIZED_NAME", (name, refused.value)


# --- nginx: methods, sizes, names, versions, rate -------------------------------------

def test_health_answers_get_and_head_only(https):
    for method in ("GET", "HEAD"):
        answer = https(method, "/health")
        assert answer.status == 200, (method, answer.data)
        assert answer.headers["Strict-Transport-Security"] == "max-age=63072000"
        assert "Allow" not in answer.headers
    refused = https("POST", "/health", body=b"{}")
    assert refused.status == 405 and refused.headers["Allow"] == "GET, HEAD"
    assert refused.headers["Strict-Transport-Security"] == "max-age=63072000"


def test_webhook_path_takes_post_only(https):
    for method in ("GET", "PUT", "DELETE"):
        answer = https(method, WEBHOOK)
        assert answer.status == 405, method
        assert answer.headers["Allow"] == "POST"
        assert answer.headers["Strict-Transport-Security"] == "max-age=63072000"


def test_body_over_the_limit_gets_413(https):
    assert SETTINGS.app_max_body_bytes == 1024 * 1024
    answer = https("POST", WEBHOOK, body=b"x" * (2 * 1024 * 1024))
    assert answer.status == 413
    assert answer.headers["Strict-Transport-Security"] == "max-age=63072000"


def test_no_version_in_server_headers(https, deployed_host):
    for method, path in (("GET", "/health"), ("GET", WEBHOOK), ("GET", "/nothing-here")):
        assert https(method, path).headers["Server"] == "nginx"
    redirect = http_exchange(deployed_host.address,
                             f"GET / HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n".encode())
    assert redirect.startswith(b"HTTP/1.1 301") and b"\r\nServer: nginx\r\n" in redirect
    bad = http_exchange(deployed_host.address, b"GET / HTTP/1.1\r\n\r\n")  # nginx's own 400 page
    assert b"\r\nServer: nginx\r\n" in bad and b"nginx/" not in bad


def test_unknown_host_on_http_is_closed_without_an_answer(deployed_host):
    for request in (b"GET / HTTP/1.1\r\nHost: unknown.test\r\n\r\n", b"GET / HTTP/1.0\r\n\r\n"):
        assert http_exchange(deployed_host.address, request) == b"", request


def test_host_other_than_the_tls_name_is_misdirected(https):
    answer = https("GET", "/health", headers={"Host": f"unknown.test:{HTTPS}"})
    assert answer.status == 421


def test_burst_over_the_rate_gets_429(deployed_host):
    """600 requests over 4 keep-alive connections at once: well past 100 r/s + 200 burst."""
    assert (SETTINGS.nginx_rate_limit_per_second, SETTINGS.nginx_rate_limit_burst) == (100, 200)

    def burst(_: int) -> list[int]:
        with client.pool(deployed_host.address, DOMAIN, HTTPS, str(deployed_host.cert_pem)) as pool:
            return [client.request(pool, "GET", "/health", DOMAIN, HTTPS).status for _ in range(150)]

    with ThreadPoolExecutor(max_workers=4) as workers:
        statuses = [status for batch in workers.map(burst, range(4)) for status in batch]
    assert set(statuses) == {200, 429}, sorted(set(statuses))
    assert statuses.count(200) >= SETTINGS.nginx_rate_limit_burst
    assert statuses.count(429) > 0

    # the bucket drains at the rate: the next tests from this address are served again
    with client.pool(deployed_host.address, DOMAIN, HTTPS, str(deployed_host.cert_pem)) as pool:
        for _ in range(20):
            if client.request(pool, "GET", "/health", DOMAIN, HTTPS).status == 200:
                break
            time.sleep(0.5)
        else:
            pytest.fail("still limited 10 s after the burst")


# --- systemd: the service's sandbox ---------------------------------------------------

def test_service_exposure_is_at_most_2(deployed_host):
    report = deployed_host.host.run("systemd-analyze security --no-pager aisha-api.service").stdout
    match = re.search(r"Overall exposure level for aisha-api\.service: (\d+(?:\.\d+)?)", report)
    assert match, report
    failing = [line for line in report.splitlines() if line.startswith("✗")]
    assert float(match.group(1)) <= 2.0, "\n".join(failing)


def test_service_sandbox_is_in_force_and_writes_only_its_state(deployed_host):
    run = deployed_host.host.run
    verify = run("systemd-analyze verify aisha-api.socket aisha-api.service", check=False)
    assert verify.returncode == 0 and "aisha-api" not in verify.stderr, verify.stderr

    pid = run("systemctl show -p MainPID --value aisha-api.service").stdout.strip()
    assert pid not in ("", "0"), "aisha-api.service is not running"
    status = dict(line.split(":\t", 1) for line in run(f"cat /proc/{pid}/status").stdout.splitlines()
                  if ":\t" in line)
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert status["CapEff"] == status["CapBnd"] == "0000000000000000"

    # try to write as the service user inside the service's own mount namespace
    candidates = ["/var/lib/aisha", "/tmp", "/var/tmp", SETTINGS.aisha_base_dir, SETTINGS.app_dir,
                  SETTINGS.aisha_log_dir, "/etc", "/run", "/run/lock", "/dev/shm", "/home", "/root"]
    probe = "; ".join(f"touch {d}/.probe 2>/dev/null && rm -f {d}/.probe && echo {d}" for d in candidates)
    writable = run(
        f"nsenter -t {pid} -m -- setpriv --reuid={SETTINGS.aisha_user} --regid={SETTINGS.aisha_user} "
        f"--clear-groups sh -c {shlex.quote(probe + '; true')}"
    ).stdout.split()
    assert sorted(writable) == ["/tmp", "/var/lib/aisha", "/var/tmp"]
    # and /tmp, /var/tmp are the service's own (PrivateTmp), not the host's
    mounts = run(f"cat /proc/{pid}/mountinfo").stdout
    assert re.search(r"/systemd-private-\S+-aisha-api\.service-\S+/tmp /tmp ", mounts)


# --- firewall: what answers from outside ------------------------------------------------

def test_only_ssh_http_and_https_answer_from_outside(deployed_host):
    address = deployed_host.address
    assert ipaddress.ip_address(address) in LAB_NETWORK  # never sweep anything but a lab host
    ports = [*range(1, 1025), SETTINGS.app_port, HTTPS, 3306, 5432, 6379, 8080, 9000, 15000, 32768, 65535]
    with ThreadPoolExecutor(max_workers=128) as workers:
        states = dict(zip(ports, workers.map(lambda port: tcp_state(address, port), ports)))

    assert {port for port, state in states.items() if state == "open"} == {22, 80, HTTPS}
    # the rest is dropped by ufw, not even refused (which would say "nothing listens here")
    others = {port: state for port, state in states.items() if state not in ("open", "dropped")}
    assert others == {}
    assert states[SETTINGS.app_port] == "dropped"
