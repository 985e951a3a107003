"""The benchmark's floors (bench/run.py) stay the same job as the deploy: valid shell,
the deploy's own rendered files and packages. Speed itself is measured by `make bench`."""

import importlib.util
import subprocess
import sys

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
