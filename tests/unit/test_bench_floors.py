"""The benchmark's floors (bench/run.py) stay the same job as the deploy: valid shell,
the deploy's own rendered files and packages. Speed itself is measured by `make bench`."""

import importlib.util
import subprocess
import sys
from pathlib import Path

from aisha_infra.deploy import paths
from aisha_infra.tasks.packages import PACKAGES
from tests.project import PROJECT_ROOT


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_run", PROJECT_ROOT / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_run", module)
    spec.loader.exec_module(module)
    return module


def test_floor_scripts_are_valid_shell():
    bench = load_bench()
    settings = bench.project_settings(PROJECT_ROOT)
    for script in (bench.fresh_floor_script(settings, "host-1"), bench.noop_floor_script(settings)):
        result = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_fresh_floor_does_the_whole_job():
    bench = load_bench()
    script = bench.fresh_floor_script(bench.project_settings(PROJECT_ROOT), "host-1")
    for path in (paths.SERVICE_UNIT_PATH, paths.SOCKET_UNIT_PATH, paths.NGINX_SITE_PATH, paths.NGINX_CERT_SNIPPET_PATH,
                 paths.LOGROTATE_PATH, paths.BACKUP_TIMER_PATH, paths.WATCH_TIMER_PATH, paths.WATCH_SCRIPT_PATH):
        assert f"put {path} " in script, path
    assert "apt-get install -y -q " + " ".join(PACKAGES) in script
    for step in ("ufw --force enable", "nginx -t -q && systemctl reload nginx", "systemctl restart aisha-api.service",
                 "openssl req -x509", "systemctl start aisha-watch.service"):
        assert step in script, step


def test_the_measured_snapshot_is_compiled_as_an_install_is(tmp_path):
    """pyinfra writes no bytecode: a snapshot without it would compile the deploy's modules on
    every run, which no installed copy does."""
    bench = load_bench()
    project = bench.snapshot(PROJECT_ROOT, tmp_path / "project")
    for module in ("aisha_infra/deploy/prefetch.py", "aisha_infra/tasks/webhook_host.py", "tasks/nginx.py"):
        source = project / module
        assert Path(importlib.util.cache_from_source(str(source))).is_file(), module
    assert not (project / "aisha_infra" / "backend" / "__pycache__").exists()  # uploaded as it is
