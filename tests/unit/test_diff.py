"""`pyinfra --diff` is honest for the files our operations write: a unified diff against
the live file (not the staged `.aisha-new` or a new release's path as a new file), and
never a secret's value. Operations run through pyinfra's own machinery (recording.py)
with the live file's content as the host's answer."""

from __future__ import annotations

import logging
import re

import pytest

from aisha_infra.deploy import paths, rendering
from aisha_infra.deploy.operations import app, nginx, uploads
from aisha_infra.deploy.settings import build_settings
from tests.unit.recording import record_operation

SITE = "/etc/nginx/sites-available/aisha-webhook.conf"
NGINX_1_26 = {"nginx -v": ["nginx version: nginx/1.26.3"]}


def site(**data) -> str:
    context = rendering.site_context(build_settings({"aisha_domain": "a.test", **data}))
    return rendering.render("nginx/aisha-webhook.conf.j2", {**context, "http2_directive": True})


@pytest.fixture
def shown(caplog):
    """What pyinfra printed, one message a line, colours removed."""
    caplog.set_level(logging.INFO, logger="pyinfra")
    return lambda: "\n".join(re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage()) for record in caplog.records)


def changed_lines(output: str) -> set[str]:
    """The diff's - and + lines (the API runs an operation twice, to prepare and to execute)."""
    return {line.strip() for line in output.splitlines() if line.startswith(("  - ", "  + "))}


def test_one_setting_change_shows_one_changed_line_of_the_site(shown):
    live = site().splitlines()
    recorded = record_operation(
        nginx.site_config, {}, diff=True, answers={**NGINX_1_26, f"&& cat {SITE}": live},
        template="nginx/aisha-webhook.conf.j2", dest=SITE,
        context=rendering.site_context(build_settings({"aisha_domain": "a.test", "nginx_rate_limit_burst": 300})),
    )
    output = shown()
    assert f"Will modify {SITE}" in output
    assert ".aisha-new" not in output
    assert changed_lines(output) == {"-     limit_req zone=aisha_webhook burst=200 nodelay;",
                                     "+     limit_req zone=aisha_webhook burst=300 nodelay;"}, output
    assert [path for path, _ in recorded.uploads] == [f"{SITE}.aisha-new"]  # still staged and tested


def test_without_diff_nothing_is_shown(shown):
    record_operation(nginx.site_config, {}, answers={**NGINX_1_26, f"&& cat {SITE}": site().splitlines()},
                     template="nginx/aisha-webhook.conf.j2", dest=SITE,
                     context=rendering.site_context(build_settings({"aisha_domain": "a.test"})))
    assert "Will " not in shown()


def test_a_file_not_there_yet_shows_whole_as_new():
    assert [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in uploads.diff_lines(None, "a\nb\n")] == [
        "@@ -0,0 +1,2 @@", "+ a", "+ b"]


def test_a_new_releases_unit_is_diffed_against_the_serving_unit(shown):
    serving = "[Service]\nExecStart=/opt/app/run\nRestart=always\n"
    record_operation(
        uploads.text_file, {}, diff=True, answers={f"&& cat {paths.SERVICE_UNIT_PATH}": serving.splitlines()},
        dest="/opt/aisha-backend/releases/abc/aisha-api.service",
        content=serving.replace("always", "on-failure"), live=paths.SERVICE_UNIT_PATH,
    )
    output = shown()
    assert "Will modify /opt/aisha-backend/releases/abc/aisha-api.service" in output
    assert changed_lines(output) == {"- Restart=always", "+ Restart=on-failure"}, output


def test_the_environment_shows_changed_names_against_the_serving_release_values_masked(shown):
    live = "/opt/aisha-backend/current/aisha-api.env"
    record_operation(
        app.secret_file, {}, diff=True, name="Environment",
        answers={f"&& cat {live}": ["FAL_API_TOKEN='old-token-value'", "LOG_LEVEL='info'", "KEEP='same'"]},
        dest="/opt/aisha-backend/releases/new/aisha-api.env", live=live,
        content="FAL_API_TOKEN='new-token-value'\nLOG_LEVEL='debug'\nKEEP='same'\n",
    )
    output = shown()
    assert f"~ FAL_API_TOKEN={rendering.MASK}" in output and "~ LOG_LEVEL='debug'" in output
    assert "token-value" not in output and "KEEP" not in output


def test_the_alert_url_never_shows(shown):
    url = "https://hooks.example.test/T0KEN-secret?token=abc"
    record_operation(app.secret_file, {}, diff=True, name="Alert webhook URL", answers={"&& cat": ["https://hooks.example.test/old"]},
                     dest=paths.WATCH_ALERT_URL_PATH, content=url + "\n", environment=False)
    output = shown()
    assert f"Will write {paths.WATCH_ALERT_URL_PATH}: a secret (0600 root), content not shown" in output
    assert "hooks.example" not in output and "T0KEN" not in output


def test_a_new_releases_code_is_diffed_file_by_file_against_the_serving_code(shown, tmp_path):
    (tmp_path / "main.py").write_text("print('hello')\nprint('v2')\n")
    (tmp_path / "added.py").write_text("ADDED = True\n")
    live, dest = "/opt/aisha-backend/current/app", "/opt/aisha-backend/releases/new/app"
    serving_tree = ["d root root 755 ", "f root root 644 main.py", "f root root 644 removed.py", "---",
                    "da39a3ee5e6b4b0d3255bfef95601890afd80709  ./main.py",
                    "da39a3ee5e6b4b0d3255bfef95601890afd80709  ./removed.py"]
    recorded = record_operation(
        app.mirrored_directory, {}, diff=True, name="Upload backend",
        answers={f"cd {live} &&": serving_tree, f"&& cat {live}/main.py": ["print('hello')", "print('v1')"]},
        src=str(tmp_path), dest=dest, user="root", group="root", mode="0644", dir_mode="0755",
        exclude=[], exclude_dir=[], live=live,
    )
    output = shown()
    assert f"Will modify {dest}/main.py" in output and f"Will create {dest}/added.py" in output
    assert changed_lines(output) == {"- print('v1')", "+ print('v2')", "+ ADDED = True"}, output
    assert f"Will leave out {live}/removed.py" in output
    assert sorted(path for path, _ in recorded.uploads) == [f"{dest}/added.py", f"{dest}/main.py"]
    assert any(f"install -d -m 0755 -o root -g root {dest}" in command for command in recorded.commands)
