from pyinfra.api import deploy
from pyinfra.operations import files, server

from aisha_infra.deploy.config import host_settings
from aisha_infra.deploy.operations.accounts import system_user
from aisha_infra.deploy.settings import DEFAULTS


def create_system_account(user: str, home: str):
    """A system group and a user of it with no login shell; its home is recorded, not created."""
    server.group(name=f"Create system group {user}", group=user, system=True)
    system_user(
        name=f"Create system user {user} (no login shell)",
        user=user,
        group=user,
        home=home,
        shell="/usr/sbin/nologin",
    )


@deploy("Service user", data_defaults=DEFAULTS)
def create_service_user():
    settings = host_settings()
    # Its home is not created: the directory is root's, not the user's.
    create_system_account(settings.aisha_user, home=settings.aisha_base_dir)
    # Code and venv are root's: the service can read but never rewrite itself.
    # (<base>/app comes with the first release: a link to current/app.)
    files.directory(
        name=f"Create {settings.aisha_base_dir}", path=settings.aisha_base_dir, user="root", group="root", mode="0755"
    )
    # Root's too, though the key in it is the service user's: root writes keys there,
    # and nothing the service user could plant (a link named like the next key) may be in the way.
    files.directory(
        name=f"Create {settings.ssl_dir}", path=settings.ssl_dir, user="root", group="root", mode="0755"
    )
    # nginx (root) writes the logs; adm can read them, like /var/log/nginx.
    files.directory(
        name=f"Create {settings.aisha_log_dir}",
        path=settings.aisha_log_dir,
        user="root",
        group="adm",
        mode="0750",
    )
