"""`aisha-infra webhook keygen|send`: a test delivery signed so that the bundled app's own
verifier accepts it with the generated JWKS (what the host gets as fal_jwks_file)."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from aisha_infra.cli import main

from .tlscases import DOMAIN, build_pki
from .tlsserver import LocalTLSServer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "backend"))
from aisha_webhook_api.signature import InvalidSignature, JwksKeys, SignatureVerifier  # noqa: E402


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return build_pki(tmp_path_factory.mktemp("pki"))


def test_keygen_writes_a_private_key_and_the_jwks_that_trusts_it(tmp_path, capsys):
    assert main(["webhook", "keygen", str(tmp_path / "keys")]) == 0
    key, jwks = tmp_path / "keys/fal-test-key.pem", tmp_path / "keys/fal-test-jwks.json"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    [jwk] = json.loads(jwks.read_text())["keys"]
    assert (jwk["kty"], jwk["crv"]) == ("OKP", "Ed25519")
    assert f"fal_jwks_file = '{jwks}'" in capsys.readouterr().out

    before = key.read_bytes()
    assert main(["webhook", "keygen", str(tmp_path / "keys")]) == 1  # never overwrites a key
    assert key.read_bytes() == before


def test_send_signs_as_fal_and_the_apps_verifier_agrees(tmp_path, pki, capsys):
    assert main(["webhook", "keygen", str(tmp_path)]) == 0
    capsys.readouterr()
    data = json.dumps({"request_id": "signed-1", "status": "OK", "payload": {"n": 1}})
    case = pki.cases["good"]
    with LocalTLSServer(case.chain, case.key) as server:
        url = f"https://{DOMAIN}:{server.port}/api/v1/avatar/status_update"
        code = main(["webhook", "send", url, "--data", data, "--sign-key", str(tmp_path / "fal-test-key.pem"),
                     "--connect", "127.0.0.1", "--ca-bundle", str(pki.root)])
        [posted] = server.posted
    assert code == 0
    assert capsys.readouterr().out == 'HTTP 200 {"stored":true,"request_id":"signed-1"}\n'
    headers, body = posted["headers"], json.dumps(posted["body"]).encode()
    assert body == data.encode() and headers["X-Fal-Webhook-Request-Id"] == "signed-1"

    keys = JwksKeys(url="", file=tmp_path / "fal-test-jwks.json", cache_seconds=60)
    assert SignatureVerifier(keys).verify(headers, body) == "aisha-infra-test"
    with pytest.raises(InvalidSignature):
        SignatureVerifier(keys).verify(headers, body.replace(b'"OK"', b'"ERROR"'))


def test_send_fails_on_an_untrusted_server_and_on_a_refusal(tmp_path, pki, capsys):
    case = pki.cases["good"]
    with LocalTLSServer(case.chain, case.key) as server:
        url = f"https://{DOMAIN}:{server.port}/api/v1/avatar/status_update"
        assert main(["webhook", "send", url, "--connect", "127.0.0.1"]) == 1  # private CA: not trusted
        assert "TLS verification failed" in capsys.readouterr().err
        assert server.posted == []
        assert main(["webhook", "send", url.replace("status_update", "other"), "--connect", "127.0.0.1",
                     "--insecure"]) == 1
        assert capsys.readouterr().out.startswith("HTTP 404 ")
    assert main(["webhook", "send", "http://example.invalid/x"]) == 2
