"""Provisioning speed against the floor: `python bench/run.py [--runs N] [--quick]` (as root).

Boots lab hosts (lab "bench", always removed at the end) and measures, each several times,
with the median and the spread:

1. fresh provision of one host: the real `pyinfra -y inventory.py deploy.py`, split at the
   moment the packages are installed (from pyinfra's own operation start lines, timestamped
   as they stream); floor: one SSH connection running one shell script that does the same
   job with the deploy's own rendered files (packages, accounts, release, units, certificate,
   nginx site, ufw, timers, the app started), then the same HTTPS checks from this machine,
   on another fresh host; the script says when its apt commands were done.
2. no-op re-run on a converged host: wall time and shell commands run on the host (counted
   from a `-vv` run, where pyinfra prints each one as `>>> sh -c ...`); floor: one new SSH
   connection running one shell script that reads the same state (checksums, owners and
   modes, account, packages, units, ufw, certificate) plus the same HTTPS health and
   webhook checks from this machine that the deploy's verify step makes.
3. the no-op re-run on 1, 4 and 8 hosts at once (one pyinfra process, as an operator runs it);
   floor: the floor script on as many hosts at once (one SSH connection each, in parallel).
4. drift repair of one file: one byte appended to the rendered nginx site, then the re-run
   that puts it back (nginx -t, reload); against the 1-host no-op floor script, run between
   the repairs so that both see the same machine.

Every run reports its wall time, the commands it sent per host, the CPU seconds of the pyinfra
process and where the time went (imports, connect, prepare, operations, verify, finish; and
the seconds spent waiting on facts, from the -vv run that counts the commands).

The deploy measured is a snapshot of --project (default: this repository) taken at start,
so edits made while the benchmark runs do not change what it measures.
Prints a table with the ratios ours / floor and writes bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import base64
import compileall
import datetime
import io
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aisha_infra.checks import health  # noqa: E402
from aisha_infra.deploy import paths, rendering  # noqa: E402
from aisha_infra.deploy.onhost import aisha_watch  # noqa: E402
from aisha_infra.deploy.operations.app import wanted_tree  # noqa: E402
from aisha_infra.lab.hosts import Lab, LabHost  # noqa: E402
from aisha_infra.deploy.settings import build_settings  # noqa: E402
from aisha_infra.tasks.app import UPLOAD_EXCLUDE_DIR, upload_exclude  # noqa: E402
from aisha_infra.tasks.packages import PACKAGES  # noqa: E402
from tests.e2e.deploylib import PYINFRA, DeployRun, write_hosts_file  # noqa: E402

LAB_NAME = "bench"
RESULTS = ROOT / "bench" / "results" / "latest.json"
SCALE = (1, 4, 8)
FRESH_TIMEOUT_S = 900  # one fresh provision or apt floor, downloads included
NOOP_TIMEOUT_S = 180

# What issue #17 asks of us; reported, not asserted. Each is ours / the floor at the same
# host count (drift: against the 1-host no-op floor).
TARGETS = {
    "fresh_vs_floor": 1.15,
    "noop_vs_floor": 3.0,
    "noop_8_vs_floor": 3.0,
    "drift_vs_floor": 3.0,
}
# The drifted file: one byte appended (a lone "#", a comment to nginx) to the rendered site.
DRIFT_FILE = paths.NGINX_SITE_PATH

OPERATION_START = re.compile(r"--> Starting operation: (.+?)\s*$")
COMMAND_LINE = re.compile(r"^\[(?P<host>[^\]]+)\] >>> ")
FACT_LOADED = re.compile(r"^\s*\[(?P<host>[^\]]+)\] Loaded fact ")
VERIFY_PREFIX = "Verify | "


# --- running things, timed ---------------------------------------------------------------

@dataclass
class Timed:
    wall: float  # seconds
    deploy: DeployRun
    stamped: list  # (seconds since start, line) as pyinfra wrote them (unbuffered)
    cpu: float  # CPU seconds the pyinfra process used


def run_pyinfra(project: Path, hosts_file: Path, *args: str, timeout: float) -> Timed:
    """Run the deploy as an operator does, timed."""
    env = {**os.environ, "AISHA_HOSTS": str(hosts_file), "PYTHONPATH": str(project),
           "PYTHONUNBUFFERED": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    process = subprocess.Popen(
        [PYINFRA, "-y", *args, "inventory.py", "deploy.py"], cwd=project, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
    )
    stamped = []
    try:
        deadline = started + timeout
        for line in process.stdout:
            stamped.append((time.monotonic() - started, line.rstrip("\n")))
            if time.monotonic() > deadline:
                raise TimeoutError(f"pyinfra did not finish within {timeout:.0f} s")
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timed(wall, DeployRun(process.returncode, "\n".join(line for _, line in stamped)), stamped, cpu)


def operation_marks(stamped: list) -> list[tuple[float, str]]:
    """When each operation started (one host), then the results' line (named "")."""
    marks = [(t, m.group(1)) for t, line in stamped if (m := OPERATION_START.search(line))]
    return marks + [(t, "") for t, line in stamped if line.startswith("--> Results")]


def operation_seconds(stamped: list) -> dict[str, float]:
    """How long each operation ran (one host): from its start line to the next operation's
    (or the results')."""
    marks = operation_marks(stamped)
    return {name: end - start for (start, name), (end, _) in zip(marks, marks[1:])}


def packages_installed_at(stamped: list) -> float:
    """Seconds from the start of the run until the last Packages operation ended (the
    packages may install in the background while other operations run)."""
    marks = operation_marks(stamped)
    last = max(index for index, (_, name) in enumerate(marks) if name.startswith("Packages | "))
    return marks[last + 1][0]


PHASES = (  # pyinfra's progress lines -> the phase that ends there
    ("--> Loading config", "imports"),
    ("--> Preparing operation files", "connect"),  # also loads the inventory
    ("--> Beginning operation run", "prepare"),  # runs deploy.py once per host
    ("--> Results", "operations"),
)


def phase_seconds(run: Timed) -> dict:
    """Where one pyinfra run spends its time, ending with "finish" (results, disconnect,
    exit) and "pyinfra_cpu" (CPU seconds of the pyinfra process, not a phase). "verify" is
    taken out of "operations": from the first Verify operation's start to the next one's."""
    phases, previous = {}, 0.0
    for marker, phase in PHASES:
        at = next(t for t, line in run.stamped if line.startswith(marker))
        phases[phase], previous = at - previous, at
    verify = sum(seconds for name, seconds in operation_seconds(run.stamped).items()
                 if name.startswith(VERIFY_PREFIX))
    phases["operations"] -= verify
    phases["verify"] = verify
    phases["finish"] = run.wall - previous
    phases["pyinfra_cpu"] = run.cpu
    return phases


def fact_seconds(run: Timed) -> float:
    """Seconds a host waited on facts, from a -vv run: each fact's command line (`>>>`) to
    its "Loaded fact" line, summed per host; the median over hosts (they overlap in time)."""
    totals: dict[str, float] = {}
    asked: dict[str, float] = {}
    for t, line in run.stamped:
        if m := COMMAND_LINE.match(line):
            asked[m.group("host")] = t
        elif (m := FACT_LOADED.match(line)) and m.group("host") in asked:
            name = m.group("host")
            totals[name] = totals.get(name, 0.0) + t - asked.pop(name)
    return statistics.median(totals.values()) if totals else 0.0


def commands_per_host(output: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in output.splitlines():
        if m := COMMAND_LINE.match(line):
            counts[m.group("host")] = counts.get(m.group("host"), 0) + 1
    return counts


def check_noop(deploy: DeployRun) -> None:
    deploy.check()
    if deploy.totals["changed"]:
        raise RuntimeError(f"not a no-op re-run: {deploy.changed_operations} changed")


def timed(function, *args, **kwargs) -> tuple[float, object]:
    started = time.monotonic()
    result = function(*args, **kwargs)
    return time.monotonic() - started, result


# --- the floors ---------------------------------------------------------------------------

def _app_archive(settings) -> bytes:
    """The backend as the deploy uploads it (the same walk and exclusions), as one tar.gz."""
    source = settings.app_source_dir
    tree = wanted_tree(source, "root", "root", "0644", "0755", upload_exclude(settings), UPLOAD_EXCLUDE_DIR)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for relative in sorted(tree):
            if relative:
                tar.add(source / relative, arcname=relative, recursive=False)
    return buffer.getvalue()


def fresh_floor_script(settings, host_name: str) -> str:
    """One shell script that does the whole job on a fresh host, as a careful operator would
    write it with the deploy's own rendered files: packages, the accounts, the release
    (code, environment, unit, venv), units, self-signed certificate, nginx site (nginx -t
    before the reload), ufw, backups and watch timers, the app started and checked active.
    It prints the moment apt was done, then the certificate to trust."""
    s, q = settings, shlex.quote
    release = f"{s.releases_dir}/floor"
    unit = rendering.render("systemd/aisha-api.service.j2", rendering.service_context(s))
    files = {  # path: (content, mode, owner)
        f"{release}/{paths.RELEASE_ENV_NAME}": (rendering.environment_file(s), "0600", "root:root"),
        f"{release}/{paths.RELEASE_UNIT_NAME}": (unit, "0644", "root:root"),
        paths.SERVICE_UNIT_PATH: (unit, "0644", "root:root"),
        paths.SOCKET_UNIT_PATH: (rendering.render("systemd/aisha-api.socket.j2", rendering.socket_context(s)),
                                 "0644", "root:root"),
        paths.BACKUP_SERVICE_PATH: (rendering.render("systemd/aisha-backup.service.j2",
                                                     rendering.backup_service_context(s)), "0644", "root:root"),
        paths.BACKUP_TIMER_PATH: (rendering.render("systemd/aisha-backup.timer.j2",
                                                   rendering.backup_timer_context(s)), "0644", "root:root"),
        paths.WATCH_SCRIPT_PATH: (Path(aisha_watch.__file__).read_text(), "0755", "root:root"),
        paths.WATCH_CONFIG_PATH: (json.dumps(rendering.watch_config(s, host_name), indent=2, sort_keys=True) + "\n",
                                  "0644", "root:root"),
        paths.WATCH_SERVICE_PATH: (rendering.render("systemd/aisha-watch.service.j2",
                                                    rendering.watch_service_context(s)), "0644", "root:root"),
        paths.WATCH_TIMER_PATH: (rendering.render("systemd/aisha-watch.timer.j2",
                                                  rendering.watch_timer_context(s)), "0644", "root:root"),
        paths.CERTBOT_ONFAILURE_DROPIN_PATH: (rendering.render("systemd/certbot.service.d/aisha-watch.conf.j2", {}),
                                              "0644", "root:root"),
        paths.NGINX_CERT_SNIPPET_PATH: (rendering.render("nginx/aisha-webhook-certificate.conf.j2",
                                                         rendering.certificate_snippet_context(
                                                             s.selfsigned_cert_path, s.selfsigned_key_path,
                                                             "self-signed")), "0644", "root:root"),
        paths.NGINX_SITE_PATH: (rendering.render("nginx/aisha-webhook.conf.j2", rendering.site_context(s)),
                                "0644", "root:root"),
        paths.LOGROTATE_PATH: (rendering.render("logrotate/aisha.j2", rendering.logrotate_context(s)),
                               "0644", "root:root"),
    }
    put = [f"put {q(path)} {mode} {owner} {base64.b64encode(content.encode()).decode()}"
           for path, (content, mode, owner) in files.items()]
    app = base64.b64encode(_app_archive(s)).decode()
    cert, key, user = q(s.selfsigned_cert_path), q(s.selfsigned_key_path), q(s.aisha_user)
    ports = [22, s.nginx_http_port, s.nginx_https_port]
    lines = [
        "set -e",
        "export DEBIAN_FRONTEND=noninteractive",
        'put() { install -d "$(dirname "$1")"; echo "$4" | base64 -d > "$1"; chmod "$2" "$1"; chown "$3" "$1"; }',
        "apt-get update -q >/dev/null",
        "apt-get install -y -q " + " ".join(q(p) for p in PACKAGES) + " >/dev/null",
        'echo "apt done $(date +%s.%N)"',
        *(f"getent group {u} >/dev/null || groupadd --system {u}; getent passwd {u} >/dev/null || "
          f"useradd --system -g {u} -d {q(home)} -M -s /usr/sbin/nologin {u}"
          for u, home in ((user, s.aisha_base_dir), (rendering.WATCH_USER, paths.WATCH_STATE_DIR))),
        f"install -d -m 0755 {q(s.aisha_base_dir)} {q(s.ssl_dir)} {q(s.releases_dir)} {q(release)}/app",
        f"install -d -m 0750 -g adm {q(s.aisha_log_dir)}",
        f"install -d -m 0700 {q(s.backup_dir)}",
        f"echo {app} | base64 -d | tar xz --no-same-owner -C {q(release)}/app",
        *put,
        f"python3 -m venv --without-pip {q(s.venv_dir)}",
        f"ln -sfn releases/floor {q(s.current_release_link)}; ln -sfn current/app {q(s.aisha_base_dir)}/app",
        "systemctl daemon-reload",
        "systemctl enable --now -q aisha-api.socket",
        "systemctl enable -q aisha-api.service; systemctl restart aisha-api.service; "
        "systemctl is-active -q aisha-api.service",
        "systemctl enable --now -q aisha-backup.timer",
        "(umask 077; openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 "
        f"-days {s.tls_selfsigned_days} -subj /CN={q(s.aisha_domain)} -addext subjectAltName=DNS:{q(s.aisha_domain)} "
        f"-addext extendedKeyUsage=serverAuth -keyout {key} -out {cert} 2>/dev/null)",
        f"chown {user}:{user} {key} {cert}; chmod 0600 {key}; chmod 0644 {cert}",
        f"install -d -m 0755 {paths.ACME_WEBROOT}/.well-known/acme-challenge",
        f"rm -f {paths.DEFAULT_SITE_LINK}; ln -sfn {q(paths.NGINX_SITE_PATH)} {q(paths.NGINX_SITE_LINK)}",
        "nginx -t -q && systemctl reload nginx",
        *(f"ufw allow {port}/tcp >/dev/null" for port in ports),
        "ufw default deny incoming >/dev/null; ufw default allow outgoing >/dev/null",
        "ufw --force enable >/dev/null; systemctl enable -q ufw",
        "systemctl enable --now -q aisha-watch.timer; systemctl start aisha-watch.service",
        f"echo ---; cat {cert}",
    ]
    return "\n".join(lines) + "\n"


def fresh_floor(host: LabHost, settings, workdir: Path) -> tuple[float, float]:
    """The whole job in one SSH connection running one script (sent on its stdin), then the
    verify step's two HTTPS checks from here. Returns the wall time and apt's part of it."""
    script = fresh_floor_script(settings, host.name)
    started, started_epoch = time.monotonic(), time.time()
    result = subprocess.run(host.ssh_command("sh -s"), input=script, capture_output=True, text=True,
                            timeout=FRESH_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"the fresh floor script failed on {host.name}: {result.stderr[-2000:]}")
    pem = workdir / f"floor-cert-{host.name}.pem"
    pem.write_text(result.stdout.split("---\n", 1)[1])
    for check in (health.check_https_health, health.check_webhook_post):
        ok, detail = check(host.address, settings.aisha_domain, port=settings.nginx_https_port, ca_bundle=str(pem))
        if not ok:
            raise RuntimeError(f"fresh floor on {host.name}: {detail}")
    wall = time.monotonic() - started
    apt_done = float(re.search(r"^apt done (\S+)$", result.stdout, re.M).group(1))  # the same clock
    return wall, apt_done - started_epoch


def noop_floor_script(settings) -> str:
    """One shell script that reads everything the deploy checks on a converged host."""
    s = settings
    q = shlex.quote
    units = ["aisha-api.socket", "aisha-api.service", "nginx.service", "ufw.service"]
    owned = [s.aisha_base_dir, s.app_dir, s.ssl_dir, s.aisha_log_dir,
             f"{paths.ACME_WEBROOT}/.well-known/acme-challenge",
             s.selfsigned_key_path, s.selfsigned_cert_path,
             paths.SOCKET_UNIT_PATH, paths.SERVICE_UNIT_PATH, paths.LOGROTATE_PATH]
    rendered = [paths.SOCKET_UNIT_PATH, paths.SERVICE_UNIT_PATH, paths.NGINX_SITE_PATH,
                paths.NGINX_CERT_SNIPPET_PATH, paths.LOGROTATE_PATH,
                f"{s.venv_dir}/.aisha-requirements.txt"]
    cert, key = q(s.selfsigned_cert_path), q(s.selfsigned_key_path)
    lines = [
        "find /var/lib/apt/periodic/update-success-stamp -mmin -60",  # apt lists fresh enough
        "dpkg-query -W -f='${Package} ${Status}\\n' " + " ".join(PACKAGES),
        f"getent group {q(s.aisha_user)}; getent passwd {q(s.aisha_user)}; id -gn {q(s.aisha_user)}",
        "stat -c '%n %U %G %a' " + " ".join(q(p) for p in owned),
        f"find {q(s.app_dir)}/ -type f -exec sha1sum {{}} + | sort",  # files.sync, extra files too
        # the release that serves, and its unit and environment
        f"readlink {q(s.current_release_link)}; sha1sum {q(s.current_release_link)}/aisha-api.*",
        "sha1sum " + " ".join(q(p) for p in rendered),
        f"test -e {q(s.venv_dir)}/bin/activate && echo venv ok",
        f"readlink {q(paths.NGINX_SITE_LINK)}; test -e /etc/nginx/sites-enabled/default || echo no default site",
        "systemctl is-active " + " ".join(units) + "; systemctl is-enabled " + " ".join(units),
        "grep -h '^ENABLED=' /etc/ufw/ufw.conf; grep -h '^DEFAULT_[A-Z]*_POLICY=' /etc/default/ufw; ufw show added",
        f"openssl x509 -in {cert} -noout -enddate -ext subjectAltName "
        f"-checkend {s.tls_selfsigned_renew_days * 86400}",
        f"openssl x509 -in {cert} -noout -pubkey | sha256sum; openssl pkey -in {key} -pubout | sha256sum",
        f"echo ---; cat {cert}",  # the certificate to trust for the HTTPS checks, as verify does
    ]
    return "\n".join(lines) + "\n"


def noop_floor(host: LabHost, settings, script: str, workdir: Path) -> str:
    """One SSH connection, one script; then the verify step's two HTTPS checks from here."""
    state = host.run(script, timeout=60).stdout
    pem = workdir / f"floor-cert-{host.name}.pem"
    pem.write_text(state.split("---\n", 1)[1])
    port = settings.nginx_https_port
    for check in (health.check_https_health, health.check_webhook_post):
        ok, detail = check(host.address, settings.aisha_domain, port=port, ca_bundle=str(pem))
        if not ok:
            raise RuntimeError(f"floor on {host.name}: {detail}")
    return state


def noop_floors(hosts: list[LabHost], settings, script: str, workdir: Path) -> tuple[float, dict[str, str]]:
    """The floor on every host at once (a thread each, as one operator running the script
    over parallel SSH connections); wall time until the last finishes, and each host's state."""
    states: dict[str, str] = {}
    errors: list[BaseException] = []

    def one(host: LabHost) -> None:
        try:
            states[host.name] = noop_floor(host, settings, script, workdir)
        except BaseException as exc:  # re-raised below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(host,)) for host in hosts]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=NOOP_TIMEOUT_S)
    seconds = time.monotonic() - started
    if errors:
        raise errors[0]
    if len(states) != len(hosts):
        raise RuntimeError(f"the floor did not finish on every host within {NOOP_TIMEOUT_S} s")
    return seconds, states


# --- lab hosts ------------------------------------------------------------------------------

def seed_apt(source: LabHost, targets: list[LabHost]) -> None:
    """Setup only (not measured): give new hosts the packages and lists one host has
    already downloaded, so converging 7 hosts does not fetch it all 7 times again."""
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
        src = source.root / sub
        for target in targets:
            for item in src.iterdir():
                if item.is_file() and item.name != "lock":
                    shutil.copy2(item, target.root / sub / item.name)


def summary(samples: list[float]) -> dict:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "stdev": statistics.stdev(samples) if len(samples) > 1 else 0.0,
        "samples": [round(s, 3) for s in samples],
    }


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem_kb = int(re.search(r"^MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text(), re.M).group(1))
    os_name = re.search(r'^PRETTY_NAME="?(.*?)"?$', Path("/etc/os-release").read_text(), re.M)
    return {
        "cpu": model.group(1) if model else platform.processor(),
        "cores": os.cpu_count(),
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": os_name.group(1) if os_name else "",
        "python": platform.python_version(),
        "pyinfra": subprocess.run([PYINFRA, "--version"], capture_output=True, text=True).stdout.strip(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_at_start": os.getloadavg(),
    }


def git_revision(project: Path) -> str:
    result = subprocess.run(["git", "-C", str(project), "describe", "--always", "--dirty"],
                            capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def snapshot(project: Path, dest: Path) -> Path:
    """A copy of the deploy as it is now (code, tasks, templates), measured instead of the
    live tree that others may be editing; compiled as `make venv` and pip install compile
    it (pyinfra writes no bytecode itself)."""
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", ".pytest_cache", "*.egg-info", "bench")
    shutil.copytree(project, dest, ignore=ignore, symlinks=True)
    for package in ("aisha_infra", "tasks"):  # aisha_infra/tasks is a link, which compileall skips
        if not compileall.compile_dir(dest / package, quiet=1):
            raise RuntimeError(f"could not compile {dest / package}")
    return dest


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds like Ctrl-C: the lab comes down


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the benchmark --------------------------------------------------------------------------

def project_settings(project: Path):
    """The settings every lab host of `project` gets (its group_data/all.py)."""
    data = {}
    exec(compile((project / "group_data" / "all.py").read_text(), "all.py", "exec"), {}, data)
    return build_settings({k: v for k, v in data.items() if not k.startswith("_")})


def measure(lab: Lab, project: Path, work: Path, runs: int, noop_runs: int, scale: tuple) -> dict:
    settings = project_settings(project)
    results: dict = {"fresh": {"total": [], "apt": [], "other": []},
                     "fresh_floor": {"total": [], "apt": [], "other": []}, "fresh_operations": {}}

    # 1. Fresh provision against the whole job in one script, alternating which goes first.
    converged: LabHost | None = None
    for run in range(runs):
        for what in (("floor", "ours") if run % 2 == 0 else ("ours", "floor")):
            host = lab.add_hosts(count=1)[0]
            if what == "floor":
                seconds, apt = fresh_floor(host, settings, work)
                for key, value in (("total", seconds), ("apt", apt), ("other", seconds - apt)):
                    results["fresh_floor"][key].append(value)
                log(f"fresh {run + 1}/{runs}: floor {seconds:.1f} s (apt {apt:.1f} s, rest {seconds - apt:.1f} s)")
                lab.destroy_host(host)
                continue
            hosts_file = write_hosts_file(work / "fresh.json", [host])
            fresh = run_pyinfra(project, hosts_file, "-v", timeout=FRESH_TIMEOUT_S)
            fresh.deploy.check()
            wall = fresh.wall
            operations = operation_seconds(fresh.stamped)
            apt = packages_installed_at(fresh.stamped)
            for name, seconds in operations.items():
                results["fresh_operations"].setdefault(name, []).append(seconds)
            results["fresh"]["total"].append(wall)
            results["fresh"]["apt"].append(apt)
            results["fresh"]["other"].append(wall - apt)
            log(f"fresh {run + 1}/{runs}: deploy {wall:.1f} s (apt {apt:.1f} s, rest {wall - apt:.1f} s)")
            if converged is not None:
                lab.destroy_host(converged)
            converged = host

    # 2. and 3. No-op re-runs on 1, 4, 8 converged hosts.
    hosts = [converged]
    if max(scale) > 1:
        extra = lab.add_hosts(count=max(scale) - 1)
        seed_apt(converged, extra)
        hosts += extra
        log(f"converging {len(extra)} more hosts (setup, not measured)")
        run_pyinfra(project, write_hosts_file(work / "setup.json", hosts),
                    timeout=FRESH_TIMEOUT_S).deploy.check()
    script = noop_floor_script(settings)
    reference_states: dict[str, str] = {}
    results["noop"] = {}
    for count in scale:
        hosts_file = write_hosts_file(work / f"noop-{count}.json", hosts[:count])
        walls, phases, floors = [], [], []
        for run in range(noop_runs):
            noop = run_pyinfra(project, hosts_file, timeout=NOOP_TIMEOUT_S)
            check_noop(noop.deploy)
            walls.append(noop.wall)
            phases.append(phase_seconds(noop))
            # Its floor on as many hosts, interleaved so both see the same machine load.
            seconds, states = noop_floors(hosts[:count], settings, script, work)
            for name, state in states.items():
                if reference_states.setdefault(name, state) != state:
                    raise RuntimeError(f"the floor script read a different state on {name} between runs")
            floors.append(seconds)
        # Commands counted after the timed runs: a re-run as operators see it from the second
        # one on (the first after a fresh provision prefetches what that one asked; it is
        # among the timed samples).
        counting = run_pyinfra(project, hosts_file, "-vv", timeout=NOOP_TIMEOUT_S)
        check_noop(counting.deploy)
        per_host = commands_per_host(counting.deploy.output)
        results["noop"][count] = {
            "wall": walls,
            "floor": floors,
            "commands_per_host": statistics.median(per_host.values()) if per_host else 0,
            "phases": {**{k: statistics.median(p[k] for p in phases) for k in phases[0]},
                       "facts_vv": fact_seconds(counting)},
        }
        log(f"no-op on {count} host(s): median {statistics.median(walls):.2f} s, "
            f"{plural(results['noop'][count]['commands_per_host'], 'command')} per host; "
            f"floor {statistics.median(floors):.2f} s")

    # 4. Drift repair of one file on the first host, against its no-op floor (measured
    # again between the runs, so both see the same machine).
    hosts_file = write_hosts_file(work / "drift.json", [converged])
    results["drift"] = {"wall": [], "floor": [], "commands_per_host": 0, "phases": []}
    for run in range(noop_runs + 1):  # the first, with -vv, only counts commands
        converged.run(f"printf '#' >> {shlex.quote(DRIFT_FILE)}", timeout=30)
        drift = run_pyinfra(project, hosts_file, *(["-vv"] if run == 0 else []), timeout=NOOP_TIMEOUT_S)
        drift.deploy.check()
        if drift.deploy.totals["changed"] == 0:
            raise RuntimeError(f"drift in {DRIFT_FILE} was not repaired")
        if run == 0:
            results["drift"]["commands_per_host"] = commands_per_host(drift.deploy.output).get(converged.name, 0)
            results["drift"]["changed"] = [name for name in drift.deploy.changed_operations
                                           if name != "Grand total"]
            continue
        results["drift"]["wall"].append(drift.wall)
        results["drift"]["phases"].append(phase_seconds(drift))
        results["drift"]["floor"].append(noop_floors([converged], settings, script, work)[0])
    check_noop(run_pyinfra(project, hosts_file, timeout=NOOP_TIMEOUT_S).deploy)  # repaired in one run
    phases = results["drift"]["phases"]
    results["drift"]["phases"] = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
    log(f"drift repair: median {statistics.median(results['drift']['wall']):.2f} s, "
        f"{plural(results['drift']['commands_per_host'], 'command')}; floor {statistics.median(results['drift']['floor']):.2f} s")
    results["noop_floor_lines"] = script.count("\n")
    return results


def report(results: dict, meta: dict) -> dict:
    fresh = {k: summary(v) for k, v in results["fresh"].items()}
    fresh_floor = {k: summary(v) for k, v in results["fresh_floor"].items()}
    noop = {str(n): {"wall": summary(r["wall"]), "floor": summary(r["floor"]),
                     "commands_per_host": r["commands_per_host"], "phases": r["phases"]}
            for n, r in results["noop"].items()}
    drift = {**results["drift"], "wall": summary(results["drift"]["wall"]), "floor": summary(results["drift"]["floor"])}
    ratios = {"fresh_vs_floor": fresh["total"]["median"] / fresh_floor["total"]["median"],
              # for reference (no target): against the floor's apt commands alone
              "fresh_vs_apt_alone": fresh["total"]["median"] / fresh_floor["apt"]["median"]}
    for n, r in noop.items():
        ratios["noop_vs_floor" if n == "1" else f"noop_{n}_vs_floor"] = r["wall"]["median"] / r["floor"]["median"]
    ratios["drift_vs_floor"] = drift["wall"]["median"] / drift["floor"]["median"]
    met = {key: ratios[key] <= target for key, target in TARGETS.items() if key in ratios}
    slowest = sorted(((statistics.median(v), k) for k, v in results["fresh_operations"].items()), reverse=True)
    return {
        **meta,
        "fresh": fresh,
        "fresh_slowest_operations": {name: round(seconds, 2) for seconds, name in slowest[:8]},
        "fresh_floor": fresh_floor,
        "noop": noop,
        "noop_floor": {"ssh_connections_per_host": 1, "script_lines": results["noop_floor_lines"]},
        "drift": drift,
        "ratios": ratios,
        "targets": TARGETS,
        "targets_met": met,
    }


def plural(count: float, noun: str) -> str:
    return f"{count:.0f} {noun}{'' if round(count) == 1 else 's'}"


def spread(s: dict) -> str:
    return f"{s['median']:.2f} s ({s['min']:.2f}–{s['max']:.2f})"


def table(r: dict) -> str:
    t, ratio, met = r["targets"], r["ratios"], r["targets_met"]
    mark = {True: "met", False: "missed"}

    def target(key: str) -> str:
        return f"≤ {t[key]}×: {mark[met[key]]}" if key in met else ""

    rows = [
        "| Measurement | Ours: median (min–max) | Floor: median (min–max) | Ours / floor | Target |",
        "|---|---|---|---|---|",
        f"| Fresh provision, 1 host | {spread(r['fresh']['total'])} | {spread(r['fresh_floor']['total'])} "
        f"| {ratio['fresh_vs_floor']:.2f}× | {target('fresh_vs_floor')} |",
        f"| … until the packages are installed | {spread(r['fresh']['apt'])} | {spread(r['fresh_floor']['apt'])} | | |",
        f"| … everything after that | {spread(r['fresh']['other'])} | {spread(r['fresh_floor']['other'])} | | |",
    ]
    for n, result in r["noop"].items():
        key = "noop_vs_floor" if n == "1" else f"noop_{n}_vs_floor"
        hosts = "1 host" if n == "1" else f"{n} hosts at once"
        rows.append(f"| No-op re-run, {hosts} | {spread(result['wall'])}, "
                    f"{plural(result['commands_per_host'], 'command')} per host "
                    f"| {spread(result['floor'])}, 1 script per host | {ratio[key]:.2f}× | {target(key)} |")
    drift = r["drift"]
    rows.append(f"| Drift repair of one file, 1 host | {spread(drift['wall'])}, {plural(drift['commands_per_host'], 'command')} "
                f"| {spread(drift['floor'])}, the no-op floor script | {ratio['drift_vs_floor']:.2f}× "
                f"| {target('drift_vs_floor')} |")
    runs = {**{f"no-op, {n} host(s)": v["phases"] for n, v in r["noop"].items()}, "drift, 1 host": drift["phases"]}
    labels = {"pyinfra_cpu": "pyinfra's own CPU time", "facts_vv": "(waiting on facts, in the -vv run)"}
    rows.append("")
    rows.append("| Median seconds | " + " | ".join(runs) + " |")
    rows.append("|---|" + "---|" * len(runs))
    for phase in next(iter(runs.values())):
        rows.append(f"| {labels.get(phase, phase)} | "
                    + " | ".join(f"{phases[phase]:.2f}" if phase in phases else "" for phases in runs.values()) + " |")
    rows.append("")
    slow = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in list(r["fresh_slowest_operations"].items())[:5])
    rows.append(f"Fresh provision, slowest operations (median): {slow}.")
    rows.append(f"Fresh provision against the floor's apt commands alone (no target): {ratio['fresh_vs_apt_alone']:.2f}×.")
    rows.append(f"Drift repair: changed {', '.join(drift.get('changed', []))}.")
    m = r["machine"]
    rows.append(f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM, kernel {m['kernel']}, "
                f"{m['os']}; {m['pyinfra']}; {m['date']}; load {m['load_at_start'][0]:.1f} at start, "
                f"{m['load_at_end'][0]:.1f} at end.")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3,
                        help="fresh provisions (and apt floors) to time; no-op runs are 2N+1 (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="one fresh provision, 3 no-op runs, up to 4 hosts: a smoke run (~2.5 min)")
    parser.add_argument("--project", type=Path, default=ROOT,
                        help="the deploy to measure (default: this repository), e.g. an older checkout")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"default {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("lab hosts need root: run as root")
    if not 1 <= args.runs <= 20:
        parser.error("--runs: 1 to 20")
    runs, noop_runs, scale = (1, 3, SCALE[:2]) if args.quick else (args.runs, 2 * args.runs + 1, SCALE)

    lab = Lab(LAB_NAME)
    if lab.hosts():
        print(f"lab {LAB_NAME} already has hosts: another benchmark running? If not, "
              f"`aisha-infra lab down --name {LAB_NAME}`.", file=sys.stderr)
        return 1
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    meta = {"machine": machine(), "project": str(args.project.resolve()),
            "revision": git_revision(args.project), "runs": runs, "noop_runs": noop_runs,
            "quick": args.quick}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aisha-bench-") as tmp:
        work = Path(tmp)
        project = snapshot(args.project, work / "project")
        try:
            results = measure(lab, project, work, runs, noop_runs, scale)
        finally:
            log("removing the lab")
            lab.down()
    meta["machine"]["load_at_end"] = os.getloadavg()
    meta["seconds"] = round(time.monotonic() - started, 1)
    final = report(results, meta)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(final, indent=2) + "\n")
    print()
    print(table(final))
    print(f"\n{args.output} written; the benchmark took {meta['seconds']:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
