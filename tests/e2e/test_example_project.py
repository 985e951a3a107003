"""A user's own project (examples/webhook-host) with the built wheel installed in a fresh
venv, no repository around it: it provisions a lab host, and a second run changes nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from aisha_infra.checks import health
from aisha_infra.lab.hosts import LabHost
from tests.e2e.deploylib import DeployRun
from tests.project import PROJECT_ROOT

pytestmark = pytest.mark.e2e
EXAMPLE = PROJECT_ROOT / "examples" / "webhook-host"
DOMAIN = "webhooks.example.com"  # the example's group_data/all.py
# What building the wheel reads; never the tests, the venv or an old build/.
SOURCES = ("pyproject.toml", "README.md", "aisha_infra", "tasks", "templates", "backend")


@dataclass
class ExampleProject:
    wheel: Path
    venv: Path
    project: Path
    env: dict
    host: LabHost
    cert_pem: Path
    first_run: DeployRun

    def run(self, *command: str, timeout: int = 900) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=self.project, env=self.env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)

    def deploy(self) -> DeployRun:
        result = self.run(str(self.venv / "bin" / "pyinfra"), "-y", "inventory.py", "deploy.py")
        return DeployRun(result.returncode, result.stdout)


def build_wheel(work: Path) -> Path:
    source = work / "source"
    for name in SOURCES:
        path = PROJECT_ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(source), "-w", str(work / "dist")],
                   check=True, timeout=300, stdout=subprocess.DEVNULL)
    (wheel,) = (work / "dist").glob("aisha_infra-*.whl")
    return wheel


@pytest.fixture(scope="module")
def example(lab, tmp_path_factory) -> ExampleProject:
    work = tmp_path_factory.mktemp("example")
    wheel = build_wheel(work)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)], check=True, timeout=600,
                   stdout=subprocess.DEVNULL)

    host = lab.add_hosts(count=1)[0]
    try:
        project = work / "project"
        shutil.copytree(EXAMPLE, project)
        # the lab's SSH data (its key, host keys new at every boot) as the host's pyinfra data
        (project / "hosts.json").write_text(json.dumps([list(host.pyinfra_host())]))
        home = work / "home"
        home.mkdir()
        # No PYTHONPATH, no virtualenv of ours: only what a user's shell would have.
        env = {"PATH": f"{venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
        example = ExampleProject(wheel, venv, project, env, host, work / "cert.pem", DeployRun(1, ""))
        example.first_run = example.deploy()
        example.cert_pem.write_text(host.run("cat /opt/aisha-backend/ssl/webhooks_example_com.crt", check=False).stdout)
        yield example
    finally:
        lab.destroy_host(host.name)


def repository_files(directory: str) -> set[str]:
    root = PROJECT_ROOT / directory
    return {path.relative_to(root).as_posix() for path in root.rglob("*")
            if path.is_file() and "__pycache__" not in path.parts}


def test_the_wheel_holds_our_package_and_nothing_else(example):
    names = zipfile.ZipFile(example.wheel).namelist()
    strays = [name for name in names if not name.startswith(("aisha_infra/", "aisha_infra-"))]
    assert not strays, f"outside our package: {strays}"
    for directory in ("tasks", "templates", "backend", "aisha_infra/deploy/onhost"):
        inside = directory if directory.startswith("aisha_infra/") else f"aisha_infra/{directory}"
        shipped = {name.removeprefix(inside + "/") for name in names if name.startswith(inside + "/")}
        assert shipped == repository_files(directory), directory


def test_the_wheel_is_what_runs(example):
    found = example.run(str(example.venv / "bin" / "python"), "-c",
                        "import aisha_infra, importlib.util as u; print(aisha_infra.__file__); "
                        "print([m for m in ('tasks', 'templates', 'backend', 'tests') if u.find_spec(m)])")
    assert found.returncode == 0, found.stdout
    location, top_level = found.stdout.splitlines()
    site_packages = next((example.venv / "lib").glob("python3*/site-packages"))
    assert Path(location) == site_packages / "aisha_infra" / "__init__.py"
    assert top_level == "[]", "the wheel must not install top-level tasks/templates/backend/tests"
    assert not (site_packages / "tests").exists()


def test_first_run_provisions_the_host(example):
    run = example.first_run.check()
    assert "HTTPS health OK" in run.output and "Webhook POST OK" in run.output
    assert f"FAL_WEBHOOK_URL=https://{DOMAIN}:8443/api/v1/avatar/status_update" in run.output
    ok, detail = health.check_https_health(example.host.address, DOMAIN, 8443, ca_bundle=str(example.cert_pem))
    assert ok, detail


def test_the_package_data_reached_the_host(example):
    """The bundled backend and the on-host checker, uploaded from the installed package."""
    package = next((example.venv / "lib").glob("python3*/site-packages")) / "aisha_infra"
    for local, remote in ((package / "backend/aisha_webhook_api/server.py", "/opt/aisha-backend/app/aisha_webhook_api/server.py"),
                          (package / "deploy/onhost/aisha_watch.py", "/usr/local/lib/aisha-watch/aisha_watch.py")):
        on_host = example.host.run(f"sha256sum {remote}").stdout.split()[0]
        assert on_host == hashlib.sha256(local.read_bytes()).hexdigest(), remote


def test_second_run_changes_nothing(example):
    run = example.deploy().check()
    assert run.totals["changed"] == 0, f"changed on re-run: {run.changed_operations}"
    assert "HTTPS health OK" in run.output
