"""The reference webhook API (backend/aisha_webhook_api), served from a thread on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import json
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

BACKEND_DIR = Path(__file__).resolve().parents[2] / "backend"
sys.path.insert(0, str(BACKEND_DIR))

from aisha_webhook_api.config import Settings  # noqa: E402
from aisha_webhook_api.server import WebhookApp, WebhookServer, bound_listener  # noqa: E402
from aisha_webhook_api.signature import JwksKeys, SignatureVerifier  # noqa: E402

WEBHOOK = "/api/v1/avatar/status_update"
JSON = {"Content-Type": "application/json"}


class Running:
    def __init__(self, port: int, app: WebhookApp) -> None:
        self.port = port
        self.app = app
        self.settings = app.settings

    def request(self, method: str, path: str, body: bytes | None = None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def post(self, document, headers=JSON):
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        status, _, reply = self.request("POST", WEBHOOK, body, headers)
        return status, json.loads(reply) if reply else None

    def rows(self) -> list[dict]:
        with sqlite3.connect(self.settings.database_path) as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute("SELECT * FROM events ORDER BY id")]


@pytest.fixture
def start_server(tmp_path):
    """start_server(**env) -> Running; every server is stopped at the end of the test."""
    started = []

    def start(**env: str) -> Running:
        settings = Settings.from_env({
            "AISHA_DATA_DIR": str(tmp_path / "data"), "AISHA_API_PORT": "0", **env,
        })
        app = WebhookApp.open(settings)
        server = WebhookServer(bound_listener(settings), app)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        started.append((server, thread, app))
        return Running(server.server_address[1], app)

    yield start
    for server, thread, app in started:
        server.shutdown()
        thread.join()
        server.server_close()
        app.close()


def event(request_id: str = "req-1", status: str = "OK", **fields) -> dict:
    document = {
        "request_id": request_id, "gateway_request_id": request_id, "status": status,
        "payload": {"images": [{"url": "https://example.test/a.png"}], "seed": 196619188014358660},
    }
    document.update(fields)
    return document


def run_cli(data_dir: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "aisha_webhook_api", *args], cwd=BACKEND_DIR,
        env={**os.environ, "AISHA_DATA_DIR": str(data_dir)},
        capture_output=True, text=True, timeout=30, check=True,
    )
    return result.stdout


# --- contract ---------------------------------------------------------------------

def test_health_answers_exact_body(start_server):
    server = start_server()
    status, headers, body = server.request("GET", "/health")
    assert status == 200
    assert body == b'{"status":"healthy","service":"Aisha Bot FAL Webhook API"}'
    assert headers["Content-Type"] == "application/json"

    status, headers, body = server.request("HEAD", "/health")
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == "58"


def test_health_fails_when_database_is_gone(start_server):
    server = start_server()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{server.settings.database_path}{suffix}").unlink(missing_ok=True)

    status, _, body = server.request("GET", "/health")
    assert status == 503
    assert json.loads(body)["status"] == "unhealthy"
    # and no webhook is acknowledged into a database nobody will read again
    assert server.post(event())[0] == 503


def test_webhook_is_stored_and_listed_by_cli(start_server):
    server = start_server()
    assert server.post(event("req-ok")) == (200, {"stored": True, "request_id": "req-ok"})
    error = event("req-err", "ERROR", error="Invalid status code: 422", payload=None)
    assert server.post(error) == (200, {"stored": True, "request_id": "req-err"})

    [ok, err] = server.rows()
    assert ok["request_id"] == "req-ok" and ok["status"] == "OK"
    assert json.loads(ok["payload"])["seed"] == 196619188014358660
    assert ok["raw_body"] == json.dumps(event("req-ok")).encode()
    assert ok["received_at"].endswith("+00:00")
    assert err["payload"] is None and err["error"] == "Invalid status code: 422"

    data_dir = server.settings.data_dir
    listing = run_cli(data_dir, "events", "list").splitlines()
    assert listing[0].startswith("ID\tRECEIVED_AT\tSTATUS\tREQUEST_ID")
    assert [line.split("\t")[3] for line in listing[1:]] == ["req-err", "req-ok"]
    only_errors = run_cli(data_dir, "events", "list", "--status", "ERROR", "--limit", "5")
    assert [line.split("\t")[3] for line in only_errors.splitlines()[1:]] == ["req-err"]

    exported = [json.loads(line) for line in run_cli(data_dir, "events", "export").splitlines()]
    assert [e["request_id"] for e in exported] == ["req-ok", "req-err"]
    assert exported[0]["payload"] == event("req-ok")["payload"]
    assert json.loads(exported[0]["raw_body"]) == event("req-ok")


def test_retried_delivery_is_acknowledged_but_stored_once(start_server):
    server = start_server()
    assert server.post(event("req-1")) == (200, {"stored": True, "request_id": "req-1"})
    assert server.post(event("req-1")) == (200, {"duplicate": True, "request_id": "req-1"})
    assert len(server.rows()) == 1


@pytest.mark.parametrize("body", [
    b"{not json", b"[1, 2]", b"\xff\xfe", b'{"status": "OK"}',
    b'{"request_id": "", "status": "OK"}', b'{"request_id": 42, "status": "OK"}',
    b'{"request_id": "r", "status": "DONE"}', b'{"request_id": "r"}',
    b'{"request_id": "r\\n", "status": "OK"}',
])
def test_malformed_delivery_is_400(start_server, body):
    server = start_server()
    status, reply = server.post(body)
    assert status == 400 and "error" in reply
    assert server.rows() == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_non_json_content_type_is_415(start_server, content_type):
    server = start_server()
    headers = {"Content-Type": content_type} if content_type else {}
    assert server.post(event(), headers)[0] == 415
    assert server.rows() == []


def test_json_content_type_with_charset_is_accepted(start_server):
    server = start_server()
    assert server.post(event(), {"Content-Type": "application/json; charset=utf-8"})[0] == 200


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "PATCH"])
def test_other_methods_on_webhook_are_405(start_server, method):
    status, headers, _ = start_server().request(method, WEBHOOK)
    assert status == 405
    assert headers["Allow"] == "POST"


@pytest.mark.parametrize(
    "method, path", [("GET", "/"), ("POST", "/api/v1/other"), ("GET", "/health/x")]
)
def test_unknown_paths_are_404(start_server, method, path):
    assert start_server().request(method, path, b"{}", JSON)[0] == 404


def test_oversized_body_is_413(start_server):
    server = start_server()
    padding = "x" * (1024 * 1024)
    status, reply = server.post(event(note=padding))
    assert status == 413 and "error" in reply
    assert server.rows() == []

    small = start_server(AISHA_MAX_BODY_BYTES="100")
    assert small.post(event(note="x" * 100))[0] == 413
    assert small.post({"request_id": "r", "status": "OK"})[0] == 200


# --- durability --------------------------------------------------------------------

def test_concurrent_deliveries_are_each_stored_once(start_server):
    server = start_server()
    ids = [f"req-{n:03d}" for n in range(200)]
    deliveries = ids + random.Random(1).sample(ids, 50)  # 50 retried while others arrive
    random.Random(2).shuffle(deliveries)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda rid: server.post(event(rid)), deliveries))

    assert all(status == 200 for status, _ in results)
    assert sum(1 for _, reply in results if reply.get("stored")) == 200
    assert sum(1 for _, reply in results if reply.get("duplicate")) == 50
    assert sorted(row["request_id"] for row in server.rows()) == ids


def test_database_is_wal_with_full_sync(start_server):
    server = start_server()
    with sqlite3.connect(server.settings.database_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    full = 2
    assert server.app.store._conn.execute("PRAGMA synchronous").fetchone()[0] == full


def test_cryptography_is_not_imported_unless_signatures_are_enabled(tmp_path):
    code = (
        "import sys\n"
        "from aisha_webhook_api.cli import main\n"
        "from aisha_webhook_api.config import Settings\n"
        "from aisha_webhook_api.server import WebhookApp\n"
        f"WebhookApp.open(Settings.from_env({{'AISHA_DATA_DIR': {str(tmp_path)!r}}})).close()\n"
        "assert 'cryptography' not in sys.modules, 'cryptography imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=BACKEND_DIR, check=True, timeout=30)


# --- fal signatures ----------------------------------------------------------------

def jwk(private_key: Ed25519PrivateKey, *, padded: bool = False) -> dict:
    raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).decode()
    return {"kty": "OKP", "crv": "Ed25519", "kid": "test", "x": x if padded else x.rstrip("=")}


def fal_headers(private_key, body: bytes, *, request_id="req-1", user_id="fal-user",
                timestamp: int | None = None) -> dict:
    """Sign as fal documents it: request id, user id, timestamp, sha256 hex of the body."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    message = f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}"
    return {
        **JSON,
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": user_id,
        "X-Fal-Webhook-Timestamp": str(timestamp),
        "X-Fal-Webhook-Signature": private_key.sign(message.encode()).hex(),
    }


@pytest.fixture
def fal_key():
    return Ed25519PrivateKey.generate()


@pytest.fixture
def signed_server(start_server, tmp_path, fal_key):
    jwks = tmp_path / "jwks.json"
    other = Ed25519PrivateKey.generate()  # fal publishes several keys during rotation
    jwks.write_text(json.dumps({"keys": [
        jwk(other), {"kty": "RSA", "n": "AQAB", "e": "AQAB"}, jwk(fal_key, padded=True),
    ]}))
    return start_server(AISHA_FAL_VERIFY_SIGNATURES="1", AISHA_FAL_JWKS_FILE=str(jwks))


def test_valid_signature_is_accepted(signed_server, fal_key):
    body = json.dumps(event("req-1")).encode()
    assert signed_server.post(body, fal_headers(fal_key, body))[0] == 200
    [row] = signed_server.rows()
    assert row["fal_user_id"] == "fal-user"


def test_signature_by_unknown_key_is_rejected(signed_server):
    body = json.dumps(event()).encode()
    status, reply = signed_server.post(body, fal_headers(Ed25519PrivateKey.generate(), body))
    assert (status, reply) == (401, {"error": "invalid signature"})
    assert signed_server.rows() == []


def test_altered_body_is_rejected(signed_server, fal_key):
    body = json.dumps(event(status="ERROR")).encode()
    headers = fal_headers(fal_key, body)
    altered = body.replace(b'"ERROR"', b'"OK"')
    assert signed_server.post(altered, headers)[0] == 401
    assert signed_server.rows() == []


@pytest.mark.parametrize("offset", [-301, -3600, 301])
def test_timestamp_outside_five_minutes_is_rejected(signed_server, fal_key, offset):
    body = json.dumps(event()).encode()
    headers = fal_headers(fal_key, body, timestamp=int(time.time()) + offset)
    assert signed_server.post(body, headers)[0] == 401
    assert signed_server.rows() == []


@pytest.mark.parametrize("missing", [
    "X-Fal-Webhook-Request-Id", "X-Fal-Webhook-User-Id",
    "X-Fal-Webhook-Timestamp", "X-Fal-Webhook-Signature",
])
def test_missing_signature_header_is_rejected(signed_server, fal_key, missing):
    body = json.dumps(event()).encode()
    headers = fal_headers(fal_key, body)
    del headers[missing]
    assert signed_server.post(body, headers)[0] == 401
    assert signed_server.rows() == []


def test_garbage_signature_is_rejected(signed_server, fal_key):
    body = json.dumps(event()).encode()
    headers = {**fal_headers(fal_key, body), "X-Fal-Webhook-Signature": "not-hex"}
    assert signed_server.post(body, headers)[0] == 401


def test_signed_server_still_rejects_malformed_json_with_400(signed_server, fal_key):
    body = b"{broken"
    assert signed_server.post(body, fal_headers(fal_key, body))[0] == 400


class JwksEndpoint:
    """A local stand-in for fal's JWKS URL that counts its fetches."""

    def __init__(self, document: dict) -> None:
        self.document = document
        self.fetches = 0
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
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

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks_endpoint():
    endpoints = []

    def make(document: dict) -> JwksEndpoint:
        endpoints.append(JwksEndpoint(document))
        return endpoints[-1]

    yield make
    for endpoint in endpoints:
        endpoint.close()


def test_keys_from_jwks_url_are_fetched_once_and_cached(start_server, jwks_endpoint, fal_key):
    endpoint = jwks_endpoint({"keys": [jwk(fal_key)]})
    server = start_server(AISHA_FAL_VERIFY_SIGNATURES="1", AISHA_FAL_JWKS_URL=endpoint.url)
    for request_id in ("req-1", "req-2", "req-3"):
        body = json.dumps(event(request_id)).encode()
        assert server.post(body, fal_headers(fal_key, body, request_id=request_id))[0] == 200
    assert endpoint.fetches == 1


def test_rotated_key_is_picked_up_without_waiting_for_cache_expiry(jwks_endpoint, fal_key):
    endpoint = jwks_endpoint({"keys": [jwk(fal_key)]})
    keys = JwksKeys(url=endpoint.url, file=None, cache_seconds=86400, min_refresh_interval=0)
    verifier = SignatureVerifier(keys)
    body = b'{"request_id":"r","status":"OK"}'
    verifier.verify(fal_headers(fal_key, body), body)

    new_key = Ed25519PrivateKey.generate()
    endpoint.document = {"keys": [jwk(new_key)]}
    assert verifier.verify(fal_headers(new_key, body), body) == "fal-user"
    assert endpoint.fetches == 2


def test_unreachable_jwks_answers_503_so_fal_retries(start_server, fal_key):
    server = start_server(
        AISHA_FAL_VERIFY_SIGNATURES="1", AISHA_FAL_JWKS_URL="http://127.0.0.1:9/jwks.json"
    )
    body = json.dumps(event()).encode()
    assert server.post(body, fal_headers(fal_key, body))[0] == 503
    assert server.rows() == []


def test_garbage_request_line_is_answered_400(start_server):
    server = start_server()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(b"GET / x HTTP/1.1\r\n\r\n")
        assert conn.recv(65536).startswith(b"HTTP/1.0 400 ")
    assert server.request("GET", "/health")[0] == 200


@pytest.mark.parametrize("length, expected", [(None, 411), ("abc", 400), ("-5", 400)])
def test_missing_or_invalid_content_length_is_refused(start_server, length, expected):
    server = start_server()
    head = f"POST {WEBHOOK} HTTP/1.0\r\nContent-Type: application/json\r\n"
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(head.encode() + b"\r\n")
        assert conn.recv(65536).startswith(f"HTTP/1.0 {expected} ".encode())
    assert server.rows() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the database to another user")
def test_cli_run_by_root_reads_as_the_database_owner(tmp_path):
    from aisha_webhook_api.server import parse_event
    from aisha_webhook_api.store import EventStore

    data_dir = Path(tempfile.mkdtemp(prefix="aisha-owner-"))  # outside root's 0700 tmp_path
    try:
        store = EventStore(data_dir / "events.sqlite3")
        store.add(parse_event(json.dumps(event("req-owned")).encode(), fal_user_id=None))
        store.close()
        nobody = 65534
        for path in [data_dir, *data_dir.iterdir()]:
            os.chown(path, nobody, nobody)

        output = tmp_path / "export.jsonl"  # only root may write here
        run_cli(data_dir, "events", "export", "--output", str(output))
        assert json.loads(output.read_text())["request_id"] == "req-owned"

        whoami = subprocess.run(
            [sys.executable, "-c", "import os, sys; from aisha_webhook_api.cli import "
             "_become_owner_of; _become_owner_of(sys.argv[1]); print(os.geteuid(), os.getegid())",
             str(data_dir / "events.sqlite3")],
            cwd=BACKEND_DIR, capture_output=True, text=True, check=True, timeout=30,
        )
        assert whoami.stdout.split() == [str(nobody), str(nobody)]
    finally:
        shutil.rmtree(data_dir)
