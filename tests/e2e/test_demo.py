"""The README's first command, verbatim: `make demo` provisions a lab host and prints
the health result and the webhook URL."""

from __future__ import annotations

import os
import subprocess

import pytest

from aisha_infra.lab.hosts import Lab
from tests.project import PROJECT_ROOT

pytestmark = pytest.mark.e2e


def test_make_demo_provisions_and_proves_it():
    lab = f"test-{os.getpid()}-demo"  # removed with dead sessions' labs if this one crashes
    try:
        result = subprocess.run(["make", "demo", f"LAB={lab}"], cwd=PROJECT_ROOT, capture_output=True,
                                text=True, timeout=900)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-5000:]
        assert "HTTPS health OK" in output and "TLS state: OK" in output
        assert "FAL_WEBHOOK_URL=https://aibots.test:8443/api/v1/avatar/status_update" in output
        down = subprocess.run(["make", "demo-down", f"LAB={lab}"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=300)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not Lab(lab).hosts()
    finally:
        Lab(lab).down()
