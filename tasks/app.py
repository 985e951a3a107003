from pyinfra.api import deploy
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from aisha_infra import rendering
from aisha_infra.operations.app import lists_packages, mirrored_directory, requirements_installed, virtualenv
from aisha_infra.settings import Settings


@deploy("App")
def deploy_app(settings: Settings):
    source = settings.app_source_dir
    app_code = mirrored_directory(
        name=f"Upload backend from {source.name}/ to {settings.app_dir}",
        src=str(source),
        dest=settings.app_dir,
        user="root",
        group="root",
        mode="0644",
        dir_mode="0755",
        exclude=["*.pyc", "__pycache__", ".git", ".venv"],
        exclude_dir=["__pycache__", "*/__pycache__", ".git", ".venv", ".pytest_cache"],
    )
    uploads = [app_code]
    if settings.fal_jwks_file:  # configuration, not a fact: fixed for the whole run
        uploads.append(
            files.put(
                name="Upload fal's JWKS",
                src=settings.fal_jwks_file,
                dest=rendering.remote_jwks_path(settings),
                user="root",
                group="root",
                mode="0644",
            )
        )
    venv = virtualenv(name=f"Create virtualenv {settings.venv_dir}", path=settings.venv_dir)
    requirements = venv  # nothing more to change when the backend needs no packages
    if lists_packages(source / "requirements.txt"):  # the local source: fixed for the run
        requirements = requirements_installed(
            name="Install the backend's requirements.txt",
            venv=settings.venv_dir,
            requirements=f"{settings.app_dir}/requirements.txt",
            _timeout=settings.pip_timeout,
        )

    if settings.uses_socket_activation:
        socket_unit = files.template(
            name="Render aisha-api.socket",
            **rendering.template_source("systemd/aisha-api.socket.j2"),
            dest=rendering.SOCKET_UNIT_PATH,
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
        socket_unit = files.file(name="Remove aisha-api.socket", path=rendering.SOCKET_UNIT_PATH, present=False)
    service_unit = files.template(
        name="Render aisha-api.service",
        **rendering.template_source("systemd/aisha-api.service.j2"),
        dest=rendering.SERVICE_UNIT_PATH,
        **rendering.service_context(settings),
    )
    units_changed = any_changed(socket_unit, service_unit)
    systemd.daemon_reload(name="Reload systemd units", _if=units_changed)

    if settings.uses_socket_activation:
        # A new port needs a new socket; the service holds the old one until it stops.
        server.shell(
            name="Move aisha-api to its new socket",
            commands=["systemctl stop aisha-api.service aisha-api.socket"],
            _if=socket_unit.did_change,
        )
    # restarted= only acts on a running service, so a fresh host starts it once, below.
    systemd.service(
        name="Restart aisha-api for the new code or unit",
        service="aisha-api.service",
        restarted=True,
        _if=any_changed(*uploads, venv, requirements, service_unit),
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
