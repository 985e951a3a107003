"""What the deploy tells the bundled app about fal signatures (issue 14): verification is
on by default on a public (Let's Encrypt) server, off in the self-signed lab mode."""

import pytest

from aisha_infra.deploy import rendering
from aisha_infra.deploy.settings import SettingsError, build_settings
from aisha_infra.tools.webhook import write_test_key

LETSENCRYPT = {"tls_mode": "letsencrypt", "letsencrypt_email": "ops@example.org"}


@pytest.mark.parametrize("data, verifies", [
    ({}, False),
    (LETSENCRYPT, True),
    ({"fal_verify_signatures": True}, True),
    ({**LETSENCRYPT, "fal_verify_signatures": False}, False),
])
def test_signature_verification_defaults_by_tls_mode(data, verifies):
    settings = build_settings({"aisha_domain": "hooks.example.org", **data})
    assert settings.verifies_signatures is verifies
    environment = rendering.app_environment(settings)
    assert environment["AISHA_FAL_VERIFY_SIGNATURES"] == ("1" if verifies else "0")
    # fetching fal's JWKS needs the network; otherwise the app gets none
    assert rendering.service_context(settings)["private_network"] is not verifies


def test_verification_with_a_local_jwks_needs_no_network(tmp_path):
    _, jwks = write_test_key(tmp_path)
    settings = build_settings({"aisha_domain": "hooks.example.org", **LETSENCRYPT, "fal_jwks_file": str(jwks)})
    assert rendering.app_environment(settings)["AISHA_FAL_JWKS_FILE"] == "/opt/aisha-backend/current/fal-jwks.json"
    assert rendering.service_context(settings)["private_network"] is True


def test_verification_setting_must_be_a_boolean_or_none():
    with pytest.raises(SettingsError, match="fal_verify_signatures: 'yes' is not True or False"):
        build_settings({"aisha_domain": "hooks.example.org", "fal_verify_signatures": "yes"})
