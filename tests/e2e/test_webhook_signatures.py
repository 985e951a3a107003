"""Issue 14 on a lab host that verifies fal's signatures with keys fetched from a JWKS URL
(served over HTTPS by this test from the host's gateway address, never from outside):
signed deliveries are stored, unsigned and forged ones get 401, and a genuine delivery is
never refused for our own trouble: the last good keys survive a restart while the URL is
unreachable, and with no key at all the answer is 503 (fal retries) until the keys load.
The signed deliveries are sent with `aisha-infra webhook send`, as the README says."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from aisha_infra.cli import main as aisha_infra
from aisha_infra.lab.hosts import LabHost
from aisha_infra.tools.webhook import load_key, public_jwk, write_test_key
from tests.e2e.conftest import DOMAIN
from tests.e2e.deploylib import DeployRun, run_deploy, write_hosts_file
from tests.unit.certfactory import make_leaf, make_root, write_pem

pytestmark = pytest.mark.e2e

URL = f"https://{DOMAIN}:8443/api/v1/avatar/status_update"
EXPORT = (
    "cd /opt/aisha-backend/app && AISHA_DATA_DIR=/var/lib/aisha "
    "/opt/aisha-backend/venv/bin/python -m aisha_webhook_api events export --format jsonl"
)
JWKS_CACHE = "/var/lib/aisha/fal-jwks-cache.json"
TEST_CA_ON_HOST = "/usr/local/share/ca-certificates/aisha-test-jwks.crt"
# The app retries a failed JWKS fetch every 5 s while it has no key at all.
KEYS_LOAD_WITHIN_SECONDS = 60


class JwksServer:
    """fal's JWKS endpoint, played over HTTPS from the lab host's gateway address.
    `start()`/`stop()` make it reachable or not (nothing listens when stopped)."""

    def __init__(self, address: str, port: int, document: dict, work: Path) -> None:
        self.address, self.port, self.document = address, port, document
        ca = make_root("aisha-infra test JWKS CA")
        leaf = make_leaf(ca, [address])
        self.ca_pem = write_pem(work / "jwks-ca.pem", ca.pem)
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(write_pem(work / "jwks.pem", leaf.pem, leaf.key_pem))
        self.fetches = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"https://{self.address}:{self.port}/.well-known/jwks.json"

    def start(self) -> None:
        if self._server:
            return
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5

            def do_GET(self):
                endpoint.fetches += 1
                body = json.dumps(endpoint.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer((self.address, self.port), Handler)
        server.socket = self._context.wrap_socket(server.socket, server_side=True)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
        self._server = server

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@dataclass
class VerifyingHost:
    host: LabHost
    work: Path
    jwks: JwksServer
    first_run: DeployRun
    cert_pem: Path
    fal_key_file: Path

    def send(self, capsys, request_id: str, sign_key: Path | None) -> tuple[int, str]:
        """`aisha-infra webhook send` of a fal-shaped event: (HTTP status, reply)."""
        data = json.dumps({"request_id": request_id, "gateway_request_id": request_id,
                           "status": "OK", "payload": {"images": []}, "error": None})
        capsys.readouterr()
        args = ["webhook", "send", URL, "--data", data, "--connect", self.host.address,
                "--ca-bundle", str(self.cert_pem), "--user-id", "fal-e2e-user"]
        aisha_infra(args + (["--sign-key", str(sign_key)] if sign_key else []))
        out = capsys.readouterr().out
        assert out.startswith("HTTP "), out
        status, _, reply = out[len("HTTP "):].partition(" ")
        return int(status), reply.strip()

    def send_until_keys_load(self, capsys, request_id: str) -> tuple[int, str]:
        """Send a signed delivery again (as fal retries) while the answer is 503, bounded."""
        deadline = time.monotonic() + KEYS_LOAD_WITHIN_SECONDS
        status, reply = self.send(capsys, request_id, self.fal_key_file)
        while status == 503 and time.monotonic() < deadline:
            time.sleep(2)
            status, reply = self.send(capsys, request_id, self.fal_key_file)
        return status, reply

    def stored(self) -> dict[str, dict]:
        lines = self.host.run(EXPORT).stdout.splitlines()
        return {event["request_id"]: event for event in map(json.loads, lines)}

    def journal(self) -> str:
        return self.host.run("journalctl -u aisha-api.service --no-pager -n 300").stdout

    def restart_app_without_keys(self) -> None:
        """A fresh app process that never saw a key: no cache on disk."""
        self.host.run(f"systemctl stop aisha-api.service && rm -f {JWKS_CACHE} && systemctl start aisha-api.service")


def free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def verifying_host(lab, tmp_path_factory) -> VerifyingHost:
    work = tmp_path_factory.mktemp("signatures")
    key_file, _ = write_test_key(work / "fal")
    host = lab.add_hosts(count=1)[0]
    jwks = JwksServer(host.gateway, free_port(host.gateway), {"keys": [public_jwk(load_key(key_file))]}, work)
    try:
        # the host trusts the test CA as it trusts fal's public one
        host.run(f"cat > {TEST_CA_ON_HOST} <<'EOF'\n{jwks.ca_pem.read_text()}EOF\nupdate-ca-certificates >/dev/null")
        settings = {"fal_verify_signatures": True, "fal_jwks_url": jwks.url}
        hosts_file = write_hosts_file(work / "hosts.json", [host], data=settings)
        first_run = run_deploy(hosts_file).check()  # the JWKS server is not up yet
        cert_pem = work / "cert.pem"
        cert_pem.write_text(host.run("cat /opt/aisha-backend/ssl/aibots_test.crt").stdout)
        yield VerifyingHost(host, work, jwks, first_run, cert_pem, key_file)
    finally:
        jwks.stop()
        lab.destroy_host(host.name)


def test_no_key_at_all_is_503_and_the_retry_is_stored_once_keys_load(verifying_host, capsys):
    vh = verifying_host
    assert "verifies fal's signatures" in vh.first_run.output  # the deploy's probe got its 401
    vh.jwks.stop()
    vh.restart_app_without_keys()
    request_id = f"no-key-{uuid.uuid4()}"
    status, reply = vh.send(capsys, request_id, vh.fal_key_file)
    assert (status, json.loads(reply)) == (503, {"error": "signature keys unavailable"})
    assert request_id not in vh.stored()
    journal = vh.journal()
    assert "cannot verify signatures: cannot load fal keys from https://" in journal
    assert f"refused request_id={request_id} why=signature keys unavailable, fal will retry" in journal

    vh.jwks.start()
    status, reply = vh.send_until_keys_load(capsys, request_id)
    assert status == 200, reply
    event = vh.stored()[request_id]
    assert (event["fal_user_id"], event["flags"]) == ("fal-e2e-user", [])
    assert f"stored request_id={request_id} status=OK" in vh.journal()


def test_signed_unsigned_and_forged(verifying_host, capsys, tmp_path):
    vh = verifying_host
    vh.jwks.start()
    forger_key, _ = write_test_key(tmp_path)
    ids = {kind: f"{kind}-{uuid.uuid4()}" for kind in ("signed", "unsigned", "forged")}

    status, reply = vh.send_until_keys_load(capsys, ids["signed"])
    assert (status, json.loads(reply)) == (200, {"stored": True, "request_id": ids["signed"]})
    assert vh.send(capsys, ids["unsigned"], None) == (401, '{"error":"invalid signature"}')
    assert vh.send(capsys, ids["forged"], forger_key) == (401, '{"error":"invalid signature"}')

    stored = vh.stored()
    assert ids["signed"] in stored and ids["unsigned"] not in stored and ids["forged"] not in stored
    journal = vh.journal()
    assert f"stored request_id={ids['signed']} status=OK" in journal
    assert f"refused request_id={ids['unsigned']} why=invalid signature: missing header" in journal
    assert f"refused request_id={ids['forged']} why=invalid signature: signature matches no fal key" in journal


def test_last_good_keys_survive_a_restart_while_the_jwks_url_is_unreachable(verifying_host, capsys):
    vh = verifying_host
    vh.jwks.start()
    assert vh.send_until_keys_load(capsys, f"warm-{uuid.uuid4()}")[0] == 200
    cached = json.loads(vh.host.run(f"cat {JWKS_CACHE}").stdout)
    assert cached == vh.jwks.document
    assert vh.host.run(f"stat -c '%U %a' {JWKS_CACHE}").stdout.split() == ["aisha", "640"]

    vh.jwks.stop()
    vh.host.run("systemctl restart aisha-api.service")
    request_id = f"cached-{uuid.uuid4()}"
    status, reply = vh.send(capsys, request_id, vh.fal_key_file)
    assert status == 200, reply
    assert vh.stored()[request_id]["fal_user_id"] == "fal-e2e-user"
    assert "using 1 fal keys from the last good copy /var/lib/aisha/fal-jwks-cache.json" in vh.journal()
