from pyinfra.api import deploy

from aisha_infra.deploy import paths
from aisha_infra.deploy.config import host_settings
from aisha_infra.deploy.operations.apt import packages_install_started, packages_install_waited
from aisha_infra.deploy.settings import DEFAULTS, Settings

# Every host's packages (self-signed mode needs no more).
PACKAGES = [
    "nginx",
    "ufw",
    "python3-venv",
    # the bundled app verifies fal's Ed25519 signatures with it (venv sees system packages)
    "python3-cryptography",
    "openssl",
]
# certbot's webroot authenticator only: its nginx plugin is never used.
LETSENCRYPT_PACKAGES = ["certbot"]
# Installed by earlier versions of this deploy, removed where found.
RETIRED_PACKAGES = ["python3-certbot-nginx"]


def packages_for(settings: Settings) -> list[str]:
    """What a host in `settings.tls_mode` needs: certbot only for Let's Encrypt."""
    return PACKAGES + (LETSENCRYPT_PACKAGES if settings.tls_mode == "letsencrypt" else [])


def packages_removed(settings: Settings) -> list[str]:
    """Removed where installed: the retired ones, and certbot from a host switched to
    self-signed, whose timer would go on renewing a certificate nginx no longer serves (and
    alert when that fails). Its certificates stay in /etc/letsencrypt: switched back, the
    host serves them again without a new issuance."""
    return RETIRED_PACKAGES + ([] if settings.tls_mode == "letsencrypt" else LETSENCRYPT_PACKAGES)


@deploy("Packages", data_defaults=DEFAULTS)
def start_installing_packages():
    """Starts apt in the background (a fresh host spends most of its provision there);
    wait_for_packages waits for it, after the steps that need none of the packages.
    Returns the start, for the wait."""
    settings = host_settings()
    packages = packages_for(settings)
    return packages_install_started(
        name=f"Install {', '.join(packages)}",
        packages=packages,
        removed=packages_removed(settings),
        lock_wait=settings.apt_lock_timeout,
    )


@deploy("Packages", data_defaults=DEFAULTS)
def wait_for_packages(started):
    settings = host_settings()
    packages_install_waited(
        name=f"Wait for the install ({paths.PACKAGES_UNITS})",
        timeout=settings.apt_timeout,
        _timeout=settings.apt_timeout,
        _if=started.did_change,
    )
