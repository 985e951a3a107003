from pyinfra.api import deploy

from aisha_infra.deploy.config import host_settings
from aisha_infra.deploy.operations.apt import packages_installed
from aisha_infra.deploy.settings import DEFAULTS

PACKAGES = [
    "nginx",
    "certbot",
    "python3-certbot-nginx",
    "ufw",
    "python3-venv",
    # the bundled app verifies fal's Ed25519 signatures with it (venv sees system packages)
    "python3-cryptography",
    "openssl",
]


@deploy("Packages", data_defaults=DEFAULTS)
def install_packages():
    settings = host_settings()
    packages_installed(
        name="Install nginx, certbot, ufw and python3-venv",
        packages=PACKAGES,
        lock_wait=settings.apt_lock_timeout,
        _timeout=settings.apt_timeout,
    )
