from pyinfra.api import deploy
from pyinfra.operations import apt

from aisha_infra.settings import Settings

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


@deploy("Packages")
def install_packages(settings: Settings):
    apt.packages(
        name="Install nginx, certbot, ufw and python3-venv",
        packages=PACKAGES,
        # refresh the package lists only when older than an hour: re-runs stay fast
        update=True,
        cache_time=3600,
    )
