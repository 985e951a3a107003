import glob
import hashlib
from pathlib import Path
from typing import NamedTuple

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import files, server, systemd

from aisha_infra.deploy import paths, rendering
from aisha_infra.deploy.config import host_settings
from aisha_infra.deploy.operations.app import (
    lists_packages,
    mirrored_directory,
    release_activated,
    release_id,
    requirements_installed,
    secret_file,
    virtualenv,
)
from aisha_infra.deploy.operations.uploads import text_file
from aisha_infra.deploy.settings import DEFAULTS, Settings

UPLOAD_EXCLUDE = ["*.pyc", "__pycache__", ".git", ".venv"]
UPLOAD_EXCLUDE_DIR = ["__pycache__", "*/__pycache__", ".git", ".venv", ".pytest_cache"]


def upload_exclude(settings: Settings) -> list[str]:
    """What of the app's source is not uploaded (files.sync's `exclude`); the bundled
    backend is a package of ours only on the control machine: its __init__.py stays."""
    source = settings.app_source_dir
    return UPLOAD_EXCLUDE + ([] if settings.app_source else [glob.escape(f"{source}/__init__.py")])


class StagedRelease(NamedTuple):
    release: str  # <base>/releases/<release>
    unit_sha1: str  # of its aisha-api.service


def packages_to_serve(settings: Settings) -> list[str]:
    """The Debian packages the app needs before it can start: the bundled app without
    requirements runs on python3 alone, plus python3-cryptography to verify signatures
    (imported only then); a backend of your own may import any, and pip needs python3-venv."""
    if settings.uses_bundled_app and not lists_packages(settings.app_source_dir / "requirements.txt"):
        return ["python3"] + (["python3-cryptography"] if settings.verifies_signatures else [])
    return ["python3", "python3-venv", "python3-cryptography"]


def can_serve_before_packages(settings: Settings) -> bool:
    """Whether serve_app may run while the package install still runs (its restart and
    settle then overlap apt): the host had what the app needs before this run."""
    installed = host.get_fact(DebPackages)
    return all(package in installed for package in packages_to_serve(settings))


@deploy("App", data_defaults=DEFAULTS)
def stage_app() -> StagedRelease:
    """Each release (code, unit, environment, JWKS) lands in <base>/releases/<id>, named
    after its content; serve_app makes it serve. Needs none of the packages (the venv is
    made without pip), so it runs while they install."""
    settings = host_settings()
    source = settings.app_source_dir
    exclude = upload_exclude(settings)
    unit = rendering.render("systemd/aisha-api.service.j2", rendering.service_context(settings))
    environment = rendering.environment_file(settings)
    jwks = Path(settings.fal_jwks_file).read_bytes() if settings.fal_jwks_file else b""
    release = release_id(source, exclude, UPLOAD_EXCLUDE_DIR, unit, environment, jwks)
    release_dir = f"{settings.releases_dir}/{release}"

    for path in (settings.releases_dir, release_dir):
        files.directory(name=f"Create {path}", path=path, user="root", group="root", mode="0755")
    mirrored_directory(
        name=f"Upload backend from {source.name}/ to {release_dir}/app",
        src=str(source),
        dest=f"{release_dir}/app",
        user="root",
        group="root",
        mode="0644",
        dir_mode="0755",
        exclude=exclude,
        exclude_dir=UPLOAD_EXCLUDE_DIR,
        live=f"{settings.current_release_link}/app",
    )
    secret_file(
        name=f"Write the app's environment (0600 root) in release {release}",
        dest=f"{release_dir}/{paths.RELEASE_ENV_NAME}",
        content=environment,
        live=rendering.environment_file_path(settings),
    )
    if settings.fal_jwks_file:  # configuration, not a fact: fixed for the whole run
        text_file(
            name=f"Upload fal's JWKS to release {release}",
            content=jwks.decode(),
            dest=f"{release_dir}/{paths.REMOTE_JWKS_NAME}",
            live=rendering.remote_jwks_path(settings),
        )
    text_file(
        name=f"Render aisha-api.service for release {release}",
        content=unit,
        dest=f"{release_dir}/{paths.RELEASE_UNIT_NAME}",
        live=paths.SERVICE_UNIT_PATH,
    )
    virtualenv(name=f"Create virtualenv {settings.venv_dir}", path=settings.venv_dir)
    return StagedRelease(release, hashlib.sha1(unit.encode()).hexdigest())


@deploy("App", data_defaults=DEFAULTS)
def serve_app(staged: StagedRelease):
    """The staged release serves only once it came up (else the old one keeps serving)."""
    settings = host_settings()
    release = staged.release
    if lists_packages(settings.app_source_dir / "requirements.txt"):  # the local source: fixed for the run
        requirements_installed(
            name="Install the backend's requirements.txt",
            venv=settings.venv_dir,
            requirements=f"{settings.releases_dir}/{release}/app/requirements.txt",
            _timeout=settings.pip_timeout,
        )

    if settings.uses_socket_activation:
        socket_unit = files.template(
            name="Render aisha-api.socket",
            **rendering.template_source("systemd/aisha-api.socket.j2"),
            dest=paths.SOCKET_UNIT_PATH,
            **rendering.socket_context(settings),
        )
    else:
        # The backend binds the port itself: the socket must not hold it.
        systemd.service(
            name="Stop aisha-api.socket (the backend binds its own port)",
            service="aisha-api.socket",
            running=False,
            enabled=False,
        )
        socket_unit = files.file(name="Remove aisha-api.socket", path=paths.SOCKET_UNIT_PATH, present=False)
    systemd.daemon_reload(name="Reload systemd units", _if=socket_unit.did_change)
    if settings.uses_socket_activation:
        # A new port needs a new socket; the service holds the old one until it stops.
        # (A new host has no service unit yet: its first release brings it.)
        server.shell(
            name="Move aisha-api to its new socket",
            commands=["systemctl stop aisha-api.socket && if systemctl cat aisha-api.service >/dev/null 2>&1; "
                      "then systemctl stop aisha-api.service; fi"],
            _if=socket_unit.did_change,
        )
    release_activated(
        name=f"Serve release {release} (back to the old one if it does not start)",
        base=settings.aisha_base_dir,
        release=release,
        unit=paths.SERVICE_UNIT_PATH,
        unit_sha1=staged.unit_sha1,
        service="aisha-api.service",
        keep=settings.app_releases_keep,
        legacy_files=[f"{settings.aisha_base_dir}/{paths.REMOTE_JWKS_NAME}"],
    )
    if settings.uses_socket_activation:
        systemd.service(
            name="Listen on 127.0.0.1 (aisha-api.socket)",
            service="aisha-api.socket",
            running=True,
            enabled=True,
        )
    systemd.service(
        name="Run aisha-api.service",
        service="aisha-api.service",
        running=True,
        enabled=True,
    )


@deploy("Rollback", data_defaults=DEFAULTS)
def roll_back_app():
    settings = host_settings()
    release_activated(
        name="Serve the previous release (back to the current one if it does not start)",
        base=settings.aisha_base_dir,
        unit=paths.SERVICE_UNIT_PATH,
        service="aisha-api.service",
        keep=settings.app_releases_keep,
    )
