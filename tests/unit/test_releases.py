"""App releases: named after their content, activated by a script that rolls back."""

import subprocess

from aisha_infra.deploy.operations.app import activation_script, environment_changes, release_id

EXCLUDE, EXCLUDE_DIR = ["*.pyc"], ["__pycache__"]


def test_release_id_follows_code_and_configuration(tmp_path):
    (tmp_path / "app.py").write_text("print(1)\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"junk")
    first = release_id(tmp_path, EXCLUDE, EXCLUDE_DIR, "unit", "env", b"")
    assert first == release_id(tmp_path, EXCLUDE, EXCLUDE_DIR, "unit", "env", b"")
    (tmp_path / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"other junk")  # not uploaded
    assert first == release_id(tmp_path, EXCLUDE, EXCLUDE_DIR, "unit", "env", b"")
    assert first != release_id(tmp_path, EXCLUDE, EXCLUDE_DIR, "unit", "env2", b"")
    assert first != release_id(tmp_path, EXCLUDE, EXCLUDE_DIR, "unit", "env", b"{}")
    (tmp_path / "app.py").write_text("print(2)\n")
    assert first != release_id(tmp_path, EXCLUDE, EXCLUDE_DIR, "unit", "env", b"")


def test_diff_of_the_environment_masks_secret_values():
    old = "# banner\nAPI_TOKEN='old-secret'\nLOG_LEVEL='info'\nGONE='x'\n"
    new = "# banner\nAPI_TOKEN='new-secret'\nLOG_LEVEL='debug'\nDB_PASSWORD='pw'\n"
    lines = environment_changes(old, new)
    assert lines == ["~ API_TOKEN=********", "+ DB_PASSWORD=********", "- GONE", "~ LOG_LEVEL='debug'"]
    assert not any("secret" in line or "pw'" in line for line in lines)


def test_activation_script_is_valid_sh():
    script = activation_script("/opt/aisha-backend", "0123456789ab", "/etc/systemd/system/aisha-api.service",
                               "aisha-api.service", 3, 2, ["/opt/aisha-backend/fal-jwks.json"])
    assert subprocess.run(["sh", "-n", "-c", script], capture_output=True).returncode == 0
    assert "tail -n +4" in script and "releases/0123456789ab" in script
