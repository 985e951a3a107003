"""`aisha-infra webhook`: send a test delivery signed the way fal signs its webhooks.

    aisha-infra webhook keygen DIR      # a test key pair: DIR/fal-test-key.pem (0600)
                                        # and DIR/fal-test-jwks.json (its public key)
    aisha-infra webhook send URL --sign-key DIR/fal-test-key.pem [--data JSON]
                                 [--connect ADDRESS] [--ca-bundle PEM | --insecure]

The host trusts the test key when its settings say `fal_jwks_file = "DIR/fal-test-jwks.json"`
(that file then replaces fal's published keys: use it on lab and staging hosts). fal's
scheme: Ed25519 over `request_id \\n user_id \\n timestamp \\n sha256_hex(body)`, in the
X-Fal-Webhook-Request-Id, -User-Id, -Timestamp and -Signature headers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from aisha_infra.checks import health

KEY_NAME = "fal-test-key.pem"
JWKS_NAME = "fal-test-jwks.json"
TEST_USER_ID = "aisha-infra-test"


def signature_headers(private_key, request_id: str, body: bytes, user_id: str = TEST_USER_ID,
                      timestamp: int | None = None) -> dict[str, str]:
    timestamp = str(int(time.time()) if timestamp is None else timestamp)
    message = "\n".join((request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()))
    return {
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": user_id,
        "X-Fal-Webhook-Timestamp": timestamp,
        "X-Fal-Webhook-Signature": private_key.sign(message.encode()).hex(),
    }


def public_jwk(private_key, kid: str = "aisha-infra-test") -> dict:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig",
            "x": base64.urlsafe_b64encode(raw).decode().rstrip("=")}


def write_test_key(directory: Path) -> tuple[Path, Path]:
    """A new Ed25519 key (0600, created with that mode) and the JWKS that trusts it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    key_path, jwks_path = directory / KEY_NAME, directory / JWKS_NAME
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    jwks_path.write_text(json.dumps({"keys": [public_jwk(key)]}, indent=2) + "\n")
    return key_path, jwks_path


def load_key(path: Path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def register(subparsers) -> None:
    parser = subparsers.add_parser("webhook", help="send a (signed) test delivery to a webhook URL")
    actions = parser.add_subparsers(dest="action", required=True)
    keygen = actions.add_parser("keygen", help=f"write {KEY_NAME} (0600) and {JWKS_NAME} into DIR")
    keygen.add_argument("directory", type=Path)
    keygen.set_defaults(run=_run_keygen)
    send = actions.add_parser("send", help="POST one delivery; exit 0 on a 2xx answer")
    send.add_argument("url", help="e.g. https://webhooks.example.com:8443/api/v1/avatar/status_update")
    send.add_argument("--data", help='the JSON body (default: a fal-shaped "OK" event with a new request_id)')
    send.add_argument("--sign-key", type=Path, help="Ed25519 private key (PEM) to sign with, as fal does")
    send.add_argument("--user-id", default=TEST_USER_ID, help="X-Fal-Webhook-User-Id to sign")
    send.add_argument("--connect", help="address to connect to instead of the URL's host name (no DNS)")
    trust = send.add_mutually_exclusive_group()
    trust.add_argument("--ca-bundle", help="PEM file to verify the server with (e.g. a self-signed certificate)")
    trust.add_argument("--insecure", "-k", action="store_true", help="do not verify the server (like curl -k)")
    send.set_defaults(run=_run_send)


def _run_keygen(args) -> int:
    try:
        key_path, jwks_path = write_test_key(args.directory)
    except FileExistsError as exc:
        print(f"error: {exc.filename} exists; keep it or remove it first", file=sys.stderr)
        return 1
    print(f"wrote {key_path} (mode 0600) and {jwks_path}. Make the host trust the key with, in its settings:\n"
          f"  fal_jwks_file = {str(jwks_path)!r}\n"
          f"  fal_verify_signatures = True\n"
          f"then: aisha-infra webhook send https://<domain>:8443/api/v1/avatar/status_update --sign-key {key_path}")
    return 0


def _run_send(args) -> int:
    url = urlsplit(args.url)
    if url.scheme != "https" or not url.hostname:
        print(f"error: {args.url!r} is not an https:// URL", file=sys.stderr)
        return 2
    request_id = f"test-{uuid.uuid4()}"
    body = (args.data or json.dumps({"request_id": request_id, "gateway_request_id": request_id,
                                     "status": "OK", "payload": {}, "error": None})).encode()
    headers = {"Content-Type": "application/json"}
    if args.sign_key:
        try:
            document = json.loads(body)
            key = load_key(args.sign_key)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if isinstance(document, dict) and isinstance(document.get("request_id"), str):
            request_id = document["request_id"]
        headers.update(signature_headers(key, request_id, body, args.user_id))
    answer = health.post(
        args.connect or url.hostname, url.hostname, url.port or 443, url.path or "/", body, headers,
        ca_bundle=args.ca_bundle, verify=not args.insecure,
    )
    if isinstance(answer, health.Finding):
        print(f"error: {answer.explain()}", file=sys.stderr)
        return 1
    status, reply = answer
    print(f"HTTP {status} {reply.decode('utf-8', 'replace').strip()}")
    return 0 if 200 <= status < 300 else 1
