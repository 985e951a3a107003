"""Event-store snapshots judged on the control machine by the bundled backend's own check
(`python -m aisha_webhook_api events verify`, backend/aisha_webhook_api/backup.py), so a
file is accepted here exactly when a host would accept it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from aisha_infra.deploy.settings import BUNDLED_BACKEND

CHECK_TIMEOUT = 300  # integrity_check reads every page: allow for a large store


def snapshot_problem(path: Path | str) -> str | None:
    """Why `path` is not a usable event snapshot (SQLite, `PRAGMA integrity_check` ok,
    the expected schema), or None."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "aisha_webhook_api", "events", "verify", str(Path(path).expanduser())],
            cwd=BUNDLED_BACKEND,
            # only what the check needs: the operator's AISHA_* variables are not the host's
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1"},
            capture_output=True, text=True, timeout=CHECK_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return f"checking it took longer than {CHECK_TIMEOUT} s"
    if result.returncode == 0:
        return None
    lines = result.stderr.strip().splitlines()
    reason = lines[-1] if lines else f"the check exited with {result.returncode}"
    return reason.split("is not a usable event snapshot: ", 1)[-1]
