"""The Let's Encrypt carry-over archive is checked and re-packed on the control machine;
the host unpacks only what was checked, owned by root, without trusting the archive."""

from __future__ import annotations

import base64
import io
import json
import tarfile

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aisha_infra.deploy.letsencrypt_archive import ArchiveError, checked_archive
from aisha_infra.deploy.operations.letsencrypt import restore_command
from aisha_infra.deploy.settings import build_settings
from tests.unit.letsencrypt_lineage import file_, lineage_members, write_archive


def repacked_members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        return {member.name: member for member in archive.getmembers()}


def test_a_certbot_export_passes_and_is_repacked_owned_by_root(tmp_path):
    members, _, _ = lineage_members()
    members.append(file_("letsencrypt/renewal-hooks/deploy/hook.sh", b"#!/bin/sh\n", 0o4777))  # set-uid, world-writable
    path = write_archive(tmp_path / "le.tar.gz", members)

    repacked = repacked_members(checked_archive(path, "aibots.test"))

    assert set(repacked) == {member[1] for member in members}
    assert all(m.uid == 0 and m.gid == 0 and m.uname == "root" for m in repacked.values())
    assert repacked["letsencrypt/archive/aibots.test/privkey1.pem"].mode == 0o600
    assert repacked["letsencrypt/renewal-hooks/deploy/hook.sh"].mode == 0o755  # no set-id, no world write
    assert repacked["letsencrypt/live/aibots.test/fullchain.pem"].linkname == "../../archive/aibots.test/fullchain1.pem"


def test_repacking_is_deterministic(tmp_path):
    path = write_archive(tmp_path / "le.tar.gz", lineage_members()[0])
    assert checked_archive(path, "aibots.test") == checked_archive(path, "aibots.test")


def test_a_private_key_that_is_not_pem_is_refused(tmp_path):
    members = [m if m[1] != "letsencrypt/archive/aibots.test/privkey1.pem" else file_(m[1], b"garbage", 0o600)
               for m in lineage_members()[0]]
    with pytest.raises(ArchiveError, match="privkey.pem is not an unencrypted PEM private key"):
        checked_archive(write_archive(tmp_path / "le.tar.gz", members), "aibots.test")


def test_the_host_unpacks_into_a_fresh_directory_as_root():
    command = restore_command("/root/payload.tar.gz")
    assert "tar --no-same-owner -xzf /root/payload.tar.gz -C \"$staging\"" in command
    assert "mktemp -d /etc/.aisha-letsencrypt-restore." in command
    assert "-C /etc " not in command and "trap 'rm -rf" in command


def test_good_uploads_are_accepted(tmp_path):
    key = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k",
                                          "x": base64.urlsafe_b64encode(key).decode().rstrip("=")}]}))
    archive = write_archive(tmp_path / "le.tar.gz", lineage_members()[0])
    settings = build_settings({
        "aisha_domain": "aibots.test", "fal_jwks_file": str(jwks), "letsencrypt_restore_archive": str(archive),
        "letsencrypt_email": "ops@example.com", "app_environment": {"AISHA_REQUEST_TIMEOUT": "30", "LOG": "a \"b\" 100%"},
        "letsencrypt_server": "https://198.18.0.1:14000/dir", "aisha_base_dir": "/srv/aisha-backend_2",
    })
    assert settings.fal_jwks_file == str(jwks)
