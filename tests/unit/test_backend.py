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
from aisha_webhook_api.store import EventStore  # noqa: E402

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

    def start(verifier=None, **env: str) -> Running:
        """`verifier`: a SignatureVerifier built by the test instead of from the settings."""
        settings = Settings.from_env({
            "AISHA_DATA_DIR": str(tmp_path / "data"), "AISHA_API_PORT": "0", **env,
        })
        if verifier is None:
            app = WebhookApp.open(settings)
        else:
            app = WebhookApp(settings, EventStore(settings.database_path), verifier)
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


def stored(request_id: str, flags=("unsigned",)) -> dict:
    """The reply to a newly stored delivery."""
    return {"stored": True, "request_id": request_id, **({"flags": list(flags)} if flags else {})}


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
    assert server.post(event("req-ok")) == (200, stored("req-ok"))
    error = event("req-err", "ERROR", error="Invalid status code: 422", payload=None)
    assert server.post(error) == (200, stored("req-err"))

    [ok, err] = server.rows()
    assert ok["request_id"] == "req-ok" and ok["status"] == "OK"
    assert json.loads(ok["payload"])["seed"] == 196619188014358660
    assert ok["raw_body"] == json.dumps(event("req-ok")).encode()
    assert ok["received_at"].endswith("+00:00")
    assert err["payload"] is None and err["error"] == "Invalid status code: 422"

    data_dir = server.settings.data_dir
    listing = run_cli(data_dir, "events", "list").splitlines()
    assert listing[0] == "ID\tRECEIVED_AT\tSTATUS\tREQUEST_ID\tGATEWAY_REQUEST_ID\tFLAGS\tERROR"
    assert [line.split("\t")[3] for line in listing[1:]] == ["req-err", "req-ok"]
    only_errors = run_cli(data_dir, "events", "list", "--status", "ERROR", "--limit", "5")
    assert [line.split("\t")[3] for line in only_errors.splitlines()[1:]] == ["req-err"]

    exported = [json.loads(line) for line in run_cli(data_dir, "events", "export").splitlines()]
    assert [e["request_id"] for e in exported] == ["req-ok", "req-err"]
    assert exported[0]["payload"] == event("req-ok")["payload"]
    assert json.loads(exported[0]["raw_body"]) == event("req-ok")


def test_retried_delivery_is_acknowledged_but_stored_once(start_server):
    server = start_server()
    assert server.post(event("req-1")) == (200, stored("req-1"))
    assert server.post(event("req-1")) == (200, {"duplicate": True, "request_id": "req-1", "flags": ["unsigned"]})
    assert len(server.rows()) == 1


@pytest.mark.parametrize("body", [
    b"{not json", b"[1, 2]", b"\xff\xfe", b'"request_id"', b"null", b"",
    b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # nesting bomb: RecursionError in json
    b'{"payload": ' + b"[" * 65 + b"]" * 65 + b"}",  # parses, but deeper than we keep
])
def test_what_is_not_a_json_object_is_400(start_server, body):
    server = start_server()
    status, reply = server.post(body)
    assert status == 400 and "error" in reply
    assert server.rows() == []


def test_nesting_bomb_is_refused_without_a_traceback(start_server, caplog):
    server = start_server()
    status, reply = server.post(b"[" * 200_000 + b"]" * 200_000)
    assert (status, reply) == (400, {"error": "JSON nested deeper than 64 levels"})
    assert "Traceback" not in caplog.text and "failed" not in caplog.text
    fal_depth = event(payload={"a": [[{"b": [1]}]]})
    assert server.post(fal_depth)[0] == 200


# Issue 14: any JSON object is stored; what fal would not send is flagged, never refused.
@pytest.mark.parametrize("body, flags", [
    # the runbook's two checks
    ({"test": True}, ["unsigned", "request_id_generated", "unknown_status"]),
    ({"request_id": "test-123", "status": "completed", "result": {"test": True}},
     ["unsigned", "unknown_status"]),
    ({"status": "OK"}, ["unsigned", "request_id_generated"]),
    ({"request_id": "", "status": "OK"}, ["unsigned", "request_id_generated"]),
    ({"request_id": 42, "status": "ERROR"}, ["unsigned", "request_id_generated"]),
    ({"request_id": "r\n", "status": "OK"}, ["unsigned", "request_id_generated"]),
    ({"request_id": "x" * 257, "status": "OK"}, ["unsigned", "request_id_generated"]),
    ({"request_id": "r", "status": "DONE"}, ["unsigned", "unknown_status"]),
    ({"request_id": "r", "status": ["OK"]}, ["unsigned", "unknown_status"]),
    ({"request_id": "r"}, ["unsigned", "unknown_status"]),
    ({"request_id": "r", "status": "OK", "gateway_request_id": 7}, ["unsigned"]),
])
def test_any_json_object_is_stored_and_flagged(start_server, body, flags):
    server = start_server()
    raw = json.dumps(body).encode()
    status, reply = server.post(raw)
    assert status == 200 and reply["stored"] is True and reply["flags"] == flags
    [row] = server.rows()
    assert row["raw_body"] == raw and row["flags"] == ",".join(flags)
    assert row["request_id"] == reply["request_id"]
    if "request_id_generated" in flags:
        assert row["request_id"].startswith("generated-")
    else:
        assert row["request_id"] == body["request_id"]
    sent_status = body.get("status")
    assert row["status"] == (sent_status if sent_status is None or isinstance(sent_status, str)
                             else json.dumps(sent_status))


def test_runbook_checks_are_listed_and_exported_flagged(start_server):
    server = start_server()
    assert server.post({"test": True})[0] == 200
    runbook = {"request_id": "test-123", "status": "completed", "result": {"test": True}}
    assert server.post(runbook)[0] == 200
    assert server.post(event("fal-1"))[0] == 200

    exported = [json.loads(line) for line in run_cli(server.settings.data_dir, "events", "export").splitlines()]
    assert [e["flags"] for e in exported] == [
        ["unsigned", "request_id_generated", "unknown_status"], ["unsigned", "unknown_status"], ["unsigned"],
    ]
    assert exported[1]["request_id"] == "test-123" and exported[1]["status"] == "completed"
    assert json.loads(exported[0]["raw_body"]) == {"test": True}

    listing = run_cli(server.settings.data_dir, "events", "list", "--status", "completed")
    [row] = [line.split("\t") for line in listing.splitlines()[1:]]
    assert row[2:6] == ["completed", "test-123", "-", "unsigned,unknown_status"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_json_object_is_stored_whatever_its_content_type(start_server, content_type):
    server = start_server()
    headers = {"Content-Type": content_type} if content_type else {}
    assert server.post(event(), headers)[0] == 200
    assert [row["request_id"] for row in server.rows()] == ["req-1"]


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
    assert small.post({"request_id": "r2", "status": "OK", "note": "x" * 60})[0] == 413


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
        self.available = True  # False: answer 503, as a JWKS endpoint that is down
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                endpoint.fetches += 1
                body = json.dumps(endpoint.document).encode()
                self.send_response(200 if endpoint.available else 503)
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


# --- health, probes and the log line per delivery (issues 13 and 14) ------------------

def test_health_writes_nothing(start_server):
    server = start_server()
    assert server.post(event("req-1"))[0] == 200
    files = [Path(f"{server.settings.database_path}{suffix}") for suffix in ("", "-wal")]
    before = [(f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    changes_before = server.app.store._conn.total_changes
    for _ in range(20):
        assert server.request("GET", "/health")[0] == 200
    assert server.app.store._conn.total_changes == changes_before
    assert [(f.stat().st_size, f.stat().st_mtime_ns) for f in files] == before


def test_health_reports_a_failed_write_until_one_succeeds(start_server):
    server = start_server()
    server.app.store._conn.execute("PRAGMA query_only = ON")  # every write now fails
    assert server.post(event("req-1"))[0] == 503
    status, _, body = server.request("GET", "/health")
    assert status == 503 and "the last write failed" in json.loads(body)["reason"]
    server.app.store._conn.execute("PRAGMA query_only = OFF")
    assert server.post(event("req-1"))[0] == 200  # fal's retry
    assert server.request("GET", "/health")[0] == 200


def test_probe_is_checked_and_answered_but_not_stored(start_server, caplog):
    server = start_server()
    caplog.set_level("INFO", logger="aisha_webhook_api")
    probe = {**JSON, "X-Aisha-Probe": "1"}
    status, reply = server.post(event("aisha-probe-1"), probe)
    assert (status, reply) == (200, {"probe": True, "stored": False, "request_id": "aisha-probe-1"})
    assert server.post(b"[1]", probe)[0] == 400  # the same checks as a delivery
    assert server.rows() == []
    assert "probe request_id=aisha-probe-1 status=OK flags=unsigned not stored" in caplog.text


def test_one_log_line_per_delivery_says_what_happened(start_server, caplog):
    server = start_server()
    caplog.set_level("INFO", logger="aisha_webhook_api")
    server.post(event("req-1"))
    server.post(event("req-1"))
    server.post({"request_id": "req-2", "status": "done\nfake line"})
    server.post(b"[]")
    server.post(event(note="x" * 2_000_000))
    lines = [r.getMessage() for r in caplog.records if "/api/v1/avatar/status_update" in r.getMessage()]
    assert len(lines) == 5 and all("\n" not in line for line in lines)
    assert all('"POST /api/v1/avatar/status_update HTTP/1.1"' in line for line in lines)
    assert " 200 " in lines[0] and " 200 " in lines[1] and " 200 " in lines[2]
    assert "stored request_id=req-1 status=OK flags=unsigned" in lines[0]
    assert "duplicate request_id=req-1 status=OK flags=unsigned" in lines[1]
    assert 'stored request_id=req-2 status="done\\nfake line" flags=unsigned,unknown_status' in lines[2]
    assert " 400 " in lines[3] and "refused why=body must be a JSON object" in lines[3]
    assert " 413 " in lines[4] and "refused why=body of" in lines[4]


def write_version_1_database(path: Path) -> None:
    """A store as the previous version left it: OK/ERROR only, no flags, a health_probe row."""
    db = sqlite3.connect(path)
    db.executescript("""
            CREATE TABLE events (id INTEGER PRIMARY KEY, request_id TEXT NOT NULL UNIQUE,
                gateway_request_id TEXT, status TEXT NOT NULL CHECK (status IN ('OK', 'ERROR')),
                payload TEXT, error TEXT, payload_error TEXT, fal_user_id TEXT,
                received_at TEXT NOT NULL, raw_body BLOB NOT NULL);
            CREATE INDEX events_status ON events (status, id);
            CREATE TABLE health_probe (id INTEGER PRIMARY KEY CHECK (id = 1), checked_at TEXT NOT NULL);
            INSERT INTO events VALUES (1, 'fal-1', NULL, 'OK', NULL, NULL, NULL, 'user', 't', x'7b7d');
            INSERT INTO events VALUES (2, 'fal-2', NULL, 'ERROR', NULL, 'e', NULL, NULL, 't', x'7b7d');
            INSERT INTO events VALUES (3, 'diagnose-x', NULL, 'OK', NULL, NULL, NULL, NULL, 't', x'7b7d');
            PRAGMA user_version = 1;
        """)
    db.close()


def test_version_1_database_is_migrated_keeping_every_event(tmp_path):
    from aisha_webhook_api.store import EventStore

    data = tmp_path / "data"
    data.mkdir()
    write_version_1_database(data / "events.sqlite3")
    store = EventStore(data / "events.sqlite3")
    assert [(e["request_id"], e["flags"]) for e in store.all()] == [
        ("fal-1", ""), ("fal-2", "unsigned"), ("diagnose-x", "unsigned,probe"),
    ]
    tables = {row[0] for row in store._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"events"}
    assert store._conn.execute("PRAGMA user_version").fetchone()[0] == 2
    store.close()


# --- a genuine delivery is never refused for our own trouble (issue 14) ----------------

def signed(private_key, request_id: str) -> tuple[bytes, dict]:
    body = json.dumps(event(request_id)).encode()
    return body, fal_headers(private_key, body, request_id=request_id)


def url_verifier(url: str, cache_file: Path) -> SignatureVerifier:
    """As the app builds it, without the waits between refetches."""
    keys = JwksKeys(url=url, file=None, cache_seconds=86400, cache_file=cache_file,
                    min_refresh_interval=0, retry_without_keys=0)
    return SignatureVerifier(keys)


def test_fetched_keys_survive_a_restart_while_fal_is_unreachable(start_server, jwks_endpoint, fal_key):
    endpoint = jwks_endpoint({"keys": [jwk(fal_key)]})
    env = {"AISHA_FAL_VERIFY_SIGNATURES": "1", "AISHA_FAL_JWKS_URL": endpoint.url}
    first = start_server(**env)
    assert first.post(*signed(fal_key, "req-1"))[0] == 200
    assert json.loads(first.settings.jwks_cache_path.read_text()) == endpoint.document

    endpoint.available = False
    restarted = start_server(**env)  # a new process: nothing in memory
    assert restarted.post(*signed(fal_key, "req-2"))[0] == 200
    assert [row["request_id"] for row in restarted.rows()] == ["req-1", "req-2"]
    assert endpoint.fetches == 2


def test_no_key_at_all_is_503_and_fal_retry_is_stored_once_keys_load(
    start_server, jwks_endpoint, fal_key, tmp_path, caplog
):
    endpoint = jwks_endpoint({"keys": [jwk(fal_key)]})
    endpoint.available = False
    server = start_server(url_verifier(endpoint.url, tmp_path / "cache.json"))
    body, headers = signed(fal_key, "req-1")
    assert server.post(body, headers) == (503, {"error": "signature keys unavailable"})
    assert server.rows() == []
    assert "cannot verify signatures: cannot load fal keys from http://127.0.0.1:" in caplog.text

    endpoint.available = True
    assert server.post(body, headers)[0] == 200  # fal's retry
    assert [row["fal_user_id"] for row in server.rows()] == ["fal-user"]


def test_unknown_key_while_fal_is_unreachable_is_503_not_401(start_server, jwks_endpoint, fal_key, tmp_path):
    endpoint = jwks_endpoint({"keys": [jwk(fal_key)]})
    server = start_server(url_verifier(endpoint.url, tmp_path / "cache.json"))
    assert server.post(*signed(fal_key, "req-1"))[0] == 200

    rotated = Ed25519PrivateKey.generate()  # fal rotated its key while its JWKS is down
    endpoint.document = {"keys": [jwk(rotated)]}
    endpoint.available = False
    body, headers = signed(rotated, "req-2")
    assert server.post(body, headers)[0] == 503
    endpoint.available = True
    assert server.post(body, headers)[0] == 200
    # with the keys fetched just now, a signature by no key of fal's is proven wrong
    assert server.post(*signed(Ed25519PrivateKey.generate(), "req-3"))[0] == 401
    assert [row["request_id"] for row in server.rows()] == ["req-1", "req-2"]


def test_refetch_is_rate_limited_but_never_turns_our_outage_into_401(jwks_endpoint, fal_key, tmp_path):
    from aisha_webhook_api.signature import InvalidSignature, KeysUnavailable

    endpoint = jwks_endpoint({"keys": [jwk(fal_key)]})
    keys = JwksKeys(url=endpoint.url, file=None, cache_seconds=86400, cache_file=tmp_path / "c.json")
    verifier = SignatureVerifier(keys)
    body = b'{"request_id":"r","status":"OK"}'
    forged = fal_headers(Ed25519PrivateKey.generate(), body)
    for _ in range(3):  # keys fetched less than a minute ago: proven wrong, no refetch
        with pytest.raises(InvalidSignature):
            verifier.verify(forged, body)
    assert endpoint.fetches == 1

    endpoint.available = False
    outage = JwksKeys(url=endpoint.url, file=None, cache_seconds=86400, cache_file=tmp_path / "c.json")
    with pytest.raises(KeysUnavailable):
        SignatureVerifier(outage).verify(forged, body)
    assert SignatureVerifier(outage).verify(fal_headers(fal_key, body), body) == "fal-user"


def test_unusable_cache_file_is_ignored(jwks_endpoint, fal_key, tmp_path):
    from aisha_webhook_api.signature import KeysUnavailable

    endpoint = jwks_endpoint({"keys": [jwk(fal_key)]})
    endpoint.available = False
    cache = tmp_path / "cache.json"
    cache.write_text('{"keys": [')
    keys = JwksKeys(url=endpoint.url, file=None, cache_seconds=86400, cache_file=cache)
    with pytest.raises(KeysUnavailable, match="cannot load fal keys"):
        keys.get()


def test_refused_delivery_is_logged_with_the_request_id_it_claims(signed_server, fal_key, caplog):
    caplog.set_level("INFO", logger="aisha_webhook_api")
    body = json.dumps(event("unsigned-1")).encode()
    assert signed_server.post(body)[0] == 401
    forged = fal_headers(Ed25519PrivateKey.generate(), body, request_id="forged-1")
    assert signed_server.post(body, forged)[0] == 401
    assert signed_server.post(b"[" * 50_000)[0] == 401
    assert "refused request_id=unsigned-1 why=invalid signature: missing header" in caplog.text
    assert "refused request_id=forged-1 why=invalid signature: signature matches no fal key" in caplog.text
    assert "refused request_id=- why=invalid signature" in caplog.text


def test_version_1_snapshot_is_accepted_for_a_restore(tmp_path):
    """A snapshot taken before the upgrade restores: the app migrates it when it opens it."""
    from aisha_webhook_api.backup import snapshot_problem

    write_version_1_database(tmp_path / "old.sqlite3")
    assert snapshot_problem(tmp_path / "old.sqlite3") is None
