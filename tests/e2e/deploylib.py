"""Run the real `pyinfra inventory.py deploy.py` against lab hosts and read its results."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from aisha_infra.lab.hosts import LabHost
from tests.project import PROJECT_ROOT

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


@dataclass
class DeployRun:
    returncode: int
    output: str

    @property
    def totals(self) -> dict[str, int]:
        """The 'Grand total' row of pyinfra's results: hosts, success (= changed), error, no_change."""
        match = re.search(r"Grand total\s+(\d+)\s+(\d+|-)\s+(\d+|-)\s+(\d+|-)", self.output)
        if not match:
            raise AssertionError(f"no results table in pyinfra's output:\n{self.output[-3000:]}")
        values = [0 if v == "-" else int(v) for v in match.groups()]
        return dict(zip(("operations", "changed", "errors", "no_change"), values))

    @property
    def changed_operations(self) -> list[str]:
        rows = re.findall(r"^\s{4}(\S.*?)\s{2,}\d+\s+(\d+)\s+(?:\d+|-)\s+(?:\d+|-)\s*$", self.output, re.M)
        return [name for name, changed in rows if changed != "0"]

    def check(self) -> "DeployRun":
        assert self.returncode == 0, f"deploy failed (exit {self.returncode}):\n{self.output[-6000:]}"
        return self


def write_hosts_file(path: Path, hosts: list[LabHost], data: dict | None = None,
                    groups: dict[str, str] | None = None) -> Path:
    """An AISHA_HOSTS file for `hosts`; first host canary unless `groups` says otherwise."""
    entries = []
    for index, host in enumerate(hosts):
        _, ssh_data = host.pyinfra_host()
        group = (groups or {}).get(host.name, "canary" if index == 0 else "production")
        entries.append({"name": host.name, "address": host.address, "groups": [group],
                        "data": {**ssh_data, **(data or {})}})
    path.write_text(json.dumps(entries, indent=2))
    return path


def run_deploy(hosts_file: Path, *extra_args: str, cwd: Path = PROJECT_ROOT, timeout: int = 900,
               env: dict | None = None, yes: bool = True) -> DeployRun:
    """`pyinfra -y ...`; yes=False keeps pyinfra's change detection (which -y skips), for --diff --dry."""
    result = subprocess.run(
        [PYINFRA, *(["-y"] if yes else []), *extra_args, "inventory.py", "deploy.py"],
        cwd=cwd, env={**os.environ, "AISHA_HOSTS": str(hosts_file), "PYTHONPATH": str(cwd), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
    )
    return DeployRun(result.returncode, result.stdout)


def copy_project(dest: Path) -> Path:
    """A copy of the deploy (code, tasks, templates) to break on purpose."""
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", ".pytest_cache", "*.egg-info", "bench")
    shutil.copytree(PROJECT_ROOT, dest, ignore=ignore, symlinks=True)
    return dest
