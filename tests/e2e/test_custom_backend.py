"""An operator's own backend instead of the bundled one: uploaded from a local
directory, its requirements.txt installed into the venv (here from a vendored
wheel, so no index is needed), started by its own command, binding its own port."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

from aisha_infra.checks import health
from tests.e2e.deploylib import run_deploy, write_hosts_file

pytestmark = pytest.mark.e2e

SERVER = '''\
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import aisha_custom_dep  # from requirements.txt: proves the venv got it

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/health":
            return self.send_error(404)
        body = json.dumps(aisha_custom_dep.HEALTHY, separators=(",", ":")).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)

    def do_POST(self):
        json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()

ThreadingHTTPServer((os.environ["AISHA_API_HOST"], int(os.environ["AISHA_API_PORT"])), Handler).serve_forever()
'''


def build_wheel(directory: Path) -> Path:
    """A minimal pure-Python wheel, built by hand (no build backend, no index)."""
    name, version = "aisha_custom_dep", "1.0"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    files = {
        f"{name}/__init__.py": 'HEALTHY = {"status": "healthy", "service": "Aisha Bot FAL Webhook API"}\n',
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            data = text.encode()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
            archive.writestr(path, data)
        record.append(f"{name}-{version}.dist-info/RECORD,,")
        archive.writestr(f"{name}-{version}.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


def test_own_backend_with_requirements(lab_host, tmp_path):
    app = tmp_path / "my-backend"
    (app / "vendor").mkdir(parents=True)
    wheel = build_wheel(app / "vendor")
    (app / "server.py").write_text(SERVER)
    (app / "requirements.txt").write_text(f"--no-index\n./vendor/{wheel.name}\n")
    data = {"app_source": str(app), "app_port": 8100,
            "app_start_command": "/opt/aisha-backend/venv/bin/python /opt/aisha-backend/app/server.py"}
    hosts_file = write_hosts_file(tmp_path / "hosts.json", [lab_host], data=data)

    run_deploy(hosts_file).check()  # the deploy's own verification proves /health over HTTPS
    assert lab_host.run("/opt/aisha-backend/venv/bin/pip show aisha_custom_dep").returncode == 0
    assert lab_host.run("systemctl is-enabled aisha-api.socket", check=False).returncode != 0
    assert "127.0.0.1:8100" in lab_host.run("ss -Hltn 'sport = :8100'").stdout
    assert run_deploy(hosts_file).check().totals["changed"] == 0

    # a changed requirements.txt is installed again, and the app restarted on the new release
    (app / "requirements.txt").write_text(f"--no-index\n./vendor/{wheel.name}\n# pinned\n")
    changed = run_deploy(hosts_file).check().changed_operations
    assert "App | Install the backend's requirements.txt" in changed
    assert any(name.startswith("App | Serve release ") for name in changed), changed
    cert = tmp_path / "cert.pem"
    cert.write_text(lab_host.run("cat /opt/aisha-backend/ssl/aibots_test.crt").stdout)
    ok, detail = health.check_https_health(lab_host.address, "aibots.test", 8443, ca_bundle=str(cert))
    assert ok, detail
