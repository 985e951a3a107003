"""`aisha-infra rollout`: deploy one stage of hosts at a time; go on only when it is healthy.

A stage is an inventory group (default: canary, then production). For each stage:
  1. deploy: the real `pyinfra -y INVENTORY deploy.py --limit STAGE`, its progress shown
     as it runs (plus --config pyinfra_config.py: its results per host, as JSON);
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
import html
import json
import math
import os
import re
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
from aisha_infra.deploy.inventory import InventoryError
from aisha_infra.deploy.settings import Settings, SettingsError, build_settings
from aisha_infra.tools import inventory as tools_inventory
from aisha_infra.tools.pyinfra_report import CONFIG_FILE, REPORT_ENV
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
# A failure is printed in one line of at most this many characters.
BRIEF_CHARACTERS = 240


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
    report: dict | None  # per-host results (aisha_infra.tools.pyinfra_report); None: pyinfra ended before
    timed_out: float | None = None  # stopped after this many seconds


# --- planning -------------------------------------------------------------------------------


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


def pyinfra_command(inventory: str, stage: str, dry: bool, data: Sequence[str] = ()) -> list[str]:
    """One stage's deploy, as a person runs it by hand, plus the config file that writes
    its per-host results (pyinfra_report)."""
    return [PYINFRA, "--dry" if dry else "-y", inventory, DEPLOY_FILE, "--limit", stage,
            *tools_inventory.pyinfra_data_arguments(data), "--config", str(CONFIG_FILE)]


def shown_command(command: list[str]) -> str:
    """The command as a person would type it (without the results' config file)."""
    shown = list(command[1:])
    if "--config" in shown:
        del shown[shown.index("--config"):shown.index("--config") + 2]
    return shlex.join(["pyinfra", *shown])


# --- pyinfra's output -------------------------------------------------------------------------


def run_pyinfra(command: list[str], echo: Callable[[str], None], timeout: float = STAGE_TIMEOUT) -> PyinfraRun:
    """Run pyinfra, echoing its progress line by line; then read the per-host results
    it wrote (pyinfra_report) to a file of ours."""
    with tempfile.TemporaryDirectory(prefix="aisha-pyinfra-") as folder:
        report_file = Path(folder) / "report.json"
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", env={**os.environ, REPORT_ENV: str(report_file)},
        )  # fmt: skip
        timed_out = threading.Event()

        def stop() -> None:
            timed_out.set()
            process.kill()

        watchdog = threading.Timer(timeout, stop)
        watchdog.start()
        try:
            for raw in process.stdout:
                line = _ANSI.sub("", raw.rstrip("\n"))
                if line.strip():
                    echo(f"  {line}")
            returncode = process.wait()
        except BaseException:  # e.g. Ctrl-C: never leave a deploy running behind us
            process.kill()
            raise
        finally:
            watchdog.cancel()
        try:
            report = json.loads(report_file.read_text())
        except (OSError, ValueError):
            report = None
    return PyinfraRun(returncode, report, timeout if timed_out.is_set() else None)


def why_stopped(run: PyinfraRun) -> str:
    """Why pyinfra stopped the whole run, from its results; else its exit status."""
    if run.timed_out is not None:
        return f"stopped after {run.timed_out:g} s without finishing"
    if run.report and run.report.get("error"):
        return brief(run.report["error"])
    return f"pyinfra exited with status {run.returncode} (its output above says why)"


_HTML = re.compile(r"<(!doctype|html|head|body)\b.*", re.IGNORECASE | re.DOTALL)
_HTML_TITLE = re.compile(r"<(title|h1)[^>]*>(?P<text>.*?)</\1>", re.IGNORECASE | re.DOTALL)


def brief(text: str) -> str:
    """One line of at most BRIEF_CHARACTERS: an HTML page (an error page nginx sent) is
    reduced to its status line (its title), escaped line breaks become spaces."""
    text = text.replace("\\r\\n", " ").replace("\\n", " ")

    def status_line(match: re.Match) -> str:
        title = _HTML_TITLE.search(match.group(0))
        return f"[HTML page: {html.unescape(title['text']).strip()}]" if title else "[HTML page]"

    text = " ".join(_HTML.sub(status_line, text).split())
    return text if len(text) <= BRIEF_CHARACTERS else text[:BRIEF_CHARACTERS - 3] + "..."


def _host_error(host: dict) -> str | None:
    """What failed on one host: its connection, else its first failed operation (by the
    host's own name of it), else its failure without a message."""
    if host.get("connect_error"):
        return brief(f"connection: {host['connect_error']}")
    for operation in host["operations"]:
        if operation["status"] == "error":
            return brief(f"{operation['name']}: {operation['error']}")
    return "failed (pyinfra's output above says why)" if host.get("failed") else None


def deploy_outcomes(run: PyinfraRun, hosts: Sequence[str]) -> dict[str, HostOutcome]:
    """Per host: operations changed/unchanged and, for a failed host, why. A host that
    pyinfra stopped before it finished fails with the reason pyinfra stopped."""
    outcomes = {name: HostOutcome(name) for name in hosts}
    reported = (run.report or {}).get("hosts", {})
    for name, outcome in outcomes.items():
        host = reported.get(name)
        if host is None:
            if run.returncode != 0:
                outcome.failure = ("deploy", f"pyinfra stopped: {why_stopped(run)}")
            continue
        statuses = [operation["status"] for operation in host["operations"]]
        if not host.get("connect_error") and (not statuses or any(status != "not run" for status in statuses)):
            outcome.changed, outcome.unchanged = statuses.count("changed"), statuses.count("no change")
        error = _host_error(host)
        if error:
            outcome.failure = ("deploy", error)
        elif run.returncode != 0 and "not run" in statuses:
            outcome.failure = ("deploy", f"pyinfra stopped: {why_stopped(run)}")
    return outcomes


def dry_outcomes(run: PyinfraRun, hosts: Sequence[str]) -> dict[str, HostOutcome]:
    """Per host: what `pyinfra --dry` says would change, by the host's own operation names."""
    outcomes = {name: HostOutcome(name) for name in hosts}
    reported = (run.report or {}).get("hosts", {})
    for name, outcome in outcomes.items():
        host = reported.get(name)
        error = _host_error(host) if host else None
        if error or run.returncode != 0 or host is None:
            outcome.failure = ("plan", error or f"pyinfra stopped: {why_stopped(run)}")
            continue
        outcome.would_change = [op["name"] for op in host["operations"] if op["change"] == "yes"]
        outcome.may_change = [op["name"] for op in host["operations"] if op["change"] == "if"]
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
                outcomes[target.name].failure = ("https-health", brief(detail))
                failed += 1
                echo(f"  {target.name}: health check {index + 1} FAILED (why: in the summary)")
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
            outcomes[target.name].failure = ("webhook-post", brief(detail))
            echo(f"  {target.name}: webhook POST FAILED (why: in the summary)")
    echo(f"  webhook POST: {sum(outcomes[t.name].webhook_ok for t in healthy)}/{len(healthy)} host(s) accepted it")


# --- one stage, and the whole rollout ---------------------------------------------------------


@dataclass
class Options:
    inventory: str
    rounds: int
    interval: float
    fail_percent: float
    rollback: bool = True  # a failed stage's hosts go back to their previous app release
    data: tuple[str, ...] = ()  # pyinfra --data KEY=VALUE overrides, handed on to every pyinfra run


def deploy_stage(stage: Stage, options: Options, hosts_data: dict[str, dict], settings: dict[str, Settings],
                 workdir: Path, echo: Callable[[str], None]) -> StageResult:
    """Deploy one stage with pyinfra, then gate it."""
    result = StageResult(stage)
    started = time.monotonic()
    command = pyinfra_command(options.inventory, stage.name, dry=False, data=options.data)
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
            echo(f"  {outcome.name}: deploy FAILED (why: in the summary)")
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
                outcome.failure = ("tls-trust", brief(f"cannot fetch the deployed certificate {path} over SSH: {exc}"))
                echo(f"  {name}: tls-trust FAILED (why: in the summary)")
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
    command = pyinfra_command(options.inventory, stage.name, dry=True, data=options.data)
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
                break
    return results


# --- automatic rollback of a failed stage ---------------------------------------------------

RELEASE_OPERATION = "App | Serve release "


def switched_release(run: PyinfraRun) -> set[str]:
    """Hosts the deploy put on a new app release (its activation changed something)."""
    return {name for name, host in ((run.report or {}).get("hosts") or {}).items()
            if any(op["name"].startswith(RELEASE_OPERATION) and op["status"] == "changed" for op in host["operations"])}


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
    if roll_back(options.inventory, hosts, echo, options.data):
        result.rolled_back = hosts
        echo(f"  rolled back: {', '.join(hosts)} serve their previous release again")


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
        hosts = ", ".join(f"{o.name} failed {o.failure[0]}" for o in failed.hosts.values() if o.failure)
        untouched = [r.stage.name for r in results if r.status == "not started"]
        rolled_back = f"; rolled back: {', '.join(failed.rolled_back)}" if failed.rolled_back else ""
        lines.append(f"Rollout STOPPED at stage {failed.stage.name} ({hosts}) after "
                     f"{_seconds(total_seconds)}; untouched: {', '.join(untouched) or 'none'}{rolled_back}.")
    else:
        tolerated = [f"{outcome.name} ({outcome.failure[0]})" for r in results for outcome in r.hosts.values()
                     if outcome.failure]
        if tolerated:
            lines.append(f"Rollout complete in {_seconds(total_seconds)}, with {len(tolerated)} failed host(s) "
                         f"tolerated by --fail-percent {fail_percent:g}: {', '.join(tolerated)}.")
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
    tools_inventory.add_arguments(parser, limit=False)  # the stages are the rollout's --limit
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
        inventory = tools_inventory.load(args.inventory, args.data)
        stages = plan_stages(inventory.groups, args.stages)
        hosts_data = inventory.hosts
        # Every staged host's settings, checked before anything starts.
        settings = {name: build_settings(hosts_data[name], where=name) for stage in stages for name in stage.hosts}
    except (RolloutError, InventoryError, SettingsError) as exc:
        print(f"aisha-infra rollout: {exc}", file=sys.stderr)
        return 2

    options = Options(args.inventory, gate_rounds(args.checks, args.soak, args.interval), args.interval,
                      args.fail_percent, args.rollback, tuple(args.data))
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
