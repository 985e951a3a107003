"""Is the webhook endpoint usable, as fal will use it? HTTPS health and a test webhook.

Both checks connect to a given address with SNI and Host set to the domain, so they
need no DNS, and verify TLS like any client: against `ca_bundle` (a PEM file, which
then replaces the system store, e.g. the host's own self-signed certificate) or the
system trust store. When verification fails, the served chain is fetched and
analysed so the message names the cause and the fix, not just OpenSSL's words.
Used by the deploy's end-of-run verification, the rollout gates and `diagnose`.
urllib3 rather than requests: connecting to one address while verifying another name
(server_hostname) is a pool argument here, an adapter subclass there.

The test webhook is a probe, not a delivery: it carries the header `X-Aisha-Probe: 1`
and a request_id starting with `aisha-probe-`. The bundled app checks it like any
delivery and answers 200 without storing it; your own backend can tell it apart by
either mark.
"""

from __future__ import annotations

import datetime
import json
import ssl
import uuid
import warnings

import urllib3

from aisha_infra.checks.findings import Finding, first_error
from aisha_infra.checks.served_chain import ServedChain, check_served_chain, connection_finding

HEALTH_PATH = "/health"
WEBHOOK_PATH = "/api/v1/avatar/status_update"
HEALTHY = {"status": "healthy", "service": "Aisha Bot FAL Webhook API"}
PROBE_HEADER = "X-Aisha-Probe"
PROBE_REQUEST_ID_PREFIX = "aisha-probe-"
# Reading more than this of an answer means something else answers.
MAX_BODY_BYTES = 64 * 1024


def check_https_health(address, domain, port=8443, ca_bundle=None, timeout=10) -> tuple[bool, str]:
    """GET https://<domain>:<port>/health via `address`: (ok, what was seen or what is wrong)."""
    return outcome(health_finding(address, domain, port, ca_bundle, timeout))


def check_webhook_post(address, domain, port=8443, ca_bundle=None, timeout=10) -> tuple[bool, str]:
    """POST a test event shaped like fal's to the webhook path via `address`:
    (ok, what was seen or what is wrong)."""
    return outcome(webhook_finding(address, domain, port, ca_bundle, timeout))


def outcome(finding: Finding) -> tuple[bool, str]:
    return finding.severity != "error", finding.explain()


def sample_fal_event() -> dict:
    """A delivery shaped like fal's, with ids that say it is a probe."""
    return {
        "request_id": f"{PROBE_REQUEST_ID_PREFIX}{uuid.uuid4()}",
        "gateway_request_id": f"{PROBE_REQUEST_ID_PREFIX}{uuid.uuid4()}",
        "status": "OK",
        "payload": {},
        "error": None,
    }


def health_finding(address, domain, port=8443, ca_bundle=None, timeout=10, *, verify=True, trust_system=None) -> Finding:
    """The health check as a finding. `verify=False` checks the app behind a TLS
    setup already known to be broken; `trust_system` (default: only without a
    `ca_bundle`) also trusts the system store next to the bundle."""
    with Endpoint(address, domain, port, ca_bundle, verify=verify, trust_system=trust_system) as endpoint:
        return endpoint.health(timeout)


def webhook_finding(address, domain, port=8443, ca_bundle=None, timeout=10, *, verify=True, trust_system=None) -> Finding:
    """The webhook check as a finding (see health_finding for the options)."""
    with Endpoint(address, domain, port, ca_bundle, verify=verify, trust_system=trust_system) as endpoint:
        return endpoint.webhook(timeout)


def post(address, domain, port, path, body: bytes, headers: dict, ca_bundle=None, timeout=10, verify=True):
    """(status, body) of one POST to `address` with SNI/Host `domain`, or the Finding that
    says why there is none (used by `aisha-infra webhook send`)."""
    with Endpoint(address, domain, port, ca_bundle, verify=verify) as endpoint:
        return endpoint.exchange("http.post", "POST", path, timeout, body=body, headers=headers)


class Endpoint:
    """HTTPS to `address` with SNI and Host `domain`, over one keep-alive connection that
    every check made through it reuses (health, then the test webhook: one TCP and TLS
    handshake). `with Endpoint(...) as endpoint:` closes it; options as health_finding."""

    def __init__(self, address, domain, port=8443, ca_bundle=None, *, verify=True, trust_system=None):
        self.address, self.domain, self.port, self.ca_bundle, self.verify = address, domain, port, ca_bundle, verify
        self.trust_system = ca_bundle is None if trust_system is None else trust_system
        self._pool = None
        # The certificates the server sent on the connection that answered (DER, in the
        # order sent): the verified connection tells what is served, no second handshake.
        self.served_certs: list[bytes] = []
        try:
            context = _ssl_context(ca_bundle, verify, self.trust_system)
        except (OSError, ssl.SSLError) as exc:
            self._bundle_error = exc
            return
        self._pool = urllib3.HTTPSConnectionPool(
            address,
            port,
            ssl_context=context,
            cert_reqs="CERT_REQUIRED" if verify else "CERT_NONE",
            server_hostname=domain,
            assert_hostname=None if verify else False,
            retries=False,
            maxsize=1,
        )

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def health(self, timeout=10) -> Finding:
        url = f"https://{self.domain}:{self.port}{HEALTH_PATH}"
        answer = self.exchange("http.health", "GET", HEALTH_PATH, timeout)
        if isinstance(answer, Finding):
            return answer
        status, body = answer
        if status == 200 and _json(body) == HEALTHY:
            return Finding("http.health", "ok", f"GET {url} answered {json.dumps(HEALTHY)}{_unverified(self.verify)}.")
        return Finding(
            "http.health",
            "error",
            f"GET {url} answered HTTP {status}: {_excerpt(body)}; expected 200 {json.dumps(HEALTHY)}.",
            _status_fix(status, self.domain),
        )

    def webhook(self, timeout=10) -> Finding:
        url = f"https://{self.domain}:{self.port}{WEBHOOK_PATH}"
        event = sample_fal_event()
        answer = self.exchange(
            "http.webhook", "POST", WEBHOOK_PATH, timeout, body=json.dumps(event).encode(), headers={PROBE_HEADER: "1"}
        )
        if isinstance(answer, Finding):
            return answer
        status, body = answer
        if status == 200:
            return Finding(
                "http.webhook",
                "ok",
                f"POST {url} (request_id {event['request_id']}) answered 200{_unverified(self.verify)}.",
            )
        if status == 401 and _json(body) == {"error": "invalid signature"}:
            return Finding(
                "http.webhook",
                "ok",
                f"POST {url} reached the app, which rejected the unsigned test event (401) because it "
                f"verifies fal's signatures, as configured{_unverified(self.verify)}.",
            )
        return Finding(
            "http.webhook",
            "error",
            f"POST {url} answered HTTP {status}: {_excerpt(body)}; expected 200.",
            _status_fix(status, self.domain),
        )

    def exchange(self, check, method, path, timeout, body=None, headers=None):
        """(status, body) of one HTTPS request, or the Finding that says why there is none."""
        if self._pool is None:
            return Finding(check, "error", f"Cannot load the CA bundle {self.ca_bundle}: {self._bundle_error}.",
                           "Pass a readable PEM file.")
        domain, port = self.domain, self.port
        headers = {"Host": domain if port == 443 else f"{domain}:{port}", "User-Agent": "aisha-infra", **(headers or {})}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                response = self._pool.urlopen(method, path, body=body, headers=headers, redirect=False,
                                              preload_content=False,
                                              timeout=urllib3.Timeout(connect=timeout, read=timeout))
            try:
                if not self.served_certs:
                    self.served_certs = sent_chain(getattr(response.connection, "sock", None))
                return response.status, response.read(MAX_BODY_BYTES)
            finally:
                # Back for the next request; urllib3 drops a connection with unread data left.
                response.release_conn()
        except urllib3.exceptions.HTTPError as exc:
            return _failure(check, exc, self.address, domain, port, self.ca_bundle, timeout, self.trust_system)


def sent_chain(sock) -> list[bytes]:
    """The certificates a TLS peer sent, DER, in the order sent; [] when unknown. Public
    from Python 3.13 (SSLSocket.get_unverified_chain); 3.10-3.12 have the same method on
    the private _sslobj (tests/unit/test_diagnose_health.py fails if neither is there)."""
    if not isinstance(sock, ssl.SSLSocket):
        return []
    public = getattr(sock, "get_unverified_chain", None)
    if public is not None:
        return list(public() or [])
    private = getattr(getattr(sock, "_sslobj", None), "get_unverified_chain", None)
    if private is None:
        return []
    return [cert.public_bytes(ssl._ssl.ENCODING_DER) for cert in private() or []]


def _ssl_context(ca_bundle, verify, trust_system) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=None if trust_system else ca_bundle)
    if trust_system and ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _unverified(verify: bool) -> str:
    return "" if verify else " (TLS not verified: see the TLS findings)"


def _failure(check, exc, address, domain, port, ca_bundle, timeout, trust_system) -> Finding:
    where = f"{address}:{port}"
    if isinstance(exc, urllib3.exceptions.SSLError):
        reason = str(exc.__context__ or exc)
        if "CERTIFICATE_VERIFY_FAILED" in reason or "Hostname mismatch" in reason:
            return _explain_verification(check, reason, address, domain, port, ca_bundle, timeout, trust_system)
        fix = connection_finding(ServedChain(error=reason), address, port, domain).fix
        return Finding(check, "error", f"TLS handshake with {where} (SNI {domain}) failed: {reason}.", fix)
    # NewConnectionError is a ConnectTimeoutError in urllib3 2: test it first.
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return Finding(
            check,
            "error",
            f"Cannot connect to {where}: {exc.__context__ or exc}.",
            f"Check that nginx runs and listens on {port}: `systemctl status nginx`, `ss -ltnp | grep {port}`.",
        )
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return Finding(
            check,
            "error",
            f"No answer from {where} within {timeout:g} s: a firewall drops the port.",
            f"`ufw allow {port}/tcp` on the host, and open the port in any cloud firewall.",
        )
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return Finding(
            check,
            "error",
            f"{where} accepted the connection but sent no HTTP answer within {timeout:g} s.",
            "Check the app: `systemctl status aisha-api`, `journalctl -u aisha-api -n 50`.",
        )
    return Finding(
        check,
        "error",
        f"HTTPS request to {where} failed: {exc}.",
        "Run `aisha-infra diagnose` for the TLS and host-side details.",
    )


def _explain_verification(check, reason, address, domain, port, ca_bundle, timeout, trust_system) -> Finding:
    """OpenSSL said no; say why, from the chain the server actually sends."""
    now = datetime.datetime.now(datetime.timezone.utc)
    _, findings = check_served_chain(
        address, port, domain, now=now, timeout=timeout, ca_bundle=ca_bundle, trust_system=trust_system
    )
    cause = first_error(findings)
    if cause is None:
        return Finding(
            check,
            "error",
            f"TLS verification failed: {reason}.",
            "Run `aisha-infra diagnose` for the chain as sent.",
        )
    return Finding(check, "error", f"TLS verification failed: {cause.message}", cause.fix)


def _status_fix(status: int, domain: str) -> str:
    if status in (502, 503, 504):
        return (
            "nginx answers but the app behind it does not: `systemctl status aisha-api`, "
            "`journalctl -u aisha-api -n 50` on the host."
        )
    if status == 404:
        return (
            f"The server that answered does not route this path: check that the nginx site's "
            f"server_name is {domain} and that it proxies to the app."
        )
    if status == 421:
        return f"nginx has no server block named {domain} on this port: check server_name."
    return "Read the answer above and the app's log: `journalctl -u aisha-api -n 50`."


def _json(body: bytes):
    try:
        return json.loads(body)
    except ValueError:
        return None


def _excerpt(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    return repr(text[:200] + ("..." if len(text) > 200 else ""))
