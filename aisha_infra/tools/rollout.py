"""`aisha-infra rollout`: deploy one stage of hosts at a time; go on only when it is healthy.

A stage is an inventory group (default: canary, then production). For each stage:
  1. deploy: the real `pyinfra -y INVENTORY deploy.py --limit STAGE`, its progress shown
     as it runs (plus --json, so its results come per host instead of summed);
  2. gate: every host must answer GET /health over verified HTTPS (exact JSON) at every
     check: at least --checks in a row, one every --interval seconds, until --soak
     seconds have passed; then accept a test webhook POST.
A failure stops the rollout and leaves later stages untouched; --fail-percent lets a
large stage go on with a share of failed hosts. --dry shows each stage's hosts and
what would change (pyinfra --dry) and changes nothing. See docs/rollout.md.
Exit status: 0 every stage passed, 1 the rollout stopped (or --dry could not plan a
stage), 2 bad arguments, inventory or settings (nothing started).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aisha_infra.checks import health
from aisha_infra.tools.diagnose.targets import _is_host_group, load_inventory
from aisha_infra.deploy.inventory import InventoryError
from aisha_infra.deploy.settings import Settings, SettingsError, build_settings
from aisha_infra.tools.ssh import SSHHost

DEFAULT_STAGES = ("canary", "production")
DEPLOY_FILE = "deploy.py"
_VENV_PYINFRA = Path(sys.executable).with_name("pyinfra")
PYINFRA = str(_VENV_PYINFRA) if _VENV_PYINFRA.exists() else (shutil.which("pyinfra") or "pyinfra")
# A stage's pyinfra run taking longer than this is stuck: it is stopped and the stage fails.
STAGE_TIMEOUT = 3600
SSH_TIMEOUT = 30
# Health checks run in parallel, this many hosts at a time.
MAX_PARALLEL_CHECKS = 16

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# "    [host]   message": pyinfra pads the prefix to the longest host name.
_HOST_LINE = re.compile(r"^\s*\[(?P<host>[^\]]+)\]\s+(?P<text>.*)$")
_HOST_ERROR = re.compile(r"^(Error\b|Could not connect|Unexpected error)")


class RolloutError(RuntimeError):
    """Bad arguments or inventory, found before anything started."""


@dataclass(frozen=True)
class Stage:
    name: str
    hosts: tuple[str, ...]


@dataclass
class HostOutcome:
    name: str
    changed: int | None = None  # operations that changed something (None: not known)
    unchanged: int | None = None
    failure: tuple[str, str] | None = None  # (check, what was wrong)
    health_passes: int = 0
    webhook_ok: bool = False
    new_release: bool = False  # the deploy switched the host to a new app release
    would_change: list[str] = field(default_factory=list)  # --dry: operation names
    may_change: list[str] = field(default_factory=list)  # --dry: only if an earlier one changes


@dataclass
class StageResult:
    stage: Stage
    status: str = "not started"  # passed, failed, skipped (no hosts), planned (--dry)
    hosts: dict[str, HostOutcome] = field(default_factory=dict)
    deploy_seconds: float = 0.0
    gate_seconds: float = 0.0
    tolerated: int = 0  # failed hosts --fail-percent let through
    rolled_back: list[str] = field(default_factory=list)  # hosts put back on their previous release


@dataclass(frozen=True)
class GateTarget:
    """Where and how to check one host: https://domain:port via address."""

    name: str
    address: str
    domain: str
    port: int
    ca_bundle: str | None  # PEM to trust; None: the system trust store


@dataclass
class PyinfraRun:
    returncode: int
    report: dict | None  # pyinfra's --json output: {"plan": [...], "results": {...} | None}
    log: list[str]  # its progress lines (stderr), without colour codes


# --- planning -------------------------------------------------------------------------------


def inventory_groups(path: str | Path) -> dict[str, list[str]]:
    """Host names by group, read from the inventory file the way pyinfra reads it."""
    groups = {}
    for name, value in runpy.run_path(str(path)).items():
        if name.startswith("_") or not _is_host_group(value):
            continue
        members = value[0] if isinstance(value, tuple) else value
        groups[name] = [m[0] if isinstance(m, tuple) else m for m in members]
    return groups


def plan_stages(groups: dict[str, list[str]], order: Sequence[str]) -> list[Stage]:
    """The stages in `order`, each an inventory group; unknown or repeated names are errors."""
    if not order:
        raise RolloutError("--stages is empty: name at least one inventory group")
    repeated = sorted({name for name in order if list(order).count(name) > 1})
    if repeated:
        raise RolloutError(f"--stages names {', '.join(repeated)} more than once")
    unknown = [name for name in order if name not in groups]
    if unknown:
        raise RolloutError(
            f"--stages: no inventory group named {', '.join(unknown)}; "
            f"the inventory has {', '.join(sorted(groups)) or 'no groups'}"
        )
    return [Stage(name, tuple(groups[name])) for name in order]


def allowed_failures(hosts: int, fail_percent: float) -> int:
    """Failed hosts a stage of `hosts` tolerates; at least one host must stay healthy."""
    return max(0, min(math.floor(hosts * fail_percent / 100), hosts - 1))


def gate_rounds(checks: int, soak: float, interval: float) -> int:
    """Health checks per host: `checks` in a row, and enough to span `soak` seconds."""
    if soak <= 0:
        return checks
    return max(checks, 1 + math.ceil(soak / interval))


def pyinfra_command(inventory: str, stage: str, dry: bool) -> list[str]:
    """One stage's deploy, as a person runs it by hand, plus --json for per-host results."""
    return [PYINFRA, "--dry" if dry else "-y", inventory, DEPLOY_FILE, "--limit", stage, "--json"]


def shown_command(command: list[str]) -> str:
    return shlex.join(["pyinfra", *(a for a in command[1:] if a != "--json")])


# --- pyinfra's output -------------------------------------------------------------------------


def run_pyinfra(command: list[str], echo: Callable[[str], None], timeout: float = STAGE_TIMEOUT) -> PyinfraRun:
    """Run pyinfra, echoing its progress (stderr) line by line; its stdout is the JSON report."""
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, errors="replace",
    )  # fmt: skip
    stdout: list[str] = []
    reader = threading.Thread(target=lambda: stdout.append(process.stdout.read()), daemon=True)
    reader.start()
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        process.kill()

    watchdog = threading.Timer(timeout, stop)
    watchdog.start()
    log: list[str] = []
    try:
        for raw in process.stderr:
            line = _ANSI.sub("", raw.rstrip("\n"))
            log.append(line)
            if line.strip():
                echo(f"  {line}")
        returncode = process.wait()
    except BaseException:  # e.g. Ctrl-C: never leave a deploy running behind us
        process.kill()
        raise
    finally:
        watchdog.cancel()
        reader.join()
    if timed_out.is_set():
        log.append(f"--> pyinfra error: stopped after {timeout:g} s without finishing")
    return PyinfraRun(returncode, parse_report("".join(stdout)), log)


def parse_report(stdout: str) -> dict | None:
    """pyinfra's --json report: the last line of stdout that is a JSON object."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def host_errors(log: list[str], hosts: Sequence[str]) -> dict[str, str]:
    """The first error pyinfra logged for each host, with the operation and the lines
    the host printed just before it (a failing command's output)."""
    errors: dict[str, str] = {}
    operation = ""
    recent: dict[str, list[str]] = {name: [] for name in hosts}
    for line in log:
        if line.startswith("--> Starting operation:"):
            operation = line.split(":", 1)[1].strip()
            recent = {name: [] for name in hosts}
            continue
        match = _HOST_LINE.match(line)
        if not match or match["host"] not in recent:
            continue
        name, text = match["host"], match["text"].strip()
        if _HOST_ERROR.match(text):
            if name not in errors:
                errors[name] = (f"{operation}: " if operation else "") + " / ".join([*recent[name][-3:], text])
        else:
            recent[name].append(text)
    return errors


def pyinfra_error(run: PyinfraRun) -> str:
    """Why pyinfra stopped, in its own words (its last `--> ... error` line)."""
    for line in reversed(run.log):
        if line.startswith("--> ") and "error" in line.lower():
            return line[4:].strip()
    return f"pyinfra exited with status {run.returncode}"


def deploy_outcomes(run: PyinfraRun, hosts: Sequence[str]) -> dict[str, HostOutcome]:
    """Per host: operations changed/unchanged and, for a failed host, why. When pyinfra
    stopped without results, every host without an error of its own fails with pyinfra's."""
    outcomes = {name: HostOutcome(name) for name in hosts}
    results = (run.report or {}).get("results")
    failed = set(hosts)
    if results is not None:
        failed = set(results.get("failed_hosts", [])) & failed
        for outcome in outcomes.values():
            outcome.changed = outcome.unchanged = 0
        for operation in results.get("operations", []):
            for name in operation.get("success", []):
                if name in outcomes:
                    outcomes[name].changed += 1
            for name in operation.get("no_change", []):
                if name in outcomes:
                    outcomes[name].unchanged += 1
    elif run.returncode == 0:
        failed = set()  # nothing to count, nothing failed (an empty deploy)
    errors = host_errors(run.log, hosts)
    for name in sorted(failed):
        outcomes[name].failure = ("deploy", errors.get(name) or f"pyinfra stopped: {pyinfra_error(run)}")
    return outcomes


def dry_outcomes(run: PyinfraRun, hosts: Sequence[str]) -> dict[str, HostOutcome]:
    """Per host: what `pyinfra --dry` says would change."""
    outcomes = {name: HostOutcome(name) for name in hosts}
    plan = (run.report or {}).get("plan")
    if run.returncode != 0 or plan is None:
        errors = host_errors(run.log, hosts)
        for name, outcome in outcomes.items():
            outcome.failure = ("plan", errors.get(name) or f"pyinfra stopped: {pyinfra_error(run)}")
        return outcomes
    for operation in plan:
        for name in operation.get("hosts_with_change", []):
            if name in outcomes:
                outcomes[name].would_change.append(operation["name"])
        for name in operation.get("hosts_with_conditional_change", []):
            if name in outcomes:
                outcomes[name].may_change.append(operation["name"])
    return outcomes


# --- the gate ---------------------------------------------------------------------------------


def fetch_remote_file(name: str, data: dict, path: str) -> str:
    """A file's text from the host, over SSH as pyinfra connects (sudo when the data says)."""
    ssh = SSHHost.from_data(name, data)
    result = ssh.run(f"cat -- {shlex.quote(path)}", timeout=SSH_TIMEOUT)
    if result.returncode != 0:
        raise OSError(ssh.failure(result))
    return result.stdout


def gate_target(name: str, data: dict, settings: Settings, workdir: Path,
                fetch: Callable[[str, dict, str], str] = fetch_remote_file) -> GateTarget:
    """The host's endpoint and the trust its tls_mode implies, as the deploy's own
    verification uses them: verify_ca_bundle if set; else in self-signed mode exactly
    the certificate deployed on the host (fetched back); else the system trust store.
    Raises OSError when the certificate cannot be fetched."""
    address = settings.endpoint_address(name, data)
    ca_bundle = settings.verify_ca_bundle
    if settings.pinned_certificate:
        pem = fetch(name, data, settings.pinned_certificate)
        if "-----BEGIN CERTIFICATE-----" not in pem:
            raise OSError(f"{settings.pinned_certificate} holds no PEM certificate")
        pinned = workdir / (re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".pem")
        pinned.write_text(pem)
        ca_bundle = str(pinned)
    return GateTarget(name, address, settings.aisha_domain, settings.nginx_https_port, ca_bundle)


def _check_all(check, targets: list[GateTarget]) -> list[tuple[bool, str]]:
    with ThreadPoolExecutor(max_workers=min(len(targets), MAX_PARALLEL_CHECKS)) as pool:
        return list(pool.map(lambda t: check(t.address, t.domain, port=t.port, ca_bundle=t.ca_bundle), targets))


def run_gate(
    targets: list[GateTarget],
    outcomes: dict[str, HostOutcome],
    rounds: int,
    interval: float,
    failures_allowed: int,
    echo: Callable[[str], None],
    *,
    check_health=None,
    check_webhook=None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Check every target `rounds` times, `interval` seconds apart, then POST a test
    webhook to each host that passed them all. A failed check fails its host for good
    (results land in `outcomes`); the gate stops early once more than
    `failures_allowed` hosts failed, as the stage has failed anyway. The checks default
    to aisha_infra.checks.health's."""
    check_health = check_health or health.check_https_health
    check_webhook = check_webhook or health.check_webhook_post
    healthy = list(targets)
    failed = 0
    start = clock()
    for index in range(rounds):
        if not healthy:
            return
        if index:
            sleep(max(0.0, start + index * interval - clock()))
        still_healthy = []
        for target, (ok, detail) in zip(healthy, _check_all(check_health, healthy)):
            if ok:
                outcomes[target.name].health_passes += 1
                still_healthy.append(target)
            else:
                outcomes[target.name].failure = ("https-health", detail)
                failed += 1
                echo(f"  {target.name}: health check {index + 1} FAILED: {detail}")
        healthy = still_healthy
        echo(f"  health check {index + 1}/{rounds}: {len(healthy)}/{len(targets)} host(s) healthy "
             f"(t+{clock() - start:.0f} s)")
        if failed > failures_allowed:
            echo("  gate stopped: more hosts failed than the stage tolerates")
            return
    if not healthy:
        return
    for target, (ok, detail) in zip(healthy, _check_all(check_webhook, healthy)):
        if ok:
            outcomes[target.name].webhook_ok = True
        else:
            outcomes[target.name].failure = ("webhook-post", detail)
            echo(f"  {target.name}: webhook POST FAILED: {detail}")
    echo(f"  webhook POST: {sum(outcomes[t.name].webhook_ok for t in healthy)}/{len(healthy)} host(s) accepted it")


# --- one stage, and the whole rollout ---------------------------------------------------------


@dataclass
class Options:
    inventory: str
    rounds: int
    interval: float
    fail_percent: float
    rollback: bool = True  # a failed stage's hosts go back to their previous app release


def deploy_stage(stage: Stage, options: Options, hosts_data: dict[str, dict], settings: dict[str, Settings],
                 workdir: Path, echo: Callable[[str], None]) -> StageResult:
    """Deploy one stage with pyinfra, then gate it."""
    result = StageResult(stage)
    started = time.monotonic()
    command = pyinfra_command(options.inventory, stage.name, dry=False)
    echo(f"  deploy: {shown_command(command)}")
    run = run_pyinfra(command, echo)
    result.hosts = deploy_outcomes(run, stage.hosts)
    for name in switched_release(run):
        if name in result.hosts:
            result.hosts[name].new_release = True
    result.deploy_seconds = time.monotonic() - started

    allowed = allowed_failures(len(stage.hosts), options.fail_percent)
    for outcome in result.hosts.values():
        if outcome.failure:
            echo(f"  {outcome.name}: deploy FAILED: {outcome.failure[1]}")
    deploy_failures = sum(o.failure is not None for o in result.hosts.values())
    if deploy_failures <= allowed:
        started = time.monotonic()
        echo(f"  gate: {options.rounds} health check(s) per host, {options.interval:g} s apart, then a webhook POST")
        targets = []
        for name, outcome in result.hosts.items():
            if outcome.failure:
                continue
            try:
                targets.append(gate_target(name, hosts_data[name], settings[name], workdir))
            except OSError as exc:
                path = settings[name].pinned_certificate
                outcome.failure = ("tls-trust", f"cannot fetch the deployed certificate {path} over SSH: {exc}")
                echo(f"  {name}: {outcome.failure[1]}")
        failures_left = allowed - sum(o.failure is not None for o in result.hosts.values())
        if failures_left >= 0:
            run_gate(targets, result.hosts, options.rounds, options.interval, failures_left, echo)
        result.gate_seconds = time.monotonic() - started

    failures = sum(o.failure is not None for o in result.hosts.values())
    result.status = "passed" if failures <= allowed else "failed"
    result.tolerated = failures if result.status == "passed" else 0
    return result


def plan_stage(stage: Stage, options: Options, echo: Callable[[str], None]) -> StageResult:
    """--dry: what the stage's deploy would change, from pyinfra --dry."""
    result = StageResult(stage)
    started = time.monotonic()
    command = pyinfra_command(options.inventory, stage.name, dry=True)
    echo(f"  plan: {shown_command(command)}")
    result.hosts = dry_outcomes(run_pyinfra(command, echo), stage.hosts)
    result.deploy_seconds = time.monotonic() - started
    failed = any(o.failure for o in result.hosts.values())
    result.status = "failed" if failed else "planned"
    return result


def rollout(stages: list[Stage], options: Options, hosts_data: dict[str, dict], settings: dict[str, Settings],
            dry: bool, echo: Callable[[str], None]) -> list[StageResult]:
    """Every stage in order; stops at the first failed stage (except --dry, which plans all)."""
    results = [StageResult(stage) for stage in stages]
    with tempfile.TemporaryDirectory(prefix="aisha-rollout-") as workdir:
        for index, stage in enumerate(stages):
            if not stage.hosts:
                echo(f"\n==> Stage {index + 1}/{len(stages)}: {stage.name}: no hosts, skipped")
                results[index].status = "skipped"
                continue
            echo(f"\n==> Stage {index + 1}/{len(stages)}: {stage.name} ({', '.join(stage.hosts)})")
            if dry:
                results[index] = plan_stage(stage, options, echo)
                continue
            results[index] = deploy_stage(stage, options, hosts_data, settings, Path(workdir), echo)
            if results[index].status == "failed":
                if options.rollback:
                    roll_back_stage(results[index], options, echo)
                echo("\n" + stop_message(results))
                break
    return results


# --- automatic rollback of a failed stage ---------------------------------------------------

RELEASE_OPERATION = "App | Serve release "


def switched_release(run: PyinfraRun) -> set[str]:
    """Hosts the deploy put on a new app release (its activation changed something)."""
    operations = ((run.report or {}).get("results") or {}).get("operations", [])
    return {name for op in operations if str(op.get("name", "")).startswith(RELEASE_OPERATION)
            for name in op.get("success", [])}


def roll_back_stage(result: StageResult, options: Options, echo: Callable[[str], None]) -> None:
    """Put the failed hosts that got a new release back on their previous one. (A release
    that did not even start was already undone by the deploy itself.)"""
    hosts = [name for name, outcome in result.hosts.items() if outcome.failure and outcome.new_release]
    if not hosts:
        echo(f"\n==> Rollback: no failed host of {result.stage.name} got a new release; nothing to roll back")
        return
    from aisha_infra.tools.rollback import roll_back  # here: that module imports this one

    echo(f"\n==> Rollback of {result.stage.name}: {', '.join(hosts)} back to the previous release "
         "(--no-rollback leaves them as they are)")
    if roll_back(options.inventory, hosts, echo):
        result.rolled_back = hosts
        echo(f"  rolled back: {', '.join(hosts)} serve their previous release again")


def first_failure(result: StageResult) -> tuple[str, str, str] | None:
    for outcome in result.hosts.values():
        if outcome.failure:
            return outcome.name, *outcome.failure
    return None


def stop_message(results: list[StageResult]) -> str:
    failed = next(r for r in results if r.status == "failed")
    lines = [f"Rollout STOPPED at stage {failed.stage.name}:"]
    for outcome in failed.hosts.values():
        if outcome.failure:
            check, detail = outcome.failure
            lines.append(f"  {outcome.name} failed {check}: {detail}")
    if failed.rolled_back:
        lines.append(f"  Rolled back to their previous release: {', '.join(failed.rolled_back)}.")
    untouched = [r.stage.name for r in results if r.status == "not started"]
    lines.append(f"  Not started (untouched): {', '.join(untouched)}." if untouched else "  It was the last stage.")
    return "\n".join(lines)


# --- summary ------------------------------------------------------------------------------------


def _deploy_column(outcome: HostOutcome, dry: bool) -> str:
    if dry:
        if outcome.failure:
            return "plan FAILED"
        if outcome.would_change:
            return f"would change {len(outcome.would_change)} op(s)"
        return "no changes"
    if outcome.failure and outcome.failure[0] == "deploy":
        return "deploy FAILED"
    if outcome.changed is None:
        return "-"
    total = outcome.changed + outcome.unchanged
    return f"changed ({outcome.changed} of {total} ops)" if outcome.changed else f"unchanged ({total} ops)"


def _gate_column(outcome: HostOutcome) -> str:
    if outcome.failure and outcome.failure[0] != "deploy":
        return f"gate FAILED: {outcome.failure[0]}"
    if outcome.webhook_ok:
        return f"gate passed ({outcome.health_passes} health checks, webhook POST)"
    return "gate not run"


def _seconds(value: float) -> str:
    if value < 120:
        return f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes} min {seconds} s"


def render_summary(results: list[StageResult], dry: bool, total_seconds: float, fail_percent: float = 0) -> str:
    lines = ["\n==> Summary" + (" (dry run: nothing was changed)" if dry else "")]
    width = max((len(name) for r in results for name in r.stage.hosts), default=4)
    for result in results:
        status = result.status
        if status == "passed" and result.tolerated:
            status += f" with {result.tolerated} failed host(s) tolerated (--fail-percent {fail_percent:g})"
        if result.status in ("passed", "failed") and not dry:
            gate = f"gate {_seconds(result.gate_seconds)}" if result.gate_seconds else "gate not run"
            status += f" in {_seconds(result.deploy_seconds + result.gate_seconds)} " \
                      f"(deploy {_seconds(result.deploy_seconds)}, {gate})"
        elif result.status in ("planned", "failed"):
            status += f" in {_seconds(result.deploy_seconds)}"
        lines.append(f"{result.stage.name}: {status}")
        if result.status in ("not started", "skipped"):
            lines += [f"  {name:<{width}}  not started" for name in result.stage.hosts]
            continue
        for outcome in result.hosts.values():
            deploy_column = _deploy_column(outcome, dry)
            if dry:
                lines.append(f"  {outcome.name:<{width}}  {deploy_column}")
                lines += [f"  {'':<{width}}    ~ {op}" for op in outcome.would_change]
                if outcome.would_change and outcome.may_change:
                    lines.append(f"  {'':<{width}}    and, if those change what they depend on: "
                                 + ", ".join(outcome.may_change))
            else:
                lines.append(f"  {outcome.name:<{width}}  {deploy_column:<26}  {_gate_column(outcome)}")
            if outcome.failure:
                lines.append(f"  {'':<{width}}    {outcome.failure[0]}: {outcome.failure[1]}")
    if dry:
        planned = all(r.status in ("planned", "skipped") for r in results)
        lines.append(f"Dry run {'complete' if planned else 'FAILED for some stage'} in {_seconds(total_seconds)}.")
    elif any(r.status == "failed" for r in results):
        failed = next(r for r in results if r.status == "failed")
        name, check, _ = first_failure(failed)
        untouched = [r.stage.name for r in results if r.status == "not started"]
        rolled_back = f"; rolled back: {', '.join(failed.rolled_back)}" if failed.rolled_back else ""
        lines.append(f"Rollout STOPPED at stage {failed.stage.name} ({name} failed {check}) after "
                     f"{_seconds(total_seconds)}; untouched: {', '.join(untouched) or 'none'}{rolled_back}.")
    else:
        lines.append(f"Rollout complete in {_seconds(total_seconds)}: every stage passed its gate.")
    return "\n".join(lines)


# --- CLI ------------------------------------------------------------------------------------------


def _stage_list(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "rollout",
        help="deploy stage by stage (canary, then production), gated on health",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--stages", type=_stage_list, default=list(DEFAULT_STAGES), metavar="GROUP,GROUP",
                        help="inventory groups in rollout order (default: canary,production)")
    parser.add_argument("--inventory", default="inventory.py", help="pyinfra inventory file (default: inventory.py)")
    parser.add_argument("--soak", type=float, default=60, metavar="SECONDS",
                        help="keep checking each stage's health at least this long (default 60)")
    parser.add_argument("--checks", type=int, default=3, metavar="N",
                        help="health checks in a row each host must pass, at least (default 3)")
    parser.add_argument("--interval", type=float, default=10, metavar="S",
                        help="seconds between health checks (default 10)")
    parser.add_argument("--fail-percent", type=float, default=0, metavar="P",
                        help="share of a stage's hosts allowed to fail, in %% (default 0: none)")
    parser.add_argument("--no-rollback", dest="rollback", action="store_false",
                        help="leave a failed stage's hosts on their new release (default: back to the previous one)")
    parser.add_argument("--dry", action="store_true", help="show stages, hosts and what would change; change nothing")
    parser.set_defaults(run=run)


def check_arguments(args: argparse.Namespace) -> None:
    if args.checks < 1:
        raise RolloutError("--checks must be at least 1")
    if args.interval < 0 or args.soak < 0:
        raise RolloutError("--interval and --soak must not be negative")
    if args.soak > 0 and args.interval == 0:
        raise RolloutError("--soak needs an --interval above 0")
    if not 0 <= args.fail_percent < 100:
        raise RolloutError("--fail-percent must be from 0 to below 100 (a stage needs one healthy host)")
    if not Path(args.inventory).is_file():
        raise RolloutError(f"the inventory {args.inventory} does not exist")
    if not Path(DEPLOY_FILE).is_file():
        raise RolloutError(f"no {DEPLOY_FILE} in {Path.cwd()}: run the rollout from the project directory")


def run(args: argparse.Namespace) -> int:
    def echo(line: str) -> None:
        print(line, flush=True)

    started = time.monotonic()
    try:
        check_arguments(args)
        stages = plan_stages(inventory_groups(args.inventory), args.stages)
        hosts_data = dict(load_inventory(args.inventory))
        # Every staged host's settings, checked before anything starts.
        settings = {name: build_settings(hosts_data[name], where=name) for stage in stages for name in stage.hosts}
    except (RolloutError, InventoryError, SettingsError) as exc:
        print(f"aisha-infra rollout: {exc}", file=sys.stderr)
        return 2

    options = Options(args.inventory, gate_rounds(args.checks, args.soak, args.interval), args.interval,
                      args.fail_percent, args.rollback)
    staged = {name for stage in stages for name in stage.hosts}
    echo(f"Rollout{' (dry run)' if args.dry else ''}: {len(stages)} stage(s) from {args.inventory}; "
         f"gate: {options.rounds} health check(s) per host {args.interval:g} s apart, then a webhook POST; "
         f"--fail-percent {args.fail_percent:g}")
    for index, stage in enumerate(stages):
        echo(f"  {index + 1}. {stage.name}: {', '.join(stage.hosts) or '(no hosts)'}")
    outside = [name for name in hosts_data if name not in staged]
    if outside:
        echo(f"  not in any stage (left alone): {', '.join(outside)}")

    results = rollout(stages, options, hosts_data, settings, args.dry, echo)
    echo(render_summary(results, args.dry, time.monotonic() - started, args.fail_percent))
    return 1 if any(r.status == "failed" for r in results) else 0
