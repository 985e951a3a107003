"""The one-command facts behind fast re-runs, read from real command output, and the
decisions built on them: hand over to pyinfra's own operation whenever anything differs."""

import subprocess

from aisha_infra.deploy.facts.accounts import Account
from aisha_infra.deploy.facts.files import DirectoryTree
from aisha_infra.deploy.operations import accounts
from aisha_infra.deploy.operations.app import in_sync, wanted_tree
from aisha_infra.deploy.settings import BUNDLED_BACKEND

EXCLUDE, EXCLUDE_DIR = ["*.pyc", "__pycache__"], ["__pycache__", "*/__pycache__"]


def read(fact, *args):
    output = subprocess.run(["sh", "-c", fact.command(*args)], capture_output=True, text=True).stdout
    return fact.process(output.splitlines()) if output.strip() else fact.default()


def test_account_fact_reads_one_real_account():
    root = read(Account(), "root")
    assert root["home"] == "/root" and root["group"] == "root" and root["shell"]
    assert read(Account(), "no-such-user-aisha") is None


def test_system_user_hands_over_only_when_the_account_differs():
    from tests.unit.fakehost import run_operation

    wanted = {"home": "/opt/aisha-backend", "shell": "/usr/sbin/nologin", "group": "aisha"}
    args = dict(user="aisha", group="aisha", home="/opt/aisha-backend", shell="/usr/sbin/nologin")
    commands, noops = run_operation(accounts.system_user, {Account: wanted}, **args)
    assert commands == [] and noops


def tree(tmp_path):
    src = tmp_path / "src"
    (src / "pkg" / "__pycache__").mkdir(parents=True)
    (src / "pkg" / "app.py").write_text("print('hi')\n")
    (src / "pkg" / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"x")
    (src / "requirements.txt").write_text("")
    return src


def test_directory_tree_fact_and_wanted_tree_agree_on_a_real_copy(tmp_path):
    src = tree(tmp_path)
    me = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    group = subprocess.run(["id", "-gn"], capture_output=True, text=True).stdout.strip()
    dest = tmp_path / "dest"
    subprocess.run(["cp", "-r", str(src), str(dest)], check=True)
    subprocess.run(["sh", "-c", f"find {dest} -type d -exec chmod 755 {{}} + && find {dest} -type f -exec chmod 644 {{}} +"], check=True)
    subprocess.run(["rm", "-r", str(dest / "pkg" / "__pycache__")], check=True)

    wanted = wanted_tree(src, me, group, "0644", "0755", EXCLUDE, EXCLUDE_DIR)
    remote = read(DirectoryTree(), str(dest))
    assert "pkg/__pycache__/app.cpython-311.pyc" not in wanted
    assert in_sync(wanted, remote, str(dest), EXCLUDE)

    (dest / "pkg" / "app.py").write_text("print('changed')\n")  # drift: content
    assert not in_sync(wanted, read(DirectoryTree(), str(dest)), str(dest), EXCLUDE)
    (dest / "pkg" / "app.py").write_text("print('hi')\n")
    (dest / "stray.py").write_text("")  # drift: an extra file files.sync would delete
    assert not in_sync(wanted, read(DirectoryTree(), str(dest)), str(dest), EXCLUDE)
    (dest / "stray.py").unlink()
    (dest / "requirements.txt").chmod(0o600)  # drift: mode
    assert not in_sync(wanted, read(DirectoryTree(), str(dest)), str(dest), EXCLUDE)


def test_missing_directory_is_never_in_sync(tmp_path):
    wanted = wanted_tree(tree(tmp_path), "root", "root", "0644", "0755", EXCLUDE, EXCLUDE_DIR)
    assert read(DirectoryTree(), str(tmp_path / "absent")) is None
    assert not in_sync(wanted, None, "/absent", EXCLUDE)


def test_pip_only_for_requirements_that_list_packages(tmp_path):
    from aisha_infra.deploy.operations.app import lists_packages

    requirements = tmp_path / "requirements.txt"
    assert not lists_packages(requirements)  # none at all
    requirements.write_text("# the bundled app needs only the standard library\n\n")
    assert not lists_packages(requirements)
    requirements.write_text("# pinned\n--no-index\n./vendor/x-1.0-py3-none-any.whl  # vendored\n")
    assert lists_packages(requirements)


def test_the_bundled_backend_reached_through_its_link_has_a_wanted_tree():
    """aisha_infra/backend links to backend/: a linked top is walked, not left to files.sync."""
    assert BUNDLED_BACKEND.is_symlink() or BUNDLED_BACKEND.is_dir()
    wanted = wanted_tree(BUNDLED_BACKEND, "root", "root", "0644", "0755", EXCLUDE, EXCLUDE_DIR)
    assert wanted is not None and "aisha_webhook_api/server.py" in wanted
