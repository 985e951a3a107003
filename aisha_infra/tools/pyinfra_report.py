"""Per-host results of a pyinfra run, written as JSON for the rollout and the rollback.

The tools run the same pyinfra command a person would, plus `--config` naming
pyinfra_config.py (next to this file) and REPORT_ENV naming the file to write. pyinfra runs
that config file before it loads the inventory; it runs the project's own config.py (if
any), adds a state callback for connection errors, and when pyinfra exits writes, per host
of the run (its --limit):

    {"error": why pyinfra stopped the whole run, or null,
     "hosts": {name: {"failed": bool, "connect_error": str | null,
                      "operations": [{"name": the host's own name of the operation,
                                      "status": "changed" | "no change" | "error" | "ignored error" | "not run",
                                      "change": "yes" | "if" | "no" | null,  # planned (without -y)
                                      "error": why it failed, or null}]}}}

pyinfra's `--json` has no error texts and merges each operation's names over all hosts
(a host's plan would list every host's domain), so this reads pyinfra's state directly.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
from pathlib import Path

from pyinfra.api.state import BaseStateCallback

REPORT_ENV = "AISHA_PYINFRA_REPORT"
CONFIG_FILE = Path(__file__).with_name("pyinfra_config.py")


class _Recorder(BaseStateCallback):
    def __init__(self) -> None:
        self.connect_errors: dict[str, str] = {}
        self.stop_error: str | None = None

    def host_connect_error(self, state, host, error) -> None:
        self.connect_errors[host.name] = str(error)


class _StopReason(logging.Handler):
    """Keeps why pyinfra stopped the run: the exception its CLI shows (ClickException.show
    logs it), taken from the caller's frame rather than from the text it logs."""

    def __init__(self, recorder: _Recorder) -> None:
        super().__init__(logging.WARNING)
        self.recorder = recorder

    def emit(self, record: logging.LogRecord) -> None:
        import click

        frame = sys._getframe(1)
        for _ in range(12):  # emit <- handle <- ... <- logger.warning <- show(self)
            if frame is None:
                return
            error = frame.f_locals.get("self")
            if isinstance(error, click.ClickException):
                if self.recorder.stop_error is None:
                    self.recorder.stop_error = str(getattr(error, "exception", None) or error.message)
                return
            frame = frame.f_back


def install() -> None:
    """Called by pyinfra_config.py, inside pyinfra; without REPORT_ENV it does nothing."""
    from pyinfra.context import ctx_state
    from pyinfra_cli.util import exec_file

    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    state = ctx_state.get()
    own_config = Path(state.cwd or ".") / "config.py"
    if own_config.is_file():  # --config replaced it: the run must be the one a person would make
        exec_file(str(own_config))
    recorder = _Recorder()
    init = state.init

    def init_then_record(*args, **kwargs):  # callback handlers can only be added to an initialised state
        init(*args, **kwargs)
        state.add_callback_handler(recorder)

    state.init = init_then_record
    logging.getLogger("pyinfra").addHandler(_StopReason(recorder))
    atexit.register(lambda: Path(path).write_text(json.dumps(build_report(state, recorder))))


def _host_operation_name(state, host, op_hash: str, op_data) -> str:
    """The operation's name on this host: pyinfra merges the names of all hosts into one
    set per operation; this host's is its own `name=` (with its deploy's prefix)."""
    names = sorted(state.op_meta[op_hash].names)
    own = op_data.global_arguments.get("name")
    if own:
        return next((name for name in names if name == own or name.endswith(f" | {own}")), own)
    return names[0] if names else op_hash


def _output_gist(meta) -> str:
    """A failed command's complaint: its stderr (else its stdout), first and last lines."""
    lines = [line.strip() for line in meta.stderr_lines or meta.stdout_lines if line.strip()]
    return " / ".join(lines if len(lines) <= 3 else [lines[0], "...", *lines[-2:]])


def _operation(state, host, op_hash: str, check_failures: dict) -> dict:
    op_data = state.ops[host][op_hash]
    meta = op_data.operation_meta
    # pyinfra's own plan (--json) reads _maybe_is_change too: set when changes were detected
    planned = meta._maybe_is_change
    entry = {
        "name": _host_operation_name(state, host, op_hash, op_data),
        "status": "not run",
        "change": None if planned is None else ("if" if op_data.global_arguments.get("_if") else "yes") if planned else "no",
        "error": None,
    }
    if meta.is_complete():
        if meta.did_succeed():
            entry["status"] = "changed" if meta.did_change() else "no change"
        else:  # an error the operation ignores (_ignore_errors) does not fail the host
            entry["status"] = "ignored error" if op_data.global_arguments.get("_ignore_errors") else "error"
            entry["error"] = check_failures.get((host.name, op_hash)) or _output_gist(meta) or \
                "failed (pyinfra's output says how)"
    return entry


def build_report(state, recorder: _Recorder) -> dict:
    from aisha_infra.deploy.operations.letsencrypt import CHECK_FAILURES

    hosts = {}
    if state.initialised:
        for host in state.inventory:
            if not state.is_host_in_limit(host):
                continue
            hosts[host.name] = {
                "failed": host in state.failed_hosts,
                "connect_error": recorder.connect_errors.get(host.name),
                "operations": [_operation(state, host, op_hash, CHECK_FAILURES)
                               for op_hash in host.op_hash_order if op_hash in state.ops[host]],
            }
    return {"error": recorder.stop_error, "hosts": hosts}
