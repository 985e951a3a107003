"""aisha_infra/deploy/frozen_imports.py: the objects imports made are frozen for the garbage
collector in the pyinfra CLI's process, and only there."""

from __future__ import annotations

import gc

import pyinfra

from aisha_infra.deploy.frozen_imports import freeze_imports


def test_only_the_cli_process_freezes(monkeypatch):
    gc.unfreeze()
    try:
        monkeypatch.setattr(pyinfra, "is_cli", False)
        freeze_imports()
        assert gc.get_freeze_count() == 0  # a test run or a tool: left as it is
        monkeypatch.setattr(pyinfra, "is_cli", True)
        freeze_imports()
        assert gc.get_freeze_count() > 10_000  # pyinfra, paramiko, gevent, ours
    finally:
        gc.unfreeze()
